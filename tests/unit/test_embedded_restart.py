"""The supervisor restarts a dead embedded child with backoff, and gives up, saying why."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from app import server
from app.disk import DiskWatch
from app.embedded import Runtime
from app.embedded.process import ChildProcess
from app.settings import Settings

pytestmark = pytest.mark.unit


class FlakyService:
    """An embedded service whose child died, and whose restarts fail ``failures`` times."""

    def __init__(self, failures: int) -> None:
        self.child: ChildProcess | None = ChildProcess("postgres", ["true"], None)
        self.failures = failures
        self.starts = 0

    def start(self, timeout: float = 60.0) -> str:
        self.starts += 1
        if self.starts <= self.failures:
            raise RuntimeError(f"postgres exited with code 1 while starting (try {self.starts})")
        return "postgresql://..."

    def stop(self) -> None:
        pass


def supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> server._Supervisor:
    monkeypatch.setattr(server, "EMBEDDED_BACKOFF_S", (0.0,))
    settings = Settings(data_dir=tmp_path, database_url="postgresql://x", kafka_brokers="h:1")
    return server._Supervisor(settings, Runtime("postgresql://x", "h:1"), socket.socket(), 1)


def test_a_dead_child_is_started_again_after_failed_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = FlakyService(failures=2)
    assert supervisor(tmp_path, monkeypatch)._restart_embedded("postgres (exit 9)", service)
    assert service.starts == 3


def test_a_child_that_keeps_failing_stops_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    service = FlakyService(failures=100)
    assert not supervisor(tmp_path, monkeypatch)._restart_embedded("postgres (exit 9)", service)
    assert service.starts == server.EMBEDDED_RESTART_LIMIT
    out = capsys.readouterr()
    assert "embedded service keeps failing; stopping" in out.out + out.err
    assert "while starting" in out.out + out.err


def test_no_restart_is_tried_while_the_disk_is_below_its_watermark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.settings import MinFree

    watch = supervisor(tmp_path, monkeypatch)
    watch.disk.min_free = MinFree(percent=99.99)  # no disk is that empty
    service = FlakyService(failures=0)
    checks = []

    def check() -> None:
        checks.append(1)
        if len(checks) == 3:  # space comes back at the third check
            watch.disk.min_free = MinFree(bytes=0)
        DiskWatch.check(watch.disk)

    monkeypatch.setattr(watch.disk, "check", check)
    monkeypatch.setattr("app.server.time.sleep", lambda _s: None)
    assert watch._restart_embedded("postgres (exit 9)", service)
    assert service.starts == 1
    assert len(checks) == 3
    assert len(watch.embedded_failures["postgres"]) == 1  # the wait was not a failure
