"""Reading profiles: the stored fold state, evaluated into feature values as of now."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.reads import FastReads
from app.db.repositories import FailedEvent, FailedEventRepository
from app.domain.features import FeatureSet
from app.domain.fold import decode_state, evaluate
from app.domain.tokens import decode_token
from app.streams.producer import partition_for


class Freshness(msgspec.Struct, frozen=True):
    """How fresh a profile (or a prediction made on it) is.

    ``folded_at``: when the fold transaction that last changed this profile wrote it (its
    commit follows at once; the event that changed it was received before). ``event_watermark``:
    the latest event time (``ts``, clock-corrected) among the events folded into this
    profile; null before any. Events with a later time are not in it yet; an event with an
    earlier time that arrives late is folded in when it arrives.
    """

    folded_at: datetime
    event_watermark: datetime | None


class Profile(msgspec.Struct, frozen=True):
    """A player's real-time profile as the API returns it, and how fresh it is."""

    player_id: str
    features: dict[str, Any]
    events_applied: int
    last_event_at: datetime | None
    last_received_at: datetime | None
    updated_at: datetime
    freshness: Freshness


class ProfileService:
    """Profiles by (game, player)."""

    def __init__(self, reads: FastReads, features: FeatureSet) -> None:
        self.reads = reads
        self.features = features

    async def get(self, game: str, player_id: str) -> Profile | None:
        """The profile, or None if the game never saw the player."""
        stored = await self.reads.profile(game, player_id)
        if stored is None:
            return None
        state = decode_state(stored.state)
        return Profile(
            player_id=player_id,
            features=evaluate(state, self.features, int(time.time() * 1_000_000)),
            events_applied=stored.events_applied,
            last_event_at=stored.last_event_at,
            last_received_at=stored.last_received_at,
            updated_at=stored.updated_at,
            freshness=Freshness(folded_at=stored.updated_at, event_watermark=stored.last_event_at),
        )


class NotFoldedInTime(Exception):
    """The events a token names for a player were not folded within the wait."""


class ReadYourWrites:
    """Waits until the fold has committed what an ingest reply's token names."""

    POLL_S = 0.005

    def __init__(
        self, reads: FastReads, partitions: Callable[[], Awaitable[int]], topic: str
    ) -> None:
        self.reads = reads
        self.partitions = partitions
        self.topic = topic

    async def wait(self, game: str, player_id: str, token: str, wait_ms: int) -> None:
        """Return once the token's events for this player are folded.

        Raises :class:`BadToken` for a token this service did not make, and
        :class:`NotFoldedInTime` after ``wait_ms``. A token with nothing on the player's
        partition (the request had no event for the player) needs no wait.
        """
        offsets = decode_token(token)
        if not offsets:
            return
        partition = partition_for(f"{game}/{player_id}".encode(), await self.partitions())
        needed = offsets.get(partition)
        if needed is None:
            return
        deadline = time.monotonic() + wait_ms / 1000
        while await self.reads.folded_offset(self.topic, partition) < needed:
            if time.monotonic() >= deadline:
                raise NotFoldedInTime(
                    f"the events of that request for player {player_id!r} were not folded "
                    f"within wait_ms={wait_ms}; ask again, or with a longer wait_ms "
                    "(at most 10000)"
                )
            await asyncio.sleep(self.POLL_S)


class FailedEventService:
    """The failed events store, for admins (their game) and operators (all games)."""

    def __init__(
        self, engine: AsyncEngine, repository: FailedEventRepository | None = None
    ) -> None:
        self.engine = engine
        self.repository = repository or FailedEventRepository()

    async def recent(
        self, game: str | None, *, limit: int = 100, before_id: int | None = None
    ) -> list[FailedEvent]:
        """Newest first; ``game`` None means every game."""
        async with self.engine.connect() as conn:
            return await self.repository.recent(
                conn, game=game, limit=limit, before_id=before_id, any_game=game is None
            )
