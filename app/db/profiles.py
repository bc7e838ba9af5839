"""Profiles as the fold writes them: a micro-batch's players locked, their states and
seen ids saved in one statement, the fold's progress per partition, and its failed events.

Batch statements pass whole columns as arrays and ``unnest`` them, so a micro-batch of
thousands of events is a handful of round trips, not one per event. Callers own the
transaction (as in every module of ``app.db``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from operator import attrgetter
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

PlayerKey = tuple[str, str]
"""(game, player_id)"""


_game_player = attrgetter("game", "player_id")


def _arrays(rows: Sequence[Any]) -> dict[str, list[Any]]:
    """The parameters of an ``unnest`` insert of these records (dataclasses, at least one):
    one array per field, named as the field."""
    return {f.name: [getattr(row, f.name) for row in rows] for f in fields(rows[0])}


@dataclass(frozen=True, slots=True)
class StoredProfile:
    """A profile row as stored."""

    state: bytes
    events_applied: int
    last_event_at: datetime | None
    last_received_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ProfileWrite:
    """A profile row to insert or replace."""

    game: str
    player_id: str
    state: bytes
    events_applied: int
    last_event_at: datetime | None
    last_received_at: datetime | None
    seen_ids: bytes | None = None
    """The remembered event id hashes (app/domain/dedup.py); None: none."""


class Progress(NamedTuple):
    """How far the fold got in a partition: an offset and its message's broker time (ms)."""

    offset: int
    appended_ms: int | None
    """None: recorded before broker times were (then the offset alone proves nothing)."""


@dataclass(frozen=True, slots=True)
class Failure:
    """An event that could not be folded: who it names (if known), why, and its bytes."""

    game: str | None
    player_id: str | None
    event_id: str | None
    reason: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class LockedProfile:
    """A stored profile, locked: its version, and its bytes unless the caller's are current."""

    version: int
    state: bytes | None
    """None: the caller's copy (of this version) is current; so are its seen ids."""
    seen_ids: bytes | None


_LOCK = text(
    """
    SELECT p.game, p.player_id, p.version,
           CASE WHEN p.version = k.known THEN NULL ELSE p.state END,
           CASE WHEN p.version = k.known THEN NULL ELSE p.seen_ids END
    FROM profiles p
    JOIN unnest(CAST(:games AS text[]), CAST(:players AS text[]), CAST(:known AS bigint[]))
      AS k(game, player_id, known)
      ON p.game = k.game AND p.player_id = k.player_id
    ORDER BY p.game, p.player_id
    FOR UPDATE OF p
    """
)


_UPSERT = text(
    """
    INSERT INTO profiles (game, player_id, state, events_applied, last_event_at,
                          last_received_at, updated_at, version, seen_ids)
    SELECT g, p, s, n, le, lr, clock_timestamp(), 1, i
    FROM unnest(CAST(:game AS text[]), CAST(:player_id AS text[]), CAST(:state AS bytea[]),
                CAST(:events_applied AS bigint[]), CAST(:last_event_at AS timestamptz[]),
                CAST(:last_received_at AS timestamptz[]), CAST(:seen_ids AS bytea[]))
         AS u(g, p, s, n, le, lr, i)
    ON CONFLICT (game, player_id) DO UPDATE
    SET state = excluded.state,
        seen_ids = excluded.seen_ids,
        events_applied = excluded.events_applied,
        last_event_at = excluded.last_event_at,
        last_received_at = excluded.last_received_at,
        updated_at = excluded.updated_at,
        version = profiles.version + 1
    """
)


_FAIL = text(
    """
    INSERT INTO failed_events (game, player_id, event_id, reason, payload)
    SELECT * FROM unnest(CAST(:game AS text[]), CAST(:player_id AS text[]),
                         CAST(:event_id AS text[]), CAST(:reason AS text[]),
                         CAST(:payload AS bytea[]))
    """
)


class ProfileRepository:
    """Profile snapshots (with the event ids they absorbed), the fold's progress, failures."""

    async def lock_states(
        self,
        conn: AsyncConnection,
        keys: Sequence[PlayerKey],
        known: dict[PlayerKey, int] | None = None,
    ) -> dict[PlayerKey, LockedProfile]:
        """These players' stored profiles, locked until the transaction ends.

        Players absent are new. The state is None where ``known`` already has the
        current version (the caller holds that state): no bytes travel for it.
        """
        if not keys:
            return {}
        known = known or {}
        result = await conn.execute(
            _LOCK,
            {
                "games": [k[0] for k in keys],
                "players": [k[1] for k in keys],
                "known": [known.get(k, -1) for k in keys],
            },
        )
        # all() fetches the rows at once (iterating the result fetches them one by one)
        return {(r[0], r[1]): LockedProfile(r[2], r[3], r[4]) for r in result.all()}

    async def save_states(self, conn: AsyncConnection, rows: Sequence[ProfileWrite]) -> None:
        """Insert or replace these profiles, stamping them with the commit-time clock."""
        if not rows:
            return
        ordered = sorted(rows, key=_game_player)
        await conn.execute(_UPSERT, _arrays(ordered))

    async def record_progress(
        self, conn: AsyncConnection, topic: str, offsets: dict[int, Progress]
    ) -> None:
        """The fold committed ``topic`` up to these offsets (never moves backwards)."""
        if not offsets:
            return
        ordered = sorted(offsets.items())
        await conn.execute(
            _PROGRESS,
            {
                "topic": topic,
                "partitions": [p for p, _ in ordered],
                "offsets": [o.offset for _, o in ordered],
                "appended": [o.appended_ms for _, o in ordered],
            },
        )

    async def committed_offsets(
        self, conn: AsyncConnection, topic: str, partitions: Sequence[int]
    ) -> dict[int, Progress]:
        """The recorded fold progress of these partitions (absent: nothing recorded)."""
        if not partitions:
            return {}
        result = await conn.execute(
            text(
                "SELECT partition, committed_offset, appended_ms FROM fold_progress "
                "WHERE topic = :topic AND partition = ANY(CAST(:partitions AS int[]))"
            ),
            {"topic": topic, "partitions": sorted(set(partitions))},
        )
        return {int(r[0]): Progress(int(r[1]), r[2]) for r in result}

    async def forget_progress(self, conn: AsyncConnection) -> None:
        """Forget the fold's progress on every topic (after a replay rebuilt the profiles)."""
        await conn.execute(text("DELETE FROM fold_progress"))

    async def has_profiles(self, conn: AsyncConnection) -> bool:
        """True if any profile exists."""
        return bool(await conn.scalar(text("SELECT EXISTS (SELECT 1 FROM profiles)")))

    async def add_failed(
        self,
        conn: AsyncConnection,
        failures: Sequence[Failure],
    ) -> None:
        """Keep events that could not be folded, with the reason."""
        if not failures:
            return
        await conn.execute(_FAIL, _arrays(failures))


_PROGRESS = text(
    """
    INSERT INTO fold_progress (topic, partition, committed_offset, updated_at, appended_ms)
    SELECT :topic, p, o, now(), a
    FROM unnest(CAST(:partitions AS int[]), CAST(:offsets AS bigint[]),
                CAST(:appended AS bigint[])) AS t(p, o, a)
    ON CONFLICT (topic, partition) DO UPDATE
    SET committed_offset = GREATEST(fold_progress.committed_offset, EXCLUDED.committed_offset),
        appended_ms = CASE
            WHEN EXCLUDED.committed_offset >= fold_progress.committed_offset
            THEN EXCLUDED.appended_ms ELSE fold_progress.appended_ms END,
        updated_at = EXCLUDED.updated_at
    """
)
