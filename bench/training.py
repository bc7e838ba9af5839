"""Training-set benchmark: ``build_training_set`` over a generated lake, next to a DuckDB scan.

    python bench/training.py [--events 10000000] [--players 100000] [--labels 1000000]
        [--days 30] [--features app/features.example.toml ...] [--dir DIR]

1. Generates ``--events`` events of ``--players`` players over ``--days`` days into a lake
   directory in the archive's layout (``events/game=bench/date=D/part-*.parquet``, the
   layout's own schema ``app.lake_layout.EVENTS_SCHEMA``, zstd, one file per 200,000
   events, two where they span midnight, rows in arrival order). Types: session_start,
   login, purchase (``amount`` 1-50 and ``item.sku`` out of 40), level_complete
   (``level`` 1-100), evenly; players picked by hash. Then ``--labels`` label rows
   (``player_id`` among the players, ``ts`` uniform over the period, one ``churned``
   column) as Parquet. Generation is not timed below.
2. **Baseline**: DuckDB reading the same events through the same lake view
   (``lake_rows``): per player, ``count(*)`` and the sum of ``props.amount``
   (``json_extract``), grouped by ``player_id``. It includes opening the lake, reading
   and decoding every file, the JSON extraction and fetching the result as Arrow; it does
   no dedup, no as-of join and writes nothing.
3. For each features file (default: app/features.example.toml and
   tests/data/features_all.toml, which has every aggregate): ``build_training_set``, the
   code behind ``playerpulse analytics training-set``, with the labels file and a Parquet
   output. Its time includes everything that command does: reading the labels, picking
   each event's first received copy, the point-in-time SQL features, the folded features
   (``distinct_count`` and sketches, by the fold's Python code, in two processes split
   by player from ``PARALLEL_FROM_EVENTS`` events on, their start included), typing and
   writing the output. Not the command line's start-up.

Prints for each: seconds, label rows/s and lake events/s (events in the lake / seconds).
Timings are one run each (no warm-up): a training set is built once. The machine's load
average is printed with the figures, since other work on the machine slows them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.analytics.location import LakeLocation, connect_lake
from app.analytics.training import build_training_set
from app.domain.features import load_features
from app.lake_layout import EVENTS_SCHEMA

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FEATURES = (ROOT / "app/features.example.toml", ROOT / "tests/data/features_all.toml")
START_US = 1_704_067_200_000_000  # 2024-01-01
FILE_ROWS = 200_000
GAME = "bench"


def generate_events(lake: Path, events: int, players: int, days: int) -> None:
    """The events, written in the lake's layout with its schema."""
    step_us = days * 86_400 * 1_000_000 // max(events, 1)
    conn = duckdb.connect(":memory:")
    conn.execute("SET TimeZone = 'UTC'")
    for lo in range(0, events, FILE_ROWS):
        hi = min(events, lo + FILE_ROWS)
        batch = conn.sql(
            f"""
            SELECT 'e' || i AS event_id,
                'p' || (hash(i, 7) % {players}) AS player_id,
                ['session_start', 'login', 'purchase', 'level_complete'][1 + (hash(i) % 4)::INT]
                    AS type,
                make_timestamptz({START_US} + i * {step_us}) AS ts,
                CASE hash(i) % 4
                    WHEN 2 THEN '{{"amount":' || (1 + hash(i, 3) % 50)
                        || ',"item":{{"sku":"s' || (hash(i, 5) % 40) || '"}}}}'
                    WHEN 3 THEN '{{"level":' || (1 + hash(i, 3) % 100) || '}}'
                END AS props,
                make_timestamptz({START_US} + i * {step_us} + 250000) AS received_at,
                NULL::TIMESTAMPTZ AS device_ts
            FROM range({lo}, {hi}) t(i)
            """
        ).to_arrow_table()
        table = batch.cast(EVENTS_SCHEMA)
        dates = pc.strftime(table.column("ts"), "%Y-%m-%d")
        for date in sorted(pc.unique(dates).to_pylist()):
            rows = table.filter(pc.equal(dates, date))
            _write(lake, date, rows)
    conn.close()


def _write(lake: Path, date: str, table: pa.Table) -> None:
    if table.num_rows == 0:
        return
    folder = lake / "events" / f"game={GAME}" / f"date={date}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / f"part-{uuid.uuid4().hex[:12]}.parquet", compression="zstd")


def generate_labels(path: Path, labels: int, players: int, days: int) -> None:
    """``labels`` rows of (player_id, ts, churned) as Parquet."""
    span_us = days * 86_400 * 1_000_000
    duckdb.connect(":memory:").execute(
        f"""
        COPY (
            SELECT 'p' || (hash(i, 11) % {players}) AS player_id,
                make_timestamptz(({START_US} + hash(i, 13) % {span_us})::BIGINT) AS ts,
                (hash(i, 17) % 2 = 0) AS churned
            FROM range({labels}) t(i)
        ) TO '{path}' (FORMAT parquet)
        """
    )


def baseline(lake: Path) -> float:
    """Seconds for DuckDB's per-player count and sum of ``amount`` over the same lake."""
    started = time.perf_counter()
    conn = connect_lake(LakeLocation(str(lake)))
    conn.sql(
        "SELECT player_id, count(*), sum(json_extract(props, '$.amount')::DOUBLE) "
        f"FROM lake_rows WHERE game = '{GAME}' GROUP BY player_id"
    ).to_arrow_table()
    conn.close()
    return time.perf_counter() - started


def report(name: str, seconds: float, labels: int | None, events: int) -> None:
    """One line of figures, with the load average at the time."""
    load = os.getloadavg()[0]
    rows = "-" if labels is None else f"{labels / seconds:,.0f}"
    print(
        f"  {name:56s} {seconds:8.1f} s  {rows:>10s} label rows/s  "
        f"{events / seconds:12,.0f} events/s  (load {load:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--players", type=int, default=100_000)
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--features", type=Path, nargs="+", default=list(DEFAULT_FEATURES))
    parser.add_argument("--dir", type=Path, default=None, help="where to build the lake")
    args = parser.parse_args()
    if min(args.events, args.players, args.labels, args.days) < 1:
        parser.error("--events, --players, --labels and --days must be at least 1")
    feature_sets = [(path, load_features(path)) for path in args.features]

    root = Path(tempfile.mkdtemp(prefix="playerpulse-training-bench-", dir=args.dir))
    try:
        lake, labels = root / "lake", root / "labels.parquet"
        started = time.perf_counter()
        generate_events(lake, args.events, args.players, args.days)
        generate_labels(labels, args.labels, args.players, args.days)
        print(
            f"generated {args.events:,} events of {args.players:,} players over {args.days} "
            f"days and {args.labels:,} label rows in {time.perf_counter() - started:.1f}s "
            f"(cores: {os.cpu_count()})"
        )
        report("baseline: DuckDB per-player count+sum", baseline(lake), None, args.events)
        for path, features in feature_sets:
            stats = build_training_set(
                LakeLocation(str(lake)), features, GAME, labels, root / "out.parquet"
            )
            name = f"training set, {path.name} ({len(features.specs)} features)"
            report(name, stats.seconds, args.labels, args.events)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
