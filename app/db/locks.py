"""Advisory locks: who may fold against this database.

Every ``playerpulse serve`` holds the *serving* lock shared while it runs; a standalone
replay takes it exclusively, so it never races a live fold (and a serve waits for a
replay under way to finish before it folds).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

SERVING_LOCK = "playerpulse:serving"


async def hold_serving_lock(engine: AsyncEngine) -> Callable[[], asyncio.Future[None]]:
    """Take the shared serving lock on a connection of its own; return its releaser."""
    conn = await engine.connect()
    await conn.execute(text("SELECT pg_advisory_lock_shared(hashtext(:k))"), {"k": SERVING_LOCK})
    await conn.commit()

    def release() -> asyncio.Future[None]:
        return asyncio.ensure_future(conn.close())

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
