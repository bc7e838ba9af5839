"""PostgreSQL LISTEN/NOTIFY: hear about changes other processes commit, within moments."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import asyncpg

from app.log import get_logger

from .engine import libpq_url

log = get_logger(__name__)


class Reload:
    """A :class:`ChangeListener` callback that runs ``load`` off the listener's callback
    (its task kept until done); a reload that fails is logged, and what was loaded before
    stays in force until the next notice."""

    def __init__(self, load: Callable[[], Awaitable[object]], what: str) -> None:
        self.load = load
        self.what = what
        self._running: set[asyncio.Task[None]] = set()

    def __call__(self, _payload: str | None) -> None:
        task = asyncio.get_running_loop().create_task(self._reload())
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _reload(self) -> None:
        try:
            await self.load()
        except Exception as exc:
            log.warning(f"could not reload {self.what}", error=str(exc))


class ChangeListener:
    """Listens on one channel over a connection of its own, reconnecting as needed.

    ``on_change`` gets each notification's payload, or None after a reconnection (when
    notifications may have been missed: the caller should forget everything it cached).
    """

    def __init__(self, url: str, channel: str, on_change: Callable[[str | None], None]) -> None:
        self.url = libpq_url(url)
        self.channel = channel
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    async def start(self) -> None:
        """Start listening; returns once the first connection listens."""
        self._task = asyncio.create_task(self._run(), name=f"listen:{self.channel}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), timeout=10)

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay = 0.2
        first = True
        while True:
            closed = asyncio.Event()
            try:
                conn = await asyncpg.connect(self.url)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("change listener cannot connect; retrying", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                conn.add_termination_listener(lambda _conn, done=closed: done.set())
                await conn.add_listener(self.channel, self._notified)
                if not first:
                    self.on_change(None)  # we may have missed notifications meanwhile
                first = False
                delay = 0.2
                self.listening.set()
                await closed.wait()
                self.listening.clear()
                log.warning("change listener lost its connection; reconnecting")
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.on_change(payload)
