"""The serving lock in real PostgreSQL: a replay never runs beside a serving process."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.locks import hold_serving_lock, serving_lock_alone

pytestmark = pytest.mark.integration


async def test_a_replay_waits_for_every_server_and_excludes_another_replay(
    engine: AsyncEngine,
) -> None:
    first, second = await hold_serving_lock(engine), await hold_serving_lock(engine)
    async with serving_lock_alone(engine) as got:
        assert got is False  # servers hold it shared
    await first()
    async with serving_lock_alone(engine) as got:
        assert got is False  # one server is still serving
    await second()
    async with serving_lock_alone(engine) as got:
        assert got is True
        async with serving_lock_alone(engine) as again:
            assert again is False  # a second replay is refused meanwhile
    async with serving_lock_alone(engine) as got:
        assert got is True  # released on exit
