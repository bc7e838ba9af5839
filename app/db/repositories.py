"""Repositories: every SQL statement of the service. Callers own the transaction.

Batch statements pass whole columns as arrays and ``unnest`` them, so a micro-batch
of thousands of events is a handful of round trips, not one per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec
from sqlalchemy import func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.access import Role
from app.domain.audit import GENESIS, AuditEntry, AuditRecord, record_hash
from app.domain.guard import Guard, GuardEvent
from app.domain.outcome import Outcome
from app.domain.rollout import Rollout

from .tables import (
    api_keys,
    audit_log,
    failed_events,
    feature_defs,
    game_cors,
    model_guard_events,
    model_outcomes,
    model_rollouts,
    models,
)

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


class FeatureDefRepository:
    """Fingerprints of the features the stored profiles were built with."""

    async def fingerprints(self, conn: AsyncConnection) -> dict[str, str]:
        """Feature name -> fingerprint, as last recorded."""
        rows = await conn.execute(select(feature_defs.c.name, feature_defs.c.fingerprint))
        return {r.name: r.fingerprint for r in rows}

    async def record(self, conn: AsyncConnection, fingerprints: dict[str, str]) -> None:
        """Record the features profiles are now built with."""
        await conn.execute(feature_defs.delete())
        if fingerprints:
            await conn.execute(
                insert(feature_defs),
                [{"name": n, "fingerprint": f} for n, f in sorted(fingerprints.items())],
            )

    async def lock(self, conn: AsyncConnection) -> None:
        """Serialise feature checks and rebuilds across processes (transaction-scoped)."""
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('playerpulse:features'))"))


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


# -- operations: keys, audit, CORS ------------------------------------------------------

KEY_CHANNEL = "playerpulse_keys"
"""NOTIFY channel: the payload is the hash of a key that was revoked or changed."""

_AUDIT_LOCK = 0x706C_6175_6469_74  # serialises appends, so the chain stays one line


@dataclass(frozen=True, slots=True)
class StoredKey:
    """An API key as listed (never its secret, which is not stored)."""

    id: str
    game: str
    role: str
    name: str | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    replaced_by: str | None
    key_hash: str


class ApiKeyRepository:
    """Listing, revoking and rotating keys; every change is announced on KEY_CHANNEL."""

    async def add(
        self,
        conn: AsyncConnection,
        *,
        key_id: str,
        key_hash: str,
        game: str,
        role: Role,
        name: str | None,
        expires_at: datetime | None,
    ) -> None:
        """Store a new key."""
        await conn.execute(
            insert(api_keys).values(
                id=key_id,
                key_hash=key_hash,
                game=game,
                role=role.value,
                name=name,
                expires_at=expires_at,
            )
        )

    async def list(self, conn: AsyncConnection, game: str | None) -> list[StoredKey]:
        """Every key (of ``game``), oldest first."""
        query = select(*(api_keys.c[f] for f in StoredKey.__dataclass_fields__)).order_by(
            api_keys.c.created_at, api_keys.c.id
        )
        if game is not None:
            query = query.where(api_keys.c.game == game)
        return [StoredKey(**row._mapping) for row in await conn.execute(query)]

    async def get(
        self, conn: AsyncConnection, key_id: str, *, lock: bool = False
    ) -> StoredKey | None:
        """One key by id."""
        query = select(*(api_keys.c[f] for f in StoredKey.__dataclass_fields__)).where(
            api_keys.c.id == key_id
        )
        if lock:
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        return None if row is None else StoredKey(**row._mapping)

    async def revoke(self, conn: AsyncConnection, key: StoredKey, at: datetime) -> None:
        """Revoke ``key`` at ``at`` (now, or later for a rotation's overlap); an earlier
        revocation stands."""
        await conn.execute(
            text(
                "UPDATE api_keys SET revoked_at = LEAST(COALESCE(revoked_at, :at), :at) "
                "WHERE id = :id"
            ),
            {"at": at, "id": key.id},
        )
        await self.announce(conn, key.key_hash)

    async def replaced(self, conn: AsyncConnection, key_id: str, by: str) -> None:
        """Record which key replaced ``key_id`` in a rotation."""
        await conn.execute(
            text("UPDATE api_keys SET replaced_by = :by WHERE id = :id"), {"by": by, "id": key_id}
        )

    async def touch(self, conn: AsyncConnection, key_hash: str) -> None:
        """Note that a key was used now."""
        await conn.execute(
            text("UPDATE api_keys SET last_used_at = now() WHERE key_hash = :h"), {"h": key_hash}
        )

    async def announce(self, conn: AsyncConnection, key_hash: str) -> None:
        """Tell every process (at commit) to forget what it cached about the key."""
        await conn.execute(text("SELECT pg_notify(:c, :h)"), {"c": KEY_CHANNEL, "h": key_hash})


class AuditRepository:
    """The append-only, hash-chained audit log."""

    async def append(self, conn: AsyncConnection, entry: AuditEntry, at: datetime) -> AuditRecord:
        """Chain ``entry`` after the last record (appends are serialised by a lock)."""
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _AUDIT_LOCK})
        last = (
            await conn.execute(
                select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
            )
        ).first()
        seq, prev = (1, GENESIS) if last is None else (last[0] + 1, last[1])
        digest = record_hash(prev, seq, at, entry)
        record = AuditRecord(
            seq=seq,
            at=at,
            game=entry.game,
            actor=entry.actor,
            action=entry.action,
            target=entry.target,
            outcome=entry.outcome,
            request_id=entry.request_id,
            prev_hash=prev,
            hash=digest,
        )
        await conn.execute(insert(audit_log).values(**asdict(record)))
        return record

    async def list(
        self, conn: AsyncConnection, game: str | None, *, after: int = 0, limit: int | None = None
    ) -> list[AuditRecord]:
        """Records after ``after`` (a seq), oldest first; of ``game`` only if given."""
        query = select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq)
        if game is not None:
            query = query.where(audit_log.c.game == game)
        if limit is not None:
            query = query.limit(limit)
        return [AuditRecord(**row._mapping) for row in await conn.execute(query)]


class CorsRepository:
    """The browser origins each game allows."""

    async def put(self, conn: AsyncConnection, game: str, origins: list[str]) -> None:
        """Replace the game's allowed origins."""
        statement = pg_insert(game_cors).values(game=game, origins=origins)
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[game_cors.c.game],
                set_={"origins": statement.excluded.origins, "updated_at": func.now()},
            )
        )

    async def all(self, conn: AsyncConnection) -> dict[str, list[str]]:
        """Every game's allowed origins."""
        rows = await conn.execute(select(game_cors.c.game, game_cors.c.origins))
        return {row[0]: list(row[1]) for row in rows}
