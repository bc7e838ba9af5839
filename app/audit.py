"""The audit trail service: record an admin action, list records, verify the chain."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.audit import AuditRepository
from app.domain.audit import AuditEntry, AuditRecord, BrokenLink, first_broken
from app.log import get_logger

log = get_logger(__name__)

VERIFY_PAGE = 5_000


def os_actor() -> str:
    """The actor of a command-line action: the operating system user."""
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (a bare container)
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


AUDIT_LAKE = "audit"
"""The audit trail's copy in the lake: ``audit/audit-<first seq>-<last seq>.parquet``."""
LAKE_COPY_EVERY_S = 60.0


def last_copied_seq(lake_dir: Path) -> int:
    """The highest seq already copied to the lake (0: none)."""
    last = 0
    for path in (lake_dir / AUDIT_LAKE).glob("audit-*-*.parquet"):
        with contextlib.suppress(ValueError):
            last = max(last, int(path.stem.rsplit("-", 1)[1]))
    return last


def write_audit_file(lake_dir: Path, records: list[AuditRecord]) -> Path:
    """One Parquet file of consecutive records (same name, same content: idempotent)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(
        [asdict(r) for r in records],
        schema=pa.schema(
            [
                ("seq", pa.int64()),
                ("at", pa.timestamp("us", tz="UTC")),
                ("game", pa.string()),
                ("actor", pa.string()),
                ("action", pa.string()),
                ("target", pa.string()),
                ("outcome", pa.string()),
                ("request_id", pa.string()),
                ("prev_hash", pa.string()),
                ("hash", pa.string()),
            ]
        ),
    )
    folder = lake_dir / AUDIT_LAKE
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"audit-{records[0].seq:012d}-{records[-1].seq:012d}.parquet"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return path


async def copy_to_lake_forever(trail: AuditTrail, lake_dir: Path) -> None:
    """Copy new audit records to the lake every LAKE_COPY_EVERY_S (in every worker: the
    files are named by their seq range, so two workers writing one write the same)."""
    while True:
        try:
            after = await asyncio.to_thread(last_copied_seq, lake_dir)
            records = await trail.list(after=after, limit=10_000)
            if records:
                await asyncio.to_thread(write_audit_file, lake_dir, records)
        except Exception as exc:  # the database keeps the trail; the copy catches up
            log.warning("audit records not copied to the lake", error=str(exc))
        await asyncio.sleep(LAKE_COPY_EVERY_S)
