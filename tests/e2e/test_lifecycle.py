"""`playerpulse serve` starts its children, and stops them all on SIGTERM or Ctrl-C."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from tests.support import EXTERNAL_BROKERS, ServeProcess, wait_for


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_zero_and_leaves_no_child(tmp_path: Path, sig: int) -> None:
    server = ServeProcess(tmp_path).start()
    children = server.descendants()
    names = {" ".join(c.cmdline()) for c in children}
    assert any("postgres" in n for n in names), names
    if not EXTERNAL_BROKERS:
        assert any("kafka.Kafka" in n for n in names), names  # the durable broker
    assert len(server.workers()) == len(os.sched_getaffinity(0)), names  # one per core

    assert server.stop(sig) == 0, server.log()
    for child in children:
        # Gone, or a zombie about to be reaped by init: in either case not running.
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, child
    log = server.log()
    assert "child stopped" in log
    assert "did not stop in time" not in log  # every child stopped cleanly, none was killed


def test_sigkill_leaves_no_orphan_and_restart_reuses_the_data_dir(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path).start()
    key = server.key("g1", "read")
    children = server.descendants()
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL

    def all_gone() -> bool:
        return all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children)

    # The children get a death signal from the kernel when their parent dies.
    wait_for(all_gone, timeout=30)

    again = ServeProcess(tmp_path)
    again.env = server.env
    again.start()
    try:
        with again.client(key) as client:  # the key survived in PostgreSQL
            assert client.get("/v1/players/nobody").status_code == 404
    finally:
        assert again.stop() == 0


def test_memory_broker_only_when_asked_and_says_it_loses_events(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path, {"PLAYERPULSE_BROKER": "memory"})
    if EXTERNAL_BROKERS:
        server.env.pop("PLAYERPULSE_KAFKA_BROKERS")
        server.env.pop("PLAYERPULSE_EVENTS_TOPIC")
    server.start()
    try:
        names = {" ".join(c.cmdline()) for c in server.descendants()}
        assert any("tansu" in n for n in names), names
        assert not any("kafka.Kafka" in n for n in names), names
        assert "LOST when it stops" in server.log()
        key = server.key("g", "admin")
        with server.client(key) as client:
            event = {"event_id": "e1", "player_id": "p", "type": "login", "ts": _now()}
            assert client.post("/v1/events", json={"events": [event]}).status_code == 202
            wait_for(lambda: client.get("/v1/players/p").status_code == 200, timeout=30)
    finally:
        assert server.stop() == 0, server.log()


def test_unknown_broker_kind_is_refused_with_the_setting_named(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path, {"PLAYERPULSE_BROKER": "tansu"})
    result = server.cli("serve", "--port", str(server.port), check=False)
    assert result.returncode != 0
    assert "PLAYERPULSE_BROKER must be kafka or memory" in result.stderr


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()
