"""Folding micro-batches of topic records into profile snapshots, exactly once in effect.

One PostgreSQL transaction per micro-batch (per ``transaction_events`` events of a
larger one): claim the event ids (those already applied come back as not new), lock
the touched profiles, fold the new events through the pure domain fold, write the
profiles and any failed events, commit. Only after the commit does the agent
acknowledge the batch to Kafka, so a crash anywhere means redelivery, and redelivery
is a no-op for every id already committed.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import metrics
from app.db.repositories import PlayerKey, ProfileRepository, ProfileWrite
from app.domain.events import EventRecord, decode_records, encode_record, maybe_from_micros
from app.domain.features import FeatureSet
from app.domain.fold import (
    PoisonEvent,
    ProfileState,
    _bucket_range,
    decode_state,
    encode_state,
    fold_event,
    prune_windows,
)
from app.log import get_logger

from .tombstones import TombstoneWatch

log = get_logger(__name__)

Failure = tuple[str | None, str | None, str | None, str, bytes]
"""(game, player_id, event_id, reason, raw record) of an event that could not be folded."""


class Position(NamedTuple):
    """Where a topic message was: its partition, offset and broker timestamp (seconds)."""

    partition: int
    offset: int
    appended_at: float


def _observe_appended(positions: Sequence[Position], carried: Sequence[int]) -> None:
    """The ``appended_to_folded`` hop: each message's age now, once per event it carried."""
    now = time.time()
    child = metrics.EVENT_HOP_SECONDS.labels("appended_to_folded")
    for position, count in zip(positions, carried, strict=True):
        if count:
            metrics.observe_times(child, max(0.0, now - position.appended_at), count)


def _no_sample(
    records: list[EventRecord], positions: Sequence[Position], carried: list[int]
) -> None:
    """No hop sample (until bootstrap sets one)."""


class RefusedByDatabase(Exception):
    """PostgreSQL refused the data itself (not a transient failure): retrying cannot help."""


def _refused(exc: DBAPIError) -> bool:
    """True for SQLSTATE classes 22 (data exception) and 23 (integrity violation)."""
    cause: BaseException | None = exc
    while cause is not None:
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if isinstance(state, str):
            return state[:2] in ("22", "23")
        cause = getattr(cause, "orig", None) or cause.__cause__
    return False


@dataclass(slots=True)
class FoldStats:
    """Counters since start (this process)."""

    seen: int = 0
    applied: int = 0
    duplicates: int = 0
    failed: int = 0
    late: int = 0
    batches: int = 0
    erased: int = 0


@dataclass(slots=True)
class _Outcome:
    """What one committed micro-batch did."""

    applied: int = 0
    duplicates: int = 0
    failed: int = 0
    late: int = 0
    erased: int = 0
    received_at: list[int] = field(default_factory=list)
    event_ts: list[int] = field(default_factory=list)
    states: dict[PlayerKey, ProfileState] = field(default_factory=dict)
    versions: dict[PlayerKey, int] = field(default_factory=dict)
    """Written states and their new versions: cached once the transaction commits."""


class ProfileFolder:
    """Applies topic records to profiles; never raises on bad data, retries on outages."""

    def __init__(
        self,
        engine: AsyncEngine,
        features: FeatureSet,
        repository: ProfileRepository | None = None,
        *,
        retry_max_s: float = 5.0,
        cache_size: int = 100_000,
        transaction_events: int = 2000,
        topic: str = "events",
        tombstones: TombstoneWatch | None = None,
    ) -> None:
        self.engine = engine
        self.topic = topic
        self.features = features
        self.repository = repository or ProfileRepository()
        self.retry_max_s = retry_max_s
        self.transaction_events = transaction_events
        self.stats = FoldStats()
        # Erased players' events are dropped before anything is claimed or folded.
        self.tombstones = tombstones
        self._tombstone_revision = -1
        # Partition-owned state cache: the states this process wrote last, by version.
        # PostgreSQL stays the truth: each batch sends the versions it holds and gets
        # back only the states that changed elsewhere (after a rebalance, a replay).
        self.cache_size = cache_size
        # Two maps, not (version, state) pairs: a new pair per update would be a new
        # object for the garbage collector to track and scan, per player, per batch.
        self._cache: OrderedDict[PlayerKey, ProfileState] = OrderedDict()
        self._versions: dict[PlayerKey, int] = {}
        self.freshness_samples: list[float] | None = None
        """Set to a list to also collect every event's freshness in seconds (benchmarks)."""
        self.hop_sampler: Callable[[list[EventRecord], Sequence[Position], list[int]], None]
        self.hop_sampler = _no_sample
        """Called once a batch is committed (the hop sample, app/streams/hop_sample.py)."""

    async def fold_batch(
        self, payloads: Sequence[bytes], positions: Sequence[Position] | None = None
    ) -> list[EventRecord]:
        """Fold topic messages; returns, once their effect is committed, their records.

        ``positions``: each message's partition, offset and broker timestamp, to record
        how far the fold got (read-your-writes) and the ``appended_to_folded`` hop.
        """
        records: list[EventRecord] = []
        undecodable: list[Failure] = []
        carried: list[int] = []
        for raw in payloads:
            try:
                decoded = decode_records(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                undecodable.append((None, None, None, f"undecodable message: {exc}", raw))
                decoded = []
            records.extend(decoded)
            carried.append(len(decoded))
        # A topic message may carry many requests' events (the producer joins those of
        # one event-loop turn), so a micro-batch of messages can hold tens of thousands:
        # they are committed in transactions of at most ``transaction_events``, which
        # keeps each one short (and the event loop free for HTTP in between). The batch
        # is acknowledged only once all of them committed; a redelivered part is a no-op.
        step = self.transaction_events
        for start in range(0, max(1, len(records)), step):
            part = records[start : start + step]
            failures = undecodable if start == 0 else []
            try:
                await self._with_retry(part, failures)
            except RefusedByDatabase as exc:
                # PostgreSQL refused something in the batch: find the culprit event by event.
                log.warning("fold batch rejected by database; isolating events", error=str(exc))
                await self._isolate(part, failures)
        if positions:
            self.hop_sampler(records, positions, carried)
            await self._record_progress(positions)
            _observe_appended(positions, carried)
        self.stats.seen += len(records) + len(undecodable)
        self.stats.batches += 1
        return records

    async def _with_retry(
        self, records: Sequence[EventRecord], failures: Sequence[Failure]
    ) -> None:
        delay = 0.1
        while True:
            started = time.monotonic()
            try:
                async with self.engine.begin() as conn:
                    outcome = await self._apply(conn, records, list(failures))
                self._remember(outcome)
                self._count(outcome, time.monotonic() - started)
                return
            except (DBAPIError, OSError, TimeoutError) as exc:
                if isinstance(exc, DBAPIError) and _refused(exc):
                    raise RefusedByDatabase(str(getattr(exc, "orig", exc))) from exc
                # PostgreSQL is down or a lock conflict aborted us: hold the batch and retry.
                # Nothing is acknowledged to Kafka until this succeeds.
                log.warning("fold batch failed; retrying", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

    async def _record_progress(self, positions: Sequence[Position]) -> None:
        """Every message up to these offsets is folded: say so, for read-your-writes.

        Its own short transaction, after the batch's; retried like them (a read waiting
        for these offsets waits a little longer meanwhile, never sees them too early).
        """
        offsets: dict[int, int] = {}
        for position in positions:
            if position.offset > offsets.get(position.partition, -1):
                offsets[position.partition] = position.offset
        delay = 0.05
        while True:
            try:
                async with self.engine.begin() as conn:
                    await self.repository.record_progress(conn, self.topic, offsets)
                return
            except (DBAPIError, OSError, TimeoutError) as exc:
                log.warning("fold progress not recorded; retrying", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

    def _remember(self, outcome: _Outcome) -> None:
        cache = self._cache
        move_to_end = cache.move_to_end
        cache.update(outcome.states)
        self._versions.update(outcome.versions)
        for key in outcome.states:
            move_to_end(key)
        while len(cache) > self.cache_size:
            key, _state = cache.popitem(last=False)
            del self._versions[key]

    def _count(self, outcome: _Outcome, seconds: float) -> None:
        """Counted once committed: an attempt that failed and was retried is not."""
        self.stats.applied += outcome.applied
        self.stats.duplicates += outcome.duplicates
        self.stats.failed += outcome.failed
        self.stats.late += outcome.late
        self.stats.erased += outcome.erased
        if outcome.erased:
            metrics.ERASED_EVENTS_DROPPED.inc(outcome.erased)
        metrics.EVENTS_FOLDED.inc(outcome.applied)
        metrics.EVENTS_DUPLICATE.inc(outcome.duplicates)
        metrics.EVENTS_FAILED.inc(outcome.failed)
        metrics.LATE_EVENTS.inc(outcome.late)
        metrics.FOLD_BATCH_SECONDS.observe(seconds)
        committed_us = time.time_ns() // 1000
        freshness = [max(0, committed_us - us) / 1_000_000 for us in outcome.received_at]
        metrics.observe_all(metrics.FRESHNESS_SECONDS, freshness)
        hops = metrics.EVENT_HOP_SECONDS
        metrics.observe_all(hops.labels("received_to_folded"), freshness)
        totals = [(committed_us - us) / 1_000_000 for us in outcome.event_ts]
        metrics.observe_all(hops.labels("device_to_folded"), totals)
        if self.freshness_samples is not None:
            self.freshness_samples.extend(freshness)

    async def forget_applied_ids(self, older_than_s: float) -> int:
        """Drop applied event ids remembered longer than ``older_than_s``; return how many."""
        async with self.engine.begin() as conn:
            return await self.repository.forget_applied(conn, older_than_s)

    async def _isolate(self, records: Sequence[EventRecord], failures: Sequence[Failure]) -> None:
        if failures:
            await self._with_retry([], failures)
        for record in records:
            try:
                await self._with_retry([record], [])
            except RefusedByDatabase as exc:
                reason = f"rejected by the database: {exc}"
                raw = encode_record(record)
                await self._with_retry([], [(None, None, None, reason[:2000], raw)])

    async def _screen(
        self, conn: AsyncConnection, records: Sequence[EventRecord], outcome: _Outcome
    ) -> Sequence[EventRecord]:
        """Drop the events of erased players (read under the tombstone lock, held to commit)."""
        if self.tombstones is None:
            return records
        tombstones = await self.tombstones.refresh(conn)
        if tombstones.revision != self._tombstone_revision:
            # An erasure (or a lifted one): no state held in memory may outlive it.
            self._cache.clear()
            self._versions.clear()
            self._tombstone_revision = tombstones.revision
        kept = TombstoneWatch.screen(tombstones, records)
        outcome.erased = len(records) - len(kept)
        return kept

    async def _apply(
        self,
        conn: AsyncConnection,
        records: Sequence[EventRecord],
        failures: list[Failure],
    ) -> _Outcome:
        repo = self.repository
        outcome = _Outcome()
        records = await self._screen(conn, records, outcome)
        claimed = await repo.claim_events(
            conn, [(r.game, r.player_id, r.event_id) for r in records]
        )
        fresh: list[EventRecord] = []
        for record in records:
            ident = (record.game, record.player_id, record.event_id)
            if ident in claimed:
                claimed.discard(ident)  # a repeat inside the batch is a duplicate too
                fresh.append(record)
        outcome.duplicates = len(records) - len(fresh)
        now_us = time.time_ns() // 1000
        longest = self.features.longest_window_s
        late_before = None if longest is None else now_us - longest * 1_000_000

        keys: list[PlayerKey] = sorted({(r.game, r.player_id) for r in fresh})
        cache = self._cache
        # Taken out of the cache: folded in place, they go back only if this commits.
        known = self._versions
        held = {key: cache.pop(key) for key in keys if key in cache}
        stored = await repo.lock_states(conn, keys, {key: known.pop(key) for key in held})
        states: dict[PlayerKey, ProfileState] = {}
        versions: dict[PlayerKey, int] = {}
        touched: set[PlayerKey] = set()
        for record in fresh:
            key = (record.game, record.player_id)
            state = states.get(key)
            if state is None:
                version, blob = stored.get(key, (0, None))
                if key not in stored:
                    state = ProfileState()
                elif blob is None:
                    state = held[key]  # our copy is current
                else:
                    state = decode_state(blob)
                states[key] = state
                versions[key] = version
            try:
                fold_event(state, record, self.features)
            except PoisonEvent as exc:
                failures.append(
                    (
                        record.game,
                        record.player_id,
                        record.event_id,
                        str(exc),
                        encode_record(record),
                    )
                )
                continue
            except Exception as exc:  # a fold bug must not stop the stream or lose the event
                log.exception("fold raised on an event", event_id=record.event_id)
                reason = f"internal error folding this event: {exc!r}"
                failures.append(
                    (record.game, record.player_id, record.event_id, reason, encode_record(record))
                )
                continue
            touched.add(key)
            outcome.applied += 1
            outcome.received_at.append(record.received_at)
            outcome.event_ts.append(record.ts)
            if late_before is not None and record.ts < late_before:
                outcome.late += 1

        writes = []
        # Buckets below these indexes have slid out of their window: pruning a state only
        # changes it if it holds one (most states touched were pruned a moment ago).
        horizons = [
            (spec.name, _bucket_range(spec, now_us)[0])
            for spec in self.features.specs
            if spec.bucket_s is not None and spec.window_s is not None
        ]
        for key in sorted(touched):
            state = states[key]
            windows = state.windows
            for name, oldest in horizons:
                buckets = windows.get(name)
                if buckets and min(buckets) < oldest:
                    prune_windows(state, self.features, now_us)
                    break
            outcome.states[key] = state
            outcome.versions[key] = versions[key] + 1
            writes.append(
                ProfileWrite(
                    game=key[0],
                    player_id=key[1],
                    state=encode_state(state),
                    events_applied=state.events_applied,
                    last_event_at=maybe_from_micros(state.last_event_us),
                    last_received_at=maybe_from_micros(state.last_received_us),
                )
            )
        await repo.save_states(conn, writes)
        await repo.add_failed(conn, failures)
        if failures:
            log.warning("events failed to fold", count=len(failures), first=failures[0][3])
        outcome.failed = len(failures)
        return outcome
