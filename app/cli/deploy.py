"""Commands for running the one-file build (``make dist``) on a VM: its systemd unit, and
the hidden ``worker`` entry point the supervisor re-invokes the executable with."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

DEFAULT_UNIT_PATH = Path("/etc/systemd/system/playerpulse.service")
STATE_ROOT = Path("/var/lib")

F = TypeVar("F", bound=Callable[..., Any])


@click.command("worker", hidden=True)
def worker() -> None:
    """A worker process of `serve` (the supervisor starts it; never by hand)."""
    from app.worker import main

    sys.exit(main())


@dataclass(frozen=True, slots=True)
class UnitSpec:
    """What a systemd unit for ``playerpulse serve`` depends on."""

    executable: Path
    user: str = "playerpulse"
    data_dir: Path = STATE_ROOT / "playerpulse"
    host: str = "127.0.0.1"
    port: int = 8000
    nofile: int = 65536


def unit_text(spec: UnitSpec) -> str:
    """The systemd unit: its own user and data dir, hardened, reloaded by SIGHUP (a rolling
    restart of the workers), restarted on failure, JSON logs to the journal."""
    data_dir = spec.data_dir
    if data_dir.parent == STATE_ROOT:
        # systemd creates it, owned by the user, and keeps it writable under ProtectSystem.
        state = f"StateDirectory={data_dir.name}\nStateDirectoryMode=0750"
    else:
        state = f"ReadWritePaths={data_dir}"
    return f"""\
# Written by `playerpulse service unit`. Upgrade: replace {spec.executable}, then
# `systemctl restart playerpulse` (a newer build migrates the data dir on start).
[Unit]
Description=PlayerPulse: live player events in, real-time profiles and predictions out
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={spec.user}
Group={spec.user}
ExecStart={spec.executable} serve --host {spec.host} --port {spec.port}
# SIGHUP: a rolling restart of the workers, without a failed request.
ExecReload=/bin/kill -HUP $MAINPID
KillSignal=SIGTERM
TimeoutStopSec=90
Restart=on-failure
RestartSec=5
Environment=PLAYERPULSE_DATA_DIR={data_dir}
Environment=PLAYERPULSE_LOG_FORMAT=json
Environment=HOME={data_dir}
WorkingDirectory={data_dir}
{state}
LimitNOFILE={spec.nofile}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
StandardOutput=journal
StandardError=journal
SyslogIdentifier=playerpulse

[Install]
WantedBy=multi-user.target
"""


def _default_executable() -> Path:
    if getattr(sys, "frozen", False):
        return Path(sys.executable).resolve()
    found = shutil.which("playerpulse")
    return Path(found).resolve() if found else Path("/usr/local/bin/playerpulse")


def _spec_options(command: F) -> F:
    for option in reversed(
        [
            click.option(
                "--executable",
                type=click.Path(path_type=Path),
                default=None,
                help="The playerpulse executable [default: this one].",
            ),
            click.option("--user", default="playerpulse", show_default=True),
            click.option(
                "--data-dir",
                type=click.Path(path_type=Path),
                default=STATE_ROOT / "playerpulse",
                show_default=True,
            ),
            click.option("--host", default="127.0.0.1", show_default=True),
            click.option("--port", default=8000, show_default=True, type=int),
        ]
    ):
        command = option(command)
    return command


def _spec(executable: Path | None, user: str, data_dir: Path, host: str, port: int) -> UnitSpec:
    if not data_dir.is_absolute():
        raise click.BadParameter("must be an absolute path", param_hint="--data-dir")
    exe = (executable or _default_executable()).absolute()
    return UnitSpec(executable=exe, user=user, data_dir=data_dir, host=host, port=port)


@click.group()
def service() -> None:
    """The systemd service that runs this executable."""


@service.command("unit")
@_spec_options
def service_unit(executable: Path | None, user: str, data_dir: Path, host: str, port: int) -> None:
    """Print the systemd unit (to review it, or to install it by hand)."""
    click.echo(unit_text(_spec(executable, user, data_dir, host, port)), nl=False)


@service.command("install")
@_spec_options
@click.option(
    "--unit-path",
    type=click.Path(path_type=Path),
    default=DEFAULT_UNIT_PATH,
    show_default=True,
)
@click.option("--start/--no-start", default=True, show_default=True, help="Enable and start it.")
def service_install(
    executable: Path | None,
    user: str,
    data_dir: Path,
    host: str,
    port: int,
    unit_path: Path,
    start: bool,
) -> None:
    """Create the system user, write the unit, reload systemd and (by default) start it."""
    spec = _spec(executable, user, data_dir, host, port)
    if os.geteuid() != 0:
        raise click.ClickException("run it as root (it creates a user and writes a unit)")
    if not spec.executable.is_file():
        raise click.ClickException(f"{spec.executable} is not a file")
    if subprocess.run(["id", "-u", user], capture_output=True).returncode != 0:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--home-dir",
                str(data_dir),
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                user,
            ],
            check=True,
        )
    unit_path.parent.mkdir(parents=True, exist_ok=True)
    unit_path.write_text(unit_text(spec))
    click.echo(f"wrote {unit_path}")
    subprocess.run(["systemctl", "daemon-reload"], check=True)
    if start:
        subprocess.run(["systemctl", "enable", "--now", unit_path.stem], check=True)
        click.echo(f"started: journalctl -u {unit_path.stem} -f")
    else:
        click.echo(f"start it with: systemctl enable --now {unit_path.stem}")
