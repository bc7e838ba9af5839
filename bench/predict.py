"""Prediction benchmark: server-side and HTTP latency, requests/s, next to raw onnxruntime.

    python bench/predict.py [--seconds 10] [--connections 32] [--players 1000]

Starts a real `playerpulse serve` (embedded PostgreSQL and broker) in a temporary data
dir, folds events for ``--players`` players, uploads the example decision tree, then:

1. baseline: onnxruntime ``session.run`` of the same model on one feature vector, here;
2. server side: the ``Server-Timing`` the server reports (profile read + model run),
   over sequential requests;
3. over HTTP: ``wrk`` (Debian package) with many connections if it is installed, else
   concurrent httpx clients; requests/s and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import wrk  # noqa: E402
from tests.support import ServeProcess  # noqa: E402

MODEL = ROOT / "examples" / "offer_model.onnx"
PARTS: dict[str, list[float]] = {}
MANIFEST = ROOT / "examples" / "offer_model.manifest.json"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def raw_onnxruntime(runs: int) -> list[float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
    row = np.array([[44.5, 2.0, 1.0]], dtype=np.float32)
    for _ in range(200):
        session.run(None, {"float_input": row})
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, {"float_input": row})
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def seed(server: ServeProcess, players: int) -> tuple[str, str]:
    game = "bench"
    ingest, read, admin = (server.key(game, r) for r in ("ingest", "read", "admin"))
    now = datetime.now(UTC).isoformat()
    with server.client(ingest) as client:
        for start in range(0, players, 100):
            events = [
                {
                    "event_id": f"e{i}",
                    "player_id": f"p{i}",
                    "type": "purchase",
                    "ts": now,
                    "props": {"amount": i % 90},
                }
                for i in range(start, min(players, start + 100))
            ]
            client.post("/v1/events", json={"events": events}).raise_for_status()
    with server.client(admin) as client:
        client.post(
            "/v1/admin/models/offers",
            files={"model": MODEL.read_bytes(), "manifest": (None, MANIFEST.read_text())},
        ).raise_for_status()
    with server.client(read) as client:
        deadline = time.monotonic() + 60
        while client.get(f"/v1/players/p{players - 1}").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("events were not folded in time")
            time.sleep(0.1)
    return read, admin


def server_side(server: ServeProcess, key: str, players: int, requests: int) -> list[float]:
    timings = []
    with server.client(key) as client:
        for i in range(requests):
            response = client.get(f"/v1/players/p{i % players}/predictions/offers")
            response.raise_for_status()
            parts = dict(
                part.strip().split(";dur=") for part in response.headers["server-timing"].split(",")
            )
            timings.append(float(parts["app"]))
            PARTS.setdefault("profile", []).append(float(parts["profile"]))
            PARTS.setdefault("model", []).append(float(parts["model"]))
    return timings


def over_http_wrk(server: ServeProcess, key: str, seconds: int, connections: int) -> dict:
    script = (
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        '  return wrk.format("GET", "/v1/players/p" .. (n % 1000) .. "/predictions/offers",'
        f' {{["Authorization"] = "Bearer {key}"}})\n'
        "end\n"
    )
    result = wrk.run(server.url, script, seconds=seconds, connections=connections)
    return {**result, "rps": result["requests_s"], "errors": result["failed"]}


def over_http_httpx(server: ServeProcess, key: str, seconds: int, connections: int) -> dict:
    async def run() -> dict:
        latencies: list[float] = []
        errors = 0
        deadline = time.monotonic() + seconds

        async def worker(client: httpx.AsyncClient, offset: int) -> None:
            nonlocal errors
            i = offset
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = await client.get(f"/v1/players/p{i % 1000}/predictions/offers")
                latencies.append((time.perf_counter() - started) * 1000)
                errors += response.status_code != 200
                i += connections

        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, limits=limits
        ) as client:
            started = time.monotonic()
            await asyncio.gather(*(worker(client, n) for n in range(connections)))
            elapsed = time.monotonic() - started
        return {
            "rps": len(latencies) / elapsed,
            "p50": pct(latencies, 0.5),
            "p99": pct(latencies, 0.99),
            "errors": errors,
            "tool": "httpx",
        }

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--players", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()

    raw = raw_onnxruntime(20_000)
    work = Path(tempfile.mkdtemp(prefix="pp-bench-predict-"))
    server = ServeProcess(work, {"PLAYERPULSE_LOG_LEVEL": "warning"}).start()
    try:
        read, _ = seed(server, args.players)
        server_side(server, read, args.players, 500)  # warm: sessions, pools, caches
        PARTS.clear()
        inside = server_side(server, read, args.players, args.requests)
        http = (over_http_wrk if wrk.available() else over_http_httpx)(
            server, read, args.seconds, args.connections
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nprediction benchmark ({os.cpu_count()} cores; example decision tree, 3 features)")
    print(
        f"  raw onnxruntime session.run:   p50 {pct(raw, 0.5) * 1000:.0f} us, "
        f"p99 {pct(raw, 0.99) * 1000:.0f} us, mean {statistics.fmean(raw) * 1000:.0f} us"
    )
    print(
        f"  server side (Server-Timing):   p50 {pct(inside, 0.5):.3f} ms, "
        f"p99 {pct(inside, 0.99):.3f} ms, max {max(inside):.3f} ms "
        f"(ratio p50 to raw run {pct(inside, 0.5) / pct(raw, 0.5):.0f}x)"
    )
    for part, values in PARTS.items():
        print(
            f"    of which {part:8s}           p50 {pct(values, 0.5):.3f} ms, "
            f"p99 {pct(values, 0.99):.3f} ms"
        )
    print(
        f"  over HTTP ({http['tool']}, {args.connections} connections, {args.seconds}s): "
        f"{http['rps']:,.0f} predictions/s, p50 {http['p50']:.2f} ms, p99 {http['p99']:.2f} ms, "
        f"errors {http['errors']}"
    )


if __name__ == "__main__":
    main()
