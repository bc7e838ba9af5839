"""Prediction replies name the player they answer for (handlers called with fakes)."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, cast

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
from app.bootstrap import Services
from app.models.registry import Prediction

pytestmark = pytest.mark.unit


class FakeRegistry:
    """Answers version 2 for players starting with "b", else 1; records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any], str | None]] = []

    async def predict(
        self, game: str, name: str, values: Mapping[str, Any], player_id: str | None = None
    ) -> Prediction:
        self.calls.append((game, name, dict(values), player_id))
        version = 2 if (player_id or "").startswith("b") else 1
        return Prediction(model=name, version=version, outputs={"score": values.get("spend")})


class FakeProfiles:
    async def get(self, game: str, player_id: str) -> Any:
        return SimpleNamespace(features={"spend": len(player_id)})


def fakes() -> tuple[FakeRegistry, Services, Request[Any, Any, Any]]:
    registry = FakeRegistry()
    services = SimpleNamespace(registry=registry, profiles=FakeProfiles())
    request = SimpleNamespace(user=SimpleNamespace(game="game-1"))
    return registry, cast(Services, services), cast(Request[Any, Any, Any], request)


def reply_json(response: Response[PredictionReply]) -> dict[str, Any]:
    assert isinstance(response.content, PredictionReply)
    return cast(dict[str, Any], msgspec.to_builtins(response.content))


async def test_a_players_prediction_says_which_player() -> None:
    registry, services, request = fakes()
    response = await predict_for_player("bob-7", "churn", request, services)
    assert reply_json(response) == {
        "model": "churn",
        "version": 2,
        "outputs": {"score": 5},
        "player_id": "bob-7",
    }
    assert registry.calls == [("game-1", "churn", {"spend": 5}, "bob-7")]
    assert "profile;dur=" in response.headers["Server-Timing"]


async def test_explicit_features_for_a_player_say_which_player() -> None:
    registry, services, request = fakes()
    body = PredictRequest(features={"spend": 3}, player_id="bea")
    response = await predict("churn", body, request, services)
    assert isinstance(response, Response)
    assert reply_json(response)["player_id"] == "bea"
    assert reply_json(response)["version"] == 2
    anonymous = await predict("churn", PredictRequest(features={"spend": 3}), request, services)
    assert isinstance(anonymous, Response)
    assert reply_json(anonymous)["player_id"] is None
    assert reply_json(anonymous)["version"] == 1
    assert [call[3] for call in registry.calls] == ["bea", None]


async def test_batch_forms_name_each_player_in_order() -> None:
    _, services, request = fakes()
    instances = PredictRequest(
        instances=[Instance({"spend": 1}, "bo"), Instance({"spend": 2}, "al"), Instance({})]
    )
    answered = await predict("churn", instances, request, services)
    assert isinstance(answered, BatchPredictionReply)
    assert [(p.player_id, p.version) for p in answered.predictions] == [
        ("bo", 2),
        ("al", 1),
        (None, 1),
    ]
    players = await predict("churn", PredictRequest(players=["al", "bob"]), request, services)
    assert isinstance(players, BatchPredictionReply)
    assert [(p.player_id, p.version, p.outputs) for p in players.predictions] == [
        ("al", 1, {"score": 2}),
        ("bob", 2, {"score": 3}),
    ]
