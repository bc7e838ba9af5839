"""Reading profiles: the stored fold state, evaluated into feature values as of now."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.failed_events import FailedEvent, FailedEventRepository
from app.db.profiles import StoredProfile
from app.db.reads import FastReads
from app.domain.features import FeatureSet
from app.domain.fold import decode_state, evaluate
from app.domain.partitioning import partition_for
from app.domain.tokens import decode_token


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
    segments: list[str] = msgspec.field(default_factory=list)
    """The segments the player is in now, by name."""


class ProfileService:
    """Profiles by (game, player).

    Reads asked for in the same event-loop turn share one query (``player_id =
    ANY($2)``), at most ``max_in_flight`` queries at a time: under load a query serves
    every read that arrived while the previous ones ran. A read while nothing else is
    being read queries at once (a point read), without waiting a turn for company.
    Nothing is cached: a read is answered by a query that started after it was asked, so
    it reflects every fold commit made before it was asked (what ``after`` tokens wait
    for).
    """

    def __init__(self, reads: FastReads, features: FeatureSet, max_in_flight: int = 2) -> None:
        self.reads = reads
        self.features = features
        self.max_in_flight = max_in_flight
        self._pending: dict[str, list[tuple[str, asyncio.Future[StoredProfile | None]]]] = {}
        self._in_flight = 0
        self._scheduled = False
        self._queries: set[asyncio.Task[None]] = set()
        self.queries = 0
        self.rows = 0

    async def get(self, game: str, player_id: str) -> Profile | None:
        """The profile, or None if the game never saw the player."""
        if "\x00" in player_id:  # no stored id holds one (PostgreSQL text cannot)
            return None
        if self._in_flight == 0 and not self._pending:
            stored = await self._alone(game, player_id)
        else:
            future: asyncio.Future[StoredProfile | None] = (
                asyncio.get_running_loop().create_future()
            )
            self._pending.setdefault(game, []).append((player_id, future))
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
            stored = await future
        if stored is None:
            return None
        return self._profile(player_id, stored, int(time.time() * 1_000_000))

    async def get_many(self, game: str, player_ids: list[str]) -> list[Profile | None]:
        """Each player's profile (None for a player the game never saw), in one query."""
        # An id with a NUL has no profile (PostgreSQL text cannot hold one), and must not
        # fail the query the others share.
        wanted = [p for p in dict.fromkeys(player_ids) if "\x00" not in p]
        found = await self.reads.profiles(game, wanted) if wanted else {}
        now_us = int(time.time() * 1_000_000)
        return [
            None if (stored := found.get(p)) is None else self._profile(p, stored, now_us)
            for p in player_ids
        ]

    def _profile(self, player_id: str, stored: StoredProfile, now_us: int) -> Profile:
        return Profile(
            player_id=player_id,
            features=evaluate(decode_state(stored.state), self.features, now_us),
            events_applied=stored.events_applied,
            last_event_at=stored.last_event_at,
            last_received_at=stored.last_received_at,
            updated_at=stored.updated_at,
            freshness=Freshness(folded_at=stored.updated_at, event_watermark=stored.last_event_at),
        )

    async def _alone(self, game: str, player_id: str) -> StoredProfile | None:
        """Nothing else is being read: query at once rather than wait a loop turn for
        company (reads that arrive meanwhile share the next query)."""
        self._in_flight += 1
        try:
            stored = await self.reads.profile(game, player_id)
        finally:
            self._in_flight -= 1
            if self._pending and not self._scheduled:
                self._flush()
        self.queries += 1
        self.rows += 1
        return stored

    def _flush(self) -> None:
        """Start one query per game for the reads waiting, if a query slot is free (when
        none is, the next query to finish starts them)."""
        self._scheduled = False
        while self._pending and self._in_flight < self.max_in_flight:
            game = next(iter(self._pending))
            waiting = self._pending.pop(game)
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._query(game, waiting))
            self._queries.add(task)
            task.add_done_callback(self._queries.discard)

    async def _query(
        self, game: str, waiting: list[tuple[str, asyncio.Future[StoredProfile | None]]]
    ) -> None:
        try:
            found = await self.reads.profiles(game, list({p: None for p, _ in waiting}))
        except Exception as exc:
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
        except BaseException:  # cancelled (at stop): so are the reads it served
            for _, future in waiting:
                future.cancel()
            raise
        else:
            self.queries += 1
            self.rows += len(waiting)
            for player_id, future in waiting:
                if not future.done():  # its caller may have gone
                    future.set_result(found.get(player_id))
        finally:
            self._in_flight -= 1
            if self._pending and not self._scheduled:
                self._flush()


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
