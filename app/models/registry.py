"""The model registry: validate and store ONNX uploads, serve the newest version.

Model bytes live in PostgreSQL, so every serving process (on any machine) can load any
version. Each process keeps loaded sessions in memory, keyed by version, and asks
PostgreSQL which version serves (the newest) on each prediction.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.repositories import ModelRepository
from app.domain.features import FeatureSet
from app.log import get_logger

from .runtime import LoadedModel, Manifest, ModelRejected, parse_manifest

log = get_logger(__name__)

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class UnknownModel(LookupError):
    """No version of this model was uploaded for this game."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a served model answered."""

    model: str
    version: int
    outputs: dict[str, Any]


class ModelRegistry:
    """Upload, store, load and run ONNX models, per game."""

    def __init__(
        self,
        engine: AsyncEngine,
        features: FeatureSet,
        *,
        max_bytes: int,
        repository: ModelRepository | None = None,
    ) -> None:
        self.engine = engine
        self.features = features
        self.max_bytes = max_bytes
        self.repository = repository or ModelRepository()
        self._loaded: dict[tuple[str, str, int], LoadedModel] = {}

    async def upload(self, game: str, name: str, onnx: bytes, manifest_raw: bytes | str) -> int:
        """Validate and store a new version of ``name``; return its number.

        Raises :class:`ModelRejected` with the reason; nothing is stored then, and the
        serving version is untouched.
        """
        if not MODEL_NAME.match(name):
            raise ModelRejected(
                "name: 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
            )
        if not onnx:
            raise ModelRejected("model: the file part is empty")
        if len(onnx) > self.max_bytes:
            raise ModelRejected(f"model: {len(onnx)} bytes, more than the {self.max_bytes} allowed")
        manifest = parse_manifest(manifest_raw)
        loaded = await asyncio.to_thread(LoadedModel, onnx, manifest, self.features)
        async with self.engine.begin() as conn:
            version = await self.repository.add(
                conn,
                game=game,
                name=name,
                onnx=onnx,
                manifest=msgspec.to_builtins(manifest),
                sha256=hashlib.sha256(onnx).hexdigest(),
            )
        self._loaded[(game, name, version)] = loaded
        log.info("model uploaded", game=game, model=name, version=version, bytes=len(onnx))
        return version

    async def predict(self, game: str, name: str, values: Mapping[str, Any]) -> Prediction:
        """Run the serving version of ``name`` on one player's feature values."""
        async with self.engine.connect() as conn:
            version = await self.repository.serving_version(conn, game, name)
        if version is None:
            raise UnknownModel(name)
        model = await self._load(game, name, version)
        return Prediction(model=name, version=version, outputs=model.run(values))

    async def _load(self, game: str, name: str, version: int) -> LoadedModel:
        key = (game, name, version)
        model = self._loaded.get(key)
        if model is not None:
            return model
        async with self.engine.connect() as conn:
            stored = await self.repository.load(conn, game, name, version)
        if stored is None or stored.onnx is None:
            raise UnknownModel(name)
        manifest = msgspec.convert(stored.manifest, type=Manifest)
        model = await asyncio.to_thread(LoadedModel, stored.onnx, manifest, self.features)
        self._loaded[key] = model
        return model


__all__ = ["ModelRegistry", "ModelRejected", "Prediction", "UnknownModel"]
