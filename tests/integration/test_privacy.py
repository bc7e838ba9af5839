"""Erasure against a real PostgreSQL: the fold and the archive drop an erased player's
events once the erasure is recorded, the eraser empties every store, reuse is explicit."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analytics.location import LakeLocation, connect_lake
from app.db.privacy import ErasureRepository
from app.db.reads import FastReads
from app.domain.events import EventRecord, encode_record
from app.domain.features import FeatureSet
from app.privacy import Eraser, ErasurePending, NoErasure, PrivacyService
from app.profiles import ProfileService
from app.streams.folding import ProfileFolder
from app.streams.lake import LakeArchiver, write_events
from app.streams.tombstones import TombstoneWatch

NOW_US = int(time.time() * 1_000_000)


def records(game: str, player: str, prefix: str, count: int) -> list[EventRecord]:
    return [
        EventRecord(game, f"{prefix}{i}", player, "session_start", NOW_US - i, NOW_US, None)
        for i in range(count)
    ]


async def test_erasure_in_force_at_once_then_carried_out(
    engine: AsyncEngine, reads: FastReads, features: FeatureSet, tmp_path: Path
) -> None:
    game, victim = f"g-{uuid.uuid4().hex[:8]}", f"victim-{uuid.uuid4().hex[:8]}"
    tombstones = TombstoneWatch(engine)
    folder = ProfileFolder(engine, features, tombstones=tombstones)
    archiver = LakeArchiver(
        tmp_path, flush_s=60, flush_events=10**6, writer=write_events, tombstones=tombstones
    )
    location = LakeLocation(str(tmp_path))
    privacy = PrivacyService(engine, location, ProfileService(reads, features))
    first = records(game, victim, "v", 5) + records(game, "other", "o", 5)
    archiver.add_batch(await folder.fold_batch([encode_record(r) for r in first]), [])
    assert (await privacy.profiles.get(game, victim)).events_applied == 5  # type: ignore[union-attr]

    erasure = await privacy.erase(game, victim)
    assert erasure.status == "pending"
    assert (await privacy.erase(game, victim)).id == erasure.id
    with pytest.raises(ErasurePending):
        await privacy.allow_reuse(game, victim)

    # The buffered events and every later one (new, resent) are dropped.
    await archiver.flush()
    assert archiver.erased == 5
    later = records(game, victim, "v", 3) + records(game, victim, "late", 4)
    await folder.fold_batch([encode_record(r) for r in later])
    assert folder.stats.erased == 7
    with connect_lake(location) as conn:
        assert conn.execute("SELECT DISTINCT player_id FROM lake_rows").fetchall() == [("other",)]

    assert await Eraser(engine, location, broker=None).run_pending() >= 1
    done = await privacy.erasure(game, erasure.id)
    assert done is not None
    assert (done.status, done.player_id) == ("done", None)
    assert done.stores["profiles"]["rows_removed"] == 1
    assert done.stores["applied_ids"]["rows_removed"] == 5
    assert await privacy.profiles.get(game, victim) is None  # type: ignore[union-attr]
    async with engine.connect() as conn:
        held = await conn.scalar(
            text("SELECT count(*) FROM player_erasures e WHERE position(:p in e::text) > 0"),
            {"p": victim},
        )
    assert held == 0
    assert await privacy.erasure("another-game", erasure.id) is None

    # Only an explicit call makes the id count again.
    assert await privacy.allow_reuse(game, victim) == 1
    with pytest.raises(NoErasure):
        await privacy.allow_reuse(game, victim)
    await folder.fold_batch([encode_record(r) for r in records(game, victim, "new", 2)])
    assert (await privacy.profiles.get(game, victim)).events_applied == 2  # type: ignore[union-attr]


async def test_recording_an_erasure_waits_for_writes_that_read_the_ledger(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    repository = ErasureRepository()
    privacy = PrivacyService(engine, LakeLocation(str(tmp_path)))
    game = f"g-{uuid.uuid4().hex[:8]}"

    async def waiting_on_lock() -> int:
        async with engine.connect() as conn:
            return int(
                await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    )
                )
                or 0
            )

    async with engine.connect() as writer:
        await writer.begin()
        before = await repository.hold_shared(writer)  # a fold transaction, in flight
        erase = asyncio.create_task(privacy.erase(game, "p1"))
        deadline = time.monotonic() + 30
        while not await waiting_on_lock():
            assert time.monotonic() < deadline, "the erasure never waited for the lock"
            await asyncio.sleep(0.05)
        assert not erase.done()
        await writer.commit()  # the write that did not see the erasure is finished first
        erasure = await asyncio.wait_for(erase, 30)
    async with engine.begin() as later:
        assert await repository.hold_shared(later) > before
        keys = await repository.active_keys(later)
    assert erasure.player_key in keys[game]
