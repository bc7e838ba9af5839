"""uvicorn vs granian for a one-process Litestar app: throughput, latency, CPU and stopping.

The same tiny Litestar app (``GET /health`` -> a small msgspec Struct; ``POST /v1/events``
-> a ~12 KB batch of 100 events decoded with msgspec, answering ``{"accepted": 100}``)
is served, one process and one event loop each, by:

  uvicorn        uvicorn.Server (http=httptools, access log off, log level warning) awaited
                 on a uvloop loop that we create, with our own SIGINT/SIGTERM handlers, as
                 app/server.py does.
  granian        granian.Granian(interface=asgi, workers=1, loop=uvloop, log off): the stock
                 way; a supervisor process plus ONE worker process that owns the loop.
  granian-embed  granian.server.embed.Server(interface=asgi, log off) awaited on a uvloop
                 loop that we create, with our own SIGINT/SIGTERM handlers (the only granian
                 mode where we keep the loop, which co-hosting Faust needs).

Every app runs a lifespan that starts a 10 ms ticker task on its loop (a stand-in for a
co-hosted stream processor): its lag under load is reported, and ``/_probe`` tells which
process/thread/loop served the request and whether that is the lifespan's loop.

For each server and route, wrk runs a 2 s warm-up and then the measured run (default 10 s,
64 connections). Reported: requests/s, latency p50/p99/p99.9 (wrk), server CPU (all
processes of the server's session, all threads) as % of one core and as CPU-us per
request, the ticker's lag p99, wrk's own CPU, "other cpu" (what the rest of the machine
burnt meanwhile: on a shared 2-core box anything above ~10% makes that run noisy), then
the medians over rounds and the ratios granian/uvicorn. Each server is stopped with SIGTERM
while a 1.5 s request is in flight: reported is whether that request completed, whether
the lifespan shutdown ran, the exit code and the time to exit.

How to run (from the project folder; granian must not go into .venv, so it gets its own):

    apt-get install -y wrk
    python3 -m venv /tmp/granian-venv
    /tmp/granian-venv/bin/pip install granian litestar msgspec uvloop
    .venv/bin/python bench/asgi_servers.py
    .venv/bin/python bench/asgi_servers.py --rounds 2 --pin --json /tmp/asgi.json

Options: --granian-python PATH (default $GRANIAN_PYTHON or /tmp/granian-venv/bin/python),
--uvicorn-python PATH (default: this interpreter), --servers uvicorn,granian,granian-embed,
--duration 10, --connections 64, --wrk-threads 1, --rounds 1 (servers interleaved per
round; the summary takes the median), --pin (server on CPU 0, wrk on CPU 1, so that
granian's Rust I/O thread shares the server's core instead of using the spare one),
--wait-idle SECONDS (before each measured run wait up to that long for the machine to go
idle), --json PATH (raw results). One round of three servers takes about 2.5 minutes.
Servers bind 127.0.0.1 only and are always stopped (process group killed) on exit.

Internal: ``python bench/asgi_servers.py --serve MODE --port N`` runs one server.
"""

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODES = ("uvicorn", "granian", "granian-embed")
N_EVENTS = 100
TICK_S = 0.010

# -- the app (imported only by the server processes) ------------------------------------

_STATE: dict[str, Any] = {"own_loop": None, "lifespan_loop": None}
_LAGS: deque[float] = deque(maxlen=100_000)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return f"{type(loop).__module__}.{type(loop).__qualname__}"


def _os_threads() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def build_app() -> Any:
    """The Litestar app; a factory so that the driver needs only the standard library."""
    import msgspec
    from litestar import Litestar, Request, get, post

    class Health(msgspec.Struct):
        status: str
        version: str

    class Event(msgspec.Struct):
        event_id: str
        player_id: str
        type: str
        ts: datetime
        props: dict[str, Any] | None = None

    class Batch(msgspec.Struct):
        events: list[Event]

    class Accepted(msgspec.Struct):
        accepted: int

    decoder = msgspec.json.Decoder(Batch)

    async def ticker() -> None:
        while True:  # uvloop's loop.time() has 1 ms resolution: use perf_counter
            start = time.perf_counter()
            await asyncio.sleep(TICK_S)
            _LAGS.append(time.perf_counter() - start - TICK_S)

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> Any:
        loop = asyncio.get_running_loop()
        _STATE["lifespan_loop"] = id(loop)
        _say(
            f"LIFESPAN-STARTUP pid={os.getpid()} thread={threading.current_thread().name}"
            f" loop={_loop_name(loop)} own_loop={id(loop) == _STATE['own_loop']}"
        )
        task = asyncio.create_task(ticker())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            _say(f"LIFESPAN-SHUTDOWN t={time.time():.3f} pid={os.getpid()}")

    @get("/health")
    async def health() -> Health:
        return Health(status="ok", version="0.0.0")

    @post("/v1/events", status_code=202)
    async def events(request: Request[Any, Any, Any]) -> Accepted:
        batch = decoder.decode(await request.body())
        return Accepted(accepted=len(batch.events))

    @get("/_probe")
    async def probe(reset: bool = False) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        lags = sorted(_LAGS)
        reply = {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "thread": threading.current_thread().name,
            "os_threads": _os_threads(),
            "loop": _loop_name(loop),
            "own_loop": id(loop) == _STATE["own_loop"],
            "lifespan_loop": id(loop) == _STATE["lifespan_loop"],
            "sigterm_handler": repr(signal.getsignal(signal.SIGTERM)),
            "ticks": len(lags),
            "lag_p50_ms": 1e3 * lags[len(lags) // 2] if lags else None,
            "lag_p99_ms": 1e3 * lags[int(len(lags) * 0.99)] if lags else None,
            "lag_max_ms": 1e3 * lags[-1] if lags else None,
        }
        if reset:
            _LAGS.clear()
        return reply

    @get("/_slow")
    async def slow(ms: int = 1500) -> dict[str, str]:
        try:
            await asyncio.sleep(ms / 1000)
        except asyncio.CancelledError:
            _say(f"SLOW-CANCELLED t={time.time():.3f}")
            raise
        _say(f"SLOW-DONE t={time.time():.3f}")
        return {"slept_ms": str(ms)}

    return Litestar(route_handlers=[health, events, probe, slow], lifespan=[lifespan])


# -- the servers (one per process; ``--serve MODE``) -------------------------------------


async def _serve_uvicorn(port: int) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:  # ours, on the loop (as app/server.py)
            yield

    _STATE["own_loop"] = id(asyncio.get_running_loop())
    config = uvicorn.Config(
        build_app(),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
    )
    server = Server(config)

    def stop() -> None:
        server.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    await server.serve()


async def _serve_granian_embed(port: int) -> None:
    from granian.constants import Interfaces
    from granian.server.embed import Server

    _STATE["own_loop"] = id(asyncio.get_running_loop())
    server = Server(
        build_app(), address="127.0.0.1", port=port, interface=Interfaces.ASGI, log_enabled=False
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.stop)
    await server.serve()


def _serve_granian(port: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        f"{Path(__file__).stem}:build_app",
        factory=True,
        working_dir=HERE,
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        log_enabled=False,
    ).serve()


def serve(mode: str, port: int) -> int:
    if mode == "granian":
        _serve_granian(port)
    else:
        import uvloop

        uvloop.run(_serve_uvicorn(port) if mode == "uvicorn" else _serve_granian_embed(port))
    _say(f"SERVER-RETURNED mode={mode} pid={os.getpid()}")
    return 0


# -- the driver (standard library only) --------------------------------------------------

_CHILDREN: list[subprocess.Popen[bytes]] = []

LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%.0f,"duration_us":%.0f,"p50_us":%.0f,"p90_us":%.0f,' ..
    '"p99_us":%.0f,"p999_us":%.0f,"max_us":%.0f,"mean_us":%.1f,"err_connect":%.0f,' ..
    '"err_read":%.0f,"err_write":%.0f,"err_status":%.0f,"err_timeout":%.0f}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean,
    e.connect, e.read, e.write,
    e.status, e.timeout))
end
"""


def _events_body() -> bytes:
    types = ("session_start", "match_end", "purchase", "level_up", "session_end")
    events = [
        {
            "event_id": f"e-{i:06d}",
            "player_id": f"p-{i % 17:04d}",
            "type": types[i % len(types)],
            "ts": f"2025-11-27T10:{i % 60:02d}:{(i * 7) % 60:02d}.{i * 37 % 1000:03d}Z",
            "props": {"score": 1000 + i * 13, "level": i % 40},
        }
        for i in range(N_EVENTS)
    ]
    return json.dumps({"events": events}, separators=(",", ":")).encode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _http(
    method: str, url: str, body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _session_cpu_s(sid: int) -> float:
    """User+system CPU of every live process in session ``sid`` (all their threads)."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
        if int(fields[3]) == sid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU time the whole machine spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _wait_idle(limit_s: float, threshold_pct: float = 15.0) -> float:
    """Wait (up to ``limit_s``) until the machine is idle for 2 s; return seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        busy0 = _machine_busy_s()
        time.sleep(2)
        if 100 * (_machine_busy_s() - busy0) / 2 < threshold_pct:
            break
    return time.monotonic() - started


def _kill_children() -> None:
    for proc in _CHILDREN:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


class Driver:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.body = _events_body()
        (workdir / "body.json").write_bytes(self.body)
        (workdir / "get.lua").write_text(LUA_DONE)
        (workdir / "post.lua").write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f'local f = io.open("{workdir / "body.json"}", "rb")\n'
            "wrk.body = f:read('*a')\nf:close()\n" + LUA_DONE
        )

    def python_for(self, mode: str) -> str:
        args = self.args
        return str(args.uvicorn_python if mode == "uvicorn" else args.granian_python)

    def start(self, mode: str, port: int, log: Path) -> subprocess.Popen[bytes]:
        cmd = [self.python_for(mode), str(Path(__file__).resolve()), "--serve", mode]
        cmd += ["--port", str(port)]
        if self.args.pin:
            cmd = ["taskset", "-c", "0", *cmd]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=HERE
            )
        _CHILDREN.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{mode} exited with {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(OSError):
                if _http("GET", f"{base}/health", timeout=1)[0] == 200:
                    return proc
            time.sleep(0.1)
        raise RuntimeError(f"{mode} did not answer /health in 30 s:\n{log.read_text()}")

    def wrk(self, url: str, script: str, seconds: int) -> dict[str, Any]:
        args = self.args
        cmd = ["wrk", f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{seconds}s"]
        cmd += ["--timeout", "5s", "-s", str(self.workdir / script), url]
        if args.pin:
            cmd = ["taskset", "-c", "1", *cmd]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        for line in out.stdout.splitlines():
            if line.startswith("WRKJSON "):
                result: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
                result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
                result["wrk_cpu_pct"] = 100 * wrk_cpu / (result["duration_us"] / 1e6)
                return result
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")

    def stop_check(self, proc: subprocess.Popen[bytes], base: str, log: Path) -> dict[str, Any]:
        """SIGTERM with a 1.5 s request in flight: does it finish, and how does the server end?"""
        slow: dict[str, Any] = {}

        def call_slow() -> None:
            started = time.monotonic()
            try:
                status, body = _http("GET", f"{base}/_slow?ms=1500", timeout=15)
                slow.update(status=status, body=body.decode()[:80])
            except Exception as exc:
                slow.update(status=None, error=f"{type(exc).__name__}: {exc}"[:120])
            slow["seconds"] = round(time.monotonic() - started, 2)

        thread = threading.Thread(target=call_slow)
        thread.start()
        time.sleep(0.5)
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(0.3)
        try:
            status, _ = _http("GET", f"{base}/health", timeout=2)
            new_conn = f"answered {status}"
        except Exception as exc:
            new_conn = f"refused ({type(exc).__name__})"
        try:
            code: int | None = proc.wait(20)
        except subprocess.TimeoutExpired:
            code = None
        exit_s = round(time.monotonic() - sent, 2) if code is not None else None
        thread.join(20)
        text = log.read_text(errors="replace")
        return {
            "inflight": slow,
            "new_request_after_sigterm": new_conn,
            "exit_code": code,
            "exit_seconds": exit_s,
            "lifespan_shutdown_ran": "LIFESPAN-SHUTDOWN" in text,
            "log_tail": text.strip().splitlines()[-6:],
        }

    def run_server(self, mode: str, round_no: int) -> dict[str, Any]:
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        log = self.workdir / f"{mode}-{round_no}.log"
        proc = self.start(mode, port, log)
        result: dict[str, Any] = {"mode": mode, "round": round_no, "routes": {}}
        try:
            checks = (
                (_http("GET", f"{base}/health"), 200, {"status": "ok", "version": "0.0.0"}),
                (_http("POST", f"{base}/v1/events", self.body), 202, {"accepted": N_EVENTS}),
            )
            for (status, reply), want_status, want in checks:
                if status != want_status or json.loads(reply) != want:
                    raise RuntimeError(f"{mode}: unexpected reply {status} {reply!r}")
            result["probe"] = json.loads(_http("GET", f"{base}/_probe")[1])
            for route, script in (("GET /health", "get.lua"), ("POST /v1/events", "post.lua")):
                url = base + route.split()[1]
                self.wrk(url, script, 2)  # warm-up
                waited = _wait_idle(self.args.wait_idle) if self.args.wait_idle else 0.0
                _http("GET", f"{base}/_probe?reset=true")
                cpu0, busy0, t0 = _session_cpu_s(proc.pid), _machine_busy_s(), time.monotonic()
                run = self.wrk(url, script, self.args.duration)
                cpu_s, wall = _session_cpu_s(proc.pid) - cpu0, time.monotonic() - t0
                busy = _machine_busy_s() - busy0
                run["server_cpu_pct"] = 100 * cpu_s / wall
                # what else ran meanwhile (other processes on this machine), % of one core
                run["other_cpu_pct"] = max(
                    0.0, 100 * busy / wall - run["server_cpu_pct"] - run["wrk_cpu_pct"]
                )
                run["cpu_us_per_req"] = 1e6 * cpu_s / max(run["requests"], 1)
                run["waited_idle_s"] = round(waited, 1)
                probe = json.loads(_http("GET", f"{base}/_probe")[1])
                run["lag_p99_ms"], run["lag_max_ms"] = probe["lag_p99_ms"], probe["lag_max_ms"]
                result["routes"][route] = run
                self.print_run(mode, route, run)
            result["stop"] = self.stop_check(proc, base, log)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        return result

    @staticmethod
    def print_run(mode: str, route: str, r: dict[str, Any]) -> None:
        errors = sum(v for k, v in r.items() if k.startswith("err_"))
        print(
            f"  {mode:<14} {route:<16} {r['rps']:>9.0f} req/s  p50 {r['p50_us'] / 1e3:6.2f} ms"
            f"  p99 {r['p99_us'] / 1e3:6.2f} ms  p99.9 {r['p999_us'] / 1e3:6.2f} ms"
            f"  cpu {r['server_cpu_pct']:5.1f}%"
            f"  {r['cpu_us_per_req']:6.1f} cpu-us/req  loop-lag p99 {r['lag_p99_ms']:5.2f} ms"
            f"  wrk cpu {r['wrk_cpu_pct']:3.0f}%  other cpu {r['other_cpu_pct']:3.0f}%"
            f"  errors {errors}",
            flush=True,
        )


def _summary(results: list[dict[str, Any]], modes: list[str]) -> None:
    keys = ["rps", "p50_us", "p99_us", "server_cpu_pct", "cpu_us_per_req", "lag_p99_ms"]
    keys.append("other_cpu_pct")
    med: dict[tuple[str, str], dict[str, float]] = {}
    for mode in modes:
        for route in ("GET /health", "POST /v1/events"):
            runs = [r["routes"][route] for r in results if r["mode"] == mode]
            med[mode, route] = {k: statistics.median(run[k] for run in runs) for k in keys}
    rounds = len(results) // len(modes)
    print(f"\nSummary (median of {rounds} round(s))")
    print(f"  {'server':<14} {'route':<16} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}", end="")
    print(f" {'cpu %':>6} {'cpu-us/req':>10} {'lag p99 ms':>10} {'other cpu %':>11}")
    for (mode, route), m in med.items():
        print(
            f"  {mode:<14} {route:<16} {m['rps']:>9.0f} {m['p50_us'] / 1e3:>8.2f}"
            f" {m['p99_us'] / 1e3:>8.2f} {m['server_cpu_pct']:>6.1f}"
            f" {m['cpu_us_per_req']:>10.1f} {m['lag_p99_ms']:>10.2f} {m['other_cpu_pct']:>11.0f}"
        )
    if "uvicorn" in modes:
        print("\nRatios granian/uvicorn (req/s >1 is better; latency and cpu-us/req <1 is better)")
        for mode in (m for m in modes if m != "uvicorn"):
            for route in ("GET /health", "POST /v1/events"):
                g, u = med[mode, route], med["uvicorn", route]
                print(
                    f"  {mode:<14} {route:<16} req/s x{g['rps'] / u['rps']:.2f}"
                    f"  p50 x{g['p50_us'] / u['p50_us']:.2f}  p99 x{g['p99_us'] / u['p99_us']:.2f}"
                    f"  cpu-us/req x{g['cpu_us_per_req'] / u['cpu_us_per_req']:.2f}"
                )
    print("\nProcess, loop and stop behaviour (last round)")
    for mode in modes:
        r = [x for x in results if x["mode"] == mode][-1]
        p, s = r["probe"], r["stop"]
        print(
            f"  {mode}: served by pid {p['pid']} (ppid {p['ppid']}) thread {p['thread']},"
            f" {p['os_threads']} OS threads, loop {p['loop']}, our loop: {p['own_loop']},"
            f" lifespan's loop: {p['lifespan_loop']}, SIGTERM handler {p['sigterm_handler']}"
        )
        print(
            f"    SIGTERM with a 1.5 s request in flight: request {s['inflight']};"
            f" new request 0.3 s later {s['new_request_after_sigterm']};"
            f" exit code {s['exit_code']} after {s['exit_seconds']} s;"
            f" lifespan shutdown ran: {s['lifespan_shutdown_ran']}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=8000, help=argparse.SUPPRESS)
    parser.add_argument(
        "--granian-python",
        default=os.environ.get("GRANIAN_PYTHON", "/tmp/granian-venv/bin/python"),
    )
    parser.add_argument("--uvicorn-python", default=sys.executable)
    parser.add_argument("--servers", default=",".join(MODES))
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--pin", action="store_true", help="server on CPU 0, wrk on CPU 1")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each measured run, wait up to this long for other load to stop",
    )
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.port)

    modes = [m.strip() for m in args.servers.split(",") if m.strip()]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown servers: {sorted(unknown)}")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install -y wrk)")
    for mode in modes:
        python = args.uvicorn_python if mode == "uvicorn" else args.granian_python
        if not Path(python).exists():
            parser.error(f"{mode}: no interpreter at {python}")

    def on_signal(signum: int, _frame: object) -> None:
        _kill_children()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="asgi-bench-") as tmp:
            driver = Driver(args, Path(tmp))
            print(
                f"body {len(driver.body)} bytes ({N_EVENTS} events); {args.connections}"
                f" connections, {args.duration:g} s per run, wrk threads {args.wrk_threads},"
                f" pinned {args.pin}, {os.cpu_count()} CPUs",
                flush=True,
            )
            for round_no in range(1, args.rounds + 1):
                order = modes if round_no % 2 else modes[::-1]
                print(f"round {round_no}: {', '.join(order)}", flush=True)
                for mode in order:
                    results.append(driver.run_server(mode, round_no))
    finally:
        _kill_children()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    _summary(results, modes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
