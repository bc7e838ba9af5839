"""Advisory locks: who may fold against this database.

Every ``playerpulse serve`` holds the *serving* lock shared while it runs; a standalone
replay takes it exclusively, so it never races a live fold (and a serve waits for a
replay under way to finish before it folds).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

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
