"""Advisory locks: who may fold against this database.

Every ``playerpulse serve`` holds the *serving* lock shared while it runs; a standalone
replay takes it exclusively, so it never races a live fold (and a serve waits for a
replay under way to finish before it folds).

The *lake rewrite* lock serialises the rewrites of lake files (compaction, tiering,
erasure, retention) across every copy sharing a lake on object storage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

SERVING_LOCK = "playerpulse:serving"

T = TypeVar("T")


async def hold_serving_lock(engine: AsyncEngine) -> Callable[[], Awaitable[None]]:
    """Take the shared serving lock on a connection of its own; return its releaser.

    The releaser unlocks before giving the connection back: a session-level lock would
    otherwise stay held by the connection, idle in the pool.
    """
    conn = await engine.connect()
    await conn.execute(text("SELECT pg_advisory_lock_shared(hashtext(:k))"), {"k": SERVING_LOCK})
    await conn.commit()

    async def release() -> None:
        try:
            # A lost connection has lost its locks too: nothing left to release then.
            with suppress(SQLAlchemyError, OSError):
                await conn.execute(
                    text("SELECT pg_advisory_unlock_shared(hashtext(:k))"), {"k": SERVING_LOCK}
                )
                await conn.commit()
        finally:
            await conn.close()

    return release


@asynccontextmanager
async def serving_lock_alone(engine: AsyncEngine) -> AsyncIterator[bool]:
    """Try to take the serving lock exclusively; yield whether it was taken (False: some
    ``serve`` holds it). Released on exit."""
    async with engine.connect() as conn:
        got = bool(
            await conn.scalar(
                text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": SERVING_LOCK}
            )
        )
        try:
            yield got
        finally:
            if got:
                await conn.execute(
                    text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": SERVING_LOCK}
                )


LAKE_REWRITE_LOCK = "playerpulse:lake_rewrite"


@contextmanager
def lake_rewrite_lock(url: str, *, wait: bool) -> Iterator[bool]:
    """Hold the lake's rewrite lock (compaction, tiering, erasure, retention) for the
    block; yield False if ``wait`` is off and another copy holds it.

    Synchronous, for the lake's threads: a connection of its own, on a private event
    loop in a thread of its own (so it works under a running loop too), held for the
    block; the lock goes with the connection if the process dies.
    """
    import asyncpg

    from app.db.engine import libpq_url

    loop = asyncio.new_event_loop()
    pool = ThreadPoolExecutor(1, thread_name_prefix="lake-lock")

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return pool.submit(loop.run_until_complete, coro).result()

    try:
        conn = run(asyncpg.connect(libpq_url(url)))
        try:
            if wait:
                run(conn.execute("SELECT pg_advisory_lock(hashtext($1))", LAKE_REWRITE_LOCK))
                got = True
            else:
                query = "SELECT pg_try_advisory_lock(hashtext($1))"
                got = bool(run(conn.fetchval(query, LAKE_REWRITE_LOCK)))
            try:
                yield got
            finally:
                if got:
                    with suppress(Exception):
                        query = "SELECT pg_advisory_unlock(hashtext($1))"
                        run(conn.execute(query, LAKE_REWRITE_LOCK))
        finally:
            run(conn.close(timeout=5))
    finally:
        pool.submit(loop.close).result()
        pool.shutdown()
