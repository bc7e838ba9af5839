"""Which partition of the events topic holds a player's events: one stable hash of the
(game, player) key, shared by the producer (where events go) and the profile reads (which
partition a read-your-writes token must cover)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from app.domain.events import EventRecord


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a (game, player) key: CRC-32 modulo the partitions.

    Not Kafka's default murmur2: the Python murmur2 costs 1.6 us a key against 0.05 us,
    a sixth of an ingest request's budget; any stable hash keeps a player on one partition.
    """
    return zlib.crc32(key) % partitions


def group_by_partition(
    records: Sequence[EventRecord], partitions: int
) -> dict[int, list[EventRecord]]:
    """``records`` grouped by the partition of their key, each group in the given order.

    The same as :func:`partition_for` of each ``partition_key`` (``game/player``), with
    the CRC-32 of the ``game/`` prefix computed once per game.
    """
    groups: dict[int, list[EventRecord]] = {}
    prefixes: dict[str, int] = {}
    crc32 = zlib.crc32
    for record in records:
        game = record.game
        prefix = prefixes.get(game)
        if prefix is None:
            prefix = prefixes[game] = crc32(f"{game}/".encode())
        partition = crc32(record.player_id.encode(), prefix) % partitions
        group = groups.get(partition)
        if group is None:
            groups[partition] = [record]
        else:
            group.append(record)
    return groups
