"""This process's copy of the erasure tombstones, and the broker's side of an erasure.

Every fold transaction and every archive write first reads the ledger's revision under
the shared tombstone lock (one cheap statement): a new erasure is seen by the next
transaction of every worker, whichever partitions it owns, with no notice to miss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from confluent_kafka import Consumer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.privacy import ErasureRepository
from app.domain.privacy import TombstoneSet


class _Keyed(Protocol):
    @property
    def game(self) -> str: ...

    @property
    def player_id(self) -> str | None: ...


K = TypeVar("K", bound=_Keyed)


class TombstoneWatch:
    """The tombstones in force, as last read by this process."""

    def __init__(self, engine: AsyncEngine, repository: ErasureRepository | None = None) -> None:
        self.engine = engine
        self.repository = repository or ErasureRepository()
        self.current = TombstoneSet()

    async def refresh(self, conn: AsyncConnection) -> TombstoneSet:
        """Hold the tombstone lock shared in ``conn``'s transaction; return the tombstones."""
        revision = await self.repository.hold_shared(conn)
        if revision != self.current.revision:
            self.current = TombstoneSet(await self.repository.active_keys(conn), revision)
        return self.current

    @staticmethod
    def screen(tombstones: TombstoneSet, records: Sequence[K]) -> list[K]:
        """The records whose player is not erased."""
        if not tombstones:
            return list(records)
        erased = tombstones.erased
        return [r for r in records if not erased(r.game, r.player_id)]

    async def write_screened(
        self, write: Callable[[Path | str, list[K]], Any], lake_dir: Path | str, records: list[K]
    ) -> int:
        """Write the records of players not erased, holding the lock until written.

        Returns how many were dropped. Holding the lock means an erasure recorded meanwhile
        waits for this file to be in place, so its lake pass finds (and rewrites) it.
        """
        import asyncio

        async with self.engine.begin() as conn:
            tombstones = await self.refresh(conn)
            kept = self.screen(tombstones, records)
            if kept:
                await asyncio.to_thread(write, lake_dir, kept)
        return len(records) - len(kept)


def _consumer(brokers: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": group,
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )


def end_offsets(brokers: str, group: str, topics: Sequence[str]) -> dict[str, int]:
    """``topic:partition`` -> the offset the next record will get (the log's end)."""
    consumer = _consumer(brokers, group)
    try:
        ends: dict[str, int] = {}
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            for partition in meta.partitions:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                ends[f"{topic}:{partition}"] = int(high)
        return ends
    finally:
        consumer.close()


def consumed_past(brokers: str, group: str, ends: dict[str, int]) -> bool:
    """True once the group's committed offsets reached ``ends`` on every partition."""
    wanted = {key: end for key, end in ends.items() if end > 0}
    if not wanted:
        return True
    consumer = _consumer(brokers, group)
    try:
        parts = [
            TopicPartition(key.rsplit(":", 1)[0], int(key.rsplit(":", 1)[1])) for key in wanted
        ]
        committed = consumer.committed(parts, timeout=10)
    finally:
        consumer.close()
    return all(
        tp.offset >= wanted[f"{tp.topic}:{tp.partition}"] for tp in committed if tp.error is None
    ) and all(tp.error is None for tp in committed)
