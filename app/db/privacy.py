"""SQL of the erasure ledger and of erasing a player's rows. Callers own the transaction.

Lock ``TOMBSTONE_LOCK``: every fold transaction and every archive write holds it shared
while it reads the ledger and uses what it read; recording an erasure takes it
exclusively. So once an erasure is committed, every write that did not see it has
already finished, and every later one sees it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.dedup import SeenIds
from app.domain.privacy import player_key

TOMBSTONE_LOCK = "playerpulse:tombstones"
"""Also named in ``playerpulse_tombstone_revision()`` (migration 0005p)."""
ERASER_LOCK = "playerpulse:eraser"
ERASURE_CHANNEL = "playerpulse_erasures"
"""NOTIFY channel: the payload is the id of an erasure just recorded."""


@dataclass(frozen=True, slots=True)
class Erasure:
    """One row of the ledger."""

    id: str
    game: str
    player_key: str
    player_id: str | None
    status: str
    stores: dict[str, Any]
    broker_ends: dict[str, Any] | None
    requested_at: datetime
    completed_at: datetime | None
    lifted_at: datetime | None


_COLUMNS = (
    "id, game, player_key, player_id, status, stores, broker_ends, requested_at, "
    "completed_at, lifted_at"
)


def _erasure(row: Any) -> Erasure:
    return Erasure(*row)


class ErasureRepository:
    """The ledger of erasures (tombstones and receipts) and the erasure of a player's rows."""

    async def hold_shared(self, conn: AsyncConnection) -> int:
        """Take the tombstone lock shared (until commit); return the ledger's revision."""
        # One round trip: a function of the migration takes the lock, then reads the
        # revision with a fresh snapshot (so it sees an erasure that held the lock).
        revision = await conn.scalar(text("SELECT playerpulse_tombstone_revision()"))
        return int(revision or 0)

    async def active_keys(self, conn: AsyncConnection) -> dict[str, set[str]]:
        """Player keys under an erasure in force, by game."""
        rows = await conn.execute(
            text("SELECT game, player_key FROM player_erasures WHERE lifted_at IS NULL")
        )
        found: dict[str, set[str]] = {}
        for game, key in rows:
            found.setdefault(game, set()).add(key)
        return found

    async def open(self, conn: AsyncConnection, game: str, player_id: str) -> Erasure:
        """The erasure in force for the player, or a new pending one (and a notice)."""
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": TOMBSTONE_LOCK}
        )
        key = player_key(game, player_id)
        row = (
            await conn.execute(
                text(
                    f"SELECT {_COLUMNS} FROM player_erasures WHERE game = :g AND "
                    "player_key = :p AND lifted_at IS NULL ORDER BY requested_at DESC LIMIT 1"
                ),
                {"g": game, "p": key},
            )
        ).first()
        if row is not None:
            return _erasure(row)
        row = (
            await conn.execute(
                text(
                    "INSERT INTO player_erasures (id, game, player_key, player_id, status) "
                    f"VALUES (:id, :g, :p, :player, 'pending') RETURNING {_COLUMNS}"
                ),
                {"id": uuid.uuid4().hex, "g": game, "p": key, "player": player_id},
            )
        ).one()
        await conn.execute(text("SELECT pg_notify(:c, :id)"), {"c": ERASURE_CHANNEL, "id": row[0]})
        return _erasure(row)

    async def get(self, conn: AsyncConnection, erasure_id: str) -> Erasure | None:
        """One erasure by id."""
        row = (
            await conn.execute(
                text(f"SELECT {_COLUMNS} FROM player_erasures WHERE id = :id"), {"id": erasure_id}
            )
        ).first()
        return None if row is None else _erasure(row)

    async def pending(self, conn: AsyncConnection) -> list[Erasure]:
        """Erasures not done yet, oldest first."""
        rows = await conn.execute(
            text(
                f"SELECT {_COLUMNS} FROM player_erasures WHERE status = 'pending' "
                "ORDER BY requested_at"
            )
        )
        return [_erasure(row) for row in rows]

    async def try_lock_eraser(self, conn: AsyncConnection) -> bool:
        """One eraser at a time in the whole deployment (session lock: unlock it)."""
        got = await conn.scalar(
            text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": ERASER_LOCK}
        )
        return bool(got)

    async def unlock_eraser(self, conn: AsyncConnection) -> None:
        """Release :meth:`try_lock_eraser`."""
        await conn.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": ERASER_LOCK})

    async def purge_player(
        self, conn: AsyncConnection, game: str, player_id: str
    ) -> dict[str, int]:
        """Delete the player's profile (with its id hashes), failed events and segment rows;
        rows by store.

        ``applied_ids`` counts the event id hashes the deleted profile held.
        """
        params = {"g": game, "p": player_id}
        deleted = (
            await conn.execute(
                text("DELETE FROM profiles WHERE game = :g AND player_id = :p RETURNING seen_ids"),
                params,
            )
        ).all()
        # Undecodable records have no player: any of them holding the id goes too.
        failed = await conn.execute(
            text(
                "DELETE FROM failed_events WHERE (game = :g AND player_id = :p) OR "
                "(player_id IS NULL AND (game = :g OR game IS NULL) "
                "AND position(convert_to(:p, 'UTF8') in payload) > 0)"
            ),
            params,
        )
        # Segment memberships, due times and transitions (the outbox: a transition not
        # yet relayed is not relayed).
        segments = 0
        for table in ("segment_members", "segment_due", "segment_changes"):
            gone = await conn.execute(
                text(f"DELETE FROM {table} WHERE game = :g AND player_id = :p"), params
            )
            segments += gone.rowcount
        return {
            "profiles": len(deleted),
            "applied_ids": sum(len(SeenIds.decode(row[0])) for row in deleted),
            "failed_events": failed.rowcount,
            "segments": segments,
        }

    async def save_progress(
        self,
        conn: AsyncConnection,
        erasure_id: str,
        stores: dict[str, Any],
        broker_ends: dict[str, Any] | None,
    ) -> None:
        """Record what each store reports so far."""
        await conn.execute(
            text(
                "UPDATE player_erasures SET stores = CAST(:s AS jsonb), "
                "broker_ends = CAST(:b AS jsonb) WHERE id = :id"
            ),
            {
                "id": erasure_id,
                "s": _json(stores),
                "b": None if broker_ends is None else _json(broker_ends),
            },
        )

    async def complete(
        self, conn: AsyncConnection, erasure_id: str, stores: dict[str, Any]
    ) -> None:
        """Mark done and forget the player id (the key stays: the tombstone)."""
        await conn.execute(
            text(
                "UPDATE player_erasures SET status = 'done', completed_at = now(), "
                "player_id = NULL, broker_ends = NULL, stores = CAST(:s AS jsonb) WHERE id = :id"
            ),
            {"id": erasure_id, "s": _json(stores)},
        )

    async def lift(self, conn: AsyncConnection, game: str, player_id: str) -> tuple[int, int]:
        """Lift the done erasures of a player (the id may be used again).

        Returns (lifted, still pending): nothing is lifted while one is pending.
        """
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": TOMBSTONE_LOCK}
        )
        params = {"g": game, "p": player_key(game, player_id)}
        pending = await conn.scalar(
            text(
                "SELECT count(*) FROM player_erasures WHERE game = :g AND player_key = :p "
                "AND status = 'pending'"
            ),
            params,
        )
        if pending:
            return 0, int(pending)
        lifted = await conn.execute(
            text(
                "UPDATE player_erasures SET lifted_at = now(), "
                "revision = nextval('player_erasures_revision') "
                "WHERE game = :g AND player_key = :p AND lifted_at IS NULL"
            ),
            params,
        )
        return lifted.rowcount, 0

    async def failed_events(
        self, conn: AsyncConnection, game: str, player_id: str
    ) -> list[tuple[int, str | None, str, datetime, bytes]]:
        """The player's failed events: (id, event_id, reason, failed_at, payload)."""
        rows = await conn.execute(
            text(
                "SELECT id, event_id, reason, failed_at, payload FROM failed_events "
                "WHERE game = :g AND player_id = :p ORDER BY id"
            ),
            {"g": game, "p": player_id},
        )
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
