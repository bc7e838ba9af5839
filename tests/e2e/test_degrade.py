"""Degrade, don't die: a full disk, a killed PostgreSQL and a killed broker under ingest.

One `serve` (embedded PostgreSQL and Apache Kafka, one worker) runs for the module with its
data directory on a small tmpfs mounted here. Each test runs a steady load and a fault;
every answer must be 202, 503 or 507 (never a 500, never a refused connection); every
batch answered 202 must be folded exactly once (one player per batch: that player's
``events_applied`` is the batch's size), and a batch answered 507 must leave no trace.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.onnx_models import MANIFEST, sklearn_regressor
from tests.support import ServeProcess, unique, wait_for

pytestmark = pytest.mark.e2e

MIN_FREE_MB = 60
"""The watermark (PLAYERPULSE_DISK_MIN_FREE) on the test file system."""
FS_MB = 400
PRODUCE_TIMEOUT_S = 3
DB_TIMEOUT_S = 2
BATCH = 10
ALLOWED = {202, 503, 507}


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tmpfs of FS_MB mounted for the module (needs root, as in CI), unmounted after."""
    where = tmp_path_factory.mktemp("small-disk")
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_MB}m,mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="module")
def server(small_disk: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One `serve` on the small disk, with embedded PostgreSQL and broker (whatever CI's
    external ones: the tests kill the embedded children)."""
    process = ServeProcess(
        small_disk,
        {
            "PLAYERPULSE_DISK_MIN_FREE": f"{MIN_FREE_MB}MB",
            "PLAYERPULSE_PRODUCE_TIMEOUT": f"{PRODUCE_TIMEOUT_S}s",
            "PLAYERPULSE_DB_TIMEOUT_S": str(DB_TIMEOUT_S),
            "PLAYERPULSE_WORKERS": "1",
            "PLAYERPULSE_KAFKA_HEAP_OPTS": "-Xms64m -Xmx256m",
        },
    )
    for variable in ("PLAYERPULSE_KAFKA_BROKERS", "PLAYERPULSE_DATABASE_URL"):
        process.env.pop(variable, None)
    for variable in ("PLAYERPULSE_EVENTS_TOPIC", "PLAYERPULSE_CONSUMER_GROUP"):
        process.env.pop(variable, None)
    try:
        process.start()
        yield process
    finally:
        code = process.stop() if process.proc is not None else 0
        # Kept off the tmpfs, which goes with the module.
        kept = tmp_path_factory.mktemp("serve-log") / process.log_path.name
        with contextlib.suppress(OSError):
            kept.write_bytes(process.log_path.read_bytes())
        assert code == 0, process.log()


@pytest.fixture(scope="module")
def game(server: ServeProcess) -> dict[str, str]:
    """A game's ingest, read and admin keys, with a model uploaded for predictions."""
    name = unique("game")
    keys = {role: server.key(name, role) for role in ("ingest", "read", "admin")}
    with server.client(keys["admin"]) as admin:
        uploaded = admin.post(
            "/v1/admin/models/spend",
            files={"model": ("model.onnx", sklearn_regressor()), "manifest": (None, MANIFEST)},
        )
        assert uploaded.status_code == 201, uploaded.text
    return {**keys, "name": name}


class Load:
    """Clients sending batches of BATCH events, one new player per batch, until stopped;
    every answer (or connection error) recorded by batch."""

    def __init__(self, server: ServeProcess, key: str, prefix: str, clients: int = 2) -> None:
        self.server = server
        self.key = key
        self.prefix = prefix
        self.outcomes: dict[str, int] = {}
        self.slowest: dict[int, float] = {}
        """The longest answer of each status, in seconds."""
        self.failures: list[str] = []
        self.bodies: dict[int, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._next = 0
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _player(self) -> str:
        with self._lock:
            self._next += 1
            return f"{self.prefix}-{self._next}"

    def _run(self) -> None:
        now = datetime.now(UTC).isoformat()
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.server.url, headers=headers) as client:
            while not self._stop.is_set():
                player = self._player()
                events = [
                    {
                        "event_id": f"{player}-{j}",
                        "player_id": player,
                        "type": "session_start",
                        "ts": now,
                    }
                    for j in range(BATCH)
                ]
                started = time.monotonic()
                try:
                    reply = client.post(
                        "/v1/events", json={"events": events}, timeout=PRODUCE_TIMEOUT_S + 30
                    )
                except httpx.HTTPError as exc:
                    self.failures.append(f"{player}: {exc!r}")
                    continue
                took = time.monotonic() - started
                self.slowest[reply.status_code] = max(took, self.slowest.get(reply.status_code, 0))
                self.outcomes[player] = reply.status_code
                if reply.status_code != 202:
                    self.bodies.setdefault(reply.status_code, reply.json())
                    if not reply.headers.get("retry-after"):
                        self.failures.append(f"{player}: {reply.status_code} without Retry-After")
                if reply.status_code != 202:
                    time.sleep(0.05)  # a client backing off a little

    def count(self, status: int) -> int:
        return sum(1 for s in list(self.outcomes.values()) if s == status)


def _check_exactly_once(server: ServeProcess, keys: dict[str, str], load: Load) -> None:
    """No status but 202/503/507, no connection refused; each 202 batch folded once, each
    507 batch absent; a 503 batch may have reached the broker (then folded once)."""
    statuses = set(load.outcomes.values())
    assert statuses <= ALLOWED, (statuses, load.bodies)
    assert not load.failures, load.failures[:5]
    with server.client(keys["read"]) as reader:

        def applied(player: str) -> int | None:
            reply = reader.get(f"/v1/players/{player}")
            if reply.status_code == 404:
                return None
            assert reply.status_code == 200, reply.text
            return int(reply.json()["events_applied"])

        accepted = [p for p, s in load.outcomes.items() if s == 202]
        assert accepted
        deadline = time.monotonic() + 90
        pending = set(accepted)
        while pending and time.monotonic() < deadline:
            pending = {p for p in pending if applied(p) != BATCH}
            if pending:
                time.sleep(0.2)
        assert not pending, f"{len(pending)} batches answered 202 not folded: {sorted(pending)[:5]}"
        for player in accepted:  # exactly once: not more either
            assert applied(player) == BATCH, player
        for player, status in load.outcomes.items():
            if status == 507:
                assert applied(player) is None, player
            elif status == 503:
                assert applied(player) in (None, BATCH), player


def _metric(server: ServeProcess, name: str) -> list[tuple[str, float]]:
    lines = httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines()
    return [
        (line.split(" ")[0], float(line.rsplit(" ", 1)[1]))
        for line in lines
        if line.startswith(name) and not line.startswith("#")
    ]


def _fill(directory: Path, leave_free: int) -> Path:
    """A file taking the space of ``directory``'s file system down to ``leave_free`` bytes."""
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    fill = directory / "fill.bin"
    with open(fill, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, max(1, free - leave_free))
    return fill


def test_a_full_disk_answers_507_keeps_reads_and_resumes_without_a_restart(
    server: ServeProcess, game: dict[str, str], small_disk: Path
) -> None:
    reader = server.client(game["read"])
    with Load(server, game["ingest"], unique("disk")) as load:
        wait_for(lambda: load.count(202) >= 20, timeout=60)
        first = next(p for p, s in list(load.outcomes.items()) if s == 202)
        fill = _fill(small_disk, MIN_FREE_MB * 1_000_000 // 2)
        try:
            wait_for(lambda: load.count(507) >= 5, timeout=30)
            refused = load.bodies[507]
            assert refused["detail"]["directory"].startswith(str(small_disk))
            assert refused["detail"]["free_bytes"] < MIN_FREE_MB * 1_000_000
            assert refused["detail"]["min_free_bytes"] == MIN_FREE_MB * 1_000_000
            assert "PLAYERPULSE_DISK_MIN_FREE" in refused["error"]
            # Reads, predictions, the dashboard's data and /metrics keep working.
            assert reader.get(f"/v1/players/{first}").status_code == 200
            predicted = reader.get(f"/v1/players/{first}/predictions/spend")
            assert predicted.status_code == 200, predicted.text
            dashboard = reader.get("/v1/dashboard").json()
            assert dashboard["writes_refused"] is True
            assert {d["directory"] for d in dashboard["disk"]} >= {"data", "postgresql", "lake"}
            assert _metric(server, "playerpulse_disk_writes_refused") == [
                ("playerpulse_disk_writes_refused", 1.0)
            ]
            refused_so_far = load.count(507)
        finally:
            fill.unlink()
        # Space is back: ingest resumes by itself, within a few checks.
        accepted_before = load.count(202)
        wait_for(lambda: load.count(202) > accepted_before + 20, timeout=30)
        assert load.count(507) >= refused_so_far
    assert _metric(server, "playerpulse_disk_writes_refused")[0][1] == 0.0
    _check_exactly_once(server, game, load)
    # The archive paused and resumed where it was: every accepted event reaches the lake.
    accepted = BATCH * load.count(202)
    query = (
        "select count(distinct event_id) as n from events "
        f"where game = '{game['name']}' and player_id like '{load.prefix}-%'"
    )

    def archived() -> int:
        out = server.cli("analytics", "query", query, "--format", "json").stdout
        return int(json.loads(out)[0]["n"])

    wait_for(lambda: archived() >= accepted, timeout=60, interval=1.0)
    assert archived() <= BATCH * (load.count(202) + load.count(503))  # none of the 507s
    assert server.proc is not None
    assert server.proc.poll() is None
    reader.close()


def _embedded(server: ServeProcess, role: str) -> psutil.Process | None:
    """The embedded PostgreSQL's postmaster or the broker's JVM (a running child of
    `serve`), or None while there is none."""
    assert server.proc is not None
    for child in psutil.Process(server.proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            if role == "postgresql" and child.name() == "postgres":
                return child
            if role == "broker" and "kafka.Kafka" in child.cmdline():
                return child
    return None


def _replaced(server: ServeProcess, role: str, old: psutil.Process) -> psutil.Process | None:
    """The embedded child of ``role`` once another process than ``old`` runs it."""
    new = _embedded(server, role)
    return new if new is not None and new.pid != old.pid else None


def test_a_killed_postgresql_gives_bounded_503s_and_is_restarted(
    server: ServeProcess, game: dict[str, str]
) -> None:
    reader = server.client(game["read"])
    with Load(server, game["ingest"], unique("pg")) as load:
        wait_for(lambda: load.count(202) >= 20, timeout=60)
        first = next(p for p, s in list(load.outcomes.items()) if s == 202)
        postmaster = _embedded(server, "postgresql")
        assert postmaster is not None
        postmaster.send_signal(signal.SIGKILL)
        postmaster.wait(10)

        def read_refused() -> bool:
            started = time.monotonic()
            reply = reader.get(f"/v1/players/{first}")
            predicted = reader.get(f"/v1/players/{first}/predictions/spend")
            unknown = httpx.get(
                f"{server.url}/v1/players/{first}",
                headers={"Authorization": "Bearer pp_000000000000_not-a-key"},
                timeout=30,
            )
            took = time.monotonic() - started
            assert reply.status_code in (200, 503), reply.text
            assert predicted.status_code in (200, 503), predicted.text
            assert unknown.status_code in (401, 503), unknown.text
            assert took < 3 * (DB_TIMEOUT_S + 2), took
            if reply.status_code == 503:
                assert "PostgreSQL" in reply.json()["error"]
                assert reply.headers["retry-after"]
            return reply.status_code == 503

        # Served from a pooled connection a moment longer, then refused quickly, or the
        # restart was quicker than us: either way never a 500 and never a hang.
        with contextlib.suppress(AssertionError):
            wait_for(read_refused, timeout=10, interval=0.05)
        wait_for(lambda: _replaced(server, "postgresql", postmaster), timeout=60)
        wait_for(lambda: reader.get(f"/v1/players/{first}").status_code == 200, timeout=60)
        accepted_before = load.count(202)
        wait_for(lambda: load.count(202) > accepted_before + 20, timeout=60)
    _check_exactly_once(server, game, load)
    assert "embedded service restarted" in server.log()
    reader.close()


def test_a_killed_broker_gives_503_after_the_produce_timeout_and_is_restarted(
    server: ServeProcess, game: dict[str, str]
) -> None:
    with Load(server, game["ingest"], unique("broker")) as load:
        wait_for(lambda: load.count(202) >= 20, timeout=60)
        broker = _embedded(server, "broker")
        assert broker is not None
        broker.send_signal(signal.SIGKILL)
        broker.wait(10)
        wait_for(lambda: _replaced(server, "broker", broker), timeout=90)
        accepted_before = load.count(202)
        wait_for(lambda: load.count(202) > accepted_before + 20, timeout=90)
    _check_exactly_once(server, game, load)
    if 503 in load.bodies:
        assert "broker" in load.bodies[503]["error"]
    # Bounded: the producer gives up after the produce timeout (and a margin to collect
    # its delivery reports), whatever the broker does meanwhile.
    assert max(load.slowest.values()) < PRODUCE_TIMEOUT_S + 5 + 5, load.slowest
    with server.client(game["read"]) as reader:
        assert reader.get("/v1/dashboard").status_code == 200
