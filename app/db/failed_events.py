"""Events the fold could not apply, listed for operators."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import (
    failed_events,
)


@dataclass(frozen=True, slots=True)
class FailedEvent:
    """An event the fold could not apply, and why."""

    id: int
    game: str | None
    player_id: str | None
    event_id: str | None
    reason: str
    payload: bytes
    failed_at: datetime


class FailedEventRepository:
    """Reading the failed events store (the fold writes it, see ProfileRepository)."""

    async def recent(
        self,
        conn: AsyncConnection,
        *,
        game: str | None,
        limit: int,
        before_id: int | None = None,
        any_game: bool = False,
    ) -> list[FailedEvent]:
        """Newest first; ``game`` None with ``any_game`` lists every game's (operators)."""
        query = select(failed_events).order_by(failed_events.c.id.desc()).limit(limit)
        if not any_game:
            query = query.where(failed_events.c.game == game)
        if before_id is not None:
            query = query.where(failed_events.c.id < before_id)
        rows = (await conn.execute(query)).all()
        return [FailedEvent(**r._asdict()) for r in rows]  # the table's columns, by name
