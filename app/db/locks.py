"""Advisory locks: who may fold against this database.

Every ``playerpulse serve`` holds the *serving* lock shared while it runs; a standalone
replay takes it exclusively, so it never races a live fold (and a serve waits for a
replay under way to finish before it folds).

The *lake rewrite* lock serialises the rewrites of lake files (compaction, tiering,
erasure, retention) across every copy sharing a lake on object storage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

SERVING_LOCK = "playerpulse:serving"


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

    Synchronous, for the lake's threads: a connection of its own on a private event
    loop, held for the block (the lock goes with the connection if the process dies).
    """
    import asyncpg

    from app.db.engine import libpq_url

    loop = asyncio.new_event_loop()
    try:
        conn = loop.run_until_complete(asyncpg.connect(libpq_url(url)))
        try:
            if wait:
                loop.run_until_complete(
                    conn.execute("SELECT pg_advisory_lock(hashtext($1))", LAKE_REWRITE_LOCK)
                )
                got = True
            else:
                got = bool(
                    loop.run_until_complete(
                        conn.fetchval(
                            "SELECT pg_try_advisory_lock(hashtext($1))", LAKE_REWRITE_LOCK
                        )
                    )
                )
            try:
                yield got
            finally:
                if got:
                    with suppress(Exception):
                        loop.run_until_complete(
                            conn.execute(
                                "SELECT pg_advisory_unlock(hashtext($1))", LAKE_REWRITE_LOCK
                            )
                        )
        finally:
            loop.run_until_complete(conn.close(timeout=5))
    finally:
        loop.close()
