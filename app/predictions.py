"""What a prediction route needs, as one object: the model registry, the profiles it
predicts on, and the wait for an ingest reply's token."""

from __future__ import annotations

from dataclasses import dataclass

from app.models.registry import ModelRegistry
from app.profiles import ProfileService, ReadYourWrites


@dataclass(frozen=True, slots=True)
class PredictionService:
    """The prediction routes' one dependency (each dependency costs every request)."""

    registry: ModelRegistry
    profiles: ProfileService
    read_your_writes: ReadYourWrites
