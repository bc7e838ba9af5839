"""The lake's privacy side: files rewritten without an erased player; retention."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from app.analytics.compaction import compact_lake
from app.analytics.location import LakeLocation, connect_lake
from app.analytics.privacy import apply_retention, erase_player, expired_partitions
from app.domain.events import EventRecord
from app.domain.predictions import PredictionRecord
from app.domain.privacy import TombstoneSet, player_key
from app.streams.lake import write_events, write_predictions
from tests.support import parquet_holds

pytestmark = pytest.mark.unit

DAY_US = 86_400 * 1_000_000
T0 = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z
VICTIM = "victim-7f3a9c"


def _events(game: str, player: str, count: int, day: int) -> list[EventRecord]:
    return [
        EventRecord(game, f"{player}-{day}-{i}", player, "login", T0 + day * DAY_US + i, T0, None)
        for i in range(count)
    ]


def holds(path: Path, needle: str) -> bool:
    return bool(parquet_holds(path, needle))


def test_erase_rewrites_hot_cold_and_prediction_files(tmp_path: Path) -> None:
    hot, cold = tmp_path / "hot", tmp_path / "cold"
    location = LakeLocation(str(hot), str(cold))
    # Old days go cold (compacted), a recent day stays in archive files.
    for day in (0, 1):
        write_events(hot, _events("g", VICTIM, 5, day) + _events("g", "other", 4, day))
    compact_lake(location, cold_after_days=30, today=date(2024, 3, 1))
    write_events(hot, _events("g", VICTIM, 3, 50) + _events("g", "other", 2, 50))
    write_events(hot, _events("g", VICTIM, 2, 50))  # a file holding only the victim
    write_events(hot, _events("g2", VICTIM, 2, 50))  # same id, another game: kept
    write_predictions(
        hot,
        [
            PredictionRecord("g", "m", 1, T0, 5, {"y": 1}, {"f": 1.0}, player_id=VICTIM),
            PredictionRecord("g", "m", 1, T0, 5, {"y": 2}, {"f": 2.0}, player_id="other"),
            PredictionRecord("g", "m", 1, T0, 5, {"y": 3}, {"f": 3.0}),
        ],
    )
    assert any(holds(p, VICTIM) for p in cold.rglob("*.parquet"))

    removed = erase_player(location, "g", VICTIM)

    assert removed == {"lake_hot": 5, "lake_cold": 10, "predictions": 1, "segments": 0}
    g_files = [p for p in tmp_path.rglob("*.parquet") if "game=g/" in p.as_posix()]
    assert g_files
    assert not any(holds(p, VICTIM) for p in g_files)
    assert not list(tmp_path.rglob("*.tmp"))
    with connect_lake(location) as conn:
        rows = conn.execute(
            "SELECT game, player_id, count(*) FROM lake_rows GROUP BY ALL ORDER BY ALL"
        ).fetchall()
    assert rows == [("g", "other", 10), ("g2", VICTIM, 2)]
    predictions = pq.read_table(hot / "predictions").to_pydict()
    assert sorted(predictions["player_id"], key=str) == [None, "other"]
    assert erase_player(location, "g", VICTIM) == {
        "lake_hot": 0,
        "lake_cold": 0,
        "predictions": 0,
        "segments": 0,
    }


def test_retention_drops_old_partitions_hot_and_cold(tmp_path: Path) -> None:
    hot, cold = tmp_path / "hot", tmp_path / "cold"
    location = LakeLocation(str(hot), str(cold))
    write_events(hot, _events("g", "p", 3, 0))
    compact_lake(location, cold_after_days=30, today=date(2024, 3, 1))
    write_events(hot, _events("g", "p", 3, 1) + _events("g", "p", 3, 40))
    write_predictions(hot, [PredictionRecord("g", "m", 1, T0, 5, {}, {}, player_id="p")])
    today = date(2024, 2, 11)  # day 40 is 2024-02-10

    planned = apply_retention(location, 5, today=today, dry_run=True)
    assert [(p.root, p.kind, p.date) for p in planned] == [
        (str(cold), "events", "2024-01-01"),
        (str(hot), "events", "2024-01-02"),
        (str(hot), "predictions", "2024-01-01"),
    ]
    assert expired_partitions(location, 5, today) == planned  # a dry run changes nothing
    assert apply_retention(location, 5, today=today) == planned
    assert expired_partitions(location, 5, today) == []
    with connect_lake(location) as conn:
        assert conn.execute("SELECT count(*) FROM lake_rows").fetchone() == (3,)
    with pytest.raises(ValueError, match="0 or more"):
        apply_retention(location, -1)


def test_tombstones_match_by_game_and_key() -> None:
    tombstones = TombstoneSet({"g": {player_key("g", VICTIM)}}, revision=3)
    assert tombstones.erased("g", VICTIM)
    assert not tombstones.erased("g2", VICTIM)
    assert not tombstones.erased("g", "other")
    assert not tombstones.erased("g", None)
    assert VICTIM not in player_key("g", VICTIM)
    assert not TombstoneSet()
