"""Shared pieces of the HTTP benchmarks: bodies, a rate-controlled client, serve, metrics.

Not run by itself. Used by bench/ingest.py, bench/sustained.py and bench/freshness.py.

* ``BodyTemplate``: a 100-event ``POST /v1/events`` body whose event ids are new on every
  request (and whose players rotate over ``players``), as bytes in Python or filled in by
  wrk's Lua per request (so the fold really applies every event: nothing is a duplicate).
* ``paced_load``: an open-loop, rate-controlled load generator (raw HTTP/1.1 keep-alive on
  uvloop, a few µs per request) in one or more processes; counts 202 answers only.
* ``start_serve``: a real ``playerpulse serve`` with its defaults (durable embedded Kafka,
  workers = cores) in a data dir, and keys for it.
* ``scrape`` / ``histogram_quantile``: /metrics read back, percentiles from bucket deltas.
* ``LagMonitor``: the consumer group's lag (high watermark - committed offset) every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import ServeProcess  # noqa: E402

GAME = "bench"
TYPES = ("purchase", "session_start", "level_complete")
ID_MARK = "~"  # replaced by a token unique to the request
GROUP_MARK = "`"  # replaced by the request's player group


# -- bodies -----------------------------------------------------------------------------------


class BodyTemplate:
    """A batch body with two placeholders: the request's unique token and player group.

    Event ``i`` of a request is ``{token}-{i}`` for player ``p{i % per_request}-{group}``:
    ``per_request`` distinct players per request (100 of 100 by default: every event of a
    request is another player's, the fold's worst case; 1: one device's batch), and with
    ``players // per_request`` groups in rotation, ``players`` players in all.
    """

    def __init__(self, batch: int, per_request: int | None = None, players: int = 100_000) -> None:
        self.batch = batch
        self.per_request = min(batch, per_request or batch)
        self.groups = max(1, players // self.per_request)
        now = datetime.now(UTC).isoformat()
        events = [
            {
                "event_id": f"{ID_MARK}-{i}",
                "player_id": f"p{i % self.per_request}-{GROUP_MARK}",
                "type": TYPES[i % 3],
                "ts": now,
                "props": {"amount": i % 100, "level": i % 40},
            }
            for i in range(batch)
        ]
        self.text = json.dumps({"events": events}, separators=(",", ":"))
        self.parts = re.split(f"([{ID_MARK}{GROUP_MARK}])", self.text)

    @property
    def players(self) -> int:
        return self.per_request * self.groups

    def body(self, token: str, group: int) -> bytes:
        """The body for one request."""
        fill = {ID_MARK: token, GROUP_MARK: str(group)}
        return "".join(fill.get(p, p) for p in self.parts).encode()

    def lua(self, path: Path, *, repeat: bool = False) -> str:
        """wrk Lua: a fresh body per request; counts 202s whose body says all accepted.

        Writes the template to ``path`` (read by each wrk thread's ``init``). Defines
        ``request``, ``response`` and ``done``: the last prints one ``JSON {...}`` line.
        ``repeat``: the same body (token "fixed", group 0) for every request instead.
        """
        path.write_text(self.text)
        expected = f'"accepted":{self.batch},'
        return f"""
local threads = {{}}
local nthreads = 0
function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
  table.insert(threads, thread)
end

local parts = {{}}
local kinds = {{}}
local buf = {{}}
local counter = 0
ok = 0
wrong_body = 0
other = 0
statuses = ""
local seen = {{}}

function init(args)
  local f = io.open("{path}", "rb")
  local text = f:read("*all")
  f:close()
  local start = 1
  while true do
    local i = string.find(text, "[~`]", start)
    if not i then
      table.insert(parts, string.sub(text, start))
      table.insert(kinds, 0)
      break
    end
    table.insert(parts, string.sub(text, start, i - 1))
    table.insert(kinds, 0)
    table.insert(parts, "")
    table.insert(kinds, string.sub(text, i, i) == "~" and 1 or 2)
    start = i + 1
  end
end

local repeat_body = {"true" if repeat else "false"}

function request()
  counter = counter + 1
  local token = "w" .. tid .. "-" .. counter .. "-{os.getpid()}"
  local group = tostring(counter % {self.groups})
  if repeat_body then
    token = "fixed"
    group = "0"
  end
  for i = 1, #parts do
    local k = kinds[i]
    if k == 0 then buf[i] = parts[i]
    elseif k == 1 then buf[i] = token
    else buf[i] = group end
  end
  return wrk.format(nil, nil, nil, table.concat(buf, "", 1, #parts))
end

function response(status, headers, body)
  if status == 202 then
    if string.find(body, '{expected}', 1, true) then
      ok = ok + 1
    else
      wrong_body = wrong_body + 1
    end
  else
    other = other + 1
    seen[status] = (seen[status] or 0) + 1
    local s = ""
    for code, n in pairs(seen) do s = s .. code .. ":" .. n .. " " end
    statuses = s
  end
end

function done(summary, latency, requests)
  local t_ok, t_wrong, t_other, t_statuses = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    t_ok = t_ok + t:get("ok")
    t_wrong = t_wrong + t:get("wrong_body")
    t_other = t_other + t:get("other")
    t_statuses = t_statuses .. t:get("statuses")
  end
  io.write(string.format(
    'JSON {{"requests": %d, "seconds": %f, "socket_errors": %d, "non2xx": %d, ' ..
    '"ok": %d, "wrong_body": %d, "other": %d, "statuses": "%s", ' ..
    '"p50": %f, "p90": %f, "p99": %f, "max": %f}}\\n',
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, t_ok, t_wrong, t_other, t_statuses,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
"""


# -- serve ------------------------------------------------------------------------------------


@dataclass
class Serve:
    """A running ``playerpulse serve`` and what the benchmarks need of it."""

    process: ServeProcess
    ingest_key: str
    read_key: str
    data_dir: Path

    @property
    def url(self) -> str:
        return self.process.url

    def brokers(self) -> str:
        """The embedded broker's address (data_dir/kafka/ports.json)."""
        ports = json.loads((self.data_dir / "kafka" / "ports.json").read_text())
        return f"127.0.0.1:{ports['broker']}"

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.process.workers()]

    def stop(self) -> None:
        self.process.stop()


def start_serve(work: Path, workers: int | None = None, env: dict[str, str] | None = None) -> Serve:
    """``playerpulse serve`` with its defaults (only the log level lowered) in ``work``.

    tests.support.ServeProcess sets a 1 s lake flush for the tests; the default is put back.
    """
    from app.settings import Settings

    extra = {
        "PLAYERPULSE_LOG_LEVEL": "warning",
        "PLAYERPULSE_LAKE_FLUSH_S": str(Settings().lake_flush_s),
        **(env or {}),
    }
    if workers:
        extra["PLAYERPULSE_WORKERS"] = str(workers)
    process = ServeProcess(work, extra).start(timeout=120)
    return Serve(
        process,
        ingest_key=process.key(GAME, "ingest"),
        read_key=process.key(GAME, "read"),
        data_dir=work / "var",
    )


# -- a raw HTTP/1.1 client --------------------------------------------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 connection: a request, then its whole response.

    uvicorn closes a connection idle for 5 s: one idle for longer is replaced first.
    """

    IDLE_S = 4.0

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = 0.0

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        conn = cls(host, port)
        await conn._connect()
        return conn

    async def _connect(self) -> None:
        self.close()
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, limit=1 << 20
        )
        self.used = time.monotonic()

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send a complete request; return (status, body). Needs Content-Length answers.

        Raises on a broken connection; the next request reconnects.
        """
        if self.writer is None or time.monotonic() - self.used > self.IDLE_S:
            await self._connect()
        assert self.reader is not None
        assert self.writer is not None
        try:
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if match is None:
                raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
            body = await self.reader.readexactly(int(match.group(1)))
        except BaseException:
            self.close()
            raise
        self.used = time.monotonic()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def request_bytes(method: str, host: str, path: str, key: str, body: bytes = b"") -> bytes:
    """A complete HTTP/1.1 request."""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def split_url(url: str) -> tuple[str, int]:
    hostport = url.split("://", 1)[1].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    return host, int(port)


# -- rate-controlled load ---------------------------------------------------------------------


@dataclass
class PacedResult:
    """What a paced load did; ``accepted_events`` counts 202 answers only."""

    offered_requests: int = 0
    seconds: float = 0.0
    ok: int = 0
    accepted_events: int = 0
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    late: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def merge(self, other: PacedResult) -> None:
        self.offered_requests += other.offered_requests
        self.seconds = max(self.seconds, other.seconds)
        self.ok += other.ok
        self.accepted_events += other.accepted_events
        self.failed += other.failed
        for code, n in other.statuses.items():
            self.statuses[code] = self.statuses.get(code, 0) + n
        self.late += other.late
        self.latencies_ms += other.latencies_ms


async def _paced(
    url: str,
    key: str,
    rate_events: float,
    seconds: float,
    batch: int,
    connections: int,
    index: int,
    start_at: float,
    players_per_request: int | None = None,
) -> PacedResult:
    """Open loop: request k is due at start_at + k / rate; each waits for a free connection."""
    host, port = split_url(url)
    template = BodyTemplate(batch, players_per_request)
    interval = 1.0 / (rate_events / batch)
    total = int(seconds / interval)
    free: asyncio.Queue[HttpConnection] = asyncio.Queue()
    for _ in range(connections):
        free.put_nowait(HttpConnection(host, port))  # connects on first use
    result = PacedResult(offered_requests=total)
    expected = f'"accepted":{batch},'.encode()
    head = (
        f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()
    tasks: set[asyncio.Task[None]] = set()
    pid = os.getpid()

    async def one(conn: HttpConnection, k: int, due: float) -> None:
        body = template.body(f"r{pid}-{index}-{k}", k % template.groups)
        raw = head + str(len(body)).encode() + b"\r\n\r\n" + body
        try:
            status, reply = await conn.request(raw)
        except Exception:  # counted as failed (status -1); the connection reconnects
            result.failed += 1
            result.statuses[-1] = result.statuses.get(-1, 0) + 1
            return
        finally:
            free.put_nowait(conn)
        result.latencies_ms.append((time.time() - due) * 1000)
        if status == 202 and expected in reply:
            result.ok += 1
            result.accepted_events += batch
        else:
            result.failed += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1

    delay = start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    for k in range(total):
        due = start_at + k * interval
        wait = due - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        conn = await free.get()
        if time.time() - due > interval:
            result.late += 1
        task = asyncio.create_task(one(conn, k, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    result.seconds = time.time() - start_at
    while not free.empty():
        free.get_nowait().close()
    return result


def _paced_process(args: tuple[Any, ...]) -> PacedResult:
    import uvloop

    return uvloop.run(_paced(*args))


def paced_load(
    url: str,
    key: str,
    rate_events: float,
    seconds: float,
    *,
    batch: int = 100,
    connections: int = 32,
    processes: int = 1,
    start_at: float | None = None,
    players_per_request: int | None = None,
) -> PacedResult:
    """Offer ``rate_events`` events/s in ``batch``-event requests for ``seconds``.

    Latency is measured from when each request was due (so a late send counts).
    ``processes`` share the rate; call from a thread to run something beside it.
    """
    start = start_at or time.time() + 1.0
    jobs = [
        (
            url,
            key,
            rate_events / processes,
            seconds,
            batch,
            connections,
            i,
            start,
            players_per_request,
        )
        for i in range(processes)
    ]
    total = PacedResult()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        for part in pool.map(_paced_process, jobs):
            total.merge(part)
    total.latencies_ms.sort()
    return total


# -- metrics ----------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN|[+-]Inf)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text into {name{labels}: value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


def buckets(metrics: dict[str, float], name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of a histogram, by bound."""
    found = []
    prefix = name + "_bucket{"
    for key, value in metrics.items():
        if key.startswith(prefix):
            le = re.search(r'le="([^"]+)"', key)
            if le:
                found.append((float(le.group(1)), value))
    return sorted(found)


def histogram_quantile(
    before: list[tuple[float, float]], after: list[tuple[float, float]], q: float
) -> tuple[float, float, int]:
    """(lower, upper) bounds of the bucket holding quantile ``q`` of what was observed
    between two scrapes, and how many observations that is."""
    start = dict(before)
    deltas = [(le, count - start.get(le, 0.0)) for le, count in after]
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return (float("nan"), float("nan"), 0)
    rank = q * total
    lower = 0.0
    for le, cumulative in deltas:
        if cumulative >= rank:
            return (lower, le, int(total))
        lower = le
    return (lower, float("inf"), int(total))


def scrape(url: str) -> dict[str, float]:
    import httpx

    return parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text)


# -- consumer-group lag -----------------------------------------------------------------------


class LagMonitor:
    """Samples, every ``interval`` s: sum over partitions of high watermark - committed."""

    def __init__(
        self, brokers: str, topic: str = "events", group: str = "playerpulse", interval: float = 1.0
    ) -> None:
        self.brokers = brokers
        self.topic = topic
        self.group = group
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-monitor", daemon=True)

    def start(self) -> LagMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def lag(self) -> int:
        return self._lag(self._consumer())

    def _consumer(self) -> Any:
        import confluent_kafka

        if not hasattr(self, "_client"):
            self._client = confluent_kafka.Consumer(
                {
                    "bootstrap.servers": self.brokers,
                    "group.id": self.group,
                    "enable.auto.commit": False,
                    "log_level": 2,
                }
            )
            meta = self._client.list_topics(self.topic, timeout=10)
            self._partitions = sorted(meta.topics[self.topic].partitions)
        return self._client

    def _lag(self, consumer: Any) -> int:
        import confluent_kafka

        tps = [confluent_kafka.TopicPartition(self.topic, p) for p in self._partitions]
        committed = consumer.committed(tps, timeout=10)
        total = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(self.topic, tp.partition), timeout=10, cached=False
            )
            position = tp.offset if tp.offset >= 0 else low
            total += max(0, high - position)
        return total

    def _run(self) -> None:
        consumer = self._consumer()
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.time(), self._lag(consumer)))
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def close(self) -> None:
        if hasattr(self, "_client"):
            self._client.close()


def pct(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted samples (nearest rank)."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- where the CPU went -----------------------------------------------------------------------


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / hz, total / hz


class CpuShare:
    """CPU used during a window by the service's parts, the load generator, and the rest.

    ``start()`` and ``stop()`` read /proc; shares are in cores (2.0 = both cores busy).
    The load generator counts if it is a child of this process that ended before
    ``stop()`` (wrk, the paced load's pool), or among ``load_pids``.
    """

    def __init__(
        self,
        serve: Serve | None,
        load_pids: Callable[[], list[int]] | None = None,
        own: str | None = None,
    ):
        self.serve = serve
        self.load_pids = load_pids or (lambda: [])
        self.own = own
        """The work measured runs in this process (bench/fold.py's fold, a baseline
        producer): this process counts under this name, and its child processes as the
        broker (java) and PostgreSQL."""
        self.shares: dict[str, float] = {}

    def _snapshot(self) -> tuple[float, dict[str, float], float]:
        import psutil

        groups: dict[str, float] = {}
        members: list[tuple[str, psutil.Process]] = []
        if self.serve is not None and self.serve.process.proc is not None:
            members.append(("supervisor", psutil.Process(self.serve.process.proc.pid)))
            for child in self.serve.process.descendants():
                try:
                    cmd = " ".join(child.cmdline())
                except psutil.Error:
                    continue
                if "app.worker" in cmd:
                    members.append(("workers", child))
                elif "java" in cmd:
                    members.append(("kafka", child))
                elif "postgres" in cmd or "postgres" in child.name():
                    members.append(("postgres", child))
                else:
                    members.append(("supervisor", child))
        if self.own:
            for child in psutil.Process().children(recursive=True):
                try:
                    cmd = " ".join(child.cmdline())
                except psutil.Error:
                    continue
                if "java" in cmd:
                    members.append(("kafka", child))
                elif "postgres" in cmd or "postgres" in child.name():
                    members.append(("postgres", child))
        for pid in self.load_pids():
            with contextlib.suppress(psutil.Error):
                members.append(("load", psutil.Process(pid)))
                members += [("load", c) for c in psutil.Process(pid).children(recursive=True)]
        for name, proc in members:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                groups[name] = groups.get(name, 0.0) + times.user + times.system
        # This process, and its children once reaped (wrk, the load generator's processes).
        own = os.times()
        groups[self.own or "bench"] = own.user + own.system
        groups["load"] = groups.get("load", 0.0) + own.children_user + own.children_system
        busy, _total = _machine_busy()
        return time.monotonic(), groups, busy

    def start(self) -> CpuShare:
        self._start = self._snapshot()
        return self

    def stop(self) -> dict[str, float]:
        end = self._snapshot()
        t0, g0, b0 = self._start
        t1, g1, b1 = end
        seconds = t1 - t0
        self.seconds = seconds
        shares = {k: (v - g0.get(k, 0.0)) / seconds for k, v in g1.items()}
        known = sum(shares.values())
        shares["machine"] = (b1 - b0) / seconds
        shares["others"] = max(0.0, shares["machine"] - known)
        self.shares = shares
        return shares

    SERVICE = ("workers", "kafka", "postgres", "supervisor")
    """The service's own processes (what a deployment pays for)."""

    def _parts(self) -> list[str]:
        return [*([self.own] if self.own else []), *self.SERVICE]

    def service_cores(self) -> float:
        """Cores the service's processes (or this one and its children) used together."""
        return sum(self.shares.get(k, 0.0) for k in self._parts())

    def per_event(self, events: int, unit: str = "event") -> str:
        """CPU microseconds per ``unit`` spent by each of the service's processes."""
        if not events:
            return f"CPU per {unit}: no {unit}s"
        seconds = getattr(self, "seconds", 0.0)
        parts = [
            f"{k} {self.shares[k] * seconds / events * 1e6:.1f}"
            for k in self._parts()
            if k in self.shares
        ]
        total = self.service_cores() * seconds / events * 1e6
        return f"CPU us per {unit}: " + ", ".join(parts) + f"; total {total:.1f}"

    def line(self) -> str:
        order = ["workers", "kafka", "postgres", "supervisor", "load", "bench", "others"]
        parts = [f"{k} {self.shares[k]:.2f}" for k in order if k in self.shares]
        return (
            f"CPU (cores of {os.cpu_count()}): "
            + ", ".join(parts)
            + (f"; machine busy {self.shares.get('machine', 0):.2f}")
        )
