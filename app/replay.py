"""Rebuilding profiles from the lake: when features change, or on demand.

For each player in the lake, the profile is replaced by the fold of the player's
distinct archived events, and its remembered id hashes by those of the events received
within the dedup horizon. Run while no fold is consuming (at start, before the agents
join, or with the service stopped): every event at or before the committed Kafka
offsets is in the lake (the archive acknowledges only written events), and every later
one is redelivered and, its id not being among those replayed, applied on top. The
fold's recorded offsets are forgotten (they may be past what the lake holds), so those
redeliveries are told apart by their ids, not skipped by offset.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.analytics.lake import PlayerEvents, count_players, player_events
from app.analytics.location import LakeLocation
from app.db.feature_defs import FeatureDefRepository
from app.db.locks import serving_lock_alone
from app.db.privacy import ErasureRepository
from app.db.profiles import ProfileRepository, ProfileWrite
from app.domain.dedup import SeenIds, bucket_width_s, event_hash
from app.domain.events import EventRecord
from app.domain.features import FeatureSet
from app.domain.fold import FoldRun, PoisonEvent, ProfileState, fold_event, prune_windows
from app.domain.privacy import TombstoneSet
from app.log import get_logger
from app.streams.folding import profile_write

log = get_logger(__name__)


@dataclass(slots=True)
class ReplayStats(FoldRun):
    """What a replay did."""

    erased: int = 0
    """Events of erased players found in the lake and left out (an erasure in progress)."""


class ServiceRunning(RuntimeError):
    """A `playerpulse serve` is folding against this database: a replay must wait."""


async def rebuild_profiles(
    engine: AsyncEngine,
    features: FeatureSet,
    lake_dir: Path | LakeLocation,
    *,
    dedup_horizon_s: int,
    progress: Callable[[int, int], None] | None = None,
    players_per_commit: int = 500,
) -> ReplayStats:
    """Replace every lake player's profile by the fold of its archived events."""
    started = time.monotonic()
    stats = ReplayStats()
    total = await asyncio.to_thread(count_players, lake_dir)
    repository = ProfileRepository()
    async with engine.connect() as conn:
        tombstones = TombstoneSet(await ErasureRepository().active_keys(conn))
    stream = player_events(lake_dir)
    while True:
        chunk = await asyncio.to_thread(_take, stream, players_per_commit)
        if not chunk:
            break
        writes: list[ProfileWrite] = []
        for game, player, events in chunk:
            if tombstones.erased(game, player):
                stats.erased += len(events)
                metrics.ERASED_EVENTS_DROPPED.inc(len(events))
                continue
            writes.append(_refold(game, player, events, features, dedup_horizon_s, stats))
        async with engine.begin() as conn:
            await repository.save_states(conn, writes)
        stats.players += len(chunk)
        if progress is not None:
            progress(stats.players, total)
    async with engine.begin() as conn:
        await repository.forget_progress(conn)
    stats.seconds = time.monotonic() - started
    return stats


def _refold(
    game: str,
    player: str,
    events: list[EventRecord],
    features: FeatureSet,
    dedup_horizon_s: int,
    stats: ReplayStats,
) -> ProfileWrite:
    """One player's profile, folded from its archived events, with their id hashes."""
    now_us = time.time_ns() // 1000
    width_s = bucket_width_s(dedup_horizon_s)
    state = ProfileState()
    seen = SeenIds()
    for event in events:
        try:
            fold_event(state, event, features)
        except PoisonEvent:
            stats.poison += 1  # recorded in failed_events when first folded
        seen.add(event_hash(game, player, event.event_id), event.received_at // 1_000_000, width_s)
    prune_windows(state, features, now_us)
    seen.prune(now_us // 1_000_000, dedup_horizon_s, width_s)
    stats.events += len(events)
    return profile_write((game, player), state, seen.encode())


async def sync_features(
    engine: AsyncEngine,
    features: FeatureSet,
    lake_dir: Path | LakeLocation,
    *,
    dedup_horizon_s: int,
) -> ReplayStats | None:
    """At start: if features were added or changed since profiles were built, rebuild.

    Returns what the rebuild did, or None if none was needed.
    """
    repository = FeatureDefRepository()
    current = features.fingerprints
    async with engine.begin() as conn:
        await repository.lock(conn)  # one process checks and rebuilds at a time
        stored = await repository.fingerprints(conn)
        changed = sorted(name for name, fp in current.items() if stored.get(name) != fp)
        fresh = not stored and not await ProfileRepository().has_profiles(conn)
        if not changed or fresh:
            if stored != current:
                await repository.record(conn, current)
            return None
        log.warning(
            "features added or changed since profiles were built: rebuilding from the lake",
            features=changed,
        )
        last_report = [0.0]

        def report(done: int, total: int) -> None:
            if time.monotonic() - last_report[0] > 5 or done == total:
                last_report[0] = time.monotonic()
                log.info("rebuilding profiles", players=done, of=total)

        stats = await rebuild_profiles(
            engine, features, lake_dir, dedup_horizon_s=dedup_horizon_s, progress=report
        )
        await repository.record(conn, current)
    log.info(
        "profiles rebuilt",
        players=stats.players,
        events=stats.events,
        seconds=round(stats.seconds, 2),
    )
    return stats


async def replay_alone(
    engine: AsyncEngine,
    features: FeatureSet,
    lake_dir: Path | LakeLocation,
    *,
    dedup_horizon_s: int,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayStats:
    """`playerpulse replay`: rebuild every profile, refusing if a server is folding."""
    async with serving_lock_alone(engine) as got:
        if not got:
            raise ServiceRunning(
                "a `playerpulse serve` is running against this database: stop every copy "
                "first (a replay must not race the live fold), or restart them with the "
                "new features file, which rebuilds on start"
            )
        stats = await rebuild_profiles(
            engine, features, lake_dir, dedup_horizon_s=dedup_horizon_s, progress=progress
        )
        async with engine.begin() as tx:
            await FeatureDefRepository().record(tx, features.fingerprints)
        return stats


def _take(stream: Iterator[PlayerEvents], count: int) -> list[PlayerEvents]:
    chunk = []
    for item in stream:
        chunk.append(item)
        if len(chunk) >= count:
            break
    return chunk
