"""The segment clock: exits (and entries) that time alone causes, and new segments
evaluated over the profiles that already exist.

Every process runs one. Each tick it re-evaluates the players whose windowed features
changed by now (``segment_due``, written with each profile), locking their profiles as
the fold does, so the two never judge a player at once; then it takes a segment that is
new or changed and evaluates it over the next pages of existing profiles (locked with
SKIP LOCKED: one process per segment at a time, resumed from where the last one got).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.profiles import PlayerKey, ProfileRepository
from app.db.segments import ALL_GAMES, Backfill, SegmentRepository
from app.domain.fold import ProfileState, decode_state
from app.domain.segments import CompiledSegment, SegmentDef, SegmentError
from app.log import get_logger
from app.segment_catalog import SegmentCatalog, SegmentJudge
from app.segment_rules import GameSegments, compile_segment

log = get_logger(__name__)


class SegmentClock:
    """Re-evaluates due players and evaluates new segments over existing profiles."""

    def __init__(
        self,
        engine: AsyncEngine,
        catalog: SegmentCatalog,
        *,
        interval_s: float = 1.0,
        page: int = 500,
        keep_changes_s: float = 7 * 86400,
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        self.judge = SegmentJudge(catalog.for_game)
        self.interval_s = interval_s
        self.page = page
        self.keep_changes_s = keep_changes_s
        self._next_prune = 0.0
        self.profiles = ProfileRepository()
        self.repository = SegmentRepository()

    async def run_forever(self) -> None:
        """Tick until cancelled; a failed tick is logged and the next one tries again."""
        while True:
            try:
                await self.tick()
            except (DBAPIError, OSError, TimeoutError) as exc:
                log.warning("segment clock tick failed; retrying", error=str(exc))
            except Exception:
                log.exception("segment clock tick raised")
            await asyncio.sleep(self.interval_s)

    async def tick(self) -> None:
        """One round: due players (all of them), then new segments for about half a second."""
        while await self.due_round() == self.page:
            pass
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and await self.backfill_round():
            pass
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + 60
            await self.prune()

    async def prune(self) -> int:
        """Forget transitions past their keeping time that every relay delivered."""
        async with self.engine.begin() as conn:
            return await self.repository.prune_changes(conn, self.keep_changes_s)

    async def _states(
        self, conn: AsyncConnection, keys: list[PlayerKey]
    ) -> dict[PlayerKey, ProfileState]:
        locked = await self.profiles.lock_states(conn, sorted(keys))
        return {k: decode_state(row.state) for k, row in locked.items() if row.state is not None}

    async def due_round(self) -> int:
        """Re-evaluate players whose windows moved; how many were due."""
        async with self.engine.connect() as conn:
            keys = await self.repository.due_players(conn, self.page)
        if not keys:
            return 0
        async with self.engine.begin() as conn:
            states = await self._states(conn, keys)
            now_us = time.time_ns() // 1000
            await self.judge.judge(conn, states, now_us)
            # A due player with no profile any more (erased), or no segments: forgotten.
            gone = {k: None for k in keys if k not in states or self.catalog.for_game(k[0]) is None}
            await self.repository.set_due(conn, gone)
        return len(keys)

    async def backfill_round(self) -> bool:
        """Evaluate one new or changed segment over the next page of profiles; False if
        none awaits evaluation."""
        async with self.engine.begin() as conn:
            backfill = await self.repository.claim_backfill(conn)
            if backfill is None:
                return False
            try:
                compiled = compile_segment(
                    SegmentDef(backfill.name, backfill.where), self.catalog.features
                )
            except SegmentError as exc:
                log.warning("segment does not compile; not evaluated", error=str(exc))
                await self.repository.advance_backfill(conn, backfill, None, 0)
                return True
            keys = await self.repository.profile_keys(
                conn, backfill.game, backfill.after, self.page
            )
            states = await self._states(conn, keys)
            judge = SegmentJudge(_with(self.catalog, backfill, compiled))
            await judge.judge(
                conn,
                states,
                time.time_ns() // 1000,
                only=backfill.name,
                announce=backfill.announce,
            )
            last = keys[-1] if len(keys) == self.page else None
            await self.repository.advance_backfill(conn, backfill, last, len(keys))
        if last is None:
            log.info(
                "segment evaluated over existing profiles", game=backfill.game, name=backfill.name
            )
        return True


def _with(
    catalog: SegmentCatalog, backfill: Backfill, compiled: CompiledSegment
) -> Callable[[str], GameSegments | None]:
    """The catalog's segments of a game, with the one being evaluated as stored."""

    def segments_of(game: str) -> GameSegments | None:
        held = catalog.for_game(game)
        if backfill.game not in (ALL_GAMES, game):
            return held
        chosen = {s.name: s for s in (held.segments if held else ())}
        chosen[compiled.definition.name] = compiled
        return GameSegments.of(chosen.values(), catalog.features)

    return segments_of
