"""Cold start: ``playerpulse serve`` from exec to ready, and what the time goes to.

    python bench/cold_start.py [--starts 3] [--imports 5] [--no-make]

Run from the repository with its venv installed (``make install``); it never installs
anything. The broker's jars and class archive are fetched once per machine (into
``~/.cache/playerpulse``); that is done here first, untimed, if it is not already.

What each figure includes (times are wall clock, on this machine, as it is):

* ``import``: ``.venv/bin/python -c 'import app.server'`` (what the supervisor imports
  before anything starts), ``-c 'import app.worker, app.api.app'`` (what each worker
  imports before it serves), and ``-c pass`` (the interpreter alone); best and median
  of ``--imports`` runs, each a new process.
* ``embedded PostgreSQL alone``: ``EmbeddedPostgres(dir).start()`` in this process on a
  fresh dir (``initdb`` included), then again on that dir: until it accepts
  connections. ``embedded Kafka alone``: ``EmbeddedKafka(dir).start()`` the same way
  (storage format included the first time): until the broker serves clients. Stops are
  not counted.
* ``serve``: ``.venv/bin/playerpulse serve --port P`` (defaults: one worker per core,
  embedded PostgreSQL and Apache Kafka) on a fresh data dir (start 1), then ``--starts``
  - 1 more times on the same data dir, which is what ``make run`` does the second time.
  ``ready``: exec until the first ``GET /health`` answers 200 (polled every 20 ms, so
  up to 20 ms late). Phases come from the server's JSON log lines, stamped here as they
  arrive. ``fold ready``: an event is posted the moment /health answers (with an admin
  key, made on start 1 through the embedded database once it answers, and kept by
  the data dir), then ``GET /v1/players/ID`` is polled every 10 ms until it shows;
  given from exec and from the post. ``stop``: SIGTERM until the supervisor exits.
* ``make run overhead``: ``make -o .venv/.installed run BIN=DIR``, DIR holding a
  ``playerpulse`` that exits at once: make reading the Makefile, checking
  ``.venv/.installed`` and spawning the recipe, which is what ``make run`` adds in front
  of ``serve`` once installed (``-o`` keeps make from reinstalling if the sentinel is
  older than pyproject.toml; the script says so when it is, since ``make run`` itself
  would then run ``pip install -e .`` first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.db.engine import create_engine  # noqa: E402
from app.domain.access import Role  # noqa: E402
from app.embedded.kafka import EmbeddedKafka, ensure_kafka_runtime  # noqa: E402
from app.embedded.postgres import EmbeddedPostgres  # noqa: E402
from app.embedded.process import free_port  # noqa: E402
from app.keys import KeyService  # noqa: E402
from app.log import configure_logging  # noqa: E402

BIN = ROOT / ".venv" / "bin"
PYTHON = str(BIN / "python")
GAME = "coldstart"

# (label, log event, which occurrence): the phases of a start, in order.
MARKS = [
    ("postgres ready", "embedded postgres ready", 1),
    ("kafka ready", "embedded kafka ready", 1),
    ("workers spawned", "child started:worker-0", 1),
    ("worker imported", "Started server process*", 1),
    ("first worker ready", "Application startup complete.", 1),
]


@dataclass
class Start:
    """One start of serve: seconds from exec to each mark."""

    ready: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)
    all_workers: float | None = None
    posted: float | None = None
    folded: float | None = None
    key_made: float | None = None
    stop: float = 0.0


def run_times(args: list[str], runs: int) -> list[float]:
    """Wall seconds of ``runs`` fresh processes of ``args``."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(args, check=True, cwd=ROOT, capture_output=True)
        times.append(time.perf_counter() - started)
    return times


def embedded_alone(work: Path) -> dict[str, float]:
    """Start times of the embedded PostgreSQL and Kafka, each alone: fresh, then again."""
    out: dict[str, float] = {}
    for name, make in (("postgres", EmbeddedPostgres), ("kafka", EmbeddedKafka)):
        data = work / f"alone-{name}"
        for attempt in ("fresh", "again"):
            service = make(data)
            started = time.perf_counter()
            service.start()
            out[f"{name} {attempt}"] = time.perf_counter() - started
            service.stop()
    return out


def make_key(data_dir: Path) -> str:
    """An admin key for GAME, made through the embedded database of ``data_dir``."""
    url = EmbeddedPostgres(data_dir).running_url()
    assert url is not None, "the embedded PostgreSQL is not running"

    async def create() -> str:
        engine = create_engine(url)
        try:
            return await KeyService(engine, cache_s=0).create(GAME, Role.ADMIN)
        finally:
            await engine.dispose()

    return asyncio.run(create())


def serve_once(data_dir: Path, key: str | None, n: int) -> tuple[Start, str]:
    """Start serve on ``data_dir``, wait for /health, fold one event, stop."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAYERPULSE_")}
    env.update({"PLAYERPULSE_DATA_DIR": str(data_dir), "PLAYERPULSE_LOG_FORMAT": "json"})
    lines: list[tuple[float, str]] = []
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(BIN / "playerpulse"), "serve", "--port", str(port)],
        cwd=data_dir.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.perf_counter() - started, line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    result = Start()
    try:
        with httpx.Client(base_url=url, timeout=2) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"serve exited with {proc.returncode}:\n{_tail(lines)}")
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() - started > 120:
                    raise RuntimeError(f"serve was not ready in 120 s:\n{_tail(lines)}")
                time.sleep(0.02)
            result.ready = time.perf_counter() - started
            if key is None:
                key = make_key(data_dir)
                result.key_made = time.perf_counter() - started
            player = f"cold-{n}-{time.time_ns()}"
            headers = {"Authorization": f"Bearer {key}"}
            posted = {
                "event_id": player,
                "player_id": player,
                "type": "purchase",
                "ts": datetime.now(UTC).isoformat(),
                "props": {"amount": 1},
            }
            client.post("/v1/events", json={"events": [posted]}, headers=headers).raise_for_status()
            result.posted = time.perf_counter() - started
            while client.get(f"/v1/players/{player}", headers=headers).status_code != 200:
                if time.perf_counter() - started > 180:
                    raise RuntimeError("the event was not folded in 180 s")
                time.sleep(0.01)
            result.folded = time.perf_counter() - started
            # Every worker ready too (the last "Application startup complete").
            deadline = time.monotonic() + 60
            while len(_occurrences(lines, "Application startup complete.")) < 2:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
    finally:
        stopping = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        result.stop = time.perf_counter() - stopping
        reader.join(5)
    for label, event, nth in MARKS:
        found = _occurrences(lines, event)
        if len(found) >= nth:
            result.marks[label] = found[nth - 1]
    complete = _occurrences(lines, "Application startup complete.")
    result.all_workers = complete[-1] if complete else None
    return result, key


def _tail(lines: list[tuple[float, str]], count: int = 30) -> str:
    return "".join(f"{at:7.2f} {line}" for at, line in lines[-count:])


def _occurrences(lines: list[tuple[float, str]], event: str) -> list[float]:
    """When each JSON log line of ``event`` arrived (``child started:NAME`` for a child,
    ``PREFIX*`` for any event starting so)."""
    name, _, child = event.partition(":")
    prefix = name.endswith("*")
    found = []
    for at, line in list(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        logged = str(record.get("event", ""))
        if (logged.startswith(name[:-1]) if prefix else logged == name) and (
            not child or record.get("child") == child
        ):
            found.append(at)
    return found


def make_overhead(runs: int) -> tuple[list[float], bool]:
    """Seconds of ``make run`` with a ``playerpulse`` that exits at once; and whether a
    real ``make run`` would reinstall first (sentinel older than pyproject.toml)."""
    stub = Path(tempfile.mkdtemp(prefix="pp-make-"))
    try:
        (stub / "playerpulse").write_text("#!/bin/sh\nexit 0\n")
        (stub / "playerpulse").chmod(0o755)
        args = ["make", "--no-print-directory", "-o", ".venv/.installed", "run", f"BIN={stub}"]
        times = run_times(args, runs)
    finally:
        shutil.rmtree(stub, ignore_errors=True)
    stale = subprocess.run(
        ["make", "-q", ".venv/.installed"], cwd=ROOT, capture_output=True
    ).returncode
    return times, stale != 0


def _spread(values: list[float]) -> str:
    if max(values) < 0.1:
        return f"best {min(values) * 1000:.1f} ms, median {statistics.median(values) * 1000:.1f} ms"
    return f"best {min(values):.2f} s, median {statistics.median(values):.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--starts", type=int, default=3, help="serve starts on one data dir")
    parser.add_argument("--imports", type=int, default=5, help="runs of each import baseline")
    parser.add_argument("--no-make", action="store_true", help="skip the make overhead")
    args = parser.parse_args()

    configure_logging("console", "warning")  # the embedded services started here: quiet
    ensure_kafka_runtime()  # jars and class archive: once per machine, untimed
    work = Path(tempfile.mkdtemp(prefix="pp-bench-cold-"))
    try:
        imports = {
            "python -c pass": run_times([PYTHON, "-c", "pass"], args.imports),
            "import app.server": run_times([PYTHON, "-c", "import app.server"], args.imports),
            "import app.worker, app.api.app": run_times(
                [PYTHON, "-c", "import app.worker, app.api.app"], args.imports
            ),
        }
        alone = embedded_alone(work)
        make_times, stale = ([], False) if args.no_make else make_overhead(args.imports)
        data_dir = work / "var"
        starts: list[Start] = []
        key: str | None = None
        for n in range(args.starts):
            start, key = serve_once(data_dir, key, n)
            starts.append(start)
            print(
                f"start {n + 1}: /health 200 after {start.ready:.2f} s, fold ready "
                f"{start.folded or 0:.2f} s, stop {start.stop:.2f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\ncold start ({os.cpu_count()} cores; serve with defaults)")
    for name, times in imports.items():
        print(f"  {name:32s} {_spread(times)}")
    print(
        f"  embedded PostgreSQL alone        fresh {alone['postgres fresh']:.2f} s "
        f"(initdb included), again {alone['postgres again']:.2f} s"
    )
    print(
        f"  embedded Kafka alone             fresh {alone['kafka fresh']:.2f} s "
        f"(storage format included), again {alone['kafka again']:.2f} s"
    )
    if make_times:
        print(f"  make run overhead (installed)    {_spread(make_times)}")
        if stale:
            print(
                "    note: .venv/.installed is older than pyproject.toml here: `make run` "
                "would first run `pip install -e .` (not timed)"
            )
    header = "  serve, seconds from exec:        " + "".join(
        f"{'start ' + str(n + 1) + (' (fresh)' if n == 0 else ''):>18s}" for n in range(len(starts))
    )
    print(header)
    rows: list[tuple[str, list[float | None]]] = [
        (label, [s.marks.get(label) for s in starts]) for label, _, _ in MARKS
    ]
    rows += [
        ("/health 200 (ready)", [s.ready for s in starts]),
        ("every worker ready", [s.all_workers for s in starts]),
        ("admin key made (start 1)", [s.key_made for s in starts]),
        ("event posted", [s.posted for s in starts]),
        ("event folded (fold ready)", [s.folded for s in starts]),
    ]
    for label, values in rows:
        cells = "".join(f"{v:18.2f}" if v is not None else f"{'-':>18s}" for v in values)
        print(f"    {label:30s}{cells}")
    lags = [(s.folded or 0) - (s.posted or 0) for s in starts]
    print("    " + f"{'fold lag after the post':30s}" + "".join(f"{v:18.2f}" for v in lags))
    print("    " + f"{'stop (SIGTERM to exit)':30s}" + "".join(f"{s.stop:18.2f}" for s in starts))
    print(
        "  phases, seconds:"
        + " " * 17
        + "".join(f"{'start ' + str(n + 1):>18s}" for n in range(len(starts)))
    )
    phases = [
        ("CLI import + PostgreSQL", None, "postgres ready"),
        ("Kafka", "postgres ready", "kafka ready"),
        ("migrate + topics", "kafka ready", "workers spawned"),
        ("worker imports", "workers spawned", "worker imported"),
        ("worker startup (app, Faust)", "worker imported", "first worker ready"),
    ]
    for label, since, until in phases:
        cells = ""
        for start in starts:
            begin = 0.0 if since is None else start.marks.get(since)
            end = start.marks.get(until)
            if begin is None or end is None:
                cells += f"{'-':>18s}"
            else:
                cells += f"{end - begin:18.2f}"
        print(f"    {label:30s}{cells}")
    again = [s.ready for s in starts[1:]]
    if again:
        make_best = min(make_times) if make_times else 0.0
        print(
            f"  target: `make run` to ready, second start <= 10 s: serve "
            f"{min(again):.2f} to {max(again):.2f} s + make {make_best:.2f} s"
        )


if __name__ == "__main__":
    main()
