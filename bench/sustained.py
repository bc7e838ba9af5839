"""Sustained end to end: a paced HTTP load against `playerpulse serve`, the fold's lag.

    python bench/sustained.py [--rate 50000] [--seconds 60] [--batch 100]
                              [--connections 64] [--processes 1] [--workers N]
                              [--players-per-request N]

Starts `playerpulse serve` with its defaults (durable embedded Apache Kafka and
PostgreSQL, workers = cores; only the log level is lowered) in a temporary data dir,
then offers ``--rate`` events/s for ``--seconds``, after a ``--warmup`` at the same rate
(not counted) and a wait until the fold has caught up.

The load generator (bench/load.py ``paced_load``) is open loop: request k (``--batch``
events with new ids, for 100,000 players in rotation, ``--players-per-request`` distinct
ones per request: default one per event, the fold's worst case) is due at
start + k / rate and goes out on the first free keep-alive connection (``--connections``
per process, ``--processes`` processes sharing the rate); it is raw HTTP/1.1 on uvloop,
a few µs a request, so it takes little of the machine.

Printed:
* offered: requests planned / seconds, in events/s; achieved: events in answers 202
  (with ``"accepted": BATCH``) / the load's wall time; failed answers by status; requests
  sent later than one interval after they were due; latency p50/p99/max from when each
  request was due to its answer.
* Kafka lag of group ``playerpulse`` on the events topic, sampled every second during the
  load: sum over partitions of (high watermark - committed offset), in messages (one
  message = one request's events for one partition), p50/p99/max, and the same in
  seconds at the offered message rate. The committed offset moves only when Faust
  commits (every second) and an event is acknowledged only once its Parquet file is
  written (the archive buffers up to PLAYERPULSE_LAKE_FLUSH_EVENTS events or
  PLAYERPULSE_LAKE_FLUSH_S seconds), so this lag includes both and is not the fold's.
* The fold's lag as time, from the service's own histogram
  ``playerpulse_event_freshness_seconds`` (each event: received at ingest -> its profile
  change committed), deltas between a scrape before the load and one after the fold
  caught up: p50/p99 as the bounds of the bucket holding them (the buckets are 5, 10,
  25, 50, 100, 250, 500 ms, 1, 2.5, 5 ... s); per-second p99 bounds too (max over seconds).
* How long the fold took to catch up once the load stopped; CPU used per part.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import (  # noqa: E402
    CpuShare,
    LagMonitor,
    PacedResult,
    buckets,
    histogram_quantile,
    paced_load,
    pct,
    scrape,
    start_serve,
)

FRESHNESS = "playerpulse_event_freshness_seconds"


def wait_caught_up(monitor: LagMonitor, url: str, timeout: float) -> float:
    """Seconds until every accepted event is folded and the lag is zero (or timeout)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        metrics = scrape(url)
        accepted = metrics.get("playerpulse_events_accepted_total", 0.0)
        folded = metrics.get("playerpulse_events_folded_total", 0.0) + metrics.get(
            "playerpulse_events_duplicate_total", 0.0
        )
        if folded >= accepted and monitor.lag() == 0:
            return time.monotonic() - started
        time.sleep(0.25)
    return float("inf")


def bounds(low: float, high: float) -> str:
    return f"{low * 1000:g}..{high * 1000:g} ms"


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pp-bench-sustained-"))
    env = dict(item.split("=", 1) for item in args.env)
    serve = start_serve(work, workers=args.workers, env=env)
    try:
        brokers = serve.brokers()
        idle = LagMonitor(brokers)
        if args.warmup:
            paced_load(
                serve.url,
                serve.ingest_key,
                args.rate,
                args.warmup,
                batch=args.batch,
                connections=args.connections,
                processes=args.processes,
                players_per_request=args.players_per_request,
            )
        warm_catchup = wait_caught_up(idle, serve.url, 120)

        before = scrape(serve.url)
        monitor = LagMonitor(brokers)
        scrapes: list[tuple[float, dict[str, float]]] = []
        stop = threading.Event()

        def scraper() -> None:
            while not stop.wait(1.0):
                scrapes.append((time.time(), scrape(serve.url)))

        start_at = time.time() + 1.0
        cpu = CpuShare(serve)
        thread = threading.Thread(target=scraper, daemon=True)
        holder: list[PacedResult] = []

        def load() -> None:
            holder.append(
                paced_load(
                    serve.url,
                    serve.ingest_key,
                    args.rate,
                    args.seconds,
                    batch=args.batch,
                    connections=args.connections,
                    processes=args.processes,
                    start_at=start_at,
                    players_per_request=args.players_per_request,
                )
            )

        high_start = sum_high(monitor)
        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(max(0.0, start_at - time.time()))
        cpu.start()
        monitor.start()
        thread.start()
        loader.join()
        cpu.stop()
        monitor.stop()
        stop.set()
        thread.join()
        high_end = sum_high(monitor)
        catchup = wait_caught_up(monitor, serve.url, 300)
        after = scrape(serve.url)
        monitor.close()
        idle.close()
        return {
            "result": holder[0],
            "lag": [lag for t, lag in monitor.samples if start_at <= t <= start_at + args.seconds],
            "before": before,
            "after": after,
            "scrapes": scrapes,
            "catchup": catchup,
            "warm_catchup": warm_catchup,
            "cpu": cpu.line(),
            "cpu_per_event": cpu.per_event(holder[0].accepted_events),
            "messages": high_end - high_start,
            "workers": len(serve.worker_pids()),
        }
    finally:
        serve.stop()
        shutil.rmtree(work, ignore_errors=True)


def gc_line(before: dict[str, float], after: dict[str, float]) -> str:
    """Seconds the workers spent in the garbage collector, by generation (all workers)."""
    parts = []
    for generation in range(3):
        key = f'playerpulse_gc_seconds_total{{generation="{generation}"}}'
        parts.append(f"gen{generation} {after.get(key, 0.0) - before.get(key, 0.0):.2f}")
    return "garbage collection during the load and catch-up, s (all workers): " + ", ".join(parts)


def sum_high(monitor: LagMonitor) -> int:
    """Messages in the events topic (sum of high watermarks)."""
    import confluent_kafka

    consumer = monitor._consumer()
    total = 0
    for p in monitor._partitions:
        _low, high = consumer.get_watermark_offsets(
            confluent_kafka.TopicPartition(monitor.topic, p), timeout=10, cached=False
        )
        total += high
    return int(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rate", type=float, default=50_000, help="events/s offered")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=5, help="seconds at the rate, before")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--connections", type=int, default=64, help="per load process")
    parser.add_argument("--processes", type=int, default=1, help="load generator processes")
    parser.add_argument(
        "--workers", type=int, default=None, help="serve --workers (default: cores)"
    )
    parser.add_argument(
        "--players-per-request",
        type=int,
        default=None,
        help="distinct players in a load request (default: one per event)",
    )
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for serve (repeatable)"
    )
    args = parser.parse_args()

    out = run(args)
    result: PacedResult = out["result"]
    seconds = result.seconds
    offered = result.offered_requests * args.batch / args.seconds
    achieved = result.accepted_events / seconds
    lag = sorted(out["lag"])
    # Messages per second written during the load, for the lag in seconds.
    message_rate = out["messages"] / seconds
    before, after = out["before"], out["after"]
    b0, b1 = buckets(before, FRESHNESS), buckets(after, FRESHNESS)
    p50 = histogram_quantile(b0, b1, 0.50)
    p99 = histogram_quantile(b0, b1, 0.99)
    worst_second = 0.0
    previous = before
    for _t, sample in out["scrapes"]:
        _low, high, n = histogram_quantile(
            buckets(previous, FRESHNESS), buckets(sample, FRESHNESS), 0.99
        )
        if n:
            worst_second = max(worst_second, high)
        previous = sample
    latencies = result.latencies_ms
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(result.statuses.items())) or "-"
    print(
        f"\nsustained benchmark: {os.cpu_count()} cores, serve with {out['workers']} workers, "
        f"durable embedded Apache Kafka and PostgreSQL on this machine; {args.batch}-event "
        f"batches, new ids, {args.players_per_request or args.batch} players per request, "
        f"{args.processes} load process(es) x {args.connections} connections"
    )
    print(
        f"  offered {offered:,.0f} events/s for {args.seconds:g}s; achieved {achieved:,.0f} "
        f"events/s answered 202 ({result.ok} requests); failed {result.failed} ({statuses}); "
        f"sent late {result.late}"
    )
    print(
        f"  request latency from due time: p50 {pct(latencies, 0.5):.0f} ms, "
        f"p99 {pct(latencies, 0.99):.0f} ms, max {latencies[-1] if latencies else 0:.0f} ms"
    )
    if lag:
        to_s = 1.0 / message_rate if message_rate else float("nan")
        print(
            f"  Kafka lag (high watermark - committed, {len(lag)} samples, 1/s): messages "
            f"p50 {pct(lag, 0.5):,.0f}, p99 {pct(lag, 0.99):,.0f}, max {lag[-1]:,.0f}; "
            f"at {message_rate:,.0f} messages/s that is p50 {pct(lag, 0.5) * to_s:.2f} s, "
            f"p99 {pct(lag, 0.99) * to_s:.2f} s, max {lag[-1] * to_s:.2f} s "
            f"(includes Faust's 1 s commit interval and the archive buffer)"
        )
    print(
        f"  fold freshness (received -> profile committed, bucket-bounded, {p50[2]:,} events): "
        f"p50 in {bounds(p50[0], p50[1])}, p99 in {bounds(p99[0], p99[1])}; worst "
        f"one-second p99 <= {worst_second * 1000:g} ms"
    )
    print(
        f"  fold caught up {out['catchup']:.1f}s after the load stopped "
        f"(after the warm-up: {out['warm_catchup']:.1f}s)"
    )
    print(f"  {out['cpu']}")
    print(f"  {out['cpu_per_event']}")
    print(f"  {gc_line(before, after)}")


if __name__ == "__main__":
    main()
