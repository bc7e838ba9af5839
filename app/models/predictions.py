"""Predictions as the routes ask for them: for a player (the profile read, then the
version serving that player run on its features), for several players (one read, one run
per version), on explicit features or on several instances. One object, so that each
route is one call (and one dependency, which every request pays for)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from app.models.registry import ModelRegistry, Prediction
from app.profiles import Freshness, ProfileService, ReadYourWrites


class UnknownPlayer(LookupError):
    """The game has no profile for this player."""

    def __init__(self, player_id: str) -> None:
        super().__init__(f"player {player_id!r} has no events in this game")
        self.player_id = player_id


@dataclass(frozen=True, slots=True)
class Served:
    """A prediction, for whom (if a player), and how fresh its profile was (if any)."""

    prediction: Prediction
    player_id: str | None = None
    freshness: Freshness | None = None
    read_at: float | None = None
    """``time.perf_counter()`` once the profile was read (None: no profile behind it)."""


@dataclass(frozen=True, slots=True)
class PredictionService:
    """The model registry, the profiles it predicts on, and the wait for an ingest
    reply's token. Errors: :class:`UnknownPlayer`, and the registry's
    (``UnknownModel``, ``ModelRejected``, ``PredictionFailed``)."""

    registry: ModelRegistry
    profiles: ProfileService
    read_your_writes: ReadYourWrites

    async def for_player(self, game: str, name: str, player_id: str) -> Served:
        """The version serving ``player_id`` run on the player's current features."""
        profile = await self.profiles.get(game, player_id)
        if profile is None:
            raise UnknownPlayer(player_id)
        read = time.perf_counter()
        prediction = await self.registry.predict(game, name, profile.features, player_id)
        return Served(prediction, player_id, profile.freshness, read)

    async def for_players(self, game: str, name: str, players: list[str]) -> list[Served]:
        """Several players, in order: their profiles read in one query, the model run once
        per version. Every player must have a profile."""
        if not players:
            return []
        profiles = await self.profiles.get_many(game, players)
        found = []
        for player_id, profile in zip(players, profiles, strict=True):
            if profile is None:
                raise UnknownPlayer(player_id)
            found.append(profile)
        rows = [(p.player_id, p.features) for p in found]
        answers = await self.registry.predict_many(game, name, rows)
        return [Served(a, p.player_id, p.freshness) for a, p in zip(answers, found, strict=True)]

    async def on_features(
        self, game: str, name: str, features: dict[str, Any], player_id: str | None
    ) -> Served:
        """Explicit features (``player_id`` only chooses the version of a split)."""
        return Served(await self.registry.predict(game, name, features, player_id), player_id)

    async def on_instances(
        self, game: str, name: str, rows: list[tuple[str | None, dict[str, Any]]]
    ) -> list[Served]:
        """Several explicit instances, ``(player_id, features)``, in order."""
        answers = await self.registry.predict_many(game, name, rows)
        return [Served(a, p) for a, (p, _) in zip(answers, rows, strict=True)]
