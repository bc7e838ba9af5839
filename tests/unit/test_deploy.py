"""The systemd unit of `playerpulse service unit`, and how workers are started when frozen."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import main
from app.cli.deploy import UnitSpec, unit_text
from app.server import worker_command

pytestmark = pytest.mark.unit


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_the_unit_runs_serve_as_its_own_user_hardened_with_json_logs_to_the_journal() -> None:
    text = unit_text(UnitSpec(executable=Path("/opt/pp/playerpulse"), port=8123))
    assert "[Unit]" in text.splitlines()
    d = _directives(text)
    assert d["ExecStart"] == ["/opt/pp/playerpulse serve --host 127.0.0.1 --port 8123"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["User"] == d["Group"] == ["playerpulse"]
    assert d["Restart"] == ["on-failure"]
    assert d["LimitNOFILE"] == ["65536"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["PrivateTmp"] == ["yes"]
    assert d["StateDirectory"] == ["playerpulse"]  # /var/lib/playerpulse, made by systemd
    assert d["WorkingDirectory"] == ["/var/lib/playerpulse"]
    assert "PLAYERPULSE_DATA_DIR=/var/lib/playerpulse" in d["Environment"]
    assert "PLAYERPULSE_LOG_FORMAT=json" in d["Environment"]
    assert d["StandardOutput"] == d["StandardError"] == ["journal"]
    assert d["WantedBy"] == ["multi-user.target"]
    assert "ReadWritePaths" not in d


def test_a_data_dir_outside_var_lib_is_made_writable_explicitly() -> None:
    text = unit_text(
        UnitSpec(executable=Path("/usr/local/bin/playerpulse"), data_dir=Path("/srv/pp"))
    )
    d = _directives(text)
    assert d["ReadWritePaths"] == ["/srv/pp"]
    assert "StateDirectory" not in d
    assert "PLAYERPULSE_DATA_DIR=/srv/pp" in d["Environment"]


def test_service_unit_prints_the_unit_and_rejects_a_relative_data_dir() -> None:
    runner = CliRunner()
    printed = runner.invoke(
        main, ["service", "unit", "--executable", "/opt/pp/playerpulse", "--user", "games"]
    )
    assert printed.exit_code == 0, printed.output
    assert printed.output == unit_text(UnitSpec(Path("/opt/pp/playerpulse"), user="games"))
    refused = runner.invoke(main, ["service", "unit", "--data-dir", "var"])
    assert refused.exit_code == 2
    assert "--data-dir" in refused.output
    assert "absolute" in refused.output


def test_workers_are_started_by_module_from_a_venv_and_by_subcommand_when_frozen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert worker_command() == [sys.executable, "-m", "app.worker"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", "/opt/pp/playerpulse")
    assert worker_command() == ["/opt/pp/playerpulse", "worker"]


def test_the_worker_subcommand_is_hidden_from_help() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "service" in result.output
    assert " worker" not in result.output


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    unit = tmp_path / "playerpulse.service"
    unit.write_text(unit_text(UnitSpec(executable=Path(sys.executable))))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""  # not even a warning
