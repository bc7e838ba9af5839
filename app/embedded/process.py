"""Child processes the service owns: started, waited for, and stopped with it."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from app.log import get_logger

log = get_logger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int) -> Callable[[], None]:
    """A preexec hook (or a call, run in the child itself): the kernel sends ``sig`` to
    this process when its parent dies.

    This is what keeps a SIGKILLed ``playerpulse serve`` from leaving orphans behind.
    """

    def hook() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        # The parent may already be gone between fork and prctl.
        if os.getppid() == 1:
            os.kill(os.getpid(), sig)

    return hook


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class ChildProcess:
    """One owned child: output to a log file, dies with us, stopped politely then firmly."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path | None,
        *,
        stop_signal: int = signal.SIGTERM,
        death_signal: int | None = None,
        user: int | None = None,
        group: int | None = None,
        env: dict[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        """``log_path`` None: the child writes to our own stdout and stderr.

        ``death_signal`` (default: ``stop_signal``) is what the child gets if we die.
        """
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.death_signal = stop_signal if death_signal is None else death_signal
        self.pass_fds = tuple(pass_fds)
        self.user = user
        self.group = group
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self) -> None:
        """Spawn the child (from the calling thread: the death signal follows that thread)."""
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs["user"] = self.user
            kwargs["group"] = self.group
            kwargs["extra_groups"] = []
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=None if self._log_file is None else subprocess.STDOUT,
            preexec_fn=die_with_parent(self.death_signal),
            env=self.env,
            pass_fds=self.pass_fds,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not the child directly
            **kwargs,
        )
        where = "" if self.log_path is None else str(self.log_path)
        log.info("child started", child=self.name, pid=self.proc.pid, log=where)

    @property
    def pid(self) -> int | None:
        """The child's pid, once started."""
        return None if self.proc is None else self.proc.pid

    def exited(self) -> int | None:
        """The exit code if the child has ended, else None."""
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 20) -> str:
        """The end of the child's log, for error messages."""
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready`` until true; fail with the child's log if it dies or times out."""
        deadline = time.monotonic() + timeout
        while not ready():
            code = self.exited()
            if code is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {code} while starting; "
                    f"its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} was not {what} after {timeout:.0f}s; "
                    f"its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the child to stop, wait, then kill it; idempotent."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("child did not stop in time; killing it", child=self.name)
                proc.kill()
                proc.wait()
            log.info("child stopped", child=self.name, code=proc.returncode)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
