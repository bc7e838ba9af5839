"""API keys: only their hashes, with their lifecycle."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.access import Role

from .tables import (
    api_keys,
)

KEY_CHANNEL = "playerpulse_keys"
"""NOTIFY channel: the payload is the hash of a key that was revoked or changed."""


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
