"""The fold's transaction against a real PostgreSQL: dedup, poison, redelivery."""

from __future__ import annotations

import random
import time
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.reads import FastReads
from app.db.tables import failed_events
from app.domain.dedup import SeenIds
from app.domain.events import EventRecord, encode_record
from app.domain.features import FeatureSet
from app.profiles import ProfileService
from app.streams.folding import Position, ProfileFolder

NOW_US = int(time.time() * 1_000_000)


def record(event_id: str, player: str, kind: str, ts: int, **props: Any) -> EventRecord:
    return EventRecord(
        game="g",
        event_id=event_id,
        player_id=player,
        type=kind,
        ts=ts,
        received_at=NOW_US,
        props=props or None,
    )


async def test_shuffled_batches_with_duplicates_fold_to_the_reference(
    engine: AsyncEngine, reads: FastReads, features: FeatureSet
) -> None:
    rng = random.Random(5)
    events = []
    expected: dict[str, dict[str, Any]] = {}
    for p in range(40):
        player = f"p{p}"
        spend = 0
        purchases = sessions = 0
        last: tuple[int, str, int] | None = None
        for i in range(rng.randint(1, 30)):
            ts = NOW_US - rng.randint(0, 3 * 86_400_000_000)
            eid = f"{player}-{i}"
            kind = rng.choice(["purchase", "session_start", "level_complete"])
            if kind == "purchase":
                amount = rng.randint(1, 100)
                events.append(record(eid, player, kind, ts, amount=amount))
                spend += amount
                purchases += 1
            elif kind == "session_start":
                events.append(record(eid, player, kind, ts))
                sessions += 1
            else:
                level = rng.randint(1, 50)
                events.append(record(eid, player, kind, ts, level=level))
                if last is None or (ts, eid) > last[:2]:
                    last = (ts, eid, level)
        expected[player] = {
            "purchases_7d": purchases,
            "spend_total": spend,
            "sessions_7d": sessions,
            "last_level": last[2] if last else 0,
        }
    deliveries = events + rng.sample(events, len(events) // 2)
    rng.shuffle(deliveries)
    folder = ProfileFolder(engine, features)
    for start in range(0, len(deliveries), 97):
        await folder.fold_batch([encode_record(e) for e in deliveries[start : start + 97]])
    # A whole redelivery (a crash before the offsets were committed) changes nothing.
    await folder.fold_batch([encode_record(e) for e in events])

    profiles = ProfileService(reads, features)
    for player, want in expected.items():
        profile = await profiles.get("g", player)
        assert profile is not None
        assert profile.features == want, player
        assert profile.events_applied == sum(1 for e in events if e.player_id == player)
    assert folder.stats.applied == len(events)
    assert folder.stats.duplicates == len(deliveries) - len(events) + len(events)


async def test_poison_and_garbage_go_to_failed_events_and_the_rest_folds(
    engine: AsyncEngine, reads: FastReads, features: FeatureSet
) -> None:
    folder = ProfileFolder(engine, features)
    good = record("ok-1", "victim", "purchase", NOW_US, amount=5)
    poison = record("bad-1", "victim", "purchase", NOW_US, amount="five")
    after = record("ok-2", "victim", "purchase", NOW_US, amount=7)
    await folder.fold_batch(
        [encode_record(good), encode_record(poison), b"{not json", encode_record(after)]
    )

    profile = await ProfileService(reads, features).get("g", "victim")
    assert profile is not None
    assert profile.features["spend_total"] == 12
    assert profile.events_applied == 2
    async with engine.connect() as conn:
        rows = (await conn.execute(select(failed_events).order_by(failed_events.c.id))).all()
    reasons = {row.event_id: row.reason for row in rows}
    assert "spend_total" in reasons["bad-1"]
    assert "number" in reasons["bad-1"]
    assert any("undecodable" in r for r in reasons.values())
    # The poison event is not retried on redelivery: it failed once, with its reason.
    await folder.fold_batch([encode_record(poison)])
    async with engine.connect() as conn:
        assert len((await conn.execute(select(failed_events))).all()) == 2


async def test_a_record_the_database_refuses_is_isolated(
    engine: AsyncEngine, reads: FastReads, features: FeatureSet
) -> None:
    # Written by some other producer: PostgreSQL text cannot hold NUL.
    folder = ProfileFolder(engine, features)
    refused = record("nul-1", "bad\x00player", "session_start", NOW_US)
    fine = record("fine-1", "fine", "session_start", NOW_US)
    await folder.fold_batch([encode_record(refused), encode_record(fine)])
    profile = await ProfileService(reads, features).get("g", "fine")
    assert profile is not None
    assert profile.features["sessions_7d"] == 1
    async with engine.connect() as conn:
        rows = (await conn.execute(select(failed_events))).all()
    assert len(rows) == 1
    assert "database" in rows[0].reason
    assert rows[0].payload == encode_record(refused)


async def test_a_state_cached_by_one_process_is_refreshed_after_another_wrote(
    engine: AsyncEngine, reads: FastReads, features: FeatureSet
) -> None:
    # Two processes folding the same player in turn, as around a rebalance: each keeps
    # the states it wrote in memory, and must notice when the other wrote since.
    first, second = ProfileFolder(engine, features), ProfileFolder(engine, features)
    await first.fold_batch([encode_record(record("a", "shared", "purchase", NOW_US, amount=1))])
    await second.fold_batch([encode_record(record("b", "shared", "purchase", NOW_US, amount=2))])
    await first.fold_batch([encode_record(record("c", "shared", "purchase", NOW_US, amount=4))])
    await second.fold_batch([encode_record(record("d", "shared", "purchase", NOW_US, amount=8))])
    profile = await ProfileService(reads, features).get("g", "shared")
    assert profile is not None
    assert profile.features["spend_total"] == 15
    assert profile.events_applied == 4


def at(partition: int, offset: int, appended_at: float = NOW_US / 1e6) -> Position:
    """A message's position; the broker stamps later offsets no earlier."""
    return Position(partition, offset, appended_at + offset / 1000)


async def test_a_redelivered_message_is_skipped_by_its_offset_without_an_id_lookup(
    engine: AsyncEngine, reads: FastReads, features: FeatureSet
) -> None:
    folder = ProfileFolder(engine, features, dedup_horizon_s=60)
    sampled: list[tuple[list[str], list[Position], list[int]]] = []
    folder.hop_sampler = lambda records, positions, carried: sampled.append(
        ([r.event_id for r in records], list(positions), list(carried))
    )
    first = [record(f"o-{i}", "offsets", "purchase", NOW_US, amount=1) for i in range(3)]
    messages = [encode_record(first[0]), encode_record(first[1]), encode_record(first[2])]
    folded = await folder.fold_batch(messages, [at(0, 10), at(0, 11), at(1, 4)])
    assert len(folded) == 3
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT partition, committed_offset FROM fold_progress"))
        progress = {int(row[0]): int(row[1]) for row in rows}
    assert progress == {0: 11, 1: 4}

    # The profile forgets the ids (as past the horizon): only the offsets stop a repeat.
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE profiles SET seen_ids = NULL, version = version + 1"))
    later = record("o-3", "offsets", "purchase", NOW_US, amount=10)
    redelivered = await folder.fold_batch(
        [messages[1], messages[2], encode_record(later)], [at(0, 11), at(1, 4), at(1, 5)]
    )
    # Returned all the same, for the archive (it may not have written them yet).
    assert [r.event_id for r in redelivered] == ["o-1", "o-2", "o-3"]
    # Hop times only for what was folded now: not for the redelivered messages.
    assert sampled == [
        (["o-0", "o-1", "o-2"], [at(0, 10), at(0, 11), at(1, 4)], [1, 1, 1]),
        (["o-3"], [at(1, 5)], [1]),
    ]
    assert (folder.stats.applied, folder.stats.redelivered, folder.stats.duplicates) == (4, 2, 2)
    profile = await ProfileService(reads, features).get("g", "offsets")
    assert profile is not None
    assert (profile.events_applied, profile.features["spend_total"]) == (4, 13)

    # A second process (after a rebalance) reads the recorded offsets too.
    other = ProfileFolder(engine, features, dedup_horizon_s=60)
    await other.fold_batch([encode_record(later)], [at(1, 5)])
    assert (other.stats.applied, other.stats.redelivered) == (0, 1)


async def test_a_recreated_topic_starting_again_at_offset_zero_is_folded_not_skipped(
    engine: AsyncEngine, reads: FastReads, features: FeatureSet
) -> None:
    folder = ProfileFolder(engine, features, dedup_horizon_s=60)
    first = record("t-1", "recreated", "session_start", NOW_US)
    await folder.fold_batch([encode_record(first)], [at(3, 500)])
    # The topic was deleted and created again: offsets restart, the broker's clock goes on.
    again = record("t-2", "recreated", "session_start", NOW_US)
    await folder.fold_batch([encode_record(again)], [at(3, 0, appended_at=time.time() + 5)])
    assert (folder.stats.applied, folder.stats.redelivered) == (2, 0)


async def test_a_message_split_over_transactions_records_its_offset_with_its_last_event(
    engine: AsyncEngine, reads: FastReads, features: FeatureSet
) -> None:
    folder = ProfileFolder(engine, features, transaction_events=2)
    many = [record(f"s-{i}", f"s{i % 3}", "session_start", NOW_US) for i in range(5)]
    body = b"[" + b",".join(encode_record(r) for r in many) + b"]"
    await folder.fold_batch([body, b"{not json"], [at(2, 7), at(2, 8)])
    async with engine.connect() as conn:
        offset = await conn.scalar(
            text("SELECT committed_offset FROM fold_progress WHERE partition = 2")
        )
        applied = await conn.scalar(text("SELECT sum(events_applied) FROM profiles"))
    assert (offset, applied) == (8, 5)
    assert folder.stats.failed == 1


async def test_a_resend_is_a_duplicate_within_the_horizon_and_counts_again_after_it(
    engine: AsyncEngine, reads: FastReads, features: FeatureSet
) -> None:
    folder = ProfileFolder(engine, features, dedup_horizon_s=60)
    # The clock now, not NOW_US (taken at import, maybe minutes before this test runs):
    # the fold measures the horizon against the clock.
    now = int(time.time() * 1_000_000)
    hour_ago = now - 3_600_000_000
    old = record("r-1", "resender", "session_start", hour_ago)
    old = EventRecord(**{**_fields(old), "received_at": hour_ago})
    fresh = record("r-2", "resender", "session_start", now)
    fresh = EventRecord(**{**_fields(fresh), "received_at": now})
    await folder.fold_batch([encode_record(old), encode_record(fresh)])
    # Resent (a new request, so received now): r-2 is remembered, r-1 fell out of it.
    resent = [EventRecord(**{**_fields(r), "received_at": now}) for r in (old, fresh)]
    await folder.fold_batch([encode_record(r) for r in resent])
    assert (folder.stats.applied, folder.stats.duplicates) == (3, 1)
    # The resend past the horizon is counted: its event time is older than the horizon.
    assert folder.stats.beyond_horizon == 1
    async with engine.connect() as conn:
        blob = await conn.scalar(text("SELECT seen_ids FROM profiles"))
    # One bucket holds both ids received now: 11 bytes of msgpack around their hashes.
    assert (SeenIds.decode(blob).counts, len(blob)) == ([2], 11 + 2 * 8)


def _fields(r: EventRecord) -> dict[str, Any]:
    return {name: getattr(r, name) for name in r.__struct_fields__}


async def test_the_progress_is_read_once_per_assignment_then_kept_by_the_owner(
    engine: AsyncEngine, reads: FastReads, features: FeatureSet
) -> None:
    folder = ProfileFolder(engine, features, dedup_horizon_s=60)
    progress_reads: list[list[int]] = []
    read_progress = folder.repository.committed_offsets

    async def counted(conn: Any, topic: str, partitions: Any) -> Any:
        progress_reads.append(list(partitions))
        return await read_progress(conn, topic, partitions)

    folder.repository.committed_offsets = counted  # type: ignore[method-assign]
    events = [record(f"k-{i}", "kept", "purchase", NOW_US, amount=1) for i in range(3)]
    await folder.fold_batch([encode_record(events[0])], [at(5, 1)])
    await folder.fold_batch([encode_record(events[1])], [at(5, 2)])
    assert progress_reads == [[5]]  # then what this process committed itself

    # Partition 5 moves to another copy, which folds a message, then comes back.
    other = ProfileFolder(engine, features, dedup_horizon_s=60)
    await other.fold_batch([encode_record(events[2])], [at(5, 3)])
    folder.forget_progress()  # the rebalance
    async with engine.begin() as conn:  # ids forgotten (as past the horizon): offsets only
        await conn.execute(text("UPDATE profiles SET seen_ids = NULL, version = version + 1"))
    await folder.fold_batch([encode_record(events[2])], [at(5, 3)])
    assert progress_reads == [[5], [5]]
    assert (folder.stats.applied, folder.stats.redelivered) == (2, 1)
    profile = await ProfileService(reads, features).get("g", "kept")
    assert profile is not None
    assert (profile.events_applied, profile.features["spend_total"]) == (3, 3)


async def test_a_message_past_a_gap_is_held_back_until_the_partition_is_read_again(
    engine: AsyncEngine, reads: FastReads, features: FeatureSet
) -> None:
    # Around a rebalance the consumer may deliver a partition's later messages before
    # earlier ones; folding them first would move the progress past the earlier ones,
    # which would then be skipped as redeliveries: lost.
    folder = ProfileFolder(engine, features, dedup_horizon_s=60)
    events = [record(f"g-{i}", "gapped", "purchase", NOW_US, amount=2**i) for i in range(5)]
    messages = [encode_record(e) for e in events]
    first = await folder.fold_messages(messages[:2], [at(4, 0), at(4, 1)])
    assert (len(first.records), first.held, first.resume) == (2, set(), {})

    # Offsets 3 and 4 arrive before 2 (with another partition's message between them).
    other = encode_record(record("g-x", "elsewhere", "purchase", NOW_US, amount=100))
    ahead = await folder.fold_messages(
        [messages[3], other, messages[4]], [at(4, 3), at(5, 0), at(4, 4)]
    )
    assert [r.event_id for r in ahead.records] == ["g-x"]
    assert (ahead.held, ahead.resume) == ({0, 2}, {4: 2})
    # Still out of order before the seek took effect: held, the seek not asked again.
    again = await folder.fold_messages([messages[4]], [at(4, 4)])
    assert (again.records, again.held, again.resume) == ([], {0}, {})
    async with engine.connect() as conn:
        progress = await conn.scalar(
            text("SELECT committed_offset FROM fold_progress WHERE partition = 4")
        )
    assert progress == 1

    # Read again from offset 2, in order: everything folds once.
    resumed = await folder.fold_messages(messages[2:], [at(4, 2), at(4, 3), at(4, 4)])
    assert ([r.event_id for r in resumed.records], resumed.held) == (["g-2", "g-3", "g-4"], set())
    profile = await ProfileService(reads, features).get("g", "gapped")
    assert profile is not None
    assert (profile.events_applied, profile.features["spend_total"]) == (5, 31)
    assert folder.stats.held == 3


async def test_a_gap_the_broker_no_longer_holds_is_accepted(
    engine: AsyncEngine, reads: FastReads, features: FeatureSet
) -> None:
    folder = ProfileFolder(engine, features, dedup_horizon_s=60)
    events = [record(f"r-{i}", "retained", "purchase", NOW_US, amount=1) for i in range(2)]
    await folder.fold_messages([encode_record(events[0])], [at(6, 10)])
    held = await folder.fold_messages([encode_record(events[1])], [at(6, 50)])
    assert held.resume == {6: 11}
    folder.accept_from(6, 50)  # the broker's earliest offset: 11..49 were deleted
    done = await folder.fold_messages([encode_record(events[1])], [at(6, 50)])
    assert ([r.event_id for r in done.records], done.held) == (["r-1"], set())
