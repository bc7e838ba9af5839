"""The one place that builds the object graph: settings in, running services out.

HTTP handlers and stream agents get theirs from :func:`open_services`; the CLI's
one-shot commands from :func:`command_services` (over :func:`command_database`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import faust
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.analytics.location import LakeLocation
from app.analytics.privacy import housekeeping_tick
from app.audit import AuditTrail, copy_to_lake_forever
from app.cors import CORS_CHANNEL, CorsOrigins
from app.db.api_keys import KEY_CHANNEL
from app.db.engine import create_engine, migrate
from app.db.locks import hold_serving_lock
from app.db.model_versions import MODEL_CHANNEL
from app.db.notify import ChangeListener
from app.db.privacy import ERASURE_CHANNEL
from app.db.reads import FastReads
from app.db.segments import CHANGES_CHANNEL, SEGMENT_CHANNEL
from app.disk import DiskWatch
from app.domain.events import EventRecord
from app.domain.features import FeatureSet, load_features
from app.domain.guard import GuardWatch
from app.domain.predictions import PredictionRecord
from app.experiments import ExperimentService
from app.ingest import Ingestor
from app.keys import KeyService
from app.log import get_logger
from app.models.predictions import PredictionService
from app.models.registry import ModelRegistry
from app.privacy import BrokerView, Eraser, PrivacyService
from app.profiles import FailedEventService, ProfileService, ReadYourWrites
from app.replay import sync_features
from app.segment_catalog import SegmentCatalog, SegmentJudge, SegmentReads
from app.segment_clock import SegmentClock
from app.segment_delivery import (
    LakeRelay,
    SegmentDelivery,
    TopicRelay,
    WebhookSender,
    WebhookService,
)
from app.settings import Settings
from app.streams.app import create_stream_app
from app.streams.folding import ProfileFolder
from app.streams.hop_sample import HopRecord, HopSampler, write_hops
from app.streams.lag import LagProbe
from app.streams.lake import LakeArchiver, write_events, write_predictions
from app.streams.prediction_log import PredictionLog
from app.streams.producer import EventProducer, ensure_topic
from app.streams.tombstones import TombstoneWatch

log = get_logger(__name__)

T = TypeVar("T")


@dataclass
class Services:
    """Everything a running PlayerPulse process holds."""

    settings: Settings
    features: FeatureSet
    engine: AsyncEngine
    keys: KeyService
    profiles: ProfileService
    predictions: PredictionService
    failed_events: FailedEventService
    registry: ModelRegistry
    experiments: ExperimentService
    producer: EventProducer
    ingestor: Ingestor
    folder: ProfileFolder
    archiver: LakeArchiver[EventRecord]
    prediction_log: PredictionLog
    prediction_archiver: LakeArchiver[PredictionRecord]
    hop_archiver: LakeArchiver[HopRecord]
    model_changes: ChangeListener
    reads: FastReads
    stream_app: faust.App
    lag: LagProbe
    read_your_writes: ReadYourWrites
    privacy: PrivacyService
    eraser: Eraser
    erasure_notices: ChangeListener
    audit: AuditTrail
    key_changes: ChangeListener
    cors: CorsOrigins
    cors_changes: ChangeListener
    segments: SegmentCatalog
    segment_reads: SegmentReads
    segment_changes: ChangeListener
    segment_clock: SegmentClock
    segment_delivery: SegmentDelivery
    segment_outbox: ChangeListener
    webhooks: WebhookService
    disk: DiskWatch
    _segment_clock_task: asyncio.Task[None] | None = None
    _release_serving_lock: Callable[[], Awaitable[None]] | None = None
    _disk_task: asyncio.Task[None] | None = None
    _eraser_task: asyncio.Task[None] | None = None
    _audit_copy_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Get ready to serve, before the stream app starts.

        Rebuild profiles if the features changed (before any fold runs), mark this process
        as serving (a standalone replay waits for it), and start what runs beside the stream
        app: model change notices and prediction logs.
        """
        settings = self.settings
        await sync_features(
            self.engine,
            self.features,
            LakeLocation.of(settings),
            dedup_horizon_s=settings.dedup_horizon,
        )
        self._release_serving_lock = await hold_serving_lock(self.engine)
        await self.model_changes.start()
        await self.key_changes.start()
        await self.cors.load()
        await self.cors_changes.start()
        await self.segments.start()
        await self.segment_changes.start()
        self._segment_clock_task = asyncio.create_task(
            self.segment_clock.run_forever(), name="segment-clock"
        )
        await self.segment_outbox.start()
        self.segment_delivery.start()
        self.prediction_log.start()
        await self.erasure_notices.start()
        self._eraser_task = asyncio.create_task(self.eraser.run_forever(), name="eraser")
        self._disk_task = asyncio.create_task(self.disk.run(), name="disk-watch")
        self._audit_copy_task = asyncio.create_task(
            copy_to_lake_forever(self.audit, settings.lake_dir), name="audit-to-lake"
        )

    async def flush(self) -> None:
        """At stop: write out (and so acknowledge) what the archive buffers hold.

        Nothing waits for the fold to catch up: the broker keeps every event on disk
        until it is acknowledged, and the partition's next owner (another worker, another
        copy, or this service after a restart) folds and archives the rest.
        """
        await self.archiver.flush()
        await self.registry.drain()  # the last predictions' logs, shadows included
        await self.prediction_log.close()
        await self.prediction_archiver.flush()
        await self.hop_archiver.flush()

    async def close(self) -> None:
        """Release clients and pools (the stream app is stopped by its own lifespan)."""
        if self._release_serving_lock is not None:
            await self._release_serving_lock()
        await self.model_changes.stop()
        await self.key_changes.stop()
        await self.cors_changes.stop()
        await self.segment_changes.stop()
        await self.segment_outbox.stop()
        await self.segment_delivery.stop()
        if self._segment_clock_task is not None:
            self._segment_clock_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._segment_clock_task
        if self._audit_copy_task is not None:
            self._audit_copy_task.cancel()
        if self._disk_task is not None:
            self._disk_task.cancel()
        if self._eraser_task is not None:
            self._eraser_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._eraser_task
        await self.erasure_notices.stop()
        await self.reads.close()
        await asyncio.to_thread(self.lag.close)
        await self.producer.close()
        await self.engine.dispose()


class CommandServices:
    """The services of one CLI command, over one small engine, each built on first use
    (a command that only creates a key never reads the features file)."""

    def __init__(self, settings: Settings, url: str, engine: AsyncEngine) -> None:
        self.settings = settings
        self.url = url
        self.engine = engine
        self._reads: list[FastReads] = []

    @functools.cached_property
    def features(self) -> FeatureSet:
        return load_features(self.settings.features_path)

    @functools.cached_property
    def location(self) -> LakeLocation:
        return LakeLocation.of(self.settings)

    @functools.cached_property
    def keys(self) -> KeyService:
        return KeyService(self.engine, cache_s=0)

    @functools.cached_property
    def audit(self) -> AuditTrail:
        return AuditTrail(self.engine)

    @functools.cached_property
    def failed_events(self) -> FailedEventService:
        return FailedEventService(self.engine)

    @functools.cached_property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.engine, self.features, max_bytes=self.settings.model_max_bytes)

    @functools.cached_property
    def experiments(self) -> ExperimentService:
        return ExperimentService(self.engine, self.location)

    @functools.cached_property
    def privacy(self) -> PrivacyService:
        return PrivacyService(self.engine, self.location)

    async def privacy_with_profiles(self) -> PrivacyService:
        """A privacy service that can also read profiles (for an export)."""
        reads = await FastReads.open(self.url, size=1)
        self._reads.append(reads)
        return PrivacyService(self.engine, self.location, ProfileService(reads, self.features))

    async def close(self) -> None:
        for reads in self._reads:
            await reads.close()
        await self.engine.dispose()


@contextlib.contextmanager
def command_database(settings: Settings) -> Iterator[str]:
    """A migrated database's URL: the configured one, the running embedded one, or one
    started for the command (and stopped after it)."""
    if settings.database_url is not None:
        url, owned = settings.database_url, None
    else:
        from app.embedded.postgres import EmbeddedPostgres

        postgres = EmbeddedPostgres(settings.data_dir)
        running = postgres.running_url()
        url, owned = (running, None) if running else (postgres.start(), postgres)
    try:
        migrate(url)
        yield url
    finally:
        if owned is not None:
            owned.stop()


@contextlib.asynccontextmanager
async def command_services(
    settings: Settings, url: str, *, pool_size: int = 1
) -> AsyncIterator[CommandServices]:
    """The services of one CLI command against the database at ``url``; closed after."""
    services = CommandServices(settings, url, create_engine(url, pool_size=pool_size))
    try:
        yield services
    finally:
        await services.close()


def run_command(
    settings: Settings, action: Callable[[CommandServices], Awaitable[T]], *, pool_size: int = 1
) -> T:
    """Run ``action(services)`` to completion against the command's database."""

    async def run(url: str) -> T:
        async with command_services(settings, url, pool_size=pool_size) as services:
            return await action(services)

    with command_database(settings) as url:
        return asyncio.run(run(url))


def open_engine(settings: Settings) -> AsyncEngine:
    """The database engine for these settings (which must name a database URL)."""
    if settings.database_url is None:
        raise RuntimeError("no database URL: start the embedded PostgreSQL first")
    return create_engine(settings.database_url)


async def open_services(settings: Settings) -> Services:
    """Connect to the database and the broker, and wire every service.

    Longer than 50 lines on purpose: one flat ``Services(...)`` lists every service and
    what it is built from, so the whole graph reads in one place; the larger parts are
    built by the helpers below.
    """
    brokers = settings.kafka_brokers
    if brokers is None:
        raise RuntimeError("no Kafka brokers: start the embedded broker first")
    features = load_features(settings.features_path)
    engine = open_engine(settings)
    url = settings.database_url or ""
    reads = await FastReads.open(url, timeout_s=settings.db_timeout_s)
    disk = DiskWatch.of(settings)
    replication = await asyncio.to_thread(_ensure_topics, settings, brokers)
    producer = EventProducer(brokers, timeout_s=settings.produce_timeout_s)
    tombstones = TombstoneWatch(engine)
    segments = SegmentCatalog(engine, features)
    delivery = _segment_delivery(settings, engine, producer)
    folder = ProfileFolder(
        engine,
        features,
        topic=settings.events_topic,
        tombstones=tombstones,
        dedup_horizon_s=settings.dedup_horizon,
        segments=SegmentJudge(segments.for_game),
        cache_bytes=settings.fold_cache_bytes,
    )
    archiver, prediction_archiver, hop_archiver = _archivers(settings, tombstones, disk)
    folder.hop_sampler = HopSampler(settings.hop_sample, hop_archiver)
    location = LakeLocation.of(settings)
    topics = (settings.events_topic, settings.predictions_topic)
    eraser = Eraser(engine, location, BrokerView(brokers, settings.consumer_group, topics))
    prediction_log = PredictionLog(producer, settings.predictions_topic)
    registry = _registry(settings, engine, features, prediction_log)
    profiles = ProfileService(reads, features)
    keys = KeyService(engine, cache_s=settings.key_cache_s, reads=reads)
    cors = CorsOrigins(settings.cors_everywhere, engine)
    read_your_writes = ReadYourWrites(
        reads, partial(producer.partition_count, settings.events_topic), settings.events_topic
    )
    return Services(
        settings=settings,
        features=features,
        engine=engine,
        keys=keys,
        profiles=profiles,
        failed_events=FailedEventService(engine),
        registry=registry,
        experiments=ExperimentService(engine, location),
        producer=producer,
        ingestor=Ingestor(
            producer,
            settings.events_topic,
            rate_per_key=settings.rate_limit_events_s,
            max_in_flight=settings.max_in_flight_events,
            disk=disk,
        ),
        folder=folder,
        archiver=archiver,
        prediction_log=prediction_log,
        prediction_archiver=prediction_archiver,
        hop_archiver=hop_archiver,
        model_changes=ChangeListener(url, MODEL_CHANNEL, registry.forget),
        reads=reads,
        stream_app=create_stream_app(
            settings,
            brokers=brokers,
            replication=replication,
            folder=folder,
            archiver=archiver,
            prediction_archiver=prediction_archiver,
            housekeeping=partial(housekeeping_tick, settings),
            hop_archiver=hop_archiver,
        ),
        lag=LagProbe(brokers, settings.consumer_group, settings.events_topic),
        read_your_writes=read_your_writes,
        predictions=PredictionService(registry, profiles, read_your_writes),
        privacy=PrivacyService(engine, location, profiles),
        eraser=eraser,
        erasure_notices=ChangeListener(url, ERASURE_CHANNEL, eraser.notice),
        audit=AuditTrail(engine),
        key_changes=ChangeListener(url, KEY_CHANNEL, keys.forget),
        cors=cors,
        cors_changes=ChangeListener(url, CORS_CHANNEL, cors.changed),
        disk=disk,
        segments=segments,
        segment_reads=SegmentReads(engine, segments),
        segment_changes=ChangeListener(url, SEGMENT_CHANNEL, segments.changed),
        segment_clock=SegmentClock(
            engine,
            segments,
            interval_s=settings.segment_clock_s,
            keep_changes_s=settings.segment_changes_keep,
        ),
        segment_delivery=delivery,
        segment_outbox=ChangeListener(url, CHANGES_CHANNEL, delivery.notice),
        webhooks=WebhookService(engine, delivery.sender),
    )


def _segment_delivery(
    settings: Settings, engine: AsyncEngine, producer: EventProducer
) -> SegmentDelivery:
    """The relays of segment transitions: topic, webhooks, lake."""
    sender = WebhookSender(
        timeout_s=settings.webhook_timeout_s,
        retries=settings.webhook_retries,
        backoff_s=settings.webhook_backoff_s,
        allow_private=settings.webhook_allow_private,
    )
    return SegmentDelivery(
        engine,
        TopicRelay(engine, producer, settings.segments_topic),
        LakeRelay(engine, settings.lake_root),
        sender,
        lake_every_s=settings.lake_flush_s,
    )


def _ensure_topics(settings: Settings, brokers: str) -> int:
    """Create the events and predictions topics if missing; their replication factor."""
    replication = 0
    for topic in (settings.events_topic, settings.predictions_topic, settings.segments_topic):
        replication = ensure_topic(
            brokers, topic, settings.topic_partitions, settings.topic_replication
        )
    return replication


def _archivers(
    settings: Settings, tombstones: TombstoneWatch, disk: DiskWatch
) -> tuple[LakeArchiver[EventRecord], LakeArchiver[PredictionRecord], LakeArchiver[HopRecord]]:
    """The lake buffers of events and of predictions (erased players dropped at write),
    and of the hop sample (no player in it); all paused while the disk is low."""
    buffer = partial(
        LakeArchiver,
        settings.lake_root,
        flush_s=settings.lake_flush_s,
        flush_events=settings.lake_flush_events,
        may_write=lambda: disk.writable,
    )
    events = buffer(writer=write_events, tombstones=tombstones, counter=metrics.EVENTS_ARCHIVED)
    predictions = buffer(writer=write_predictions, tombstones=tombstones)
    return events, predictions, buffer(writer=write_hops)


def _registry(
    settings: Settings,
    engine: AsyncEngine,
    features: FeatureSet,
    prediction_log: PredictionLog,
) -> ModelRegistry:
    return ModelRegistry(
        engine,
        features,
        max_bytes=settings.model_max_bytes,
        log_prediction=prediction_log,
        # Each worker judges the traffic it serves; a removal goes through the database,
        # so every worker and copy follows it (see app/domain/guard.py).
        guard_watch=GuardWatch(settings.guard_window_s, settings.guard_min_requests),
    )
