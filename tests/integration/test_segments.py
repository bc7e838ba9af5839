"""Segments against a real PostgreSQL: transitions committed with the profile (outbox),
time-driven exits by the segment clock, new segments evaluated over existing profiles."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.events import EventRecord, encode_many
from app.domain.features import parse_features
from app.segment_catalog import SegmentCatalog, SegmentJudge
from app.segment_clock import SegmentClock
from app.streams.folding import ProfileFolder

FEATURES = parse_features(
    """
[features.spend_total]
event = "purchase"
agg = "sum"
field = "amount"

[features.sessions_3s]
event = "session_start"
agg = "count"
window = "3s"

[segments.whales]
where = "spend_total >= 100.0"

[segments.playing]
where = "sessions_3s >= 1"
"""
)


def record(
    event_id: str, player: str, kind: str, ts: int, game: str = "g", **props: Any
) -> EventRecord:
    now = time.time_ns() // 1000
    return EventRecord(
        game=game,
        event_id=event_id,
        player_id=player,
        type=kind,
        ts=ts,
        received_at=now,
        props=props or None,
    )


@pytest.fixture
async def catalog(engine: AsyncEngine) -> SegmentCatalog:
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            "TRUNCATE segment_defs, segment_members, segment_due, segment_changes"
        )
    catalog = SegmentCatalog(engine, FEATURES)
    await catalog.start()
    # The file's segments are pending evaluation over profiles; none exist yet.
    clock = SegmentClock(engine, catalog)
    while await clock.backfill_round():
        pass
    return catalog


async def changes(engine: AsyncEngine) -> list[tuple[str, str, str, dict[str, Any]]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT player_id, segment, kind, features FROM segment_changes ORDER BY id")
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows.all()]


async def members(engine: AsyncEngine) -> set[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT segment, player_id FROM segment_members"))
        return {(r[0], r[1]) for r in rows.all()}


async def test_transitions_are_committed_with_the_profile_once(
    engine: AsyncEngine, catalog: SegmentCatalog
) -> None:
    folder = ProfileFolder(engine, FEATURES, segments=SegmentJudge(catalog.for_game))
    now = time.time_ns() // 1000
    events = [
        record("e1", "p1", "purchase", now, amount=60),
        record("e2", "p2", "purchase", now, amount=5),
    ]
    await folder.fold_batch([_payload(events)])
    assert await changes(engine) == []
    # Both events of p1 in one batch: evaluated once, one transition.
    batch = [
        record("e3", "p1", "purchase", now, amount=50),
        record("e4", "p1", "purchase", now, amount=1),
    ]
    await folder.fold_batch([_payload(batch)])
    assert await changes(engine) == [("p1", "whales", "entered", {"spend_total": 111})]
    # Redelivery changes nothing, and adds no transition.
    await folder.fold_batch([_payload(batch)])
    assert await changes(engine) == [("p1", "whales", "entered", {"spend_total": 111})]
    assert await members(engine) == {("whales", "p1")}


async def test_a_failed_transaction_leaves_no_transition(
    engine: AsyncEngine, catalog: SegmentCatalog
) -> None:
    judge = SegmentJudge(catalog.for_game)
    folder = ProfileFolder(engine, FEATURES, segments=judge)
    now = time.time_ns() // 1000
    original = judge.repository.set_due

    async def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError("connection lost")

    judge.repository.set_due = fail  # type: ignore[method-assign]
    task = asyncio.create_task(
        folder.fold_batch([_payload([record("x1", "p9", "purchase", now, amount=500)])])
    )
    await asyncio.sleep(0.3)  # the fold retries: nothing may be committed meanwhile
    assert await changes(engine) == []
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM profiles WHERE player_id = 'p9'")) == 0
    judge.repository.set_due = original  # type: ignore[method-assign]
    await asyncio.wait_for(task, 10)
    assert await changes(engine) == [("p9", "whales", "entered", {"spend_total": 500})]


async def test_a_window_moving_makes_a_player_leave_without_any_event(
    engine: AsyncEngine, catalog: SegmentCatalog
) -> None:
    folder = ProfileFolder(engine, FEATURES, segments=SegmentJudge(catalog.for_game))
    clock = SegmentClock(engine, catalog)
    now = time.time_ns() // 1000
    await folder.fold_batch([_payload([record("s1", "p3", "session_start", now - 1_000_000)])])
    assert await changes(engine) == [("p3", "playing", "entered", {"sessions_3s": 1})]
    async with engine.connect() as conn:
        due = await conn.scalar(text("SELECT due_at FROM segment_due WHERE player_id = 'p3'"))
    assert due is not None
    assert 0 < due.timestamp() - time.time() <= 3
    deadline = time.monotonic() + 10
    while len(await changes(engine)) < 2:
        assert time.monotonic() < deadline, "no time-driven exit"
        await clock.due_round()
        await asyncio.sleep(0.1)
    left = (await changes(engine))[1]
    assert left == ("p3", "playing", "left", {"sessions_3s": 0})
    assert time.time() - due.timestamp() < 5
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM segment_due")) == 0


async def test_a_new_segment_is_evaluated_over_existing_profiles(
    engine: AsyncEngine, catalog: SegmentCatalog
) -> None:
    folder = ProfileFolder(engine, FEATURES, segments=SegmentJudge(catalog.for_game))
    now = time.time_ns() // 1000
    events = [record(f"e{i}", f"p{i}", "purchase", now, amount=i * 10) for i in range(12)]
    events.append(record("o1", "p1", "purchase", now, game="other", amount=99))
    await folder.fold_batch([_payload(events)])
    before = len(await changes(engine))
    await catalog.put("g", "mid", "spend_total >= 30.0 && spend_total < 80.0", announce=True)
    await catalog.put("g", "quiet", "spend_total >= 100.0", announce=False)
    clock = SegmentClock(engine, catalog, page=5)
    while await clock.backfill_round():
        pass
    after = (await changes(engine))[before:]
    assert sorted(p for p, s, k, _ in after if s == "mid") == ["p3", "p4", "p5", "p6", "p7"]
    assert {s for _, s, _, _ in after} == {"mid"}  # "quiet" announced nothing
    assert {p for s, p in await members(engine) if s == "quiet"} == {"p10", "p11"}
    info = await catalog.get("g", "mid")
    assert info.evaluated
    assert info.profiles_evaluated == 12


async def test_delivered_transitions_are_pruned_after_their_keeping_time(
    engine: AsyncEngine, catalog: SegmentCatalog
) -> None:
    folder = ProfileFolder(engine, FEATURES, segments=SegmentJudge(catalog.for_game))
    now = time.time_ns() // 1000
    await folder.fold_batch([_payload([record("k1", "p7", "purchase", now, amount=500)])])
    await folder.fold_batch([_payload([record("k2", "p8", "purchase", now, amount=500)])])
    newest = len(await changes(engine))
    clock = SegmentClock(engine, catalog, keep_changes_s=0)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("TRUNCATE segment_cursors")
        await conn.execute(
            text("INSERT INTO segment_cursors (consumer, last_id) VALUES ('a', :a), ('b', :b)"),
            {"a": 10**9, "b": await conn.scalar(text("SELECT min(id) FROM segment_changes"))},
        )
    # Only what the slowest relay ("b") has delivered may go.
    assert await clock.prune() == 1
    assert len(await changes(engine)) == newest - 1
    assert await SegmentClock(engine, catalog).prune() == 0  # kept 7 days by default


def _payload(events: list[EventRecord]) -> bytes:
    return encode_many(events)
