"""Ingest load generator: events/s through HTTP, next to a raw producer on the same broker.

    python bench/ingest.py [--seconds 10] [--connections 64] [--batch 100]
    python bench/ingest.py --url http://host:8000 --key KEY   # an already running server

Without ``--url`` it starts a real `playerpulse serve` (embedded PostgreSQL and Tansu
broker) in a temporary data dir. Then:

1. baseline: a raw confluent-kafka producer (idempotent, lz4, acks=all) writing the same
   events, one message each, to the same broker, from this process;
2. the load: ``wrk`` (Debian package; else concurrent httpx clients) POSTing batches of
   ``--batch`` events to ``/v1/events`` over ``--connections`` connections; events/s
   accepted (202) and request latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import confluent_kafka
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import wrk  # noqa: E402
from tests.support import ServeProcess  # noqa: E402


def event(i: int, now: str) -> dict[str, Any]:
    return {
        "event_id": f"{uuid.uuid4().hex}",
        "player_id": f"p{i % 50_000}",
        "type": ("purchase", "session_start", "level_complete")[i % 3],
        "ts": now,
        "props": {"amount": i % 100, "level": i % 40},
    }


def raw_producer(brokers: str, count: int) -> float:
    """Events/s of a raw idempotent producer, acks=all, lz4: the ceiling of the broker."""
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": brokers,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "lz4",
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    now = datetime.now(UTC).isoformat()
    values = [json.dumps({"game": "bench", **event(i, now)}).encode() for i in range(10_000)]
    failures = []
    started = time.perf_counter()
    for i in range(count):
        while True:
            try:
                producer.produce(
                    "bench-raw",
                    values[i % len(values)],
                    f"p{i % 50_000}".encode(),
                    on_delivery=lambda err, _m: err and failures.append(err),
                )
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(60)
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"raw producer failed: {failures[0]}")
    return count / elapsed


def wrk_load(url: str, key: str, body: bytes, seconds: int, connections: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp())
    try:
        (work / "body.json").write_bytes(body)
        script = (
            f'local f = io.open("{work / "body.json"}", "rb")\n'
            "wrk.body = f:read('*all')\n"
            "f:close()\n"
            'wrk.method = "POST"\n'
            f'wrk.headers["Authorization"] = "Bearer {key}"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        return wrk.run(
            f"{url}/v1/events", script, seconds=seconds, connections=connections, threads=2
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def httpx_load(url: str, key: str, body: bytes, seconds: int, connections: int) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        failed = 0
        deadline = time.monotonic() + seconds

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal failed
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = await client.post("/v1/events", content=body)
                latencies.append((time.perf_counter() - started) * 1000)
                failed += response.status_code != 202

        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            started = time.monotonic()
            await asyncio.gather(*(worker(client) for _ in range(connections)))
            elapsed = time.monotonic() - started
        latencies.sort()
        return {
            "requests_s": len(latencies) / elapsed,
            "failed": failed,
            "p50": latencies[len(latencies) // 2],
            "p99": latencies[int(len(latencies) * 0.99)],
            "tool": "httpx",
        }

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--url")
    parser.add_argument("--key")
    parser.add_argument("--brokers", help="for the baseline, with --url")
    args = parser.parse_args()

    # The same batch every time: the server dedups repeated ids in the fold, but ingest
    # (parse, validate, produce, await acks=all) does all of its work for each request.
    now = datetime.now(UTC).isoformat()
    body = json.dumps({"events": [event(i, now) for i in range(args.batch)]}).encode()
    server = None
    work = Path(tempfile.mkdtemp(prefix="pp-bench-ingest-"))
    try:
        if args.url:
            url, key, brokers = args.url, args.key, args.brokers
        else:
            server = ServeProcess(
                work, {"PLAYERPULSE_LOG_LEVEL": "warning", "PLAYERPULSE_RATE_LIMIT_EVENTS_S": "0"}
            ).start()
            url, key = server.url, server.key("bench", "ingest")
            brokers = _embedded_broker_address(server)
        load = (wrk_load if wrk.available() else httpx_load)(
            url, key, body, args.seconds, args.connections
        )
        baseline = raw_producer(brokers, 300_000) if brokers else None
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    events_s = load["requests_s"] * args.batch
    print(
        f"\ningest benchmark ({os.cpu_count()} cores, broker on this machine: "
        f"{'embedded Tansu' if not args.url else brokers})"
    )
    print(
        f"  HTTP ({load['tool']}, {args.connections} connections, {args.batch}-event batches, "
        f"{args.seconds}s): {events_s:,.0f} events/s ({load['requests_s']:,.0f} requests/s), "
        f"p50 {load['p50']:.1f} ms, p99 {load['p99']:.1f} ms, failed {load['failed']}"
    )
    if baseline:
        print(
            f"  baseline raw confluent-kafka producer (idempotent, lz4, acks=all): "
            f"{baseline:,.0f} events/s; HTTP/baseline {events_s / baseline:.2f}"
        )


def _embedded_broker_address(server: ServeProcess) -> str | None:
    """The embedded broker's address, from the server's log."""
    for line in server.log().splitlines():
        if "embedded broker" in line and '"address"' in line:
            return str(json.loads(line)["address"])
    return None


if __name__ == "__main__":
    main()
