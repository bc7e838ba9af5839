"""Freshness from outside: an event's 202 to its profile showing it, under background load.

    python bench/freshness.py [--rate 10000] [--samples 300] [--poll-ms 2]
                              [--players-per-request N] [--workers N]

Starts `playerpulse serve` with its defaults (durable embedded Apache Kafka and
PostgreSQL, workers = cores; only the log level is lowered) in a temporary data dir.

A probe, in this process, over its own two keep-alive connections: POST one event for a
probe player; once its 202 is read, GET /v1/players/{probe} right away and then every
``--poll-ms`` until ``events_applied`` went up; the sample is the time from the 202 having
been read to the answer that shows the event (so it includes one GET round trip, and up to
``--poll-ms`` of polling granularity). Two kinds of probe, alternating, 20 ms apart:

- *existing player, polled*: probes rotate over 8 probe players, one per partition of the
  events topic (so both workers' partitions are measured), and poll as above;
- *new player, with the token*: each probe posts for a player never seen before and
  reads it once with the 202's read-your-writes token (``?after=TOKEN``), which answers
  as soon as the event is folded; the sample ends with the answer that shows it.

1. baseline: ``--samples`` probes with nothing else sent to the server;
2. under load: the same probes while a paced load (bench/load.py ``paced_load``, another
   process: ``--batch``-event requests with new ids, ``--players-per-request`` distinct
   players each, default one per event; players in rotation) offers ``--rate``
   events/s; the probing starts after a ``--warmup`` of that load.

Before any probe, the service's CPU with no traffic at all is measured for ``--idle-s``
seconds (cores, from /proc). Under load, the CPU each of the service's processes spent
per event answered 202 (µs, from /proc: workers, Kafka, PostgreSQL, supervisor) is
printed beside the cores.

Printed for each: samples, p50/p90/p99/max in ms, the POST's own latency p50/p99; for the
load: offered and achieved events/s (202 answers only) and failures; the service's own
freshness histogram over the probe window (received -> profile committed, all events,
bucket-bounded: buckets 5, 10, 25, 50, 100, 250 ms ...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.domain.partitioning import partition_for  # noqa: E402
from bench.load import (  # noqa: E402
    GAME,
    CpuShare,
    HttpConnection,
    PacedResult,
    buckets,
    histogram_quantile,
    paced_load,
    pct,
    request_bytes,
    scrape,
    split_url,
    start_serve,
)

FRESHNESS = "playerpulse_event_freshness_seconds"
PARTITIONS = 8


def probe_players() -> list[str]:
    """One probe player per partition."""
    chosen: dict[int, str] = {}
    i = 0
    while len(chosen) < PARTITIONS:
        name = f"probe-{i}"
        chosen.setdefault(partition_for(f"{GAME}/{name}".encode(), PARTITIONS), name)
        i += 1
    return [chosen[p] for p in sorted(chosen)]


async def probe(
    url: str, ingest_key: str, read_key: str, samples: int, poll_s: float, deadline: float
) -> dict[str, list[float]]:
    """``samples`` probes (or until ``deadline``, time.time()); times in ms."""
    host, port = split_url(url)
    post = await HttpConnection.open(host, port)
    get = await HttpConnection.open(host, port)
    players = probe_players()
    applied: dict[str, int] = {}
    for player in players:
        status, body = await get.request(
            request_bytes("GET", host, f"/v1/players/{player}", read_key)
        )
        applied[player] = json.loads(body)["events_applied"] if status == 200 else 0
    fresh: list[float] = []
    fresh_new: list[float] = []
    posts: list[float] = []
    gets: list[float] = []
    failed = 0
    k = 0
    while len(fresh) + len(fresh_new) < samples and time.time() < deadline:
        token_probe = k % 2 == 1
        player = f"fresh-{uuid.uuid4().hex[:12]}" if token_probe else players[k // 2 % len(players)]
        k += 1
        event = {
            "event_id": f"probe-{uuid.uuid4().hex}",
            "player_id": player,
            "type": "session_start",
            "ts": datetime.now(UTC).isoformat(),
        }
        raw = request_bytes(
            "POST", host, "/v1/events", ingest_key, json.dumps({"events": [event]}).encode()
        )
        sent = time.perf_counter()
        status, body = await post.request(raw)
        acked = time.perf_counter()
        if status != 202 or json.loads(body)["accepted"] != 1:
            failed += 1
            await asyncio.sleep(0.1)
            continue
        posts.append((acked - sent) * 1000)
        if token_probe:
            token = json.loads(body)["token"]
            path = f"/v1/players/{player}?after={token}&wait_ms=10000"
            status, body = await get.request(request_bytes("GET", host, path, read_key))
            now = time.perf_counter()
            gets.append((now - acked) * 1000)
            if status != 200 or json.loads(body)["events_applied"] != 1:
                raise RuntimeError(f"read after its token: {status} {body[:200]!r}")
            fresh_new.append((now - acked) * 1000)
            await asyncio.sleep(0.02)
            continue
        target = applied[player] + 1
        polls = 0
        while True:
            polls += 1
            asked = time.perf_counter()
            status, body = await get.request(
                request_bytes("GET", host, f"/v1/players/{player}", read_key)
            )
            now = time.perf_counter()
            gets.append((now - asked) * 1000)
            if status == 200 and json.loads(body)["events_applied"] >= target:
                fresh.append((now - acked) * 1000)
                applied[player] = target
                break
            if now - acked > 30:
                raise RuntimeError(f"probe event for {player} not visible after 30 s")
            wait = acked + polls * poll_s - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
        await asyncio.sleep(0.02)
    post.close()
    get.close()
    return {
        "fresh": sorted(fresh),
        "fresh_new": sorted(fresh_new),
        "posts": sorted(posts),
        "gets": sorted(gets),
        "failed": [failed],
    }


def _background(args: tuple[Any, ...], queue: Any) -> None:
    url, key, rate, seconds, batch, start_at, per_request = args
    queue.put(
        paced_load(
            url,
            key,
            rate,
            seconds,
            batch=batch,
            start_at=start_at,
            players_per_request=per_request,
        )
    )


def describe(label: str, result: dict[str, list[float]]) -> str:
    posts = result["posts"]
    lines = [
        f"  {label} (POST itself p50 {pct(posts, 0.5):.1f} ms, p99 {pct(posts, 0.99):.1f} ms; "
        f"failed posts {result['failed'][0]}):"
    ]
    for key, kind in [
        ("fresh", "existing player, polled"),
        ("fresh_new", "new player, read with the token"),
    ]:
        fresh = result[key]
        if not fresh:
            lines.append(f"    {kind}: no samples")
            continue
        lines.append(
            f"    {kind}: {len(fresh)} samples; 202 -> readable p50 {pct(fresh, 0.5):.1f} ms, "
            f"p90 {pct(fresh, 0.9):.1f} ms, p99 {pct(fresh, 0.99):.1f} ms, "
            f"max {fresh[-1]:.1f} ms"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rate", type=float, default=10_000, help="background events/s")
    parser.add_argument("--samples", type=int, default=300, help="probes per phase")
    parser.add_argument("--poll-ms", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=100, help="events per load request")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of load before probing")
    parser.add_argument("--load-seconds", type=float, default=60, help="longest load phase")
    parser.add_argument("--idle-s", type=float, default=10, help="seconds of idle CPU measure")
    parser.add_argument(
        "--workers", type=int, default=None, help="serve --workers (default: cores)"
    )
    parser.add_argument(
        "--players-per-request",
        type=int,
        default=None,
        help="distinct players in a load request (default: one per event)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pp-bench-freshness-"))
    serve = start_serve(work, workers=args.workers)
    workers = len(serve.worker_pids())
    background: Any = None
    try:
        poll = args.poll_ms / 1000
        time.sleep(2)  # let start-up work (topic creation, first fetches) settle
        idle_cpu = CpuShare(serve).start()
        time.sleep(args.idle_s)
        idle_cpu.stop()
        idle = asyncio.run(
            probe(
                serve.url,
                serve.ingest_key,
                serve.read_key,
                args.samples,
                poll,
                time.time() + 600,
            )
        )
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        start_at = time.time() + 2.0
        load_seconds = args.warmup + args.load_seconds
        background = ctx.Process(
            target=_background,
            args=(
                (
                    serve.url,
                    serve.ingest_key,
                    args.rate,
                    load_seconds,
                    args.batch,
                    start_at,
                    args.players_per_request,
                ),
                queue,
            ),
        )
        background.start()
        time.sleep(max(0.0, start_at + args.warmup - time.time()))
        cpu = CpuShare(serve, lambda: [background.pid] if background.pid else []).start()
        before = scrape(serve.url)
        loaded = asyncio.run(
            probe(
                serve.url,
                serve.ingest_key,
                serve.read_key,
                args.samples,
                poll,
                start_at + load_seconds - 1.0,
            )
        )
        after = scrape(serve.url)
        cpu.stop()
        load: PacedResult = queue.get(timeout=load_seconds + 120)
        background.join(30)
    finally:
        if background is not None and background.is_alive():
            background.terminate()
        serve.stop()
        shutil.rmtree(work, ignore_errors=True)

    b0, b1 = buckets(before, FRESHNESS), buckets(after, FRESHNESS)
    p50 = histogram_quantile(b0, b1, 0.5)
    p99 = histogram_quantile(b0, b1, 0.99)
    offered = load.offered_requests * args.batch / load_seconds
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(load.statuses.items())) or "-"
    print(
        f"\nfreshness benchmark: {os.cpu_count()} cores, serve with {workers}"
        f" workers, durable embedded Apache Kafka and PostgreSQL on this machine; "
        f"polling every {args.poll_ms:g} ms"
    )
    print(
        f"  idle, no traffic for {args.idle_s:g} s: service {idle_cpu.service_cores():.3f} cores"
        f" ({idle_cpu.line()})"
    )
    print(describe("no load (baseline)", idle))
    print(describe(f"under {args.rate:,.0f} events/s", loaded))
    print(
        f"  background load: offered {offered:,.0f} events/s, achieved "
        f"{load.accepted_events / load.seconds:,.0f} events/s answered 202; "
        f"failed {load.failed} ({statuses}); sent late {load.late}"
    )
    print(
        f"  service histogram over the probe window ({p50[2]:,} events, bucket-bounded): "
        f"p50 in {p50[0] * 1000:g}..{p50[1] * 1000:g} ms, "
        f"p99 in {p99[0] * 1000:g}..{p99[1] * 1000:g} ms"
    )
    print(f"  {cpu.line()}")
    accepted_in_window = round(load.accepted_events / load.seconds * cpu.seconds)
    print(f"  {cpu.per_event(accepted_in_window)} (events answered 202 in the window, estimated)")


if __name__ == "__main__":
    main()
