"""Reading the events of the lake back, player by player, for replays."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec

from app.domain.events import EventRecord

from .location import LakeLocation, connect_lake

PlayerEvents = tuple[str, str, list[EventRecord]]
"""(game, player_id, that player's distinct events)"""

_json = msgspec.json.Decoder()


def _location(lake: Path | LakeLocation) -> LakeLocation:
    return lake if isinstance(lake, LakeLocation) else LakeLocation(str(lake))


def count_players(lake: Path | LakeLocation) -> int:
    """How many distinct (game, player) the lake holds, hot and cold."""
    with connect_lake(_location(lake)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM (SELECT DISTINCT game, player_id FROM lake_rows)"
        ).fetchone()
    return int(row[0]) if row else 0


def player_events(lake: Path | LakeLocation, batch_rows: int = 50_000) -> Iterator[PlayerEvents]:
    """Every player's distinct events (as the fold counts them), one player at a time."""
    with connect_lake(_location(lake)) as conn:
        conn.execute("SET preserve_insertion_order = true")
        reader = conn.execute(
            "SELECT game, event_id, player_id, type, epoch_us(ts) AS ts, "
            "epoch_us(received_at) AS received_at, props "
            "FROM distinct_events ORDER BY game, player_id"
        ).to_arrow_reader(batch_rows)
        if reader is None:
            return
        current: tuple[str, str] | None = None
        events: list[EventRecord] = []
        for batch in reader:
            # the columns in EventRecord's field order
            for game, event_id, player, kind, ts, received_at, props in zip(
                *batch.to_pydict().values(), strict=True
            ):
                key = (game, player)
                if key != current:
                    if current is not None:
                        yield current[0], current[1], events
                    current, events = key, []
                props = None if props is None else _json.decode(props)
                events.append(EventRecord(game, event_id, player, kind, ts, received_at, props))
        if current is not None:
            yield current[0], current[1], events
