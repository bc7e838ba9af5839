"""The audit trail service: record an admin action, list records, verify the chain."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.repositories import AuditRepository
from app.domain.audit import AuditEntry, AuditRecord, BrokenLink, first_broken

VERIFY_PAGE = 5_000


def os_actor() -> str:
    """The actor of a command-line action: the operating system user."""
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (a bare container)
        import os

        return f"os:uid-{os.getuid()}"


class AuditTrail:
    """Appends to, lists and verifies the hash-chained audit log."""

    def __init__(self, engine: AsyncEngine, repository: AuditRepository | None = None) -> None:
        self.engine = engine
        self.repository = repository or AuditRepository()

    async def record(self, entry: AuditEntry, conn: AsyncConnection | None = None) -> AuditRecord:
        """Append ``entry`` (in ``conn``'s transaction if given, else in its own)."""
        at = datetime.now(UTC)
        if conn is not None:
            return await self.repository.append(conn, entry, at)
        async with self.engine.begin() as own:
            return await self.repository.append(own, entry, at)

    async def list(
        self, game: str | None = None, *, after: int = 0, limit: int | None = None
    ) -> list[AuditRecord]:
        """Records after ``after``, oldest first (of ``game`` only, if given)."""
        async with self.engine.connect() as conn:
            return await self.repository.list(conn, game, after=after, limit=limit)

    async def verify(self) -> tuple[int, BrokenLink | None]:
        """Check the whole chain: (records checked, the first broken link or None)."""
        checked = 0
        prev: AuditRecord | None = None
        async with self.engine.connect() as conn:
            while True:
                page = await self.repository.list(
                    conn, None, after=0 if prev is None else prev.seq, limit=VERIFY_PAGE
                )
                if not page:
                    return checked, None
                if prev is not None:
                    broken = first_broken([prev, *page], prev.prev_hash)
                else:
                    broken = first_broken(page)
                if broken is not None:
                    return checked + _position(page, broken.seq), broken
                checked += len(page)
                prev = page[-1]


def _position(page: list[AuditRecord], seq: int) -> int:
    return next((i for i, r in enumerate(page) if r.seq == seq), 0)
