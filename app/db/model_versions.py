"""The model registry's rows: versions, rollouts, outcomes and guard events."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.guard import Guard, GuardEvent
from app.domain.outcome import Outcome
from app.domain.rollout import Rollout

from .tables import (
    model_guard_events,
    model_outcomes,
    model_rollouts,
    models,
)

MODEL_CHANNEL = "playerpulse_models"
"""NOTIFY channel: the payload is "game/name" of a model whose versions or rollout changed."""


@dataclass(frozen=True, slots=True)
class ModelVersionInfo:
    """A stored version, without its bytes."""

    name: str
    version: int
    manifest: dict[str, Any]
    sha256: str
    size_bytes: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StoredModel(ModelVersionInfo):
    """A stored version with its ONNX bytes."""

    onnx: bytes


def _model_columns(record: type[ModelVersionInfo]) -> list[Any]:
    """The columns of ``models`` named by the record's fields, in their order."""
    return [models.c[f.name] for f in fields(record)]


def _rollout(split: dict[str, Any], shadow: int | None, guard: dict[str, Any] | None) -> Rollout:
    return Rollout(
        {int(v): int(p) for v, p in split.items()},
        shadow,
        Guard(**guard) if guard else None,
    )


class ModelRepository:
    """ONNX model versions, numbered from 1 per game and name, and their rollouts."""

    async def lock(self, conn: AsyncConnection, game: str, name: str) -> None:
        """Serialise changes to one model (transaction-scoped)."""
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"model:{game}:{name}"}
        )

    async def versions(
        self, conn: AsyncConnection, game: str, name: str | None = None
    ) -> list[ModelVersionInfo]:
        """Every stored version of the game's models (or of one), by name and version."""
        query = (
            select(*_model_columns(ModelVersionInfo))
            .where(models.c.game == game)
            .order_by(models.c.name, models.c.version)
        )
        if name is not None:
            query = query.where(models.c.name == name)
        rows = (await conn.execute(query)).all()
        return [ModelVersionInfo(**r._asdict()) for r in rows]

    async def rollout(self, conn: AsyncConnection, game: str, name: str) -> Rollout | None:
        """The current rollout of a model, or None if it has none."""
        row = (
            await conn.execute(
                select(model_rollouts.c.split, model_rollouts.c.shadow, model_rollouts.c.guard)
                .where(model_rollouts.c.game == game, model_rollouts.c.name == name)
                .order_by(model_rollouts.c.id.desc())
                .limit(1)
            )
        ).first()
        if row is None:
            return None
        return _rollout(row.split, row.shadow, row.guard)

    async def rollout_history(
        self, conn: AsyncConnection, game: str, name: str
    ) -> list[tuple[datetime, Rollout]]:
        """Every rollout of a model with the time it was made, oldest first."""
        rows = (
            await conn.execute(
                select(
                    model_rollouts.c.created_at,
                    model_rollouts.c.split,
                    model_rollouts.c.shadow,
                    model_rollouts.c.guard,
                )
                .where(model_rollouts.c.game == game, model_rollouts.c.name == name)
                .order_by(model_rollouts.c.id)
            )
        ).all()
        return [(r.created_at, _rollout(r.split, r.shadow, r.guard)) for r in rows]

    async def set_rollout(
        self, conn: AsyncConnection, game: str, name: str, rollout: Rollout
    ) -> None:
        """Make ``rollout`` current (kept in the history) and tell every process."""
        await conn.execute(
            insert(model_rollouts).values(
                game=game,
                name=name,
                split={str(v): p for v, p in sorted(rollout.split.items())},
                shadow=rollout.shadow,
                guard=rollout.guard.as_dict() if rollout.guard is not None else None,
            )
        )
        await self.notify(conn, game, name)

    async def drop_current_rollout(
        self, conn: AsyncConnection, game: str, name: str
    ) -> Rollout | None:
        """Return to the rollout before the current one; None if there is none before."""
        ids = (
            await conn.scalars(
                select(model_rollouts.c.id)
                .where(model_rollouts.c.game == game, model_rollouts.c.name == name)
                .order_by(model_rollouts.c.id.desc())
                .limit(2)
            )
        ).all()
        if len(ids) < 2:
            return None
        await conn.execute(model_rollouts.delete().where(model_rollouts.c.id == ids[0]))
        await self.notify(conn, game, name)
        return await self.rollout(conn, game, name)

    async def notify(self, conn: AsyncConnection, game: str, name: str) -> None:
        """Tell every serving process (delivered when the transaction commits)."""
        await conn.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": MODEL_CHANNEL, "payload": f"{game}/{name}"},
        )

    async def add(
        self,
        conn: AsyncConnection,
        *,
        game: str,
        name: str,
        onnx: bytes,
        manifest: dict[str, Any],
        sha256: str,
        training_stats: dict[str, Any] | None = None,
    ) -> int:
        """Store the next version of ``name`` and return its number.

        A transaction-scoped advisory lock per (game, name) serialises concurrent uploads.
        """
        await self.lock(conn, game, name)
        current = await conn.scalar(
            select(func.coalesce(func.max(models.c.version), 0)).where(
                models.c.game == game, models.c.name == name
            )
        )
        version = int(current or 0) + 1
        await conn.execute(
            insert(models).values(
                game=game,
                name=name,
                version=version,
                onnx=onnx,
                manifest=manifest,
                sha256=sha256,
                size_bytes=len(onnx),
                training_stats=training_stats,
            )
        )
        return version

    async def training_stats(
        self, conn: AsyncConnection, game: str, name: str
    ) -> dict[int, dict[str, Any]]:
        """The training feature statistics of each version that has them."""
        rows = (
            await conn.execute(
                select(models.c.version, models.c.training_stats).where(
                    models.c.game == game,
                    models.c.name == name,
                    models.c.training_stats.is_not(None),
                )
            )
        ).all()
        return {r.version: r.training_stats for r in rows}

    async def set_outcome(
        self, conn: AsyncConnection, game: str, name: str, outcome: Outcome
    ) -> None:
        """Set (or replace) what counts as the model's outcome."""
        values = {"event": outcome.event, "within_s": outcome.within_s, "value": outcome.value}
        statement = pg_insert(model_outcomes).values(game=game, name=name, **values)
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=["game", "name"], set_={**values, "updated_at": func.now()}
            )
        )

    async def outcome(self, conn: AsyncConnection, game: str, name: str) -> Outcome | None:
        """The model's outcome, if one was set."""
        row = (
            await conn.execute(
                select(model_outcomes).where(
                    model_outcomes.c.game == game, model_outcomes.c.name == name
                )
            )
        ).first()
        if row is None:
            return None
        kind, _, field = row.value.partition(":")
        return Outcome(row.event, row.within_s, kind, field or None)

    async def add_guard_event(
        self, conn: AsyncConnection, game: str, name: str, event: GuardEvent
    ) -> None:
        """Record that a guard took a version out of a split."""
        fields = msgspec.to_builtins(event, order="sorted", str_keys=True)
        del fields["at"]  # the row's created_at
        await conn.execute(insert(model_guard_events).values(game=game, name=name, **fields))

    async def guard_events(self, conn: AsyncConnection, game: str, name: str) -> list[GuardEvent]:
        """Every removal by a guard, oldest first."""
        rows = (
            await conn.execute(
                select(model_guard_events)
                .where(model_guard_events.c.game == game, model_guard_events.c.name == name)
                .order_by(model_guard_events.c.id)
            )
        ).all()
        # The JSON splits' string keys become versions again (non-strict conversion);
        # column names are SQLAlchemy's str subclass, which msgspec takes only as str.
        return [
            msgspec.convert(
                {str(k): v for k, v in r._mapping.items()} | {"at": r.created_at},
                GuardEvent,
                strict=False,
            )
            for r in rows
        ]

    async def load(
        self, conn: AsyncConnection, game: str, name: str, version: int
    ) -> StoredModel | None:
        """One version with its ONNX bytes."""
        row = (
            await conn.execute(
                select(*_model_columns(StoredModel)).where(
                    models.c.game == game, models.c.name == name, models.c.version == version
                )
            )
        ).first()
        return None if row is None else StoredModel(**row._asdict())
