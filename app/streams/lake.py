"""The archive: every event to Parquet, hive-partitioned by game and event date, zstd.

Layout (``app/lake_layout.py``): ``<lake>/events/game=GAME/date=YYYY-MM-DD/part-*.parquet``
with columns event_id, player_id, type, ts, props (JSON text), received_at, device_ts. The
lake's root is a directory or an ``s3://`` URL (:mod:`app.lake_store`); files appear whole
(a rename on disk, one PUT on S3) under names no other writer uses.
The archive agent acknowledges events to Kafka only after their file is in place.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec
import pyarrow as pa
from prometheus_client import Counter

from app.domain.events import EventRecord
from app.domain.predictions import PredictionRecord
from app.lake_layout import EVENTS_SCHEMA, PREDICTIONS_SCHEMA, TIMESTAMP, event_date
from app.lake_store import write_table
from app.log import get_logger

from .tombstones import TombstoneWatch

R = TypeVar("R")

log = get_logger(__name__)

_json = msgspec.json.Encoder()
_DAY_US = 86_400 * 1_000_000


def write_events(lake_dir: Path | str, records: Iterable[EventRecord]) -> list[str]:
    """Write records as one new Parquet file per (game, date) partition; return the paths."""
    groups: dict[tuple[str, str], list[EventRecord]] = defaultdict(list)
    dates: dict[int, str] = {}  # by UTC day: one strftime per day, not per event
    for record in records:
        day = record.ts // _DAY_US
        date = dates.get(day)
        if date is None:
            date = dates[day] = event_date(record.ts)
        groups[(record.game, date)].append(record)
    tables = {
        key: pa.table(
            [
                pa.array([r.event_id for r in rows], pa.string()),
                pa.array([r.player_id for r in rows], pa.string()),
                pa.array([r.type for r in rows], pa.string()),
                pa.array([r.ts for r in rows], TIMESTAMP),
                pa.array(
                    [None if r.props is None else _json.encode(r.props).decode() for r in rows],
                    pa.string(),
                ),
                pa.array([r.received_at for r in rows], TIMESTAMP),
                pa.array([r.device_ts for r in rows], TIMESTAMP),
            ],
            schema=EVENTS_SCHEMA,
        )
        for key, rows in groups.items()
    }
    return write_partitions(lake_dir, "events", tables)


def write_predictions(lake_dir: Path | str, records: Iterable[PredictionRecord]) -> list[str]:
    """Write logged predictions under ``predictions/game=/date=/``; return the paths."""
    groups: dict[tuple[str, str], list[PredictionRecord]] = defaultdict(list)
    for record in records:
        groups[(record.game, event_date(record.ts))].append(record)
    tables = {
        key: pa.table(
            [
                pa.array([r.model for r in rows], pa.string()),
                pa.array([r.version for r in rows], pa.int32()),
                pa.array([r.player_id for r in rows], pa.string()),
                pa.array([r.shadow for r in rows], pa.bool_()),
                pa.array([r.ts for r in rows], TIMESTAMP),
                pa.array([r.latency_us for r in rows], pa.int64()),
                pa.array([_json.encode(r.outputs).decode() for r in rows], pa.string()),
                pa.array([_json.encode(r.features).decode() for r in rows], pa.string()),
            ],
            schema=PREDICTIONS_SCHEMA,
        )
        for key, rows in groups.items()
    }
    return write_partitions(lake_dir, "predictions", tables)


def write_partitions(
    lake_root: Path | str, kind: str, tables: dict[tuple[str, str], pa.Table]
) -> list[str]:
    """Each (game, date) table as a new file under ``lake_root/kind/game=/date=/``,
    appearing whole; returns the files' paths (or URLs)."""
    written = []
    for (game, date), table in sorted(tables.items()):
        name = f"part-{time.time_ns() // 1000}-{uuid.uuid4().hex[:12]}.parquet"
        stored = write_table(str(lake_root), kind, game, date, name, table)
        written.append(stored.path)
    return written


class LakeArchiver(Generic[R]):
    """Buffers records from an agent and writes them out by size or age."""

    def __init__(
        self,
        lake_dir: Path | str,
        *,
        flush_s: float,
        flush_events: int,
        writer: Callable[[Any, list[R]], object],
        tombstones: TombstoneWatch | None = None,
        counter: Counter | None = None,
        may_write: Callable[[], bool] | None = None,
    ) -> None:
        self.lake_dir = lake_dir
        self.may_write = may_write
        """When set and false (the disk is low), flushes wait: the buffer and its
        unacknowledged events are kept, so the archive resumes where it paused."""
        self.writer = writer
        self.counter = counter
        """When set, counts every record written (the events archive's metric)."""
        self.tombstones = tombstones
        """When set, records of erased players are dropped at write time (never archived)."""
        self.flush_s = flush_s
        self.flush_events = flush_events
        self.seen = 0
        self.archived = 0
        self.erased = 0
        self._records: list[R] = []
        self._acks: list[Callable[[], object]] = []
        self._oldest: float | None = None
        self._lock = asyncio.Lock()

    def add_batch(self, records: list[R], acks: list[Callable[[], object]]) -> None:
        """Hold records until their file is written; then call every ``ack``."""
        if not self._records and not self._acks:
            self._oldest = time.monotonic()
        self._records.extend(records)
        self._acks.extend(acks)
        self.seen += len(records)

    @property
    def full(self) -> bool:
        """Enough is buffered to write now."""
        return len(self._records) >= self.flush_events

    @property
    def due(self) -> bool:
        """The oldest buffered record has waited long enough."""
        return self._oldest is not None and time.monotonic() - self._oldest >= self.flush_s

    async def flush(self) -> None:
        """Write everything buffered, then acknowledge it; on failure keep it for later.

        Paused (nothing written, everything kept) while ``may_write`` says no.
        """
        if self.may_write is not None and not self.may_write():
            return
        async with self._lock:
            records, self._records = self._records, []
            acks, self._acks = self._acks, []
            oldest, self._oldest = self._oldest, None
            if not records and not acks:
                return
            dropped = 0
            try:
                if self.tombstones is None:
                    await asyncio.to_thread(self.writer, self.lake_dir, records)
                else:
                    dropped = await self.tombstones.write_screened(
                        self.writer,  # type: ignore[type-var]
                        self.lake_dir,
                        records,
                    )
                    self.erased += dropped
            except Exception:
                log.exception("lake write failed; will retry", events=len(records))
                self._records = records + self._records
                self._acks = acks + self._acks
                self._oldest = oldest
                return
            for ack in acks:
                ack()
            self.archived += len(records) - dropped
            if self.counter is not None:
                self.counter.inc(len(records) - dropped)
