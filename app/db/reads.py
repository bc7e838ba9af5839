"""The hot reads (a profile, an API key) over a plain asyncpg pool.

Each read is one prepared statement in one round trip: SQLAlchemy's async session
costs about 0.6 ms more per read here (checkout, a rollback on release), which a
prediction, whose model runs in microseconds, cannot afford. Read-only statements
leave no session state behind, so connections go back to the pool without a reset.

asyncpg's own acquire and release cost about as much CPU as the query itself (a queue,
a proxy, a shielded release task and an inactivity timer per checkout), so connections
are kept out of the pool between reads: a read takes one from a short list of idle
ones, and puts it back once answered. The pool still opens every connection (up to
``size``), and gets back any connection whose read failed or was cancelled: it knows
how to wait for a cancellation, or to close a broken connection and open a new one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import suppress
from typing import Any

import asyncpg

from app.domain.access import Principal, Role

from .engine import libpq_url
from .profiles import StoredProfile

_PROFILE = (
    "SELECT state, events_applied, last_event_at, last_received_at, updated_at "
    "FROM profiles WHERE game = $1 AND player_id = $2"
)
_PROFILES = (
    "SELECT player_id, state, events_applied, last_event_at, last_received_at, updated_at "
    "FROM profiles WHERE game = $1 AND player_id = ANY($2::text[])"
)
_KEY = (
    "SELECT game, role, id, extract(epoch FROM LEAST(expires_at, revoked_at)) "
    "FROM api_keys WHERE key_hash = $1"
)
_PROGRESS = "SELECT committed_offset FROM fold_progress WHERE topic = $1 AND partition = $2"


async def _no_reset(_conn: asyncpg.Connection) -> None:
    return None


def _alive(conn: Any) -> bool:
    """False once the connection closed (the pool then took it back on its own)."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # released to the pool when it closed
        return False


class FastReads:
    """A small pool for read-only point lookups."""

    def __init__(self, pool: asyncpg.Pool, size: int = 8) -> None:
        self.pool = pool
        self.size = size
        self._idle: list[Any] = []  # connections taken from the pool, free for a read
        self._taken = 0  # connections taken from the pool, idle or reading
        self._waiters: deque[asyncio.Future[Any]] = deque()  # reads waiting for one
        self._returning: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, url: str, size: int = 8, *, timeout_s: float = 5.0) -> FastReads:
        """Connect a pool to the database at ``url``; a connect or a query taking longer
        than ``timeout_s`` raises (a read answers 503 then, instead of hanging)."""
        dsn = libpq_url(url)
        pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=size,
            timeout=timeout_s,
            command_timeout=timeout_s,
            reset=_no_reset,
            server_settings={"application_name": "playerpulse-reads"},
        )
        return cls(pool, size)

    async def close(self) -> None:
        """Close every connection."""
        idle, self._idle = self._idle, []
        for conn in idle:
            self._taken -= 1
            await self.pool.release(conn)
        if self._returning:
            await asyncio.gather(*self._returning, return_exceptions=True)
        await self.pool.close()

    async def profile(self, game: str, player_id: str) -> StoredProfile | None:
        """One stored profile, or None."""
        row = await self._fetchrow(_PROFILE, game, player_id)
        if row is None:
            return None
        return StoredProfile(
            state=row[0],
            events_applied=row[1],
            last_event_at=row[2],
            last_received_at=row[3],
            updated_at=row[4],
        )

    async def profiles(self, game: str, player_ids: list[str]) -> dict[str, StoredProfile]:
        """The stored profiles of those players that have one, by player id (one query)."""
        rows = await self._fetch(_PROFILES, game, player_ids)
        return {
            row[0]: StoredProfile(
                state=row[1],
                events_applied=row[2],
                last_event_at=row[3],
                last_received_at=row[4],
                updated_at=row[5],
            )
            for row in rows
        }

    async def principal(self, key_hash: str) -> Principal | None:
        """The game and role of a key, and until when it works; None if no such key."""
        row = await self._fetchrow(_KEY, key_hash)
        if row is None:
            return None
        until = None if row[3] is None else float(row[3])
        return Principal(game=row[0], role=Role(row[1]), key_id=row[2], valid_until=until)

    async def folded_offset(self, topic: str, partition: int) -> int:
        """The offset up to which the fold committed ``partition`` (-1: nothing yet)."""
        row = await self._fetchrow(_PROGRESS, topic, partition)
        return -1 if row is None else int(row[0])

    # -- connections ------------------------------------------------------------------

    async def _fetchrow(self, query: str, *args: Any) -> Any:
        conn = self._idle.pop() if self._idle else await self._take()
        while not _alive(conn):  # closed while idle: the pool opens another
            self._return_to_pool(conn)
            conn = await self._take()
        try:
            row = await conn.fetchrow(query, *args)
        except BaseException:
            self._return_to_pool(conn)
            raise
        self._put(conn)
        return row

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        conn = self._idle.pop() if self._idle else await self._take()
        while not _alive(conn):
            self._return_to_pool(conn)
            conn = await self._take()
        try:
            rows: list[Any] = await conn.fetch(query, *args)
        except BaseException:
            self._return_to_pool(conn)
            raise
        self._put(conn)
        return rows

    async def _take(self) -> Any:
        """A connection for one read: an idle one, a new one from the pool, or the next
        one another read puts back (``None`` from a waiter: take one from the pool)."""
        while True:
            if self._idle:
                return self._idle.pop()
            if self._taken < self.size:
                self._taken += 1
                try:
                    return await self.pool.acquire()
                except BaseException:
                    self._taken -= 1
                    self._wake(None)
                    raise
            waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    # Handed a connection (or a free slot) just as we were cancelled.
                    handed = waiter.result()
                    if handed is not None:
                        self._put(handed)
                    else:
                        self._wake(None)
                else:
                    with suppress(ValueError):  # unless a wake-up already dropped it
                        self._waiters.remove(waiter)
                raise
            if conn is not None:
                return conn

    def _put(self, conn: Any) -> None:
        """A read is done with ``conn``: hand it to a waiting read, or keep it idle."""
        if not self._wake(conn):
            self._idle.append(conn)

    def _wake(self, handed: Any) -> bool:
        """Give ``handed`` (a connection, or None for a free slot) to the first waiter."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(handed)
                return True
        return False

    def _return_to_pool(self, conn: Any) -> None:
        """After a failed or cancelled read, or a closed connection: the pool cleans
        ``conn`` up (waits for the cancellation, or closes it) and opens another when
        asked. (One that closed is already back: releasing it again does nothing.)"""
        self._taken -= 1
        task = asyncio.get_running_loop().create_task(self.pool.release(conn))
        self._returning.add(task)
        task.add_done_callback(self._returned)

    def _returned(self, task: asyncio.Task[None]) -> None:
        self._returning.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the pool has already closed a connection it failed
        self._wake(None)
