"""The hash-chained audit trail."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.audit import GENESIS, AuditEntry, AuditRecord, record_hash

from .tables import (
    audit_log,
)

_AUDIT_LOCK = 0x706C_6175_6469_74  # serialises appends, so the chain stays one line


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
