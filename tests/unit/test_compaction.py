"""Lake compaction and tiering: same answers, fewer files, one copy of each event."""

from __future__ import annotations

import fcntl
import random
import time
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from app.analytics.compaction import compact_lake, compaction_tick
from app.analytics.location import LakeLocation, connect_lake, lake_files
from app.analytics.privacy import housekeeping_tick
from app.analytics.reports import ReportRequest, run_report
from app.domain.events import EventRecord
from app.settings import Settings
from app.streams.lake import write_events

pytestmark = pytest.mark.unit

DAY_US = 86_400 * 1_000_000
T0 = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z


def generate(seed: int, events: int = 3000, days: int = 6) -> tuple[list[EventRecord], set[str]]:
    """Events of two games over ``days`` days, with copies; also the ids two players share."""
    rng = random.Random(seed)
    out: list[EventRecord] = []
    shared: set[str] = set()
    for i in range(events):
        game = rng.choice(["g1", "g1", "g2"])
        ts = T0 + rng.randrange(days * 86_400) * 1_000_000
        kind = rng.choice(["login", "purchase", "level_complete"])
        props = {"amount": rng.randint(1, 20)} if kind == "purchase" else None
        record = EventRecord(
            game, f"e{i}", f"p{rng.randrange(60)}", kind, ts, ts + rng.randrange(10**6), props
        )
        out.append(record)
        if rng.random() < 0.15:  # redelivered: the same record, archived again later
            out.append(record)
        if rng.random() < 0.05:  # resent by the game: same event, received later
            out.append(
                EventRecord(
                    game, record.event_id, record.player_id, kind, ts, record.received_at + 5, props
                )
            )
        if rng.random() < 0.02:  # another player's event reusing the id: a distinct event
            other = f"q{rng.randrange(5)}"
            out.append(EventRecord(game, record.event_id, other, "login", ts, ts + 7, None))
            shared.add(f"{game}/{record.event_id}")
    return out, shared


def write_in_flushes(lake: Path, events: list[EventRecord], flushes: int) -> None:
    """As the archive agent does: one small file per partition per flush."""
    size = max(1, len(events) // flushes)
    for start in range(0, len(events), size):
        write_events(lake, events[start : start + size])


QUERIES = {
    "events": "SELECT * EXCLUDE (received_at) FROM events ORDER BY game, event_id",
    "events_received": "SELECT game, event_id, received_at FROM events ORDER BY game, event_id",
    "distinct": (
        "SELECT game, player_id, event_id, type, ts, props, received_at FROM distinct_events "
        "ORDER BY game, player_id, event_id"
    ),
    "by_type": (
        "SELECT game, type, count(*), sum(json_extract(props, '$.amount')::INT) "
        "FROM events GROUP BY ALL ORDER BY ALL"
    ),
    "players_per_day": (
        "SELECT game, ts::DATE, count(DISTINCT player_id) FROM events GROUP BY ALL ORDER BY ALL"
    ),
}


def answers(location: LakeLocation) -> dict[str, Any]:
    conn = connect_lake(location)
    try:
        found: dict[str, Any] = {k: conn.execute(q).fetchall() for k, q in QUERIES.items()}
        for game in ("g1", "g2"):
            for name in ("dau", "mau", "retention", "arpdau"):
                found[f"{game}/{name}"] = run_report(conn, ReportRequest(name, game)).rows
            funnel = ReportRequest("funnel", game, steps=("login", "purchase", "level_complete"))
            found[f"{game}/funnel"] = run_report(conn, funnel).rows
        return found
    finally:
        conn.close()


def raw_keys(location: LakeLocation) -> list[tuple[str, str, str]]:
    conn = connect_lake(location)
    try:
        return conn.execute("SELECT game, player_id, event_id FROM lake_rows").fetchall()
    finally:
        conn.close()


def test_compaction_keeps_every_answer_with_fewer_files_and_one_copy_per_event(
    tmp_path: Path,
) -> None:
    lake = tmp_path / "lake"
    events, shared = generate(seed=1)
    write_in_flushes(lake, events, flushes=25)
    location = LakeLocation(str(lake))
    before = answers(location)
    files_before = list(lake_files(str(lake)))
    keys_before = raw_keys(location)
    assert len(keys_before) > len(set(keys_before))  # the lake does hold copies

    stats = compact_lake(location, target_rows=1000)

    files_after = list(lake_files(str(lake)))
    assert answers(location) == before
    assert len(files_after) < len(files_before) / 5
    assert stats.files_removed == len(files_before)
    assert stats.files_written == len(files_after)
    keys = raw_keys(location)
    assert len(keys) == len(set(keys))  # no (game, player, event_id) twice
    assert stats.duplicates_removed == len(keys_before) - len(keys)
    # An event_id appears twice only where two players' events share it (both count).
    ids: dict[str, int] = {}
    for game, _, event_id in keys:
        ids[f"{game}/{event_id}"] = ids.get(f"{game}/{event_id}", 0) + 1
    assert {k for k, n in ids.items() if n > 1} == shared
    for f in files_after:
        assert f.name.startswith("compact-")
        meta = pq.read_metadata(f.path)
        assert meta.num_rows <= 1000
        assert meta.row_group(0).column(0).compression == "ZSTD"
        players = pq.read_table(f.path, columns=["player_id"]).column(0).to_pylist()
        assert players == sorted(players)  # sorted by player: good zone maps for per-player scans

    again = compact_lake(location, target_rows=1000)  # nothing left to do
    assert (again.partitions, again.files_removed) == (0, 0)
    assert sorted(f.name for f in lake_files(str(lake))) == sorted(f.name for f in files_after)


def test_a_partition_larger_than_the_target_is_split_and_new_copies_merge_in(
    tmp_path: Path,
) -> None:
    lake = tmp_path / "lake"
    ts = T0 + 3600 * 1_000_000
    events = [
        EventRecord("g", f"e{i:03d}", f"p{i % 7}", "login", ts + i, ts + 1000 + i, {"v": 1})
        for i in range(250)
    ]
    write_in_flushes(lake, events, flushes=10)
    location = LakeLocation(str(lake))
    compact_lake(location, target_rows=100)
    sizes = sorted(pq.read_metadata(f.path).num_rows for f in lake_files(str(lake)))
    assert sizes == [50, 100, 100]

    # A copy received *earlier* than the archived one (another process's archive lagged):
    # the file holding the later copy is rewritten, and the earlier copy is kept.
    early = EventRecord("g", "e010", "p3", "login", ts + 10, ts + 1, {"v": 2})
    write_events(lake, [early])
    stats = compact_lake(location, target_rows=100)
    assert stats.duplicates_removed == 1
    conn = connect_lake(location)
    try:
        rows = conn.execute(
            "SELECT props, count(*) OVER () FROM lake_rows WHERE event_id = 'e010'"
        ).fetchall()
        total = conn.execute("SELECT count(*) FROM lake_rows").fetchone()
    finally:
        conn.close()
    assert rows == [('{"v":2}', 1)]
    assert total == (250,)


def test_old_partitions_move_cold_and_still_answer(tmp_path: Path) -> None:
    lake, cold = tmp_path / "lake", tmp_path / "cold"
    events, _ = generate(seed=2, events=1500, days=6)
    write_in_flushes(lake, events, flushes=10)
    location = LakeLocation(str(lake), str(cold))
    before = answers(location)

    stats = compact_lake(location, cold_after_days=2, today=date(2024, 1, 6))

    hot_dates = {f.date for f in lake_files(str(lake))}
    cold_dates = {f.date for f in lake_files(str(cold))}
    assert hot_dates == {"2024-01-04", "2024-01-05", "2024-01-06"}
    assert cold_dates == {"2024-01-01", "2024-01-02", "2024-01-03"}
    assert stats.partitions_moved == 6  # two games x three days
    assert answers(location) == before
    assert not list((lake / "events" / "game=g1").glob("date=2024-01-01"))

    # A late event for a cold day lands in the hot root; the next run merges it in cold.
    late = EventRecord("g1", "late", "p1", "login", T0 + 5, T0 + 9 * DAY_US, None)
    write_events(lake, [late])
    compact_lake(location, cold_after_days=2, today=date(2024, 1, 7))
    day1 = [f for f in lake_files(str(cold)) if (f.game, f.date) == ("g1", "2024-01-01")]
    assert len(day1) == 1
    conn = connect_lake(location)
    try:
        assert conn.execute("SELECT count(*) FROM events WHERE event_id = 'late'").fetchone() == (
            1,
        )
    finally:
        conn.close()


def test_a_second_compaction_waits_for_the_first(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_events(lake, [EventRecord("g", "e", "p", "login", T0, T0)])
    write_events(lake, [EventRecord("g", "f", "p", "login", T0, T0)])
    with open(lake / ".compaction.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        stats = compact_lake(lake)
    assert stats.skipped
    assert stats.files_removed == 0
    assert len(list(lake_files(str(lake)))) == 2
    assert compact_lake(lake).files_removed == 2


async def test_the_serve_timer_tick_compacts_with_the_settings(tmp_path: Path) -> None:
    lake = tmp_path / "var" / "lake"
    for i in range(3):
        write_events(lake, [EventRecord("g", f"e{i}", "p", "login", T0 + i, T0 + i)])
    settings = Settings(data_dir=tmp_path / "var")
    stats = await compaction_tick(settings)
    assert stats is not None
    assert (stats.files_removed, stats.files_written) == (3, 1)
    broken = Settings(lake_url=str(tmp_path / "file"))
    (tmp_path / "file").write_text("not a directory")
    assert await compaction_tick(broken) is None  # logged, not raised


def test_compaction_keeps_every_column_the_archive_writes(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    base = 1_790_000_000_000_000
    for flush in range(3):
        write_events(
            lake,
            [
                EventRecord(
                    game="g",
                    event_id=f"e{flush}-{i}",
                    player_id=f"p{i}",
                    type="purchase",
                    ts=base + i,
                    received_at=base + 10 + i,
                    props={"amount": i},
                    device_ts=base - 3_600_000_000 + i if i % 2 else None,
                )
                for i in range(10)
            ],
        )
    compact_lake(LakeLocation(str(lake)))
    files = list(lake_files(str(lake)))
    assert len(files) == 1
    table = pq.read_table(files[0].path)
    assert "device_ts" in table.column_names
    assert table.column("device_ts").null_count == 15


async def test_the_housekeeping_tick_compacts_then_applies_the_retention(tmp_path: Path) -> None:
    lake = tmp_path / "var" / "lake"
    now_us = time.time_ns() // 1000
    old_us = now_us - 90 * 86_400 * 1_000_000
    for i in range(3):
        write_events(lake, [EventRecord("g", f"new{i}", "p", "login", now_us + i, now_us + i)])
        write_events(lake, [EventRecord("g", f"old{i}", "p", "login", old_us + i, old_us + i)])
    settings = Settings(data_dir=tmp_path / "var", lake_retention_days=30, lake_cold_after_days=-1)
    await housekeeping_tick(settings)
    left = list(lake_files(str(lake)))
    assert len(left) == 1  # the three recent files compacted into one; the old day dropped
    with connect_lake(LakeLocation(str(lake))) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchall() == [(3,)]
