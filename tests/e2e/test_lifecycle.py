"""`playerpulse serve` starts its children, and stops them all on SIGTERM or Ctrl-C."""

from __future__ import annotations

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
        assert any("tansu" in n for n in names), names

    assert server.stop(sig) == 0, server.log()
    for child in children:
        # Gone, or a zombie about to be reaped by init: in either case not running.
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, child
    assert "child stopped" in server.log()


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
