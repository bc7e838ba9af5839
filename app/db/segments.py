"""Segments' SQL: definitions, memberships, due times, the transitions outbox, cursors,
webhooks. Callers own the transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.segments import SegmentDef, Transition

PlayerKey = tuple[str, str]

SEGMENT_CHANNEL = "playerpulse_segments"
"""NOTIFY channel: a segment definition changed (payload: "game/name")."""
CHANGES_CHANNEL = "playerpulse_segment_changes"
"""NOTIFY channel: transitions were committed to the outbox (payload: the newest id)."""

ALL_GAMES = ""
"""The ``game`` of the features file's segments: every game has them."""

_json = msgspec.json.Encoder()


def _at(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, UTC)


@dataclass(frozen=True, slots=True)
class StoredSegment:
    """A segment definition as stored, with how far its evaluation over profiles got."""

    game: str
    name: str
    where: str
    announce: bool
    backfill_state: str
    backfill_done: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StoredChange:
    """A transition as recorded in the outbox."""

    id: int
    game: str
    player_id: str
    segment: str
    kind: str
    at: datetime
    features: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Backfill:
    """A segment whose evaluation over existing profiles is under way."""

    game: str
    name: str
    where: str
    announce: bool
    after: PlayerKey | None


_DEF_COLUMNS = (
    "game, name, where_expr, announce, backfill_state, backfill_done, created_at, updated_at"
)
_CHANGE_COLUMNS = "id, game, player_id, segment, kind, at, features"


class SegmentRepository:
    """Everything segments store."""

    # -- definitions --------------------------------------------------------------------

    async def definitions(self, conn: AsyncConnection) -> list[StoredSegment]:
        """Every stored definition (the file's with game ``""``)."""
        rows = await conn.execute(text(f"SELECT {_DEF_COLUMNS} FROM segment_defs"))
        return [StoredSegment(*r) for r in rows.all()]

    async def get(self, conn: AsyncConnection, game: str, name: str) -> StoredSegment | None:
        row = (
            await conn.execute(
                text(f"SELECT {_DEF_COLUMNS} FROM segment_defs WHERE game = :g AND name = :n"),
                {"g": game, "n": name},
            )
        ).first()
        return None if row is None else StoredSegment(*row)

    async def put(
        self, conn: AsyncConnection, game: str, definition: SegmentDef, *, announce: bool
    ) -> StoredSegment:
        """Create or replace; a new or changed expression is evaluated over profiles again."""
        row = (
            await conn.execute(
                text(
                    f"""
                    INSERT INTO segment_defs (game, name, where_expr, announce)
                    VALUES (:g, :n, :w, :a)
                    ON CONFLICT (game, name) DO UPDATE
                    SET where_expr = excluded.where_expr, announce = excluded.announce,
                        backfill_state = CASE WHEN segment_defs.where_expr = excluded.where_expr
                                         THEN segment_defs.backfill_state ELSE 'pending' END,
                        backfill_game = CASE WHEN segment_defs.where_expr = excluded.where_expr
                                        THEN segment_defs.backfill_game ELSE NULL END,
                        backfill_after = CASE WHEN segment_defs.where_expr = excluded.where_expr
                                         THEN segment_defs.backfill_after ELSE NULL END,
                        backfill_done = CASE WHEN segment_defs.where_expr = excluded.where_expr
                                        THEN segment_defs.backfill_done ELSE 0 END,
                        updated_at = now()
                    RETURNING {_DEF_COLUMNS}
                    """
                ),
                {"g": game, "n": definition.name, "w": definition.where, "a": announce},
            )
        ).one()
        return StoredSegment(*row)

    async def delete(self, conn: AsyncConnection, game: str, name: str) -> bool:
        """Remove a game's segment and its memberships; False if there was none."""
        gone = await conn.execute(
            text("DELETE FROM segment_defs WHERE game = :g AND name = :n"), {"g": game, "n": name}
        )
        await conn.execute(
            text("DELETE FROM segment_members WHERE game = :g AND segment = :n"),
            {"g": game, "n": name},
        )
        return bool(gone.rowcount)

    async def sync_file(self, conn: AsyncConnection, defs: Sequence[SegmentDef]) -> None:
        """Record the features file's segments; drop those it no longer has (and their
        memberships, in games that do not define a segment of that name themselves)."""
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('playerpulse:segments'))"))
        for definition in defs:
            await self.put(conn, ALL_GAMES, definition, announce=True)
        names = [d.name for d in defs]
        gone = await conn.execute(
            text(
                "DELETE FROM segment_defs WHERE game = '' "
                "AND NOT (name = ANY(CAST(:names AS text[]))) RETURNING name"
            ),
            {"names": names},
        )
        removed = [r[0] for r in gone.all()]
        if removed:
            await conn.execute(
                text(
                    "DELETE FROM segment_members m WHERE m.segment = ANY(CAST(:r AS text[])) "
                    "AND NOT EXISTS (SELECT 1 FROM segment_defs d "
                    "WHERE d.game = m.game AND d.name = m.segment)"
                ),
                {"r": removed},
            )

    async def notify(self, conn: AsyncConnection, game: str, name: str) -> None:
        """Tell every process (at commit) that this game's segments changed."""
        await conn.execute(
            text("SELECT pg_notify(:c, :p)"), {"c": SEGMENT_CHANNEL, "p": f"{game}/{name}"}
        )

    # -- memberships and transitions ----------------------------------------------------

    async def memberships(
        self, conn: AsyncConnection, keys: Sequence[PlayerKey]
    ) -> dict[PlayerKey, set[str]]:
        """The segments each of these players is in (absent: none)."""
        if not keys:
            return {}
        rows = await conn.execute(
            text(
                """
                SELECT m.game, m.player_id, m.segment FROM segment_members m
                JOIN unnest(CAST(:g AS text[]), CAST(:p AS text[])) AS k(game, player_id)
                  ON m.game = k.game AND m.player_id = k.player_id
                """
            ),
            {"g": [k[0] for k in keys], "p": [k[1] for k in keys]},
        )
        found: dict[PlayerKey, set[str]] = {}
        for game, player, segment in rows.all():
            found.setdefault((game, player), set()).add(segment)
        return found

    async def record(
        self,
        conn: AsyncConnection,
        changes: Sequence[Transition],
        *,
        announce: bool = True,
    ) -> None:
        """Apply these transitions to the memberships and (``announce``) the outbox."""
        if not changes:
            return
        entered = [c for c in changes if c.kind == "entered"]
        left = [c for c in changes if c.kind == "left"]
        if entered:
            await conn.execute(
                text(
                    """
                    INSERT INTO segment_members (game, segment, player_id, entered_at)
                    SELECT * FROM unnest(CAST(:g AS text[]), CAST(:s AS text[]),
                                         CAST(:p AS text[]), CAST(:t AS timestamptz[]))
                    ON CONFLICT DO NOTHING
                    """
                ),
                {
                    "g": [c.game for c in entered],
                    "s": [c.segment for c in entered],
                    "p": [c.player_id for c in entered],
                    "t": [_at(c.at_us) for c in entered],
                },
            )
        if left:
            await conn.execute(
                text(
                    """
                    DELETE FROM segment_members m
                    USING unnest(CAST(:g AS text[]), CAST(:s AS text[]), CAST(:p AS text[]))
                          AS k(game, segment, player_id)
                    WHERE m.game = k.game AND m.segment = k.segment
                      AND m.player_id = k.player_id
                    """
                ),
                {
                    "g": [c.game for c in left],
                    "s": [c.segment for c in left],
                    "p": [c.player_id for c in left],
                },
            )
        if not announce:
            return
        # Outbox ids in commit order: writers take turns from here to their commit (short:
        # the end of a fold transaction), so a relay that has read up to an id never sees
        # a smaller one commit later.
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('playerpulse:outbox'))"))
        await conn.execute(
            text(
                """
                INSERT INTO segment_changes (game, player_id, segment, kind, at, features)
                SELECT * FROM unnest(CAST(:g AS text[]), CAST(:p AS text[]),
                                     CAST(:s AS text[]), CAST(:k AS text[]),
                                     CAST(:t AS timestamptz[]), CAST(:f AS jsonb[]))
                """
            ),
            {
                "g": [c.game for c in changes],
                "p": [c.player_id for c in changes],
                "s": [c.segment for c in changes],
                "k": [c.kind for c in changes],
                "t": [_at(c.at_us) for c in changes],
                "f": [_json.encode(c.features).decode() for c in changes],
            },
        )
        await conn.execute(text("SELECT pg_notify(:c, '')"), {"c": CHANGES_CHANNEL})

    async def set_due(self, conn: AsyncConnection, due: Mapping[PlayerKey, int | None]) -> None:
        """When each player's windowed features next change (None: never; row removed)."""
        later = sorted((k, us) for k, us in due.items() if us is not None)
        never = sorted(k for k, us in due.items() if us is None)
        if later:
            await conn.execute(
                text(
                    """
                    INSERT INTO segment_due (game, player_id, due_at)
                    SELECT * FROM unnest(CAST(:g AS text[]), CAST(:p AS text[]),
                                         CAST(:t AS timestamptz[]))
                    ON CONFLICT (game, player_id) DO UPDATE SET due_at = excluded.due_at
                    """
                ),
                {
                    "g": [k[0] for k, _ in later],
                    "p": [k[1] for k, _ in later],
                    "t": [_at(us) for _, us in later],
                },
            )
        if never:
            await conn.execute(
                text(
                    """
                    DELETE FROM segment_due d
                    USING unnest(CAST(:g AS text[]), CAST(:p AS text[])) AS k(game, player_id)
                    WHERE d.game = k.game AND d.player_id = k.player_id
                    """
                ),
                {"g": [k[0] for k in never], "p": [k[1] for k in never]},
            )

    async def due_players(self, conn: AsyncConnection, limit: int) -> list[PlayerKey]:
        """Players whose windowed features changed by now (oldest due first)."""
        rows = await conn.execute(
            text(
                "SELECT game, player_id FROM segment_due WHERE due_at <= clock_timestamp() "
                "ORDER BY due_at LIMIT :n"
            ),
            {"n": limit},
        )
        return [(r[0], r[1]) for r in rows.all()]

    # -- evaluating a new or changed segment over existing profiles ---------------------

    async def claim_backfill(self, conn: AsyncConnection) -> Backfill | None:
        """A segment awaiting evaluation over profiles, locked (none if all are done or
        another process holds them)."""
        row = (
            await conn.execute(
                text(
                    "SELECT game, name, where_expr, announce, backfill_game, backfill_after "
                    "FROM segment_defs WHERE backfill_state = 'pending' "
                    "ORDER BY updated_at LIMIT 1 FOR UPDATE SKIP LOCKED"
                )
            )
        ).first()
        if row is None:
            return None
        after = None if row[5] is None else (row[4], row[5])
        return Backfill(row[0], row[1], row[2], row[3], after)

    async def profile_keys(
        self, conn: AsyncConnection, game: str, after: PlayerKey | None, limit: int
    ) -> list[PlayerKey]:
        """Profiles in key order after ``after``: one game's, or every game's (``""``)."""
        where = ["true"]
        params: dict[str, Any] = {"n": limit}
        if game != ALL_GAMES:
            where.append("game = :game")
            params["game"] = game
        if after is not None:
            where.append("(game, player_id) > (:ag, :ap)")
            params.update(ag=after[0], ap=after[1])
        rows = await conn.execute(
            text(
                f"SELECT game, player_id FROM profiles WHERE {' AND '.join(where)} "
                "ORDER BY game, player_id LIMIT :n"
            ),
            params,
        )
        return [(r[0], r[1]) for r in rows.all()]

    async def advance_backfill(
        self, conn: AsyncConnection, backfill: Backfill, last: PlayerKey | None, count: int
    ) -> None:
        """Record progress; ``last`` None: finished."""
        await conn.execute(
            text(
                """
                UPDATE segment_defs
                SET backfill_game = :lg, backfill_after = :lp,
                    backfill_done = backfill_done + :n,
                    backfill_state = CASE WHEN CAST(:lp AS text) IS NULL THEN 'done'
                                     ELSE 'pending' END
                WHERE game = :g AND name = :s
                """
            ),
            {
                "g": backfill.game,
                "s": backfill.name,
                "lg": None if last is None else last[0],
                "lp": None if last is None else last[1],
                "n": count,
            },
        )

    # -- reads ----------------------------------------------------------------------------

    async def member_count(self, conn: AsyncConnection, game: str, segment: str) -> int:
        return int(
            await conn.scalar(
                text("SELECT count(*) FROM segment_members WHERE game = :g AND segment = :s"),
                {"g": game, "s": segment},
            )
            or 0
        )

    async def members(
        self, conn: AsyncConnection, game: str, segment: str, after: str | None, limit: int
    ) -> list[tuple[str, datetime]]:
        """A page of members (player id order): (player_id, entered_at)."""
        rows = await conn.execute(
            text(
                "SELECT player_id, entered_at FROM segment_members "
                "WHERE game = :g AND segment = :s AND player_id > :a "
                "ORDER BY player_id LIMIT :n"
            ),
            {"g": game, "s": segment, "a": after or "", "n": limit},
        )
        return [(r[0], r[1]) for r in rows.all()]

    async def player_segments(self, conn: AsyncConnection, game: str, player_id: str) -> list[str]:
        rows = await conn.execute(
            text(
                "SELECT segment FROM segment_members WHERE game = :g AND player_id = :p "
                "ORDER BY segment"
            ),
            {"g": game, "p": player_id},
        )
        return [r[0] for r in rows.all()]

    async def changes_after(
        self, conn: AsyncConnection, after_id: int, limit: int, game: str | None = None
    ) -> list[StoredChange]:
        """Outbox rows after ``after_id`` in id order (one game's, or all)."""
        where = "id > :a" + ("" if game is None else " AND game = :g")
        rows = await conn.execute(
            text(
                f"SELECT {_CHANGE_COLUMNS} FROM segment_changes WHERE {where} ORDER BY id LIMIT :n"
            ),
            {"a": after_id, "g": game, "n": limit},
        )
        return [StoredChange(*r) for r in rows.all()]

    async def prune_changes(self, conn: AsyncConnection, older_than_s: float) -> int:
        """Delete transitions older than this that every relay has delivered; how many."""
        gone = await conn.execute(
            text(
                """
                DELETE FROM segment_changes
                WHERE at < clock_timestamp() - make_interval(secs => :s)
                  AND id <= (SELECT coalesce(min(last_id), 0) FROM segment_cursors)
                """
            ),
            {"s": older_than_s},
        )
        return int(gone.rowcount or 0)

    async def newest_change(self, conn: AsyncConnection) -> int:
        """The newest outbox id (0: none yet)."""
        return int(await conn.scalar(text("SELECT coalesce(max(id), 0) FROM segment_changes")) or 0)

    async def cursor(
        self, conn: AsyncConnection, consumer: str, *, lock: bool = False, create: bool = True
    ) -> int:
        """Where a relay got to (0: nowhere yet); ``lock``: held to the transaction's end
        (-1: another transaction holds it, or there is none and ``create`` is False)."""
        if create:
            await conn.execute(
                text(
                    "INSERT INTO segment_cursors (consumer, last_id) VALUES (:c, 0) "
                    "ON CONFLICT DO NOTHING"
                ),
                {"c": consumer},
            )
        suffix = " FOR UPDATE SKIP LOCKED" if lock else ""
        value = await conn.scalar(
            text(f"SELECT last_id FROM segment_cursors WHERE consumer = :c{suffix}"),
            {"c": consumer},
        )
        return -1 if value is None else int(value)

    async def advance(self, conn: AsyncConnection, consumer: str, last_id: int) -> None:
        await conn.execute(
            text(
                "UPDATE segment_cursors SET last_id = greatest(last_id, :i), updated_at = now() "
                "WHERE consumer = :c"
            ),
            {"c": consumer, "i": last_id},
        )


@dataclass(frozen=True, slots=True)
class StoredWebhook:
    """A game's webhook."""

    id: str
    game: str
    url: str
    secret: str
    events: list[str]
    segments: list[str] | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """A transition a webhook did not take within its retries."""

    change: StoredChange
    attempts: int
    error: str
    failed_at: datetime


_HOOK_COLUMNS = "id, game, url, secret, events, segments, created_at"


class WebhookRepository:
    """Webhooks, their delivery cursors and their failed deliveries."""

    async def create(self, conn: AsyncConnection, hook: StoredWebhook) -> StoredWebhook:
        """Store a webhook; it receives the transitions committed from now on."""
        row = (
            await conn.execute(
                text(
                    f"INSERT INTO webhooks (id, game, url, secret, events, segments) "
                    f"VALUES (:i, :g, :u, :s, :e, :f) RETURNING {_HOOK_COLUMNS}"
                ),
                {
                    "i": hook.id,
                    "g": hook.game,
                    "u": hook.url,
                    "s": hook.secret,
                    "e": hook.events,
                    "f": hook.segments,
                },
            )
        ).one()
        await conn.execute(
            text(
                "INSERT INTO segment_cursors (consumer, last_id) "
                "SELECT :c, coalesce(max(id), 0) FROM segment_changes"
            ),
            {"c": webhook_consumer(hook.id)},
        )
        return StoredWebhook(*row)

    async def webhooks(self, conn: AsyncConnection, game: str | None = None) -> list[StoredWebhook]:
        """A game's webhooks (every game's with None), oldest first."""
        where = "" if game is None else " WHERE game = :g"
        rows = await conn.execute(
            text(f"SELECT {_HOOK_COLUMNS} FROM webhooks{where} ORDER BY created_at, id"),
            {"g": game},
        )
        return [StoredWebhook(*r) for r in rows.all()]

    async def get(self, conn: AsyncConnection, game: str, hook_id: str) -> StoredWebhook | None:
        row = (
            await conn.execute(
                text(f"SELECT {_HOOK_COLUMNS} FROM webhooks WHERE game = :g AND id = :i"),
                {"g": game, "i": hook_id},
            )
        ).first()
        return None if row is None else StoredWebhook(*row)

    async def delete(self, conn: AsyncConnection, game: str, hook_id: str) -> bool:
        gone = await conn.execute(
            text("DELETE FROM webhooks WHERE game = :g AND id = :i"), {"g": game, "i": hook_id}
        )
        if gone.rowcount:
            await conn.execute(
                text("DELETE FROM segment_cursors WHERE consumer = :c"),
                {"c": webhook_consumer(hook_id)},
            )
            await conn.execute(
                text("DELETE FROM webhook_failures WHERE webhook_id = :i"), {"i": hook_id}
            )
        return bool(gone.rowcount)

    async def add_failures(
        self, conn: AsyncConnection, hook_id: str, failed: Sequence[tuple[int, int, str]]
    ) -> None:
        """Keep deliveries that exhausted their retries: (change id, attempts, error)."""
        if not failed:
            return
        await conn.execute(
            text(
                """
                INSERT INTO webhook_failures (webhook_id, change_id, attempts, error)
                SELECT :w, * FROM unnest(CAST(:c AS bigint[]), CAST(:a AS int[]),
                                         CAST(:e AS text[]))
                ON CONFLICT (webhook_id, change_id) DO UPDATE
                SET attempts = webhook_failures.attempts + excluded.attempts,
                    error = excluded.error, failed_at = now()
                """
            ),
            {
                "w": hook_id,
                "c": [f[0] for f in failed],
                "a": [f[1] for f in failed],
                "e": [f[2][:2000] for f in failed],
            },
        )

    async def failures(
        self, conn: AsyncConnection, hook_id: str, limit: int = 1000
    ) -> list[FailedDelivery]:
        """The webhook's failed deliveries, in transition order."""
        rows = await conn.execute(
            text(
                f"""
                SELECT {", ".join("c." + c for c in _CHANGE_COLUMNS.split(", "))},
                       f.attempts, f.error, f.failed_at
                FROM webhook_failures f JOIN segment_changes c ON c.id = f.change_id
                WHERE f.webhook_id = :w ORDER BY c.id LIMIT :n
                """
            ),
            {"w": hook_id, "n": limit},
        )
        return [FailedDelivery(StoredChange(*r[:7]), r[7], r[8], r[9]) for r in rows.all()]

    async def forget_failure(self, conn: AsyncConnection, hook_id: str, change_id: int) -> None:
        await conn.execute(
            text("DELETE FROM webhook_failures WHERE webhook_id = :w AND change_id = :c"),
            {"w": hook_id, "c": change_id},
        )


def webhook_consumer(hook_id: str) -> str:
    """The outbox cursor of a webhook."""
    return f"webhook:{hook_id}"
