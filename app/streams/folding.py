"""Folding micro-batches of topic records into profile snapshots, exactly once in effect.

One PostgreSQL transaction per micro-batch (per ``transaction_events`` events of a
larger one): lock the touched profiles, skip the events whose id hash the profile
already holds, fold the others through the pure domain fold, write the profiles (with
their id hashes) and any failed events, and record how far each partition is folded,
commit. Only after the commit does the agent acknowledge the batch to Kafka, so a crash
anywhere means redelivery; a redelivered message at or below the recorded offset of its
partition is skipped without looking at its ids, and a client's resend is skipped by
its id hash within the dedup horizon (app/domain/dedup.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import msgspec
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import metrics
from app.db.profiles import Failure, PlayerKey, ProfileRepository, ProfileWrite, Progress
from app.domain.compiled_fold import compile_fold
from app.domain.dedup import SeenIds, bucket_width_s, event_hash
from app.domain.events import EventRecord, decode_records, encode_record, maybe_from_micros
from app.domain.features import FeatureSet
from app.domain.fold import (
    PoisonEvent,
    ProfileState,
    _bucket_range,
    decode_state,
    encode_state,
    prune_windows,
)
from app.log import get_logger

from .tombstones import TombstoneWatch

if TYPE_CHECKING:
    from app.segment_catalog import SegmentJudge

log = get_logger(__name__)


def profile_write(key: PlayerKey, state: ProfileState, seen_ids: bytes | None) -> ProfileWrite:
    """The row that stores a folded state and its remembered id hashes."""
    return ProfileWrite(
        game=key[0],
        player_id=key[1],
        state=encode_state(state),
        events_applied=state.events_applied,
        last_event_at=maybe_from_micros(state.last_event_us),
        last_received_at=maybe_from_micros(state.last_received_us),
        seen_ids=seen_ids or None,
    )


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


RESEEK_S = 5.0
"""How long a partition held back for a gap waits for its seek before asking again."""


class Folded(NamedTuple):
    """What :meth:`ProfileFolder.fold_messages` did with a batch of messages."""

    records: list[EventRecord]
    """The records of the messages folded or skipped as redelivered (for the archive)."""
    held: set[int]
    """Indices of the messages held back: not folded; not to be acknowledged."""
    resume: dict[int, int]
    """Partitions to seek back, and the offset to read them from."""


class RefusedByDatabase(Exception):
    """PostgreSQL refused the data itself (not a transient failure): retrying cannot help."""


def _messages(ends: list[tuple[int, Position]]) -> tuple[list[Position], list[int]]:
    """Messages from their end indices in the folded records: positions, events each."""
    starts = [0, *(end for end, _ in ends[:-1])]
    return [p for _, p in ends], [end - start for (end, _), start in zip(ends, starts, strict=True)]


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
class FoldCounts:
    """Events by what the fold did with them."""

    applied: int = 0
    duplicates: int = 0
    """Events skipped: redelivered at or below a recorded offset, or their id remembered."""
    failed: int = 0
    late: int = 0
    beyond_horizon: int = 0
    erased: int = 0

    def add(self, other: FoldCounts) -> None:
        """Add ``other``'s counts to these."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


_COUNTS = tuple(FoldCounts.__dataclass_fields__)


_COUNTERS = {
    "applied": metrics.EVENTS_FOLDED,
    "duplicates": metrics.EVENTS_DUPLICATE,
    "failed": metrics.EVENTS_FAILED,
    "late": metrics.LATE_EVENTS,
    "beyond_horizon": metrics.EVENTS_BEYOND_DEDUP_HORIZON,
    "erased": metrics.ERASED_EVENTS_DROPPED,
}
"""The Prometheus counter of each of :class:`FoldCounts`' counts."""


@dataclass(slots=True)
class FoldStats(FoldCounts):
    """Counters since start (this process)."""

    seen: int = 0
    redelivered: int = 0
    """Of the duplicates, those skipped by offset alone."""
    held: int = 0
    """Messages held back for a gap before them (delivered again after a seek)."""
    batches: int = 0


@dataclass(slots=True)
class _Outcome(FoldCounts):
    """What one committed micro-batch did."""

    received_at: list[int] = field(default_factory=list)
    event_ts: list[int] = field(default_factory=list)
    states: dict[PlayerKey, ProfileState] = field(default_factory=dict)
    versions: dict[PlayerKey, int] = field(default_factory=dict)
    seen: dict[PlayerKey, SeenIds] = field(default_factory=dict)
    """Written states, their new versions and id sets (as encoded): cached once the
    transaction commits (so the next events of a player decode nothing)."""
    sizes: dict[PlayerKey, int] = field(default_factory=dict)
    """The estimated memory of each written state with its id set, in the cache."""


@dataclass(slots=True)
class _Player:
    """A locked profile while its events are folded."""

    state: ProfileState
    seen: SeenIds
    version: int
    stored: bool
    changed: bool = False


@dataclass(slots=True)
class _Part:
    """Events committed in one transaction, and the offsets complete once it commits."""

    records: Sequence[EventRecord]
    failures: list[Failure]
    offsets: dict[int, Progress]


def _split(
    records: Sequence[EventRecord],
    ends: Sequence[tuple[int, Position]],
    failures: list[Failure],
    step: int,
) -> list[_Part]:
    """Transactions of at most ``step`` events; ``ends``: (end index, message position).

    A message's offset is recorded with the transaction that commits its last event.
    """
    parts = []
    done: dict[int, Progress] = {}
    index = 0
    for start in range(0, max(1, len(records)), step):
        stop = start + step
        while index < len(ends) and ends[index][0] <= stop:
            position = ends[index][1]
            known = done.get(position.partition)
            if known is None or position.offset > known.offset:
                done[position.partition] = Progress(position.offset, _ms(position.appended_at))
            index += 1
        parts.append(_Part(records[start:stop], failures if start == 0 else [], dict(done)))
    return parts


class ProfileFolder:
    """Applies topic records to profiles; never raises on bad data, retries on outages."""

    def __init__(
        self,
        engine: AsyncEngine,
        features: FeatureSet,
        repository: ProfileRepository | None = None,
        *,
        retry_max_s: float = 5.0,
        cache_bytes: int = 256 * 1024 * 1024,
        transaction_events: int = 2000,
        topic: str = "events",
        tombstones: TombstoneWatch | None = None,
        dedup_horizon_s: int = 86400,
        segments: SegmentJudge | None = None,
    ) -> None:
        self.engine = engine
        self.segments = segments
        """Judges the written profiles on their game's segments, in the same transaction."""
        self.topic = topic
        self.features = features
        # The fold specialised to these features (equal to fold_event, checked by a
        # property test), compiled once.
        self._fold = compile_fold(features)
        self.repository = repository or ProfileRepository()
        self.retry_max_s = retry_max_s
        self.transaction_events = transaction_events
        self.dedup_horizon_s = dedup_horizon_s
        self._width_s = bucket_width_s(dedup_horizon_s)
        self.stats = FoldStats()
        # Erased players' events are dropped before anything is folded.
        self.tombstones = tombstones
        self._tombstone_revision = -1
        # Partition-owned state cache: the states this process wrote last, by version.
        # PostgreSQL stays the truth: each batch sends the versions it holds and gets
        # back only the states that changed elsewhere (after a rebalance, a replay).
        # Bounded by memory, not by players: a state's size is estimated from its encoded
        # row (see _cached_size), so heavy players take more of the budget than light ones.
        self.cache_bytes = cache_bytes
        self.cached_bytes = 0
        self._sizes: dict[PlayerKey, int] = {}
        # The fold's progress per partition, as last read or committed here.
        self._progress: dict[int, Progress] = {}
        # Partitions held back for a gap: the offset a seek was asked for, and when.
        self._seeking: dict[int, tuple[int, float]] = {}
        # Parallel maps, not (version, state) pairs: a new pair per update would be a new
        # object for the garbage collector to track and scan, per player, per batch.
        self._cache: OrderedDict[PlayerKey, ProfileState] = OrderedDict()
        self._versions: dict[PlayerKey, int] = {}
        self._seen: dict[PlayerKey, SeenIds] = {}
        self.freshness_samples: list[float] | None = None
        """Set to a list to also collect every event's freshness in seconds (benchmarks)."""
        self.hop_sampler: Callable[[list[EventRecord], Sequence[Position], list[int]], None]
        self.hop_sampler = _no_sample
        """Called once a batch is committed (the hop sample, app/streams/hop_sample.py)."""

    async def fold_batch(
        self, payloads: Sequence[bytes], positions: Sequence[Position] | None = None
    ) -> list[EventRecord]:
        """Fold topic messages; returns, once their effect is committed, their records
        (:meth:`fold_messages`, for callers that deliver messages in order)."""
        return (await self.fold_messages(payloads, positions)).records

    async def fold_messages(
        self, payloads: Sequence[bytes], positions: Sequence[Position] | None = None
    ) -> Folded:
        """Fold topic messages; returns, once their effect is committed, their records,
        and the messages held back.

        ``positions``: each message's partition, offset and broker timestamp: messages
        at or below their partition's recorded progress are not folded again (they are
        still returned, for the archive, but have no hop times), the others' offsets are
        recorded in the transaction that commits their events (read-your-writes reads them
        too). A message past the next offset of its partition (one before it is missing:
        the consumer delivered out of order, as around a rebalance) is held back with the
        rest of its partition: not folded, not returned; the caller must not acknowledge
        it, and must seek the partition back to ``resume`` (the offsets of the topic are
        contiguous: an idempotent producer, no transactions, no compaction).
        """
        committed = await self._committed(positions)
        held: set[int] = set()
        resume: dict[int, int] = {}
        if positions is not None:
            held, resume = self._in_order(positions, committed)
            if held:
                payloads = [m for i, m in enumerate(payloads) if i not in held]
                positions = [m for i, m in enumerate(positions) if i not in held]
        decoded, undecodable = _decode(payloads)
        records: list[EventRecord] = []
        ends: list[tuple[int, Position]] = []
        kept: list[EventRecord] = []
        skipped = 0
        for index, batch in enumerate(decoded):
            records.extend(batch)
            if positions is None:
                kept.extend(batch)
            elif _redelivered(positions[index], committed):
                skipped += len(batch)
            else:
                kept.extend(batch)
                ends.append((len(kept), positions[index]))
        # A topic message may carry many requests' events (the producer joins those of
        # one event-loop turn), so a micro-batch of messages can hold tens of thousands:
        # they are committed in transactions of at most ``transaction_events``, which
        # keeps each one short (and the event loop free for HTTP in between). The batch
        # is acknowledged only once all of them committed; a redelivered part is a no-op.
        for part in _split(kept, ends, undecodable, self.transaction_events):
            try:
                await self._with_retry(part)
            except RefusedByDatabase as exc:
                # PostgreSQL refused something in the batch: find the culprit event by event.
                log.warning("fold batch rejected by database; isolating events", error=str(exc))
                await self._isolate(part)
        self._count_skipped(skipped)
        if ends:  # hop times of the messages folded now, not of redeliveries
            folded, carried = _messages(ends)
            self.hop_sampler(kept, folded, carried)
            _observe_appended(folded, carried)
        self.stats.seen += len(records) + len(undecodable)
        self.stats.batches += 1
        return Folded(records, held, resume)

    def _in_order(
        self, positions: Sequence[Position], committed: dict[int, Progress]
    ) -> tuple[set[int], dict[int, int]]:
        """The messages to hold back (indices), and where to seek their partitions.

        A partition's next offset is the one after its recorded progress; a message below
        it is a redelivery (or, newer than the message there, of a topic created again);
        one past it means the messages between were not delivered: that one and the rest
        of its partition in this batch wait for the seek. A seek is asked again only if
        the last one, for the same offset, is older than ``RESEEK_S``.
        """
        held: set[int] = set()
        resume: dict[int, int] = {}
        expected: dict[int, int] = {}
        stopped: set[int] = set()
        now = time.monotonic()
        for index, position in enumerate(positions):
            partition = position.partition
            if partition in stopped:
                held.add(index)
                continue
            known = committed.get(partition)
            if known is None or known.appended_ms is None:
                expected[partition] = position.offset + 1  # nothing recorded: any start
                continue
            after = expected.get(partition, known.offset + 1)
            if position.offset < after:  # a redelivery, or a topic created again
                continue
            if position.offset == after:
                expected[partition] = after + 1
                self._seeking.pop(partition, None)
                continue
            held.add(index)
            stopped.add(partition)
            asked = self._seeking.get(partition)
            if asked is None or asked[0] != after or now - asked[1] > RESEEK_S:
                self._seeking[partition] = (after, now)
                resume[partition] = after
        if held:
            self.stats.held += len(held)
            metrics.EVENTS_HELD.inc(len(held))
            log.warning("messages delivered out of order held back", resume=resume or None)
        return held, resume

    async def _committed(self, positions: Sequence[Position] | None) -> dict[int, Progress]:
        """The recorded progress of the partitions of these messages (a lower bound).

        Read from PostgreSQL once per partition after each assignment; after that, what
        this process committed itself (:meth:`forget_progress` on every rebalance). Only
        the partition's owner writes its progress, so the copy stays exact while it owns
        it; a lower bound would only mean an id lookup instead of an offset skip.
        """
        if not positions:
            return {}
        known = self._progress
        partitions = {p.partition for p in positions}
        missing = sorted(p for p in partitions if p not in known)
        delay = 0.05
        while missing:
            try:
                async with self.engine.connect() as conn:
                    read = await self.repository.committed_offsets(conn, self.topic, missing)
                for partition, progress in read.items():
                    _advance(known, partition, progress)
                break
            except (DBAPIError, OSError, TimeoutError) as exc:
                log.warning("fold progress not read; retrying", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
        return {p: known[p] for p in partitions if p in known}

    def accept_from(self, partition: int, offset: int) -> None:
        """Fold ``partition`` from ``offset`` on, whatever its recorded progress: the
        messages before it are gone from the broker (its retention deleted them)."""
        self._progress[partition] = Progress(offset - 1, None)
        self._seeking.pop(partition, None)

    def forget_progress(self) -> None:
        """Read every partition's progress from PostgreSQL again (partitions were
        reassigned: another copy may have folded them meanwhile)."""
        self._progress.clear()
        self._seeking.clear()

    def _count_skipped(self, skipped: int) -> None:
        if skipped:
            self.stats.duplicates += skipped
            self.stats.redelivered += skipped
            metrics.EVENTS_DUPLICATE.inc(skipped)

    async def _with_retry(self, part: _Part) -> None:
        delay = 0.1
        while True:
            started = time.monotonic()
            try:
                async with self.engine.begin() as conn:
                    outcome = await self._apply(conn, part.records, list(part.failures))
                    await self.repository.record_progress(conn, self.topic, part.offsets)
                for partition, progress in part.offsets.items():
                    _advance(self._progress, partition, progress)
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

    def _remember(self, outcome: _Outcome) -> None:
        cache, sizes = self._cache, self._sizes
        move_to_end = cache.move_to_end
        cache.update(outcome.states)
        self._versions.update(outcome.versions)
        self._seen.update(outcome.seen)
        for key in outcome.states:
            move_to_end(key)
        for key, size in outcome.sizes.items():
            self.cached_bytes += size - sizes.get(key, 0)
            sizes[key] = size
        while cache and self.cached_bytes > self.cache_bytes:
            key, _state = cache.popitem(last=False)
            del self._versions[key]
            self._seen.pop(key, None)
            self.cached_bytes -= sizes.pop(key, 0)

    @property
    def cached_players(self) -> int:
        """Player states in the cache now."""
        return len(self._cache)

    def _forget(self, keys: Sequence[PlayerKey] | None = None) -> None:
        """Drop these players' cached states (all of them when ``keys`` is None)."""
        if keys is None:
            self._cache.clear()
            self._versions.clear()
            self._seen.clear()
            self._sizes.clear()
            self.cached_bytes = 0
            return
        for key in keys:
            self.cached_bytes -= self._sizes.pop(key, 0)

    def _count(self, outcome: _Outcome, seconds: float) -> None:
        """Counted once committed: an attempt that failed and was retried is not."""
        self.stats.add(outcome)
        for name, counter in _COUNTERS.items():
            if count := getattr(outcome, name):
                counter.inc(count)
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

    async def _isolate(self, part: _Part) -> None:
        if part.failures:
            await self._with_retry(_Part([], part.failures, {}))
        for record in part.records:
            try:
                await self._with_retry(_Part([record], [], {}))
            except RefusedByDatabase as exc:
                reason = f"rejected by the database: {exc}"
                failure = Failure(None, None, None, reason[:2000], encode_record(record))
                await self._with_retry(_Part([], [failure], {}))
        await self._with_retry(_Part([], [], part.offsets))

    async def _screen(
        self, conn: AsyncConnection, records: Sequence[EventRecord], outcome: _Outcome
    ) -> Sequence[EventRecord]:
        """Drop the events of erased players (read under the tombstone lock, held to commit)."""
        if self.tombstones is None:
            return records
        tombstones = await self.tombstones.refresh(conn)
        if tombstones.revision != self._tombstone_revision:
            # An erasure (or a lifted one): no state held in memory may outlive it.
            self._forget()
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
        """Screen, lock, dedup and fold these events; write the profiles and failures."""
        outcome = _Outcome()
        records = await self._screen(conn, records, outcome)
        players = await self._lock(conn, sorted({(r.game, r.player_id) for r in records}))
        longest = self.features.longest_window_s
        late_before = None if longest is None else time.time_ns() // 1000 - longest * 1_000_000
        for record in records:
            player = players[(record.game, record.player_id)]
            self._fold_one(record, player, failures, outcome, late_before)
        await self.repository.save_states(conn, self._writes(players, outcome))
        if self.segments is not None and outcome.states:
            # Once per written player per transaction, not per event; a game without
            # segments costs one dict lookup.
            judge = self.segments
            if judge.concerned(list(outcome.states)):
                await judge.judge(conn, outcome.states, time.time_ns() // 1000)
        await self.repository.add_failed(conn, failures)
        if failures:
            log.warning("events failed to fold", count=len(failures), first=failures[0].reason)
        outcome.failed = len(failures)
        return outcome

    async def _lock(self, conn: AsyncConnection, keys: list[PlayerKey]) -> dict[PlayerKey, _Player]:
        """Lock these players' profiles; the cached copy where it is current, else PostgreSQL's.

        Cached states are taken out of the cache: folded in place, they go back only if
        the transaction commits.
        """
        cache, known, seen = self._cache, self._versions, self._seen
        held = {key: cache.pop(key) for key in keys if key in cache}
        versions = {key: known.pop(key) for key in held}
        held_seen = {key: seen.pop(key) for key in held}  # cached with their state
        self._forget(list(held))
        stored = await self.repository.lock_states(conn, keys, versions)
        players = {}
        for key in keys:
            row = stored.get(key)
            if row is None:
                players[key] = _Player(ProfileState(), SeenIds(), 0, stored=False)
            elif row.state is None:  # our copy is current
                players[key] = _Player(held[key], held_seen[key], row.version, stored=True)
            else:
                state, seen_ids = decode_state(row.state), SeenIds.decode(row.seen_ids)
                players[key] = _Player(state, seen_ids, row.version, stored=True)
        return players

    def _fold_one(
        self,
        record: EventRecord,
        player: _Player,
        failures: list[Failure],
        outcome: _Outcome,
        late_before: int | None,
    ) -> None:
        """Fold one event unless its id is remembered; a failure is kept, never raised."""
        digest = event_hash(record.game, record.player_id, record.event_id)
        if player.seen.holds(digest):
            outcome.duplicates += 1
            return
        # Remembered even if it fails to fold: a resend of a poison event is a duplicate.
        player.seen.add(digest, record.received_at // 1_000_000, self._width_s)
        player.changed = True
        try:
            self._fold(player.state, record)
        except PoisonEvent as exc:
            failures.append(_failure(record, str(exc)))
            return
        except Exception as exc:  # a fold bug must not stop the stream or lose the event
            log.exception("fold raised on an event", event_id=record.event_id)
            failures.append(_failure(record, f"internal error folding this event: {exc!r}"))
            return
        outcome.applied += 1
        outcome.received_at.append(record.received_at)
        outcome.event_ts.append(record.ts)
        if late_before is not None and record.ts < late_before:
            outcome.late += 1
        if record.ts < record.received_at - self.dedup_horizon_s * 1_000_000:
            outcome.beyond_horizon += 1

    def _writes(self, players: dict[PlayerKey, _Player], outcome: _Outcome) -> list[ProfileWrite]:
        """Rows for the players whose profile changed, pruned of what slid out of time.

        A new player whose every event failed is not written (its failures are): a
        resend of those is then tried, and fails, again.
        """
        now_us = time.time_ns() // 1000
        now_s = now_us // 1_000_000
        # Buckets below these indexes have slid out of their window: pruning a state only
        # changes it if it holds one (most states touched were pruned a moment ago).
        horizons = [
            (spec.name, _bucket_range(spec, now_us)[0])
            for spec in self.features.specs
            if spec.bucket_s is not None and spec.window_s is not None
        ]
        writes = []
        for key, player in players.items():
            if not player.changed or not (player.stored or player.state.events_applied):
                continue
            state = player.state
            for name, oldest in horizons:
                buckets = state.windows.get(name)
                if buckets and min(buckets) < oldest:
                    prune_windows(state, self.features, now_us)
                    break
            player.seen.prune(now_s, self.dedup_horizon_s, self._width_s)
            seen_ids = player.seen.encode()
            outcome.states[key] = state
            outcome.versions[key] = player.version + 1
            outcome.seen[key] = player.seen
            write = profile_write(key, state, seen_ids)
            outcome.sizes[key] = _cached_size(write)
            writes.append(write)
        return writes


CACHE_ENTRY_OVERHEAD = 1200
"""Bytes of a cache entry beyond its state: the key tuple, dict and OrderedDict slots,
the version, the id set's object (measured with tracemalloc: tests/unit/test_fold_cache.py)."""
CACHE_STATE_FACTOR = 4
"""A decoded state takes about this many times its encoded size (Python objects)."""


def _cached_size(write: ProfileWrite) -> int:
    """The estimated memory of a state and its id set once cached, from their encoding."""
    seen = len(write.seen_ids or b"")
    return CACHE_ENTRY_OVERHEAD + CACHE_STATE_FACTOR * len(write.state) + 2 * seen


def _ms(appended_at: float) -> int:
    return round(appended_at * 1000)


def _advance(known: dict[int, Progress], partition: int, progress: Progress) -> None:
    """``known`` after ``progress`` was recorded, as ``record_progress`` moves it: to the
    higher offset (with that message's time), never backwards."""
    held = known.get(partition)
    if held is None or progress.offset >= held.offset:
        known[partition] = progress


def _redelivered(position: Position, committed: dict[int, Progress]) -> bool:
    """True if the fold committed this message already: at or below the recorded offset
    of its partition and no newer than the message there (a topic deleted and created
    again starts at offset 0 with newer messages: those are folded, and their ids
    looked up, not skipped)."""
    known = committed.get(position.partition)
    return (
        known is not None
        and known.appended_ms is not None
        and position.offset <= known.offset
        and _ms(position.appended_at) <= known.appended_ms
    )


def _failure(record: EventRecord, reason: str) -> Failure:
    return Failure(record.game, record.player_id, record.event_id, reason, encode_record(record))


def _decode(payloads: Sequence[bytes]) -> tuple[list[list[EventRecord]], list[Failure]]:
    """Each message's records (none for an undecodable one), and the undecodable ones."""
    decoded: list[list[EventRecord]] = []
    undecodable: list[Failure] = []
    for raw in payloads:
        try:
            decoded.append(decode_records(raw))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            undecodable.append(Failure(None, None, None, f"undecodable message: {exc}", raw))
            decoded.append([])
    return decoded, undecodable
