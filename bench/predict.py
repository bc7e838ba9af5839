"""Prediction benchmark: single and batch predictions over HTTP, with and without ingest.

    python bench/predict.py [--seconds 10] [--connections 32] [--rounds 2]
                            [--players 10000] [--batch 100] [--ingest-rate 10000]

Starts a real ``playerpulse serve`` with its defaults (embedded PostgreSQL and Apache
Kafka, one worker process per core, every prediction logged to Kafka and the lake) in
a temporary data dir (``tests/support.ServeProcess``, less its shorter lake flush),
folds one purchase for each of ``--players`` players, uploads the example decision tree
(3 features), and prints, each beside its floor measured in the same run:

1. floors: onnxruntime ``session.run`` of the same model on one row and on ``--batch``
   rows (one thread, in this process); a raw asyncpg point read of a profile row (one
   connection, prepared, sequential) against the server's own PostgreSQL;
2. server side, ``--requests`` *sequential* predictions (the server otherwise idle): the
   ``Server-Timing`` of ``GET /v1/players/{id}/predictions/offers``. ``app`` is the
   middleware around all of the application (routing, key, guard, profile read, model,
   reply) up to the start of the response; ``profile``, ``model`` and ``handler`` are
   the handler's own parts;
3. over HTTP with wrk (``--connections``, ``--seconds`` per run, one wrk thread), only
   ``200`` answers counted (a Lua ``response()`` counts them; every other status and
   every socket error is a failure, printed): single predictions for a random player of
   ``--players``; batches (``POST /v1/models/offers/predict`` with ``--batch`` random
   players), counted in player-predictions; ``GET /health`` over the same stack (the
   ceiling of HTTP itself here). Latency is wrk's, client side; ``app under load`` is
   the middleware's ``Server-Timing`` of each answer;
4. the same single and batch runs while another process offers ``--ingest-rate``
   events/s (bench/load.py ``paced_load``: 100-event requests with new ids, folded by
   the same workers).

``CPU per prediction``: the CPU time (user + system, from ``/proc``) of the server's
workers, its PostgreSQL and its Kafka, and of wrk, during a run, divided by the
predictions answered 200: what one prediction costs the machine (the prediction log's
cost included), steadier than requests/s on a shared machine. Under ingest it includes
the ingest's and the fold's CPU, so it is printed for the quiet runs only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import wrk  # noqa: E402
from tests.support import ServeProcess  # noqa: E402

MODEL = ROOT / "examples" / "offer_model.onnx"
MANIFEST = ROOT / "examples" / "offer_model.manifest.json"
PREDICT_PATH = "/v1/players/p{i}/predictions/offers"
BATCH_PATH = "/v1/models/offers/predict"

# Requests for the wrk script: a random player's prediction, a batch of random players,
# and /health.
_SINGLE = """
math.randomseed(%(seed)d)
request = function()
  return wrk.format("GET", "/v1/players/p" .. math.random(0, %(last)d) .. "/predictions/offers",
                    %(headers)s)
end
"""
_BATCH = """
math.randomseed(%(seed)d)
request = function()
  local ids = {}
  for i = 1, %(batch)d do ids[i] = '"p' .. math.random(0, %(last)d) .. '"' end
  local h = %(headers)s
  h["Content-Type"] = "application/json"
  return wrk.format("POST", "/v1/models/offers/predict", h,
                    '{"players": [' .. table.concat(ids, ",") .. ']}')
end
"""
_HEALTH = """
request = function()
  return wrk.format("GET", "/health")
end
"""

# wrk: count answers by status in each thread, collect the middleware's Server-Timing,
# and report it all from done() as one JSON line.
_LUA = """
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

ok = 0
statuses = {}
app = {}
local n = 0

%(request)s

response = function(status, headers, body)
  if status == 200 then
    ok = ok + 1
  else
    statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
  end
  local st = headers["server-timing"] or headers["Server-Timing"]
  if st then
    local ms = string.match(st, "app;dur=([%%d%%.]+)")
    if ms then app[#app + 1] = tonumber(ms) end
  end
end

done = function(summary, latency, requests)
  local total_ok, other, times = 0, {}, {}
  for _, t in ipairs(threads) do
    total_ok = total_ok + t:get("ok")
    for code, count in pairs(t:get("statuses")) do
      other[#other + 1] = string.format('"%%s": %%d', code, count)
    end
    for _, v in ipairs(t:get("app")) do times[#times + 1] = string.format("%%.3f", v) end
  end
  local e = summary.errors
  io.write(string.format(
    'JSON {"responses": %%d, "ok": %%d, "seconds": %%f, "socket_errors": %%d, ' ..
    '"statuses": {%%s}, "p50": %%f, "p99": %%f, "app": [%%s]}\\n',
    summary.requests, total_ok, summary.duration / 1e6,
    e.connect + e.read + e.write + e.timeout, table.concat(other, ", "),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, table.concat(times, ",")))
end
"""


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; nan if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tree_cpu(server: ServeProcess) -> dict[str, float]:
    """CPU seconds (user + system) so far of the server's processes, by kind, and of
    this process's waited-for children (wrk)."""
    assert server.proc is not None
    kinds = {"workers": 0.0, "postgres": 0.0, "kafka": 0.0, "supervisor": 0.0}
    for proc in [psutil.Process(server.proc.pid), *server.descendants()]:
        try:
            line = " ".join(proc.cmdline())
            times = proc.cpu_times()
        except psutil.Error:
            continue
        kind = (
            "workers"
            if "app.worker" in line
            else "postgres"
            if "postgres" in line
            else "kafka"
            if "java" in line
            else "supervisor"
        )
        kinds[kind] += times.user + times.system
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    kinds["wrk"] = children.ru_utime + children.ru_stime
    return kinds


def raw_onnxruntime(runs: int) -> list[float]:
    """``session.run`` of the example model on one vector, in ms per run."""
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


def seed(server: ServeProcess, players: int) -> str:
    """Fold one purchase per player, upload the example model; return a read key."""
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
    return read


def server_timing(header: str) -> dict[str, float]:
    """``name;dur=ms`` entries of a (possibly repeated, comma-joined) Server-Timing."""
    parts = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        parts[name] = float(dur)
    return parts


def server_side(
    server: ServeProcess, key: str, players: int, requests: int
) -> dict[str, list[float]]:
    """Sequential predictions; every Server-Timing entry (ms) by name."""
    timings: dict[str, list[float]] = {}
    with server.client(key) as client:
        for i in range(requests):
            response = client.get(PREDICT_PATH.format(i=i % players))
            if response.status_code != 200:
                raise RuntimeError(f"prediction answered {response.status_code}: {response.text}")
            for name, ms in server_timing(response.headers["server-timing"]).items():
                timings.setdefault(name, []).append(ms)
    return timings


def over_http(
    server: ServeProcess,
    request: str,
    key: str | None,
    *,
    seconds: int,
    connections: int,
    players: int,
    batch: int,
    per_request: int,
) -> dict[str, Any]:
    """One wrk run of ``request`` (a Lua ``request`` function); only 200s counted, each
    worth ``per_request`` predictions; with the CPU each kind of process spent per
    prediction (us)."""
    headers = f'{{["Authorization"] = "Bearer {key}"}}' if key else "nil"
    lua = request % {
        "seed": time.time_ns() % 1_000_000,
        "last": players - 1,
        "batch": batch,
        "headers": headers,
    }
    script = _LUA % {"request": lua}
    work = Path(tempfile.mkdtemp(prefix="pp-wrk-"))
    before = tree_cpu(server)
    try:
        (work / "load.lua").write_text(script)
        out = subprocess.run(
            [
                *("wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s"),
                *("-s", str(work / "load.lua"), server.url),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)
    after = tree_cpu(server)
    result = json.loads(next(ln for ln in out.splitlines() if ln.startswith("JSON "))[5:])
    answered = max(1, result["ok"] * per_request)
    return {
        "rps": result["ok"] / result["seconds"],
        "per_s": result["ok"] * per_request / result["seconds"],
        "ok": result["ok"],
        "failed": result["responses"] - result["ok"] + result["socket_errors"],
        "statuses": result["statuses"],
        "socket_errors": result["socket_errors"],
        "p50": result["p50"],
        "p99": result["p99"],
        "app": result["app"],
        "cpu_us": {kind: (after[kind] - before[kind]) / answered * 1e6 for kind in after},
    }


def raw_batch(rows: int, runs: int) -> float:
    """``session.run`` of the example model on ``rows`` stacked rows: us per row."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
    matrix = np.array([[44.5, 2.0, float(i % 7)] for i in range(rows)], dtype=np.float32)
    for _ in range(50):
        session.run(None, {"float_input": matrix})
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, {"float_input": matrix})
        samples.append(time.perf_counter() - started)
    return pct(samples, 0.5) / rows * 1e6


def raw_point_read(server: ServeProcess, players: int, reads: int) -> list[float]:
    """A profile row by primary key over one asyncpg connection, prepared, sequential: us
    per read (the database's floor for a profile read)."""
    import asyncpg

    from app.db.engine import libpq_url
    from app.embedded.postgres import EmbeddedPostgres

    url = EmbeddedPostgres(server.workdir / "var").running_url()
    assert url is not None, "the embedded PostgreSQL is not running"

    async def run() -> list[float]:
        conn = await asyncpg.connect(libpq_url(url))
        try:
            query = await conn.prepare(
                "SELECT state, events_applied, last_event_at, last_received_at, updated_at "
                "FROM profiles WHERE game = $1 AND player_id = $2"
            )
            samples = []
            for i in range(reads):
                started = time.perf_counter()
                row = await query.fetchrow("bench", f"p{i % players}")
                samples.append((time.perf_counter() - started) * 1e6)
                assert row is not None
            return samples
        finally:
            await conn.close()

    return asyncio.run(run())


def ingest_load(server: ServeProcess, rate: int, seconds: float) -> Any:
    """Start offering ``rate`` events/s for ``seconds`` in another process; a thread whose
    ``result`` list gets the :class:`bench.load.PacedResult`."""
    from bench.load import paced_load

    key = server.key("bench-ingest", "ingest")
    results: list[Any] = []
    thread = threading.Thread(
        target=lambda: results.append(paced_load(server.url, key, rate, seconds, batch=100)),
        daemon=True,
    )
    thread.start()
    thread.result = results  # type: ignore[attr-defined]
    return thread


def _cpu(runs: list[dict[str, Any]]) -> str:
    """Median CPU per prediction over runs, by kind of process, and the total."""
    kinds = ("workers", "postgres", "kafka", "wrk")
    medians = {k: statistics.median(r["cpu_us"][k] for r in runs) for k in kinds}
    total = statistics.median(sum(r["cpu_us"].values()) for r in runs)
    parts = ", ".join(f"{k} {v:.0f}" for k, v in medians.items())
    return f"{total:.0f} us ({parts})"


def _range(values: list[float], fmt: str) -> str:
    low, high = min(values), max(values)
    return (
        fmt.format(low)
        if fmt.format(low) == fmt.format(high)
        else f"{fmt.format(low)} to {fmt.format(high)}"
    )


def _line(label: str, runs: list[dict[str, Any]], unit: str = "/s") -> str:
    failed = sum(r["failed"] for r in runs)
    statuses: dict[str, int] = {}
    for r in runs:
        for code, n in r["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
    fails = f"failures {failed}" + (f" {statuses}" if statuses else "")
    app = [v for r in runs for v in r["app"]]
    timing = f"; app p99 {pct(app, 0.99):.2f} ms" if app else ""
    return (
        f"    {label:22s} {_range([r['per_s'] for r in runs], '{:,.0f}')}{unit}, "
        f"p50 {_range([r['p50'] for r in runs], '{:.2f}')} ms, "
        f"p99 {_range([r['p99'] for r in runs], '{:.2f}')} ms{timing}, {fails}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="quiet runs of each kind")
    parser.add_argument("--players", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100, help="players per batch request")
    parser.add_argument("--ingest-rate", type=int, default=10_000, help="events/s, 0: none")
    parser.add_argument("--requests", type=int, default=3000, help="sequential, server side")
    args = parser.parse_args()
    if not wrk.available():
        raise SystemExit("wrk is needed (Debian/Ubuntu: apt-get install wrk)")

    raw = raw_onnxruntime(20_000)
    raw_row_us = raw_batch(args.batch, 2000)
    options = {
        "seconds": args.seconds,
        "connections": args.connections,
        "players": args.players,
        "batch": args.batch,
    }
    work = Path(tempfile.mkdtemp(prefix="pp-bench-predict-"))
    server = ServeProcess(work, {"PLAYERPULSE_LOG_LEVEL": "warning"})
    server.env.pop("PLAYERPULSE_LAKE_FLUSH_S")  # the tests' 1 s: keep the default here
    server.start()
    runs: dict[str, list[dict[str, Any]]] = {}

    def measure(kind: str, request: str, key: str | None, per_request: int) -> None:
        run = over_http(server, request, key, per_request=per_request, **options)
        runs.setdefault(kind, []).append(run)
        print(
            f"{kind}: {run['per_s']:,.0f}/s p50 {run['p50']:.2f} ms p99 {run['p99']:.2f} ms "
            f"failures {run['failed']}",
            flush=True,
        )

    try:
        workers = len(server.workers())
        read = seed(server, args.players)
        point = raw_point_read(server, args.players, 5000)
        server_side(server, read, args.players, 500)  # warm: sessions, pools, caches
        inside = server_side(server, read, args.players, args.requests)
        for _ in range(args.rounds):
            measure("single", _SINGLE, read, 1)
            measure("batch", _BATCH, read, args.batch)
            measure("health", _HEALTH, None, 1)
        loaded = None
        if args.ingest_rate:
            span = 2 * args.seconds + 8
            load = ingest_load(server, args.ingest_rate, span)
            time.sleep(3)  # the load's start and the fold's pace
            measure("single under ingest", _SINGLE, read, 1)
            measure("batch under ingest", _BATCH, read, args.batch)
            load.join(span + 120)
            loaded = load.result[0] if load.result else None
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    app = inside["app"]
    raw_p50 = pct(raw, 0.5)
    print(
        f"\nprediction benchmark: {os.cpu_count()} cores, serve with {workers} workers "
        f"(defaults), example decision tree (3 features), {args.players:,} players, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("  floors, same run:")
    print(
        f"    raw session.run, one row: p50 {raw_p50 * 1000:.1f} us, "
        f"p99 {pct(raw, 0.99) * 1000:.1f} us; {args.batch} rows: {raw_row_us:.2f} us per row"
    )
    print(
        f"    raw asyncpg point read (one connection, prepared): p50 {pct(point, 0.5):.0f} us, "
        f"p99 {pct(point, 0.99):.0f} us"
    )
    print(
        f"  server side, {args.requests} sequential predictions (Server-Timing): app p50 "
        f"{pct(app, 0.5):.3f} ms, p99 {pct(app, 0.99):.3f} ms"
    )
    for name in ("handler", "profile", "model"):
        values = inside.get(name, [])
        print(
            f"    of which {name:8s} p50 {pct(values, 0.5):.3f} ms, p99 {pct(values, 0.99):.3f} ms"
        )
    print(
        f"  over HTTP (wrk, {args.connections} connections, {args.rounds} x {args.seconds} s "
        "quiet, 200s only):"
    )
    print(_line("single predictions", runs["single"]))
    print(_line(f"batches of {args.batch}", runs["batch"], " player-predictions/s"))
    print(_line("/health", runs["health"]))
    print(f"    CPU per prediction, single (median): {_cpu(runs['single'])}")
    print(f"    CPU per prediction, in batches (median): {_cpu(runs['batch'])}")
    print(f"    CPU per /health answer (median): {_cpu(runs['health'])}")
    if loaded is not None:
        print(
            f"  while ingesting {args.ingest_rate:,} events/s offered "
            f"({loaded.accepted_events / max(loaded.seconds, 1e-9):,.0f}/s answered 202, "
            f"{loaded.failed} failed):"
        )
        print(_line("single predictions", runs["single under ingest"]))
        print(
            _line(f"batches of {args.batch}", runs["batch under ingest"], " player-predictions/s")
        )
    single = runs["single"]
    print(
        f"  targets: single >= 8,000/s p99 <= 5 ms quiet "
        f"(best {max(r['rps'] for r in single):,.0f}/s, "
        f"p99 {min(r['p99'] for r in single):.2f} ms); >= 5,000/s p99 <= 10 ms under ingest; "
        f"app p99 <= 0.5 ms ({pct(app, 0.99):.3f}); batch >= 100,000/s "
        f"(best {max(r['per_s'] for r in runs['batch']):,.0f}); CPU <= 200 us per prediction"
    )


if __name__ == "__main__":
    main()
