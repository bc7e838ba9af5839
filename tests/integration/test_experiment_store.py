"""Outcomes, training statistics and guards in real PostgreSQL, through the registry."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.features import FeatureSet
from app.domain.guard import Breach, Guard, GuardWatch
from app.domain.outcome import Outcome
from app.domain.rollout import Rollout
from app.models.registry import ModelRegistry
from app.models.runtime import ModelRejected, PredictionFailed
from tests import onnx_models as m
from tests.support import unique

pytestmark = pytest.mark.integration

INT_MANIFEST = json.dumps({"inputs": {"x": ["last_level"]}})
STATS = {"features": {"spend_total": {"edges": [1.0, 5.0], "counts": [3, 4, 5], "missing": 1}}}


def registry(engine: AsyncEngine, features: FeatureSet, watch: GuardWatch | None = None) -> Any:
    return ModelRegistry(engine, features, max_bytes=10_000_000, guard_watch=watch)


async def test_outcome_guard_and_training_stats_round_trip(
    engine: AsyncEngine, features: FeatureSet
) -> None:
    models = registry(engine, features)
    game = unique("game")
    await models.upload(game, "offers", m.sklearn_regressor(), m.MANIFEST, training_stats=STATS)
    bad = {"features": {"spend_total": {"edges": [1.0], "counts": [1]}}}
    with pytest.raises(ModelRejected, match="counts needs one more"):
        await models.upload(game, "offers", m.sklearn_regressor(), m.MANIFEST, training_stats=bad)
    await models.set_outcome(game, "offers", Outcome.parse("purchase", "24h", "sum:amount"))
    guard = Guard(max_error_rate=0.05)
    await models.upload(game, "offers", m.sklearn_regressor(), m.MANIFEST, activate=False)
    await models.set_rollout(game, "offers", Rollout({1: 70, 2: 30}, None, guard))
    [info] = await models.describe(game, "offers")
    assert info.outcome == Outcome("purchase", 86400, "sum", "amount")
    assert info.rollout == Rollout({1: 70, 2: 30}, None, guard)
    assert info.guard_events == []
    async with engine.connect() as conn:
        stored = await models.repository.training_stats(conn, game, "offers")
    assert stored == {1: STATS}
    # Activating keeps the guard; uploads keep it too.
    assert (await models.activate(game, "offers", 2)).guard == guard


async def test_remove_version_moves_its_share_and_records_why(
    engine: AsyncEngine, features: FeatureSet
) -> None:
    models = registry(engine, features)
    game = unique("game")
    for _ in range(3):
        await models.upload(game, "offers", m.sklearn_regressor(), m.MANIFEST, activate=False)
    await models.set_rollout(game, "offers", Rollout({1: 50, 2: 30, 3: 20}))
    breach = Breach(version=1, requests=200, errors=20, p99_ms=3.5, reason="error rate 0.1")
    after = await models.remove_version(game, "offers", breach)
    assert after is not None
    assert after.split == {2: 60, 3: 40}
    assert await models.remove_version(game, "offers", breach) is None  # gone already
    await models.set_rollout(game, "offers", Rollout({3: 100}))
    last = Breach(version=3, requests=200, errors=20, p99_ms=3.5, reason="error rate 0.1")
    assert await models.remove_version(game, "offers", last) is None  # never the only one
    [info] = await models.describe(game, "offers")
    [event] = info.guard_events
    assert (event.version, event.requests, event.errors, event.reason) == (
        1,
        200,
        20,
        "error rate 0.1",
    )
    assert event.split_before == {1: 50, 2: 30, 3: 20}
    assert event.split_after == {2: 60, 3: 40}
    assert event.at is not None
    assert (await models.rollback(game, "offers")).split == {2: 60, 3: 40}


async def test_a_failing_version_is_removed_by_its_own_traffic(
    engine: AsyncEngine, features: FeatureSet
) -> None:
    models = registry(engine, features, GuardWatch(window_s=0.2, min_requests=5))
    game = unique("game")
    await models.upload(game, "offers", m.sklearn_regressor(), m.MANIFEST)
    await models.upload(game, "offers", m.int_input_model(), INT_MANIFEST, activate=False)
    guard = Guard(max_error_rate=0.01)
    await models.set_rollout(game, "offers", Rollout({1: 50, 2: 50}, None, guard))
    values = dict(zip(m.FEATURES, [12.5, 0.0, 7.0], strict=True))  # no last_level: v2 fails
    deadline = time.monotonic() + 30
    failures, i = 0, 0
    while (await models.rollout(game, "offers")) != Rollout({1: 100}, None, guard):
        assert time.monotonic() < deadline, "the guard did not remove version 2"
        try:
            await models.predict(game, "offers", values, f"p{i}")
        except PredictionFailed:
            failures += 1
        i += 1
        await asyncio.sleep(0.005)
    assert failures > 0
    [info] = await models.describe(game, "offers")
    assert [e.version for e in info.guard_events] == [2]
    assert "error rate" in info.guard_events[0].reason
