"""Soak: a long paced load against `playerpulse serve`; memory per process and lag, flat?

    python bench/soak.py [--duration 1800] [--rate 5000] [--batch 100] [--workers N]
                         [--sample-every 10] [--env NAME=VALUE ...]

Starts `playerpulse serve` with its defaults (durable embedded Apache Kafka and
PostgreSQL; only the log level lowered) in a temporary data dir, offers ``--rate``
events/s for ``--duration`` seconds (bench/load.py ``paced_load``: one player per event,
100,000 players in rotation, so the fold's state cache fills and must stay within
PLAYERPULSE_FOLD_CACHE_BYTES), and samples every ``--sample-every`` seconds:

* the resident memory (RSS) of each process of the service, read from /proc by psutil:
  the supervisor, each worker, PostgreSQL (its postmaster and backends, summed: shared
  buffers are counted in several of them, so the sum overstates, but its trend is what
  matters), the broker's JVM;
* the workers' fold cache (``playerpulse_fold_cache_bytes`` and ``_players`` of /metrics);
* the Kafka lag of the consumer group on the events topic, in messages.

Printed: memory per process at the start of the load (after a ``--warmup``) and at its
end, with the change; the lag at start, middle and end; the answers by status. The issue
asks for 30 min at 5,000 events/s with 100,000 players: the defaults. A short
``--duration`` (60) checks the script itself; its figures say little about a soak.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import LagMonitor, PacedResult, Serve, paced_load, scrape, start_serve  # noqa: E402

MB = 1_000_000


def memory_by_process(serve: Serve) -> dict[str, float]:
    """RSS in bytes of each process of the service, by role (PostgreSQL's summed)."""
    import psutil

    out: dict[str, float] = {}
    assert serve.process.proc is not None
    with contextlib.suppress(psutil.Error):
        out["supervisor"] = psutil.Process(serve.process.proc.pid).memory_info().rss
    workers = 0
    for child in serve.process.descendants():
        try:
            cmd = " ".join(child.cmdline())
            rss = child.memory_info().rss
            name = child.name()
        except psutil.Error:
            continue
        if "app.worker" in cmd:
            out[f"worker-{workers}"] = rss
            workers += 1
        elif "kafka.Kafka" in cmd:
            out["kafka"] = out.get("kafka", 0) + rss
        elif "postgres" in name or "postgres" in cmd:
            out["postgres (all processes)"] = out.get("postgres (all processes)", 0) + rss
    return out


def fold_cache(metrics: dict[str, float]) -> tuple[float, float]:
    """(bytes, players) of the fold's cache summed over the workers, from /metrics."""
    size = sum(v for k, v in metrics.items() if k.startswith("playerpulse_fold_cache_bytes"))
    count = sum(v for k, v in metrics.items() if k.startswith("playerpulse_fold_cache_players"))
    return size, count


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pp-bench-soak-"))
    env = dict(item.split("=", 1) for item in args.env)
    serve = start_serve(work, workers=args.workers, env=env)
    try:
        monitor = LagMonitor(serve.brokers())
        if args.warmup:
            paced_load(serve.url, serve.ingest_key, args.rate, args.warmup, batch=args.batch)
        samples: list[tuple[float, dict[str, float], tuple[float, float], int]] = []

        def sample() -> None:
            metrics = scrape(serve.url)
            samples.append(
                (time.monotonic(), memory_by_process(serve), fold_cache(metrics), monitor.lag())
            )

        holder: list[PacedResult] = []
        start_at = time.time() + 1.0

        def load() -> None:
            holder.append(
                paced_load(
                    serve.url,
                    serve.ingest_key,
                    args.rate,
                    args.duration,
                    batch=args.batch,
                    connections=args.connections,
                    start_at=start_at,
                )
            )

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(max(0.0, start_at - time.time()))
        sample()
        while loader.is_alive():
            loader.join(args.sample_every)
            sample()
        monitor.close()
        return {"samples": samples, "result": holder[0] if holder else PacedResult()}
    finally:
        serve.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(args: argparse.Namespace, outcome: dict[str, Any]) -> None:
    samples = outcome["samples"]
    result: PacedResult = outcome["result"]
    first, last = samples[0], samples[-1]
    middle = samples[len(samples) // 2]
    print(
        f"soak: {args.rate:g} events/s offered for {args.duration:g} s "
        f"({args.batch} events a request, 100,000 players), {len(samples)} samples"
    )
    print(
        f"requests answered 202: {result.ok}, accepted events: {result.accepted_events}; "
        f"other answers by status: {dict(sorted(result.statuses.items()))}; "
        f"failed requests: {result.failed}"
    )
    print("resident memory per process, MB (start of the load -> end, change):")
    for name in sorted(set(first[1]) | set(last[1])):
        start, end = first[1].get(name, 0.0), last[1].get(name, 0.0)
        change = f"{(end - start) / start * 100:+.1f}%" if start else "new"
        print(f"  {name:28s} {start / MB:9.1f} -> {end / MB:9.1f}  ({change})")
    total_start, total_end = sum(first[1].values()), sum(last[1].values())
    print(f"  {'total':28s} {total_start / MB:9.1f} -> {total_end / MB:9.1f}")
    print(
        f"fold cache (all workers): {first[2][0] / MB:.1f} MB, {first[2][1]:.0f} players -> "
        f"{last[2][0] / MB:.1f} MB, {last[2][1]:.0f} players"
    )
    print(
        f"lag, messages: start {first[3]}, middle {middle[3]}, end {last[3]}; "
        f"max {max(s[3] for s in samples)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--duration", type=float, default=1800, help="seconds of load")
    parser.add_argument("--rate", type=float, default=5000, help="events/s offered")
    parser.add_argument("--warmup", type=float, default=10, help="seconds at the rate, before")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="0: serve's default")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for serve")
    args = parser.parse_args()
    report(args, run(args))


if __name__ == "__main__":
    main()
