"""Prediction replies name the player they answer for (handlers called with fakes)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, NamedTuple, cast

import msgspec
import pytest
from litestar import Request, Response

from app.api.model_routes import (
    BatchPredictionReply,
    Instance,
    PredictionReply,
    PredictRequest,
    predict,
    predict_for_player,
)
from app.models.predictions import PredictionService
from app.models.registry import Prediction
from app.profiles import Freshness, Profile

pytestmark = pytest.mark.unit


class FakeRegistry:
    """Answers version 2 for players starting with "b", else 1; records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any], str | None]] = []
        self.batches: list[int] = []

    async def predict(
        self, game: str, name: str, values: Mapping[str, Any], player_id: str | None = None
    ) -> Prediction:
        self.calls.append((game, name, dict(values), player_id))
        version = 2 if (player_id or "").startswith("b") else 1
        return Prediction(model=name, version=version, outputs={"score": values.get("spend")})

    async def predict_many(
        self, game: str, name: str, rows: list[tuple[str | None, Mapping[str, Any]]]
    ) -> list[Prediction]:
        self.batches.append(len(rows))
        return [await self.predict(game, name, values, player_id) for player_id, values in rows]


FOLDED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LATEST = datetime(2026, 1, 2, 3, 4, 1, tzinfo=UTC)


class FakeProfiles:
    def __init__(self) -> None:
        self.reads: list[int] = []

    async def get(self, game: str, player_id: str) -> Profile:
        return Profile(
            player_id=player_id,
            features={"spend": len(player_id)},
            events_applied=1,
            last_event_at=LATEST,
            last_received_at=FOLDED,
            updated_at=FOLDED,
            freshness=Freshness(folded_at=FOLDED, event_watermark=LATEST),
        )

    async def get_many(self, game: str, player_ids: list[str]) -> list[Profile]:
        self.reads.append(len(player_ids))
        return [await self.get(game, p) for p in player_ids]


class Handlers(NamedTuple):
    """What the handlers take after their path and body, in order."""

    request: Request[Any, Any, Any]
    predictions: Any


def fakes() -> tuple[FakeRegistry, Handlers]:
    registry = FakeRegistry()
    request = SimpleNamespace(user=SimpleNamespace(game="game-1"))
    predictions = PredictionService(cast(Any, registry), cast(Any, FakeProfiles()), cast(Any, None))
    return registry, Handlers(cast(Request[Any, Any, Any], request), predictions)


def reply_json(response: Response[Any]) -> dict[str, Any]:
    assert isinstance(response.content, PredictionReply)
    return cast(dict[str, Any], msgspec.to_builtins(response.content))


async def test_a_players_prediction_says_which_player() -> None:
    registry, h = fakes()
    response = await predict_for_player("bob-7", "churn", h.request, h.predictions, None)
    assert reply_json(response) == {
        "model": "churn",
        "version": 2,
        "outputs": {"score": 5},
        "player_id": "bob-7",
        "freshness": {
            "folded_at": "2026-01-02T03:04:05Z",
            "event_watermark": "2026-01-02T03:04:01Z",
        },
    }
    assert registry.calls == [("game-1", "churn", {"spend": 5}, "bob-7")]
    assert "profile;dur=" in response.headers["Server-Timing"]


async def test_explicit_features_for_a_player_say_which_player() -> None:
    registry, h = fakes()
    body = PredictRequest(features={"spend": 3}, player_id="bea")
    response = await predict("churn", body, *h)
    assert reply_json(response)["player_id"] == "bea"
    assert reply_json(response)["version"] == 2
    assert reply_json(response)["freshness"] is None  # no profile behind explicit features
    anonymous = await predict("churn", PredictRequest(features={"spend": 3}), *h)
    assert reply_json(anonymous)["player_id"] is None
    assert reply_json(anonymous)["version"] == 1
    assert [call[3] for call in registry.calls] == ["bea", None]


async def test_batch_forms_name_each_player_in_order() -> None:
    registry, h = fakes()
    instances = PredictRequest(
        instances=[Instance({"spend": 1}, "bo"), Instance({"spend": 2}, "al"), Instance({})]
    )
    answered = (await predict("churn", instances, *h)).content
    assert isinstance(answered, BatchPredictionReply)
    assert [(p.player_id, p.version) for p in answered.predictions] == [
        ("bo", 2),
        ("al", 1),
        (None, 1),
    ]
    players = (await predict("churn", PredictRequest(players=["al", "bob"]), *h)).content
    assert isinstance(players, BatchPredictionReply)
    assert [(p.player_id, p.version, p.outputs) for p in players.predictions] == [
        ("al", 1, {"score": 2}),
        ("bob", 2, {"score": 3}),
    ]
    assert all(
        p.freshness is not None and p.freshness.folded_at == FOLDED for p in players.predictions
    )
    # One read of all the players, and one model call for each form.
    assert h.predictions.profiles.reads == [2]
    assert registry.batches == [3, 2]
