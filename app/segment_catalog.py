"""The segments every process judges players on, and the judging itself.

A game's segments are the features file's (every game has them) and its own, defined
through the admin API (a game's own segment of the same name replaces the file's for
that game). Each process holds them compiled; a change is written to PostgreSQL with a
NOTIFY, and every worker and copy reloads within moments, as for models.

:class:`SegmentJudge` is what the fold, the segment clock and the evaluation of a new
segment over existing profiles share: within the caller's transaction, it reads the
players' memberships, evaluates their segments once per player, and records the
transitions (memberships and outbox) and the next time their windows move.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.notify import Reload
from app.db.segments import (
    ALL_GAMES,
    PlayerKey,
    SegmentRepository,
    StoredChange,
    StoredSegment,
)
from app.domain.features import FeatureFileError, FeatureSet
from app.domain.fold import ProfileState
from app.domain.segments import (
    CompiledSegment,
    SegmentDef,
    SegmentError,
    Transition,
    check_name,
    next_window_change_us,
    transitions,
)
from app.log import get_logger
from app.segment_rules import GameSegments, compile_segment

log = get_logger(__name__)


class FileSegment(Exception):
    """The segment is declared in the features file: change it there."""


class UnknownSegment(Exception):
    """No such segment in this game."""


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """A game's segment as the admin API shows it."""

    name: str
    where: str
    source: str
    """``file`` (the features file) or ``api``."""
    announce: bool
    evaluated: bool
    """True once the segment has been evaluated over every existing profile."""
    profiles_evaluated: int


class SegmentCatalog:
    """Compiled segments by game; ``put``/``delete`` change a game's own."""

    def __init__(self, engine: AsyncEngine | None, features: FeatureSet) -> None:
        self.engine = engine
        self.features = features
        self.repository = SegmentRepository()
        try:
            self.file = {d.name: compile_segment(d, features) for d in features.segments}
        except SegmentError as exc:
            raise FeatureFileError(f"features file: {exc}") from None
        self.per_game: dict[str, dict[str, CompiledSegment]] = {}
        self._games: dict[str, GameSegments | None] = {}
        self.changed = Reload(self.load, "segments")
        """A NOTIFY (or a reconnection): reload, off the listener's callback."""

    async def start(self) -> None:
        """Record the file's segments (a new or changed one is evaluated over profiles),
        then read every game's own."""
        assert self.engine is not None
        async with self.engine.begin() as conn:
            await self.repository.sync_file(conn, self.features.segments)
        await self.load()

    async def load(self) -> None:
        """Read and compile every game's own segments (a bad one is skipped, logged)."""
        if self.engine is None:
            return
        async with self.engine.connect() as conn:
            stored = await self.repository.definitions(conn)
        per_game: dict[str, dict[str, CompiledSegment]] = {}
        for row in stored:
            if row.game == ALL_GAMES:
                continue
            try:
                compiled = compile_segment(SegmentDef(row.name, row.where), self.features)
            except SegmentError as exc:
                log.warning("segment no longer compiles; skipped", game=row.game, error=str(exc))
                continue
            per_game.setdefault(row.game, {})[row.name] = compiled
        self.per_game = per_game
        self._games = {}

    def for_game(self, game: str) -> GameSegments | None:
        """The game's segments, compiled; None when it has none (nothing to evaluate)."""
        try:
            return self._games[game]
        except KeyError:
            pass
        merged = {**self.file, **self.per_game.get(game, {})}
        found = GameSegments.of(merged.values(), self.features) if merged else None
        self._games[game] = found
        return found

    def compile(self, name: str, where: str) -> CompiledSegment:
        """Check a definition; :class:`SegmentError` names the problem."""
        check_name(name)
        if name in self.features:
            raise SegmentError(f"segment {name!r}: a feature has that name")
        return compile_segment(SegmentDef(name, where), self.features)

    async def put(self, game: str, name: str, where: str, *, announce: bool) -> SegmentInfo:
        """Create or replace a game's segment; every process follows within moments."""
        compiled = self.compile(name, where)
        if name in self.file:
            raise FileSegment(name)
        assert self.engine is not None
        async with self.engine.begin() as conn:
            stored = await self.repository.put(conn, game, compiled.definition, announce=announce)
            await self.repository.notify(conn, game, name)
        self.per_game.setdefault(game, {})[name] = compiled
        self._games.pop(game, None)
        return _info(stored)

    async def delete(self, game: str, name: str) -> None:
        """Remove a game's segment and its memberships (no ``left`` is announced)."""
        if name in self.file and name not in self.per_game.get(game, {}):
            raise FileSegment(name)
        assert self.engine is not None
        async with self.engine.begin() as conn:
            if not await self.repository.delete(conn, game, name):
                raise UnknownSegment(name)
            await self.repository.notify(conn, game, name)
        self.per_game.get(game, {}).pop(name, None)
        self._games.pop(game, None)

    async def list(self, game: str) -> list[SegmentInfo]:
        """The game's segments, the file's first where a game's own does not replace them."""
        assert self.engine is not None
        async with self.engine.connect() as conn:
            stored = await self.repository.definitions(conn)
        mine = {r.name: r for r in stored if r.game == game}
        shared = {r.name: r for r in stored if r.game == ALL_GAMES and r.name not in mine}
        return [_info(r) for r in sorted([*shared.values(), *mine.values()], key=_by_name)]

    async def get(self, game: str, name: str) -> SegmentInfo:
        assert self.engine is not None
        async with self.engine.connect() as conn:
            row = await self.repository.get(conn, game, name)
            if row is None:
                row = await self.repository.get(conn, ALL_GAMES, name)
        if row is None:
            raise UnknownSegment(name)
        return _info(row)


def _by_name(row: StoredSegment) -> str:
    return row.name


def _info(row: StoredSegment) -> SegmentInfo:
    return SegmentInfo(
        name=row.name,
        where=row.where,
        source="file" if row.game == ALL_GAMES else "api",
        announce=row.announce,
        evaluated=row.backfill_state == "done",
        profiles_evaluated=row.backfill_done,
    )


class SegmentJudge:
    """Judges players on their game's segments inside the caller's transaction."""

    def __init__(
        self,
        segments_of: Callable[[str], GameSegments | None],
        repository: SegmentRepository | None = None,
    ) -> None:
        self.segments_of = segments_of
        self.repository = repository or SegmentRepository()

    def concerned(self, keys: list[PlayerKey]) -> bool:
        """True if any of these players' games has a segment (else judging costs nothing)."""
        segments_of = self.segments_of
        return any(segments_of(game) is not None for game in {k[0] for k in keys})

    async def judge(
        self,
        conn: AsyncConnection,
        states: Mapping[PlayerKey, ProfileState],
        now_us: int,
        *,
        only: str | None = None,
        announce: bool = True,
    ) -> list[Transition]:
        """Evaluate these players (once each) and record what changed; the transitions.

        ``only``: record the transitions of this segment alone (a new segment evaluated
        over existing profiles); ``announce`` False: memberships without outbox rows.
        """
        segments_of = self.segments_of
        judged = {k: s for k in states if (s := segments_of(k[0])) is not None}
        if not judged:
            return []
        before = await self.repository.memberships(conn, list(judged))
        changes: list[Transition] = []
        due: dict[PlayerKey, int | None] = {}
        nothing: frozenset[str] = frozenset()
        for key, segments in judged.items():
            state = states[key]
            values = segments.values(state, now_us)
            members = segments.members(values)
            found = transitions(
                key[0], key[1], segments.segments, before.get(key, nothing), members, values, now_us
            )
            if only is not None:
                found = [t for t in found if t.segment == only]
            changes.extend(found)
            due[key] = next_window_change_us(state, segments.reads, segments.reads.names, now_us)
        await self.repository.record(conn, changes, announce=announce)
        await self.repository.set_due(conn, due)
        return changes


class SegmentReads:
    """The read side: a segment's size and members, a player's segments."""

    def __init__(self, engine: AsyncEngine, catalog: SegmentCatalog) -> None:
        self.engine = engine
        self.catalog = catalog
        self.repository = SegmentRepository()

    async def size(self, game: str, name: str) -> tuple[SegmentInfo, int]:
        """The segment's definition and how many players are in it now."""
        info = await self.catalog.get(game, name)
        async with self.engine.connect() as conn:
            return info, await self.repository.member_count(conn, game, name)

    async def members(
        self, game: str, name: str, after: str | None, limit: int
    ) -> list[tuple[str, datetime]]:
        """A page of the segment's members, by player id: (player_id, entered_at)."""
        await self.catalog.get(game, name)
        async with self.engine.connect() as conn:
            return await self.repository.members(conn, game, name, after, limit)

    async def of_player(self, game: str, player_id: str) -> list[str]:
        """The segments the player is in now (no query when the game has none)."""
        if self.catalog.for_game(game) is None:
            return []
        async with self.engine.connect() as conn:
            return await self.repository.player_segments(conn, game, player_id)

    async def changes_after(self, game: str, after: int, limit: int) -> list[StoredChange]:
        """The game's transitions after outbox id ``after``, oldest first."""
        async with self.engine.connect() as conn:
            return await self.repository.changes_after(conn, after, limit, game=game)

    async def newest_change(self) -> int:
        """The newest outbox id (0 if none): a stream from now on starts after it."""
        async with self.engine.connect() as conn:
            return await self.repository.newest_change(conn)
