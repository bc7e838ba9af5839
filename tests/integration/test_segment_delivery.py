"""Delivering transitions from the outbox to a real webhook receiver on 127.0.0.1:
signed, in order per player, retried, kept when failed and sent again; SSRF refused."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.events import EventRecord, encode_many
from app.domain.features import parse_features
from app.domain.webhooks import WebhookError
from app.segment_catalog import SegmentCatalog, SegmentJudge
from app.segment_clock import SegmentClock
from app.segment_delivery import WebhookRelay, WebhookSender, WebhookService
from app.streams.folding import ProfileFolder
from tests.webhook_receiver import Receiver

FEATURES = parse_features(
    """
[features.spend_total]
event = "purchase"
agg = "sum"
field = "amount"

[segments.whales]
where = "spend_total >= 100.0"

[segments.spenders]
where = "spend_total > 0.0 && spend_total < 50.0"
"""
)


def purchase(event_id: str, player: str, amount: float) -> EventRecord:
    now = time.time_ns() // 1000
    return EventRecord(
        game="g",
        event_id=event_id,
        player_id=player,
        type="purchase",
        ts=now,
        received_at=now,
        props={"amount": amount},
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.stop()


@pytest.fixture
async def folder(engine: AsyncEngine) -> ProfileFolder:
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            "TRUNCATE segment_defs, segment_members, segment_due, segment_changes, "
            "segment_cursors, webhooks, webhook_failures"
        )
    catalog = SegmentCatalog(engine, FEATURES)
    await catalog.start()
    while await SegmentClock(engine, catalog).backfill_round():
        pass
    return ProfileFolder(engine, FEATURES, segments=SegmentJudge(catalog.for_game))


def sender(*, allow_private: bool = True) -> WebhookSender:
    return WebhookSender(timeout_s=2, retries=2, backoff_s=0.01, allow_private=allow_private)


async def test_private_receivers_are_refused_unless_allowed(engine: AsyncEngine) -> None:
    with pytest.raises(WebhookError, match="loopback"):
        await WebhookService(engine, sender(allow_private=False)).create(
            "g", "http://127.0.0.1:9/x", ["segment.entered"], None
        )
    with pytest.raises(WebhookError, match="scheme"):
        await WebhookService(engine, sender()).create("g", "gopher://x/", ["segment.left"], None)


async def test_transitions_reach_the_receiver_signed_in_order_and_again_after_failing(
    engine: AsyncEngine, folder: ProfileFolder, receiver: Receiver
) -> None:
    posting = sender()
    service = WebhookService(engine, posting)
    hook = await service.create("g", receiver.url, ["segment.entered", "segment.left"], None)
    receiver.secret = hook.secret
    relay = WebhookRelay(engine, hook, posting)
    # p1: spenders, then whales (leaves spenders); p2: spenders.
    await folder.fold_batch([encode_many([purchase("a", "p1", 10), purchase("b", "p2", 5)])])
    await folder.fold_batch([encode_many([purchase("c", "p1", 200)])])
    while await relay.round():
        pass
    got = receiver.snapshot()
    assert receiver.bad_signatures == 0
    seen = [
        (d["body"]["data"]["player_id"], d["body"]["type"], d["body"]["data"]["segment"])
        for d in got
    ]
    assert [s for s in seen if s[0] == "p1"] == [
        ("p1", "segment.entered", "spenders"),
        ("p1", "segment.left", "spenders"),  # one evaluation: its segments by name
        ("p1", "segment.entered", "whales"),
    ]
    assert [s for s in seen if s[0] == "p2"] == [("p2", "segment.entered", "spenders")]
    assert len({d["id"] for d in got}) == len(got) == 4
    # In order per player only: p2's entry may come first.
    first_of_p1 = next(d for d in got if d["body"]["data"]["player_id"] == "p1")
    assert first_of_p1["body"]["data"]["features"] == {"spend_total": 10}

    receiver.failing = True
    await folder.fold_batch([encode_many([purchase("d", "p2", 500)])])
    while await relay.round():
        pass
    assert receiver.refused == 3  # the first attempt and two retries
    failed = await service.failed(hook, 100)
    assert [(f.change.segment, f.change.kind) for f in failed] == [
        ("spenders", "left"),
        ("whales", "entered"),
    ]
    assert [f.attempts for f in failed] == [3, 0]  # the later one waits for the first
    receiver.failing = False
    assert await service.resend(hook) == (2, 0)
    assert await service.failed(hook, 100) == []
    tail = [(d["body"]["data"]["segment"], d["body"]["type"]) for d in receiver.snapshot()[4:]]
    assert tail == [("spenders", "segment.left"), ("whales", "segment.entered")]
    await posting.close()
