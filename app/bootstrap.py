"""The one place that builds the object graph: settings in, running services out.

HTTP handlers, stream agents, the CLI and tests all get their services from here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import faust
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analytics.compaction import compaction_tick
from app.analytics.location import LakeLocation
from app.analytics.privacy import apply_retention
from app.db.engine import create_engine
from app.db.notify import ChangeListener
from app.db.privacy import ERASURE_CHANNEL
from app.db.reads import FastReads
from app.db.repositories import MODEL_CHANNEL
from app.domain.events import EventRecord
from app.domain.features import FeatureSet, load_features
from app.domain.guard import GuardWatch
from app.domain.predictions import PredictionRecord
from app.experiments import ExperimentService
from app.ingest import Ingestor
from app.keys import KeyService
from app.log import get_logger
from app.models.registry import ModelRegistry
from app.privacy import BrokerView, Eraser, PrivacyService
from app.profiles import FailedEventService, ProfileService, ReadYourWrites
from app.replay import hold_serving_lock, sync_features
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


@dataclass
class Services:
    """Everything a running PlayerPulse process holds."""

    settings: Settings
    features: FeatureSet
    engine: AsyncEngine
    keys: KeyService
    profiles: ProfileService
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
    _release_serving_lock: Callable[[], Awaitable[None]] | None = None
    _eraser_task: asyncio.Task[None] | None = None

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
            retention_s=settings.applied_ids_retention_s,
        )
        self._release_serving_lock = await hold_serving_lock(self.engine)
        await self.model_changes.start()
        self.prediction_log.start()
        await self.erasure_notices.start()
        self._eraser_task = asyncio.create_task(self.eraser.run_forever(), name="eraser")

    async def flush(self) -> None:
        """At stop: write out (and so acknowledge) what the archive buffers hold.

        Nothing waits for the fold to catch up: the broker keeps every event on disk
        until it is acknowledged, and the partition's next owner (another worker, another
        copy, or this service after a restart) folds and archives the rest.
        """
        await self.archiver.flush()
        await self.prediction_log.close()
        await self.prediction_archiver.flush()
        await self.hop_archiver.flush()

    async def close(self) -> None:
        """Release clients and pools (the stream app is stopped by its own lifespan)."""
        if self._release_serving_lock is not None:
            await self._release_serving_lock()
        await self.model_changes.stop()
        if self._eraser_task is not None:
            self._eraser_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._eraser_task
        await self.erasure_notices.stop()
        await self.reads.close()
        await asyncio.to_thread(self.lag.close)
        await self.producer.close()
        await self.engine.dispose()


def open_engine(settings: Settings) -> AsyncEngine:
    """The database engine for these settings (which must name a database URL)."""
    if settings.database_url is None:
        raise RuntimeError("no database URL: start the embedded PostgreSQL first")
    return create_engine(settings.database_url)


async def open_services(settings: Settings) -> Services:
    """Connect to the database and the broker, and wire every service."""
    brokers = settings.kafka_brokers
    if brokers is None:
        raise RuntimeError("no Kafka brokers: start the embedded broker first")
    features = load_features(settings.features_path)
    engine = open_engine(settings)
    reads = await FastReads.open(settings.database_url or "")
    replication = 0
    for topic in (settings.events_topic, settings.predictions_topic):
        replication = await asyncio.to_thread(
            ensure_topic, brokers, topic, settings.topic_partitions, settings.topic_replication
        )
    producer = EventProducer(brokers, timeout_s=settings.produce_timeout_s)
    tombstones = TombstoneWatch(engine)
    folder = ProfileFolder(engine, features, topic=settings.events_topic, tombstones=tombstones)
    archiver = LakeArchiver(
        settings.lake_dir,
        flush_s=settings.lake_flush_s,
        flush_events=settings.lake_flush_events,
        writer=write_events,
        tombstones=tombstones,
    )
    prediction_archiver = LakeArchiver(
        settings.lake_dir,
        flush_s=settings.lake_flush_s,
        flush_events=settings.lake_flush_events,
        writer=write_predictions,
        tombstones=tombstones,
    )
    hop_archiver: LakeArchiver[HopRecord] = LakeArchiver(
        settings.lake_dir,
        flush_s=settings.lake_flush_s,
        flush_events=settings.lake_flush_events,
        writer=write_hops,
    )
    folder.hop_sampler = HopSampler(settings.hop_sample, hop_archiver)
    location = LakeLocation.of(settings)
    eraser = Eraser(
        engine,
        location,
        BrokerView(
            brokers,
            settings.consumer_group,
            (settings.events_topic, settings.predictions_topic),
        ),
    )
    prediction_log = PredictionLog(producer, settings.predictions_topic)
    registry = ModelRegistry(
        engine,
        features,
        max_bytes=settings.model_max_bytes,
        log_prediction=prediction_log,
        # Each worker judges the traffic it serves; a removal goes through the database,
        # so every worker and copy follows it (see app/domain/guard.py).
        guard_watch=GuardWatch(settings.guard_window_s, settings.guard_min_requests),
    )
    stream_app = create_stream_app(
        settings,
        brokers=brokers,
        replication=replication,
        folder=folder,
        archiver=archiver,
        prediction_archiver=prediction_archiver,
        hop_archiver=hop_archiver,
    )
    if settings.lake_compact_interval_s > 0:

        @stream_app.timer(  # type: ignore[untyped-decorator]
            interval=settings.lake_compact_interval_s, on_leader=True, name="lake-compact"
        )
        async def compact_lake() -> None:
            # One copy (the group leader) compacts; it never raises (errors are logged).
            await compaction_tick(settings)
            if settings.lake_retention_days is not None:
                try:
                    await asyncio.to_thread(apply_retention, location, settings.lake_retention_days)
                except Exception:
                    log.exception("lake retention failed; will try again")

    profiles = ProfileService(reads, features)
    return Services(
        settings=settings,
        features=features,
        engine=engine,
        keys=KeyService(engine, cache_s=settings.key_cache_s, reads=reads),
        profiles=profiles,
        failed_events=FailedEventService(engine),
        registry=registry,
        experiments=ExperimentService(engine, LakeLocation.of(settings)),
        producer=producer,
        ingestor=Ingestor(
            producer,
            settings.events_topic,
            rate_per_key=settings.rate_limit_events_s,
            max_in_flight=settings.max_in_flight_events,
        ),
        folder=folder,
        archiver=archiver,
        prediction_log=prediction_log,
        prediction_archiver=prediction_archiver,
        hop_archiver=hop_archiver,
        model_changes=ChangeListener(settings.database_url or "", MODEL_CHANNEL, registry.forget),
        reads=reads,
        stream_app=stream_app,
        lag=LagProbe(brokers, settings.consumer_group, settings.events_topic),
        read_your_writes=ReadYourWrites(
            reads, partial(producer.partition_count, settings.events_topic), settings.events_topic
        ),
        privacy=PrivacyService(engine, location, profiles),
        eraser=eraser,
        erasure_notices=ChangeListener(settings.database_url or "", ERASURE_CHANNEL, eraser.notice),
    )
