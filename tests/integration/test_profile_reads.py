"""Profile reads asked for together share queries, and never answer from older state."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.reads import FastReads
from app.domain.events import EventRecord, encode_record
from app.domain.features import FeatureSet
from app.profiles import ProfileService
from app.streams.folding import ProfileFolder
from tests.support import unique


def purchase(game: str, event_id: str, player: str, amount: float) -> bytes:
    now = int(time.time() * 1_000_000)
    return encode_record(
        EventRecord(
            game=game,
            event_id=event_id,
            player_id=player,
            type="purchase",
            ts=now,
            received_at=now,
            props={"amount": amount},
        )
    )


async def test_concurrent_reads_share_queries_and_see_each_commit(
    engine: AsyncEngine, reads: FastReads, features: FeatureSet
) -> None:
    game = unique("game")
    folder = ProfileFolder(engine, features)
    players = [f"p{i}" for i in range(30)]
    await folder.fold_batch([purchase(game, f"e{i}", p, i) for i, p in enumerate(players)])
    profiles = ProfileService(reads, features)
    asked = [*players, *players[:10], "nobody"]
    got = await asyncio.gather(*(profiles.get(game, p) for p in asked))
    for player, profile in zip(asked, got, strict=True):
        if player == "nobody":
            assert profile is None
        else:
            assert profile is not None
            assert profile.player_id == player
            assert profile.features["spend_total"] == float(players.index(player))
    assert profiles.rows == len(asked)
    assert profiles.queries <= 3  # one alone, then at most two shared
    # A commit before the reads are asked is in every answer: nothing is cached.
    await folder.fold_batch([purchase(game, "again", "p3", 100.0)])
    again = await asyncio.gather(*(profiles.get(game, "p3") for _ in range(20)))
    assert {p.features["spend_total"] for p in again if p is not None} == {103.0}
    many = await profiles.get_many(game, ["p3", "nobody", "p0"])
    assert [None if p is None else p.features["purchases_7d"] for p in many] == [2, None, 1]


async def test_an_id_with_a_nul_reads_as_unknown_without_failing_the_others(
    engine: AsyncEngine, reads: FastReads, features: FeatureSet
) -> None:
    game = unique("game")
    folder = ProfileFolder(engine, features)
    await folder.fold_batch([purchase(game, "e1", "p1", 5.0)])
    profiles = ProfileService(reads, features)
    # Shared queries: a NUL (which PostgreSQL text cannot hold) must not fail the others.
    got = await asyncio.gather(*(profiles.get(game, p) for p in ["p1", "bad\x00id", "p1"]))
    assert [None if p is None else p.features["spend_total"] for p in got] == [5.0, None, 5.0]
    many = await profiles.get_many(game, ["bad\x00id", "p1"])
    assert [None if p is None else p.player_id for p in many] == [None, "p1"]
    assert await profiles.get_many(game, ["\x00"]) == [None]
