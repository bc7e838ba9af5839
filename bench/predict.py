"""Prediction benchmark: requests/s and latency over HTTP, server-side time, baselines.

    python bench/predict.py [--seconds 10] [--connections 32] [--rounds 3] [--players 1000]

Starts a real ``playerpulse serve`` with its defaults (embedded PostgreSQL and Apache
Kafka, one worker process per core, every prediction logged to Kafka and the lake) in
a temporary data dir (``tests/support.ServeProcess``, less its shorter lake flush),
folds one purchase for each of ``--players`` players, uploads the example decision tree
(3 features), and measures (about 2 minutes with the defaults):

1. baseline, here: onnxruntime ``session.run`` of the same model on one feature vector
   (one thread), in this process: the model alone;
2. server side, over ``--requests`` *sequential* requests (one at a time, the server
   otherwise idle): the ``Server-Timing`` headers of ``GET
   /v1/players/{id}/predictions/offers``. ``app`` is the timing middleware around all of
   the application (routing, API key authentication and the role guard, the profile
   read and its evaluation, the model run with the rollout lookup, building and
   JSON-encoding the reply) up to the start of the response; uvicorn's HTTP parsing and
   socket writes are not in it. The finer entries are the handler's: ``profile`` (read
   and evaluate), ``model`` (choose the version, run, convert outputs), ``handler``;
3. over HTTP: ``wrk`` (Debian package ``wrk``; concurrent httpx clients if it is
   missing) with ``--connections`` connections for ``--seconds`` per round, round-robin
   over the players. Only ``200`` answers count (a Lua ``response()`` counts them; every
   other status and every socket error is a failure, printed, never counted).
   Latency is wrk's, per request, client side (all answers: there should be no other),
   so it includes queueing in the server; ``app under load`` is the middleware's
   ``Server-Timing`` of each answer (waiting for the event loop included);
4. baseline over HTTP: ``GET /health`` (no authentication, no database, a constant
   reply) under the same wrk load: the ceiling of the HTTP stack itself here.

With 3 and 4, ``CPU per answer``: the CPU time (user + system, from ``/proc``) the
server's workers, its PostgreSQL and its Kafka, and wrk spent during the run, divided
by the 200 answers: what one answer costs the machine, much steadier than requests/s
on a shared machine (the prediction log's cost, in the workers and the broker, is in
it). ``--rounds`` alternates 3 and 4 that many times on the same server; the summary
gives the range over rounds. wrk, the workers, PostgreSQL and Kafka share the machine's
cores, as they would on a one-box deployment.
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
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
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

request = function()
  n = n + 1
  return wrk.format("GET", %(path)s, %(headers)s)
end

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


def over_http_wrk(
    server: ServeProcess,
    path: str,
    key: str | None,
    *,
    seconds: int,
    connections: int,
    threads: int,
    players: int,
) -> dict[str, Any]:
    """One wrk run on ``path`` (``{i}`` cycles over the players); only 200s counted."""
    lua_path = json.dumps(path).replace("{i}", f'" .. (n % {players}) .. "')
    headers = f'{{["Authorization"] = "Bearer {key}"}}' if key else "nil"
    script = _LUA % {"path": lua_path, "headers": headers}
    work = Path(tempfile.mkdtemp(prefix="pp-wrk-"))
    try:
        (work / "load.lua").write_text(script)
        out = subprocess.run(
            [
                *("wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s"),
                *("-s", str(work / "load.lua"), server.url),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = json.loads(next(ln for ln in out.splitlines() if ln.startswith("JSON "))[5:])
    failed = result["responses"] - result["ok"] + result["socket_errors"]
    return {
        "rps": result["ok"] / result["seconds"],
        "ok": result["ok"],
        "failed": failed,
        "statuses": result["statuses"],
        "socket_errors": result["socket_errors"],
        "p50": result["p50"],
        "p99": result["p99"],
        "app": result["app"],
        "tool": "wrk",
    }


def over_http_httpx(
    server: ServeProcess,
    path: str,
    key: str | None,
    *,
    seconds: int,
    connections: int,
    threads: int,
    players: int,
) -> dict[str, Any]:
    """The same with concurrent httpx clients (when wrk is missing); only 200s counted."""

    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        app: list[float] = []
        statuses: dict[str, int] = {}
        errors = 0
        deadline = time.monotonic() + seconds

        async def worker(client: httpx.AsyncClient, offset: int) -> None:
            nonlocal errors
            i = offset
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    response = await client.get(path.format(i=i % players))
                except httpx.HTTPError:
                    errors += 1
                    continue
                if response.status_code == 200:
                    latencies.append((time.perf_counter() - started) * 1000)
                    timing = server_timing(response.headers.get("server-timing", ""))
                    if "app" in timing:
                        app.append(timing["app"])
                else:
                    code = str(response.status_code)
                    statuses[code] = statuses.get(code, 0) + 1
                i += connections

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(base_url=server.url, headers=headers, limits=limits) as c:
            started = time.monotonic()
            await asyncio.gather(*(worker(c, n) for n in range(connections)))
            elapsed = time.monotonic() - started
        return {
            "rps": len(latencies) / elapsed,
            "ok": len(latencies),
            "failed": sum(statuses.values()) + errors,
            "statuses": statuses,
            "socket_errors": errors,
            "p50": pct(latencies, 0.5),
            "p99": pct(latencies, 0.99),
            "app": app,
            "tool": "httpx",
        }

    return asyncio.run(run())


def with_cpu(
    server: ServeProcess, load: Any, path: str, key: str | None, options: dict[str, int]
) -> dict[str, Any]:
    """One load run, with the CPU time each kind of process spent per 200 answer (us)."""
    before = tree_cpu(server)
    result: dict[str, Any] = load(server, path, key, **options)
    after = tree_cpu(server)
    ok = max(1, result["ok"])
    result["cpu_us"] = {kind: (after[kind] - before[kind]) / ok * 1e6 for kind in after}
    return result


def _cpu(runs: list[dict[str, Any]]) -> str:
    """Median CPU per answer over runs, by kind of process, and the total."""
    kinds = ("workers", "postgres", "kafka", "wrk")
    medians = {k: statistics.median(r["cpu_us"][k] for r in runs) for k in kinds}
    total = statistics.median(sum(r["cpu_us"].values()) for r in runs)
    parts = ", ".join(f"{k} {v:.0f}" for k, v in medians.items())
    return f"{parts}; all {total:.0f} us"


def _range(values: list[float], fmt: str) -> str:
    low, high = min(values), max(values)
    return (
        fmt.format(low)
        if fmt.format(low) == fmt.format(high)
        else f"{fmt.format(low)} to {fmt.format(high)}"
    )


def _failures(run: dict[str, Any]) -> str:
    if not run["failed"]:
        return "failures 0"
    return (
        f"FAILURES {run['failed']} (statuses {run['statuses']}, "
        f"socket errors {run['socket_errors']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--rounds", type=int, default=3, help="predict + /health wrk runs")
    parser.add_argument("--players", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=3000, help="sequential, server side")
    args = parser.parse_args()

    raw = raw_onnxruntime(20_000)
    load = over_http_wrk if wrk.available() else over_http_httpx
    options = {
        "seconds": args.seconds,
        "connections": args.connections,
        "threads": args.threads,
        "players": args.players,
    }
    work = Path(tempfile.mkdtemp(prefix="pp-bench-predict-"))
    server = ServeProcess(work, {"PLAYERPULSE_LOG_LEVEL": "warning"})
    server.env.pop("PLAYERPULSE_LAKE_FLUSH_S")  # the tests' 1 s: keep the default here
    server.start()
    predicts: list[dict[str, Any]] = []
    healths: list[dict[str, Any]] = []
    try:
        workers = len(server.workers())
        read = seed(server, args.players)
        server_side(server, read, args.players, 500)  # warm: sessions, pools, caches
        inside = server_side(server, read, args.players, args.requests)
        for n in range(args.rounds):
            predicts.append(with_cpu(server, load, PREDICT_PATH, read, options))
            healths.append(with_cpu(server, load, "/health", None, options))
            p, h = predicts[-1], healths[-1]
            print(
                f"round {n + 1}: predictions {p['rps']:,.0f}/s p50 {p['p50']:.2f} ms "
                f"p99 {p['p99']:.2f} ms ({_failures(p)}); /health {h['rps']:,.0f}/s "
                f"p50 {h['p50']:.2f} ms p99 {h['p99']:.2f} ms ({_failures(h)})",
                flush=True,
            )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    app = inside["app"]
    raw_p50 = pct(raw, 0.5)
    tool = predicts[0]["tool"]
    print(
        f"\nprediction benchmark: {os.cpu_count()} cores, serve with {workers} workers "
        f"(defaults), example decision tree (3 features), {args.players} players"
    )
    print(
        f"  baseline, raw onnxruntime session.run:  p50 {raw_p50 * 1000:.0f} us, "
        f"p99 {pct(raw, 0.99) * 1000:.0f} us, mean {statistics.fmean(raw) * 1000:.0f} us"
    )
    print(
        f"  server side, app (Server-Timing, {args.requests} sequential requests): "
        f"p50 {pct(app, 0.5):.3f} ms, p99 {pct(app, 0.99):.3f} ms, max {max(app):.3f} ms; "
        f"p50 {pct(app, 0.5) / raw_p50:.0f}x the raw run"
    )
    for name in ("handler", "profile", "model"):
        values = inside.get(name, [])
        print(
            f"    of which {name:8s} p50 {pct(values, 0.5):.3f} ms, p99 {pct(values, 0.99):.3f} ms"
        )
    rps = [p["rps"] for p in predicts]
    health_rps = [h["rps"] for h in healths]
    loaded_app = [v for p in predicts for v in p["app"]]
    print(
        f"  over HTTP ({tool}, {args.connections} connections, {args.rounds} x {args.seconds}s, "
        "200s only):"
    )
    print(
        f"    predictions  {_range(rps, '{:,.0f}')}/s, "
        f"p50 {_range([p['p50'] for p in predicts], '{:.2f}')} ms, "
        f"p99 {_range([p['p99'] for p in predicts], '{:.2f}')} ms, "
        f"failures {sum(p['failed'] for p in predicts)}"
    )
    print(
        f"      app under load (Server-Timing of each answer): p50 {pct(loaded_app, 0.5):.3f} ms, "
        f"p99 {pct(loaded_app, 0.99):.3f} ms"
    )
    print(
        f"    /health      {_range(health_rps, '{:,.0f}')}/s, "
        f"p50 {_range([h['p50'] for h in healths], '{:.2f}')} ms, "
        f"p99 {_range([h['p99'] for h in healths], '{:.2f}')} ms, "
        f"failures {sum(h['failed'] for h in healths)}"
    )
    print(f"    CPU per answer, predictions (median of rounds): {_cpu(predicts)}")
    print(f"    CPU per answer, /health     (median of rounds): {_cpu(healths)}")
    ratios = [p["rps"] / h["rps"] for p, h in zip(predicts, healths, strict=True)]
    print(f"    predictions / /health (per round): {_range(ratios, '{:.2f}')}")
    print(
        f"  targets: >= 5,000/s (best round {max(rps):,.0f}), HTTP p99 <= 10 ms "
        f"(best {min(p['p99'] for p in predicts):.2f}), server-side p99 <= 1.5 ms "
        f"({pct(app, 0.99):.3f})"
    )


if __name__ == "__main__":
    main()
