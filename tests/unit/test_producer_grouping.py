"""Grouping a request's records into topic messages: by partition, in order, by size."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from app.domain.events import EventRecord, decode_records, encode_record
from app.domain.partitioning import partition_for
from app.streams.producer import MAX_MESSAGE_BYTES, group_messages

pytestmark = pytest.mark.unit

T0 = 1_704_067_200_000_000


def record(i: int, player: str, game: str = "game-1", pad: int = 0) -> EventRecord:
    props = {"n": i, "pad": "x" * pad} if pad else {"n": i}
    return EventRecord(
        game=game,
        event_id=f"e-{i}",
        player_id=player,
        type="purchase",
        ts=T0 + i,
        received_at=T0 + 10_000 + i,
        props=props,
    )


def batch(count: int, players: int, pad: int = 0) -> list[EventRecord]:
    return [record(i, f"p-{i % players}", pad=pad) for i in range(count)]


def test_partition_for_is_crc32_modulo_the_partitions() -> None:
    # 0xCBF43926 is CRC-32's published check value for b"123456789".
    assert partition_for(b"123456789", 1 << 32) == 0xCBF43926
    assert partition_for(b"123456789", 1000) == 0xCBF43926 % 1000 == 262
    assert partition_for(b"anything", 1) == 0


def test_partition_for_spreads_players_over_every_partition() -> None:
    counts = Counter(partition_for(f"g/p-{i}".encode(), 8) for i in range(8000))
    assert set(counts) == set(range(8))
    # 1,000 expected each; five standard deviations of a binomial(8000, 1/8) is about 148.
    assert all(abs(n - 1000) <= 148 for n in counts.values()), counts


def test_every_record_lands_once_in_a_message_of_its_partition_in_order() -> None:
    records = batch(500, players=37)
    messages = group_messages(records, partitions=8)
    seen: list[EventRecord] = []
    by_partition: dict[int, list[EventRecord]] = defaultdict(list)
    for partition, payload in messages:
        decoded = decode_records(payload)
        assert decoded, "no empty messages"
        for r in decoded:
            assert partition_for(f"{r.game}/{r.player_id}".encode(), 8) == partition
        by_partition[partition].extend(decoded)
        seen.extend(decoded)
    assert sorted(seen, key=lambda r: r.event_id) == sorted(records, key=lambda r: r.event_id)
    assert len(seen) == len(records)
    for partition, got in by_partition.items():
        # Within a partition, the request's order (so each player's order) is kept.
        assert got == [r for r in records if partition_for(r.partition_key, 8) == partition]
    # Small records all fit: exactly one message per partition used, in partition order.
    assert [p for p, _ in messages] == sorted(by_partition)


def test_a_players_events_share_one_partition_across_requests() -> None:
    first = group_messages([record(1, "alice"), record(2, "bob")], partitions=16)
    second = group_messages([record(3, "carol"), record(4, "alice")], partitions=16)

    def partition_of(messages: list[tuple[int, bytes]], event_id: str) -> int:
        return next(p for p, m in messages if event_id in {r.event_id for r in decode_records(m)})

    assert partition_of(first, "e-1") == partition_of(second, "e-4")


def test_the_same_player_of_another_game_is_another_key() -> None:
    one, other = record(1, "p", game="a"), record(2, "p", game="b")
    assert one.partition_key == b"a/p"
    assert other.partition_key == b"b/p"


def test_large_groups_split_greedily_near_max_bytes() -> None:
    records = batch(400, players=3, pad=300)  # ~450 bytes each: ~180 KB in all
    max_bytes = 4096
    messages = group_messages(records, partitions=4, max_bytes=max_bytes)
    total = sum(len(encode_record(r)) + 1 for r in records)
    assert len(messages) >= total // (max_bytes + 2)  # really split, into ~4 KB messages
    assert len({p for p, _ in messages}) >= 2  # the players are on several partitions
    decoded = [(p, decode_records(m), m) for p, m in messages]
    assert sorted((r for _, rs, _ in decoded for r in rs), key=lambda r: r.event_id) == sorted(
        records, key=lambda r: r.event_id
    )
    for index, (partition, rs, payload) in enumerate(decoded):
        # A message is "[" + records joined by "," + "]": at most max_bytes + 2.
        assert len(payload) == sum(len(encode_record(r)) for r in rs) + len(rs) + 1
        assert len(payload) <= max_bytes + 2
        following = decoded[index + 1] if index + 1 < len(decoded) else None
        if following is not None and following[0] == partition:
            # Greedy: the next record of the partition did not fit in this message.
            assert len(payload) - 1 + len(encode_record(following[1][0])) > max_bytes


def test_a_record_larger_than_max_bytes_travels_alone() -> None:
    small_before, big, small_after = record(1, "p"), record(2, "p", pad=5000), record(3, "p")
    messages = group_messages([small_before, big, small_after], partitions=1, max_bytes=1000)
    assert [decode_records(m) for _, m in messages] == [[small_before], [big], [small_after]]
    assert {p for p, _ in messages} == {0}


def test_the_default_size_keeps_a_full_request_in_few_messages() -> None:
    records = batch(2000, players=2000)
    messages = group_messages(records, partitions=8)
    assert len(messages) == 8  # 2,000 small events: one message per partition
    assert all(len(m) <= MAX_MESSAGE_BYTES + 2 for _, m in messages)
    assert sum(len(decode_records(m)) for _, m in messages) == 2000


def test_no_records_no_messages() -> None:
    assert group_messages([], partitions=8) == []
