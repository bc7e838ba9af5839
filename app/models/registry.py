"""The model registry: validate and store ONNX uploads, roll versions out, serve them.

Model bytes live in PostgreSQL, so every serving process (on any machine) can load any
version. Each process keeps loaded sessions (immutable, by version) and each model's
current rollout in memory; a change committed anywhere is announced with PostgreSQL
NOTIFY, and every process forgets its copy of that rollout within moments.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.model_versions import ModelRepository, ModelVersionInfo
from app.domain.drift import DriftError, parse_stats
from app.domain.events import NAME_PATTERN
from app.domain.features import FeatureSet
from app.domain.guard import Breach, GuardEvent, GuardWatch
from app.domain.outcome import Outcome
from app.domain.predictions import PredictionRecord
from app.domain.rollout import Rollout, RolloutError
from app.log import get_logger

from .batching import Answer, ModelBatcher, run_many
from .runtime import LoadedModel, Manifest, ModelRejected, PredictionFailed, parse_manifest

log = get_logger(__name__)

MODEL_NAME = re.compile(NAME_PATTERN)


class UnknownModel(LookupError):
    """No version of this model was uploaded for this game."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a served model answered."""

    model: str
    version: int
    outputs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model's versions and its current rollout."""

    name: str
    versions: list[ModelVersionInfo]
    rollout: Rollout | None
    outcome: Outcome | None = None
    guard_events: list[GuardEvent] = dataclasses.field(default_factory=list)


class ModelRegistry:
    """Upload, store, roll out, load and run ONNX models, per game."""

    def __init__(
        self,
        engine: AsyncEngine,
        features: FeatureSet,
        *,
        max_bytes: int,
        repository: ModelRepository | None = None,
        log_prediction: Callable[[PredictionRecord], None] | None = None,
        guard_watch: GuardWatch | None = None,
    ) -> None:
        self.engine = engine
        self.features = features
        self.max_bytes = max_bytes
        self.repository = repository or ModelRepository()
        self.log_prediction = log_prediction
        self._loaded: dict[tuple[str, str, int], LoadedModel] = {}
        self._rollouts: dict[tuple[str, str], Rollout | None] = {}
        # Bumped by forget (per model, and for all at once): a rollout read from the
        # database is cached only if no change was announced while it was being read.
        self._changes: dict[tuple[str, str], int] = {}
        self._forgot_all = 0
        self.guard_watch = guard_watch
        self._removals: set[asyncio.Task[None]] = set()
        self.batcher = ModelBatcher()
        # What served predictions still owe (guard, log, shadow), settled once per turn.
        self._owed: list[tuple[Any, ...]] = []
        self._settling = False
        self._shadow_loads: set[asyncio.Task[None]] = set()

    # -- changes ------------------------------------------------------------------------

    async def upload(
        self,
        game: str,
        name: str,
        raw: bytes,
        manifest_raw: bytes | str,
        *,
        activate: bool = True,
        training_stats: bytes | str | dict[str, Any] | None = None,
    ) -> int:
        """Validate and store a new version of ``name``; return its number.

        With ``activate`` (and always for a model's first version) the new version then
        serves every player; the shadow, if any, stays. Raises :class:`ModelRejected`
        with the reason: nothing is stored then, and what serves is untouched.
        """
        manifest, stats = self._checked(name, raw, manifest_raw, training_stats)
        loaded = await asyncio.to_thread(LoadedModel, raw, manifest, self.features)
        async with self.engine.begin() as conn:
            version = await self.repository.add(
                conn,
                game=game,
                name=name,
                onnx=raw,
                manifest=msgspec.to_builtins(manifest),
                sha256=hashlib.sha256(raw).hexdigest(),
                training_stats=stats,
            )
            current = await self.repository.rollout(conn, game, name)
            if activate or current is None:
                shadow = current.shadow if current is not None else None
                guard = current.guard if current is not None else None
                rollout = Rollout.only(version, shadow if shadow != version else None, guard)
                await self.repository.set_rollout(conn, game, name, rollout)
            else:
                await self.repository.notify(conn, game, name)
        self._loaded[(game, name, version)] = loaded
        self.forget(f"{game}/{name}")
        log.info("model uploaded", game=game, model=name, version=version, bytes=len(raw))
        return version

    def _checked(
        self,
        name: str,
        raw: bytes,
        manifest_raw: bytes | str,
        training_stats: bytes | str | dict[str, Any] | None,
    ) -> tuple[Manifest, Any]:
        """The manifest and training statistics of an upload, or :class:`ModelRejected`
        saying what is wrong (before the model itself is loaded)."""
        if not MODEL_NAME.match(name):
            raise ModelRejected(
                "name: 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
            )
        if not raw:
            raise ModelRejected("model: the file part is empty")
        if len(raw) > self.max_bytes:
            raise ModelRejected(f"model: {len(raw)} bytes, more than the {self.max_bytes} allowed")
        manifest = parse_manifest(manifest_raw)
        if training_stats is None:
            return manifest, None
        inputs = [f for names in manifest.inputs.values() for f in names]
        try:
            return manifest, msgspec.to_builtins(parse_stats(training_stats, inputs))
        except DriftError as exc:
            raise ModelRejected(str(exc)) from None

    async def set_rollout(self, game: str, name: str, rollout: Rollout) -> Rollout:
        """Serve ``rollout`` (versions must exist); raises UnknownModel or RolloutError."""
        async with self.engine.begin() as conn:
            await self.repository.lock(conn, game, name)
            stored = {v.version for v in await self.repository.versions(conn, game, name)}
            if not stored:
                raise UnknownModel(name)
            missing = sorted(rollout.versions - stored)
            if missing:
                raise RolloutError(
                    f"model {name!r} has no version(s) {missing}; it has {sorted(stored)}"
                )
            await self.repository.set_rollout(conn, game, name, rollout)
        self.forget(f"{game}/{name}")
        log.info("model rollout", game=game, model=name, split=rollout.split, shadow=rollout.shadow)
        return rollout

    async def activate(self, game: str, name: str, version: int) -> Rollout:
        """Serve ``version`` to every player (a shadow stays, unless it is that version)."""
        current = await self.rollout(game, name)
        shadow = current.shadow if current is not None else None
        guard = current.guard if current is not None else None
        return await self.set_rollout(
            game, name, Rollout.only(version, shadow if shadow != version else None, guard)
        )

    async def set_outcome(self, game: str, name: str, outcome: Outcome) -> None:
        """Set what counts as the model's outcome; raises UnknownModel."""
        async with self.engine.begin() as conn:
            if await self.repository.rollout(conn, game, name) is None:
                raise UnknownModel(name)
            await self.repository.set_outcome(conn, game, name, outcome)
        log.info("model outcome", game=game, model=name, outcome=outcome.value, on=outcome.event)

    async def remove_version(self, game: str, name: str, breach: Breach) -> Rollout | None:
        """Take a version that broke its guard out of the split, and record why.

        Nothing changes (None) if it no longer serves or is the only version serving.
        """
        async with self.engine.begin() as conn:
            await self.repository.lock(conn, game, name)
            current = await self.repository.rollout(conn, game, name)
            if current is None or breach.version not in current.serving:
                return None
            try:
                after = current.without(breach.version)
            except RolloutError as exc:
                log.warning(
                    "guard breached", game=game, model=name, reason=breach.reason, kept=str(exc)
                )
                return None
            await self.repository.set_rollout(conn, game, name, after)
            event = breach.removal(current.split, after.split)
            await self.repository.add_guard_event(conn, game, name, event)
        self.forget(f"{game}/{name}")
        log.warning(
            "guard removed a version",
            game=game,
            model=name,
            version=breach.version,
            reason=breach.reason,
            split=after.split,
        )
        return after

    async def rollback(self, game: str, name: str) -> Rollout:
        """Return to the rollout before the current one; raises RolloutError if none."""
        async with self.engine.begin() as conn:
            await self.repository.lock(conn, game, name)
            if await self.repository.rollout(conn, game, name) is None:
                raise UnknownModel(name)
            previous = await self.repository.drop_current_rollout(conn, game, name)
        if previous is None:
            raise RolloutError(f"model {name!r} has no earlier rollout to go back to")
        self.forget(f"{game}/{name}")
        log.info("model rolled back", game=game, model=name, split=previous.split)
        return previous

    def forget(self, changed: str | None) -> None:
        """Drop a cached rollout ("game/name"), or all of them (None)."""
        if changed is None:
            self._forgot_all += 1
            self._rollouts.clear()
            return
        game, _, name = changed.partition("/")
        key = (game, name)
        self._changes[key] = self._changes.get(key, 0) + 1
        self._rollouts.pop(key, None)

    def _generation(self, key: tuple[str, str]) -> tuple[int, int]:
        """Changes announced so far for ``key``: differs after any ``forget`` of it."""
        return self._forgot_all, self._changes.get(key, 0)

    # -- reading ------------------------------------------------------------------------

    async def rollout(self, game: str, name: str) -> Rollout | None:
        """The current rollout (cached until a change is announced).

        A change announced while the database read is under way may concern a commit
        that read missed: the answer is then used for this call but not cached.
        """
        key = (game, name)
        if key in self._rollouts:
            return self._rollouts[key]
        generation = self._generation(key)
        async with self.engine.connect() as conn:
            rollout = await self.repository.rollout(conn, game, name)
        if self._generation(key) == generation:
            self._rollouts[key] = rollout
        return rollout

    async def describe(self, game: str, name: str | None = None) -> list[ModelInfo]:
        """The game's models (or one), with versions and current rollouts."""
        async with self.engine.connect() as conn:
            versions = await self.repository.versions(conn, game, name)
            names = sorted({v.name for v in versions})
            infos = [
                ModelInfo(
                    n,
                    [v for v in versions if v.name == n],
                    await self.repository.rollout(conn, game, n),
                    await self.repository.outcome(conn, game, n),
                    await self.repository.guard_events(conn, game, n),
                )
                for n in names
            ]
        return infos

    # -- predicting ---------------------------------------------------------------------

    async def predict(
        self, game: str, name: str, values: Mapping[str, Any], player_id: str | None = None
    ) -> Prediction:
        """Run the version the rollout picks for ``player_id`` (and the shadow, if any).

        The run is shared with the other predictions of the same version asked for in
        this event-loop turn; the guard, the log and the shadow run after the answer.
        """
        rollout = await self.rollout(game, name)
        if rollout is None:
            raise UnknownModel(name)
        version = rollout.choose(f"{game}/{name}", player_id)
        model = self._loaded.get((game, name, version)) or await self._load(game, name, version)
        answer, took = await self.batcher.run(model, values)
        self._follow_up(game, name, rollout, version, model, [(player_id, values, answer)], took)
        if isinstance(answer, PredictionFailed):
            raise answer
        return Prediction(model=name, version=version, outputs=answer)

    async def predict_many(
        self, game: str, name: str, players: Sequence[tuple[str | None, Mapping[str, Any]]]
    ) -> list[Prediction]:
        """Predictions for many players, in order: one run per version serving them.

        Raises the first row's :class:`PredictionFailed` if any row could not run (every
        row is still counted by the guard and logged).
        """
        rollout = await self.rollout(game, name)
        if rollout is None:
            raise UnknownModel(name)
        versions = [rollout.choose(f"{game}/{name}", player_id) for player_id, _ in players]
        by_version: dict[int, list[int]] = {}
        for index, version in enumerate(versions):
            by_version.setdefault(version, []).append(index)
        answers: list[Answer | None] = [None] * len(players)
        for version, indexes in by_version.items():
            model = self._loaded.get((game, name, version)) or await self._load(game, name, version)
            rows = [players[i] for i in indexes]
            started = time.perf_counter()
            outputs = run_many(model, [values for _, values in rows])
            took = time.perf_counter() - started
            self.batcher.runs += 1
            self.batcher.rows += len(rows)
            served = [(p, v, a) for (p, v), a in zip(rows, outputs, strict=True)]
            self._follow_up(game, name, rollout, version, model, served, took)
            for i, output in zip(indexes, outputs, strict=True):
                answers[i] = output
        predictions = []
        for index, answer in enumerate(answers):
            if isinstance(answer, PredictionFailed):
                raise answer
            assert answer is not None
            predictions.append(Prediction(model=name, version=versions[index], outputs=answer))
        return predictions

    def _follow_up(
        self,
        game: str,
        name: str,
        rollout: Rollout,
        version: int,
        model: LoadedModel,
        served: list[tuple[str | None, Mapping[str, Any], Answer]],
        took: float,
    ) -> None:
        """Queue what a prediction owes after its answer: the guard's count, the log, and
        the shadow's run. Done once per loop turn for all the turn's predictions, after
        their answers are written (a reply is written in the turn its handler returns)."""
        if rollout.guard is None and self.log_prediction is None and rollout.shadow is None:
            return
        self._owed.append((game, name, rollout, version, model, served, took))
        if not self._settling:
            self._settling = True
            asyncio.get_running_loop().call_soon(self._settle)

    def _settle(self) -> None:
        self._settling = False
        owed, self._owed = self._owed, []
        shadows: dict[tuple[str, str, int], list[tuple[str | None, Mapping[str, Any]]]] = {}
        for game, name, rollout, version, model, served, took in owed:
            try:
                if rollout.guard is not None:
                    for _, _, answer in served:
                        ok = not isinstance(answer, PredictionFailed)
                        self._watch(game, name, rollout, version, ok, took)
                if self.log_prediction is not None:
                    for player_id, values, answer in served:
                        if not isinstance(answer, PredictionFailed):
                            self._log(game, name, version, model, player_id, values, answer, took)
                if rollout.shadow is not None and rollout.shadow != version:
                    rows = shadows.setdefault((game, name, rollout.shadow), [])
                    rows.extend((player_id, values) for player_id, values, _ in served)
            except Exception:  # never lose the rest of the turn's follow-ups
                log.exception("prediction follow-up failed", game=game, model=name)
        for (game, name, version), rows in shadows.items():
            model = self._loaded.get((game, name, version))
            if model is not None:
                self._shadow(game, name, version, model, rows)
            else:
                task = asyncio.get_running_loop().create_task(
                    self._load_shadow(game, name, version, rows)
                )
                self._shadow_loads.add(task)
                task.add_done_callback(self._shadow_loads.discard)

    async def drain(self) -> None:
        """At stop, before the prediction log's last flush: what predictions still owe."""
        self._settle()
        while self._shadow_loads:
            await asyncio.gather(*self._shadow_loads, return_exceptions=True)
        self._settle()

    def _watch(
        self, game: str, name: str, rollout: Rollout, version: int, ok: bool, took: float
    ) -> None:
        """Count a served prediction against the guard; a breach starts the removal."""
        if self.guard_watch is None or rollout.guard is None:
            return
        breach = self.guard_watch.record(
            f"{game}/{name}", version, rollout.guard, ok, took * 1000, time.perf_counter()
        )
        if breach is not None:
            self.guard_watch.reset(f"{game}/{name}", version)
            task = asyncio.create_task(self._remove(game, name, breach))
            self._removals.add(task)
            task.add_done_callback(self._removals.discard)

    async def _remove(self, game: str, name: str, breach: Breach) -> None:
        # Off the request path; a failure is logged, and the next breached window retries.
        try:
            await self.remove_version(game, name, breach)
        except Exception:
            log.exception("guard removal failed", game=game, model=name, version=breach.version)

    async def _load_shadow(
        self, game: str, name: str, version: int, rows: list[tuple[str | None, Mapping[str, Any]]]
    ) -> None:
        try:
            model = self._loaded.get((game, name, version)) or await self._load(game, name, version)
        except Exception as exc:
            log.warning(
                "shadow model failed", game=game, model=name, version=version, error=str(exc)
            )
            return
        self._shadow(game, name, version, model, rows)

    def _shadow(
        self,
        game: str,
        name: str,
        version: int,
        model: LoadedModel,
        rows: list[tuple[str | None, Mapping[str, Any]]],
    ) -> None:
        # A shadow never answers and must never break the answer: failures are logged.
        started = time.perf_counter()
        try:
            answers = run_many(model, [values for _, values in rows])
        except Exception as exc:
            log.warning(
                "shadow model failed", game=game, model=name, version=version, error=str(exc)
            )
            return
        took = time.perf_counter() - started
        for (player_id, values), answer in zip(rows, answers, strict=True):
            if isinstance(answer, PredictionFailed):
                log.warning(
                    "shadow model failed", game=game, model=name, version=version, error=str(answer)
                )
            elif self.log_prediction is not None:
                self._log(game, name, version, model, player_id, values, answer, took, shadow=True)

    def _log(
        self,
        game: str,
        name: str,
        version: int,
        model: LoadedModel,
        player_id: str | None,
        values: Mapping[str, Any],
        outputs: dict[str, Any],
        took: float,
        *,
        shadow: bool = False,
    ) -> None:
        assert self.log_prediction is not None
        used = {f: values.get(f) for b in model.bindings for f in b.features}
        self.log_prediction(
            PredictionRecord(
                game=game,
                model=name,
                version=version,
                ts=time.time_ns() // 1000,
                latency_us=int(took * 1_000_000),
                outputs=outputs,
                features=used,
                shadow=shadow,
                player_id=player_id,
            )
        )

    async def _load(self, game: str, name: str, version: int) -> LoadedModel:
        key = (game, name, version)
        model = self._loaded.get(key)
        if model is not None:
            return model
        async with self.engine.connect() as conn:
            stored = await self.repository.load(conn, game, name, version)
        if stored is None:
            raise UnknownModel(name)
        manifest = msgspec.convert(stored.manifest, type=Manifest)
        model = await asyncio.to_thread(
            LoadedModel, stored.onnx, manifest, self.features, checked=True
        )
        self._loaded[key] = model
        return model


__all__ = [
    "ModelInfo",
    "ModelRegistry",
    "ModelRejected",
    "Prediction",
    "PredictionRecord",
    "RolloutError",
    "UnknownModel",
]
