"""A sample of folded events with the time of each hop, archived to the lake (``hops``).

The fold hands over each committed batch; a fraction (``PLAYERPULSE_HOP_SAMPLE``) of its
events is kept with their device (event) time, receipt, broker append and fold commit
times, buffered and written as Parquet under ``<lake>/hops/game=GAME/date=DAY/`` (the
day the event was received), the same layout as events. A sample is for looking at
latency with DuckDB (``playerpulse analytics query``), not a record: what is buffered when a
process dies is not written.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import pyarrow as pa

from app.domain.events import EventRecord
from app.lake_layout import HOPS_SCHEMA, TIMESTAMP, event_date

from .lake import LakeArchiver, write_partitions

if TYPE_CHECKING:
    from .folding import Position


class HopRecord(msgspec.Struct, gc=False):
    """One sampled event's hops, in microseconds since the epoch."""

    game: str
    type: str
    partition: int
    offset: int
    ts: int
    device_ts: int | None
    received_at: int
    appended_at: int
    folded_at: int


def write_hops(lake_dir: Path | str, records: Iterable[HopRecord]) -> list[str]:
    """Write sampled hops under ``hops/game=/date=/`` (the day received); return the paths."""
    groups: dict[tuple[str, str], list[HopRecord]] = defaultdict(list)
    for record in records:
        groups[(record.game, event_date(record.received_at))].append(record)
    tables = {
        key: pa.table(
            [
                pa.array([r.type for r in rows], pa.string()),
                pa.array([r.partition for r in rows], pa.int32()),
                pa.array([r.offset for r in rows], pa.int64()),
                pa.array([r.ts for r in rows], TIMESTAMP),
                pa.array([r.device_ts for r in rows], TIMESTAMP),
                pa.array([r.received_at for r in rows], TIMESTAMP),
                pa.array([r.appended_at for r in rows], TIMESTAMP),
                pa.array([r.folded_at for r in rows], TIMESTAMP),
            ],
            schema=HOPS_SCHEMA,
        )
        for key, rows in groups.items()
    }
    return write_partitions(lake_dir, "hops", tables)


class HopSampler:
    """Keeps a fraction of each folded batch's events, with their hop times."""

    def __init__(self, fraction: float, archiver: LakeArchiver[HopRecord]) -> None:
        self.fraction = fraction
        self.archiver = archiver
        self._random = random.Random()

    def sample(
        self,
        records: Sequence[EventRecord],
        positions: Sequence[Position],
        carried: Sequence[int],
        folded_at: int,
    ) -> list[HopRecord]:
        """The sampled events of a committed batch (``carried``: events per message)."""
        if self.fraction <= 0:
            return []
        chosen = []
        start = 0
        for position, count in zip(positions, carried, strict=True):
            appended_at = int(position.appended_at * 1_000_000)
            for record in records[start : start + count]:
                if self.fraction >= 1 or self._random.random() < self.fraction:
                    chosen.append(
                        HopRecord(
                            game=record.game,
                            type=record.type,
                            partition=position.partition,
                            offset=position.offset,
                            ts=record.ts,
                            device_ts=record.device_ts,
                            received_at=record.received_at,
                            appended_at=appended_at,
                            folded_at=folded_at,
                        )
                    )
            start += count
        return chosen

    def __call__(
        self, records: Sequence[EventRecord], positions: Sequence[Position], carried: Sequence[int]
    ) -> None:
        """The fold's hook, once a batch committed: buffer its sample (the lake-flush timer
        writes it out, as it does the archive)."""
        chosen = self.sample(records, positions, carried, time.time_ns() // 1000)
        if chosen:
            self.archiver.add_batch(chosen, [])
