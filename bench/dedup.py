"""Dedup state against traffic: PostgreSQL bytes per event within the horizon, and over time.

    python bench/dedup.py [--events 3000000] [--rate 10000] [--horizon 60]
                          [--batch 100] [--sample-s 15]

Starts `playerpulse serve` (durable embedded Apache Kafka and PostgreSQL, its defaults
but ``PLAYERPULSE_DEDUP_HORIZON=--horizon`` seconds) in a temporary data dir. A warm-up
sends events to every player of the load (100,000 players in rotation, one event per
player per request, as bench/load.py's ``paced_load``) until each has a profile, waits
until the fold caught up and runs ``VACUUM``: the sizes then are the baseline, so what
follows is the growth the traffic causes on profiles that exist, not new players. Then
``--events`` events (new ids) at ``--rate`` events/s, over more than one horizon.

Printed, sampled every ``--sample-s`` seconds during the load (and once the fold caught
up after it, then again after a plain ``VACUUM``):
* ``db``: ``pg_database_size`` (every table, index, TOAST table and free-space map of the
  database; not the WAL, which PostgreSQL recycles) minus the baseline;
* ``profiles``: ``pg_total_relation_size('profiles')`` (heap, TOAST, indexes) minus the
  baseline: the table that holds the id hashes now;
* ``ids``: ``sum(octet_length(seen_ids))`` minus the baseline: the live id hash bytes;
* ``folded``: events folded since the baseline (``playerpulse_events_folded_total``).
Also, at the baseline and at the end, what an average profile row holds (its state, its
id hashes with their headers) and the table's heap pages. Then the bytes per event
within the first horizon (growth at the first sample at or past one horizon / events
folded by then) and the steady state: the growth from that sample
to the last, per event folded meanwhile (0 means it does not grow with traffic).
Dead row versions left by profile updates are part of ``db`` and ``profiles`` until
autovacuum (on, at its defaults) or the final ``VACUUM`` marks them reusable; a plain
``VACUUM`` does not give file space back to the system, so neither figure drops there.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import PacedResult, Serve, paced_load, scrape, start_serve  # noqa: E402

PLAYERS = 100_000  # bench.load.BodyTemplate's default rotation


@dataclass
class Sample:
    at_s: float
    db: int
    profiles: int
    ids: int
    folded: float


async def _sizes(url: str, vacuum: bool = False) -> tuple[int, int, int]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        if vacuum:
            await conn.execute("VACUUM")
        db = await conn.fetchval("SELECT pg_database_size(current_database())")
        profiles = await conn.fetchval("SELECT pg_total_relation_size('profiles')")
        ids = await conn.fetchval("SELECT coalesce(sum(octet_length(seen_ids)), 0) FROM profiles")
        return int(db), int(profiles), int(ids)
    finally:
        await conn.close()


async def _rows(url: str) -> str:
    """What an average profile row holds, and the table's pages."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, avg(pg_column_size(p.*)) AS whole, "
            "avg(pg_column_size(state)) AS state, "
            "avg(coalesce(pg_column_size(seen_ids), 0)) AS ids, "
            "(SELECT relpages FROM pg_class WHERE relname = 'profiles') AS pages "
            "FROM profiles p"
        )
    finally:
        await conn.close()
    return (
        f"profile rows: {row['n']:,}, on average {float(row['whole']):.0f} bytes each "
        f"(state {float(row['state']):.0f}, id hashes with their headers {float(row['ids']):.0f}); "
        f"heap pages (at the last vacuum or analyze): {row['pages']:,}"
    )


def folded(url: str) -> float:
    return scrape(url).get("playerpulse_events_folded_total", 0.0)


def wait_folded(url: str, target: float, timeout: float) -> bool:
    """Until the fold applied ``target`` events in all (or timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if folded(url) >= target:
            return True
        time.sleep(0.5)
    return False


def sample(url: str, db_url: str, started: float, base: Sample, vacuum: bool = False) -> Sample:
    db, profiles, ids = asyncio.run(_sizes(db_url, vacuum))
    return Sample(
        time.monotonic() - started,
        db - base.db,
        profiles - base.profiles,
        ids - base.ids,
        folded(url) - base.folded,
    )


def show(s: Sample, label: str = "") -> None:
    per = f"{s.db / s.folded:7.1f}" if s.folded else "      -"
    print(
        f"{s.at_s:7.1f} s  db {s.db / 1e6:8.2f} MB  profiles {s.profiles / 1e6:8.2f} MB  "
        f"ids {s.ids / 1e6:7.2f} MB  folded {int(s.folded):>9,}  db B/event {per} {label}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--horizon", type=int, default=60, help="dedup horizon, seconds")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--sample-s", type=float, default=15.0)
    args = parser.parse_args()
    seconds = args.events / args.rate
    if seconds <= args.horizon:
        parser.error(f"--events / --rate = {seconds:.0f} s: it must exceed --horizon")
    work = Path(tempfile.mkdtemp(prefix="pp-dedup-"))
    serve = start_serve(work, env={"PLAYERPULSE_DEDUP_HORIZON": str(args.horizon)})
    try:
        run(serve, args, seconds)
    finally:
        serve.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(serve: Serve, args: argparse.Namespace, seconds: float) -> None:
    from app.embedded.postgres import EmbeddedPostgres

    db_url = EmbeddedPostgres(serve.data_dir).running_url()
    assert db_url is not None
    warm = paced_load(serve.url, serve.ingest_key, args.rate, PLAYERS / args.rate, batch=args.batch)
    if not wait_folded(serve.url, warm.accepted_events, 600):
        raise SystemExit("the fold did not catch up with the warm-up")
    db, profiles, ids = asyncio.run(_sizes(db_url, vacuum=True))
    base = Sample(0.0, db, profiles, ids, folded(serve.url))
    print(
        f"horizon {args.horizon} s; baseline after warm-up ({warm.accepted_events:,} events, "
        f"{PLAYERS:,} players) and VACUUM: db {db / 1e6:.2f} MB, profiles "
        f"{profiles / 1e6:.2f} MB, ids {ids / 1e6:.2f} MB"
    )
    print(asyncio.run(_rows(db_url)))
    result: list[PacedResult] = []
    load = threading.Thread(
        target=lambda: result.append(
            paced_load(serve.url, serve.ingest_key, args.rate, seconds, batch=args.batch)
        )
    )
    started = time.monotonic()
    load.start()
    samples = []
    while load.is_alive():
        load.join(args.sample_s)
        samples.append(sample(serve.url, db_url, started, base))
        show(samples[-1])
    accepted = result[0].accepted_events
    print(
        f"load: {accepted:,} events accepted (202) of {result[0].offered_requests * args.batch:,}"
    )
    wait_folded(serve.url, base.folded + accepted, 600)
    samples.append(sample(serve.url, db_url, started, base))
    show(samples[-1], "(fold caught up)")
    show(sample(serve.url, db_url, started, base, vacuum=True), "(after VACUUM)")
    summarise(samples, args.horizon)
    print(asyncio.run(_updates(db_url)))
    print(asyncio.run(_rows(db_url)))


async def _updates(url: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT n_tup_upd, n_tup_hot_upd, autovacuum_count FROM pg_stat_user_tables "
            "WHERE relname = 'profiles'"
        )
    finally:
        await conn.close()
    return (
        f"profile updates: {row['n_tup_upd']:,}, of which in-page (HOT) {row['n_tup_hot_upd']:,}; "
        f"autovacuum runs on profiles: {row['autovacuum_count']}"
    )


def summarise(samples: list[Sample], horizon: int) -> None:
    first = next((s for s in samples if s.at_s >= horizon), None)
    if first is None or not first.folded:
        print("no sample at or past one horizon: run longer")
        return
    print(
        f"within the first horizon ({first.at_s:.0f} s): db {first.db / first.folded:.1f} B/event, "
        f"profiles {first.profiles / first.folded:.1f} B/event, "
        f"ids {first.ids / first.folded:.1f} B/event"
    )
    last = samples[-1]
    events = last.folded - first.folded
    if events > 0:
        print(
            f"steady state ({first.at_s:.0f} s -> {last.at_s:.0f} s, {int(events):,} events): "
            f"db {(last.db - first.db) / events:+.2f} B/event, "
            f"profiles {(last.profiles - first.profiles) / events:+.2f} B/event, "
            f"ids {(last.ids - first.ids) / 1e6:+.2f} MB"
        )


if __name__ == "__main__":
    main()
