"""The registry's rollout cache against change notices that arrive mid-read.

The database is a fake whose read takes its snapshot, then waits for the test: so a
notice (``forget``) lands exactly between the read and the store into the cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.model_versions import ModelRepository
from app.domain.features import FeatureSet
from app.domain.rollout import Rollout
from app.models.registry import ModelRegistry

pytestmark = pytest.mark.unit

OLD = Rollout.only(1)
NEW = Rollout({1: 50, 2: 50})


class FakeEngine:
    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Any]:
        yield object()


class SlowRepository(ModelRepository):
    """Rollouts in a dict; while ``hold`` is set, each read waits for ``release``."""

    def __init__(self) -> None:
        self.rollouts: dict[tuple[str, str], Rollout | None] = {}
        self.reads: list[tuple[str, str]] = []
        self.hold = False
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def rollout(self, conn: AsyncConnection, game: str, name: str) -> Rollout | None:
        self.reads.append((game, name))
        snapshot = self.rollouts.get((game, name))  # what the read's transaction sees
        if self.hold:
            self.reading.set()
            await self.release.wait()
        return snapshot


def registry(repository: SlowRepository) -> ModelRegistry:
    return ModelRegistry(
        cast(AsyncEngine, FakeEngine()),
        cast(FeatureSet, None),
        max_bytes=1,
        repository=repository,
    )


async def read_interrupted_by(
    models: ModelRegistry, repository: SlowRepository, change: Any, notice: str | None
) -> Rollout | None:
    """Read g/m; once the read has its (old) snapshot, commit ``change`` and announce it."""
    repository.hold = True
    reader = asyncio.create_task(models.rollout("g", "m"))
    await repository.reading.wait()
    change()
    models.forget(notice)  # the LISTEN callback, while the read is still under way
    repository.hold = False
    repository.release.set()
    return await reader


async def test_a_rollout_is_read_once_then_served_from_the_cache() -> None:
    repository = SlowRepository()
    repository.rollouts[("g", "m")] = OLD
    models = registry(repository)
    assert await models.rollout("g", "m") == OLD
    assert await models.rollout("g", "m") == OLD
    assert repository.reads == [("g", "m")]
    repository.rollouts[("g", "m")] = NEW
    models.forget("g/m")
    assert await models.rollout("g", "m") == NEW
    assert repository.reads == [("g", "m")] * 2


async def test_a_notice_during_the_read_keeps_the_stale_answer_out_of_the_cache() -> None:
    repository = SlowRepository()
    repository.rollouts[("g", "m")] = OLD
    models = registry(repository)

    def commit() -> None:
        repository.rollouts[("g", "m")] = NEW

    # The interrupted call may answer what it read (it started before the change)...
    assert await read_interrupted_by(models, repository, commit, "g/m") == OLD
    # ...but the next one must see the change, not a cached OLD forever.
    assert await models.rollout("g", "m") == NEW
    assert len(repository.reads) == 2
    assert await models.rollout("g", "m") == NEW  # and that one is cached again
    assert len(repository.reads) == 2


async def test_forgetting_everything_during_the_read_counts_too() -> None:
    """After a reconnection the listener forgets all (None): notices may have been lost."""
    repository = SlowRepository()
    repository.rollouts[("g", "m")] = OLD
    models = registry(repository)

    def commit() -> None:
        repository.rollouts[("g", "m")] = NEW

    assert await read_interrupted_by(models, repository, commit, None) == OLD
    assert await models.rollout("g", "m") == NEW


async def test_a_model_that_appears_during_the_read_is_not_cached_as_missing() -> None:
    repository = SlowRepository()
    models = registry(repository)

    def first_upload() -> None:
        repository.rollouts[("g", "m")] = OLD

    assert await read_interrupted_by(models, repository, first_upload, "g/m") is None
    assert await models.rollout("g", "m") == OLD


async def test_a_notice_about_another_model_does_not_stop_caching() -> None:
    repository = SlowRepository()
    repository.rollouts[("g", "m")] = OLD
    models = registry(repository)
    assert await read_interrupted_by(models, repository, lambda: None, "g/other") == OLD
    assert await models.rollout("g", "m") == OLD
    assert len(repository.reads) == 1  # cached: the notice was about g/other
    assert await read_interrupted_by(models, repository, lambda: None, "h/m") is OLD
    assert len(repository.reads) == 1  # served from the cache, no read to interrupt


async def test_concurrent_reads_around_a_change_leave_the_new_rollout_cached() -> None:
    """An older read finishing after a newer one must not overwrite the newer answer."""
    repository = SlowRepository()
    repository.rollouts[("g", "m")] = OLD
    models = registry(repository)
    repository.hold = True
    older = asyncio.create_task(models.rollout("g", "m"))
    await repository.reading.wait()  # older has its snapshot: OLD
    repository.rollouts[("g", "m")] = NEW
    models.forget("g/m")
    repository.hold = False
    newer = await models.rollout("g", "m")  # not held: reads NEW and caches it
    assert newer == NEW
    repository.release.set()
    assert await older == OLD
    assert await models.rollout("g", "m") == NEW
    assert len(repository.reads) == 2
