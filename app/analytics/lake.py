"""Reading the events of the lake back, player by player, for replays."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import msgspec

from app.domain.events import EventRecord

PlayerEvents = tuple[str, str, list[EventRecord]]
"""(game, player_id, that player's distinct events)"""

_json = msgspec.json.Decoder()


def _files(lake_dir: Path) -> str | None:
    folder = lake_dir / "events"
    if not any(folder.glob("game=*/date=*/*.parquet")):
        return None
    return str(folder / "game=*" / "date=*" / "*.parquet").replace("'", "''")


def _distinct_events(pattern: str) -> str:
    # Distinct per (game, player, event_id), as the fold counts them: the first received.
    return f"""
        SELECT game, player_id, event_id, type, epoch_us(ts) AS ts, props,
               epoch_us(received_at) AS received_at
        FROM (
            SELECT *, row_number() OVER (
                PARTITION BY game, player_id, event_id ORDER BY received_at) AS copy
            FROM read_parquet('{pattern}', hive_partitioning = true,
                              hive_types = {{'game': VARCHAR, 'date': DATE}},
                              union_by_name = true)
        ) WHERE copy = 1
    """


def count_players(lake_dir: Path) -> int:
    """How many distinct (game, player) the lake holds."""
    pattern = _files(lake_dir)
    if pattern is None:
        return 0
    with duckdb.connect(":memory:") as conn:
        row = conn.execute(
            f"SELECT count(*) FROM (SELECT DISTINCT game, player_id FROM read_parquet("
            f"'{pattern}', hive_partitioning = true, hive_types = {{'game': VARCHAR}}))"
        ).fetchone()
    return int(row[0]) if row else 0


def player_events(lake_dir: Path, batch_rows: int = 50_000) -> Iterator[PlayerEvents]:
    """Every player's distinct events, one player at a time, streamed from DuckDB."""
    pattern = _files(lake_dir)
    if pattern is None:
        return
    with duckdb.connect(":memory:") as conn:
        conn.execute("SET preserve_insertion_order = true")
        reader = conn.execute(
            _distinct_events(pattern) + " ORDER BY game, player_id"
        ).to_arrow_reader(batch_rows)
        if reader is None:
            return
        current: tuple[str, str] | None = None
        events: list[EventRecord] = []
        for batch in reader:
            columns = batch.to_pydict()
            for game, player, event_id, kind, ts, props, received_at in zip(
                columns["game"],
                columns["player_id"],
                columns["event_id"],
                columns["type"],
                columns["ts"],
                columns["props"],
                columns["received_at"],
                strict=True,
            ):
                key = (game, player)
                if key != current:
                    if current is not None:
                        yield current[0], current[1], events
                    current, events = key, []
                events.append(
                    EventRecord(
                        game=game,
                        event_id=event_id,
                        player_id=player,
                        type=kind,
                        ts=ts,
                        received_at=received_at,
                        props=None if props is None else _json.decode(props),
                    )
                )
        if current is not None:
            yield current[0], current[1], events
