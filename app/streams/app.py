"""The Faust app: the events topic and the agent that folds and archives it.

Built by a factory, never at import time, so nothing binds an event loop early; the
Litestar lifespan starts it on the server's loop (``faust_app_running``). Records are
read as raw bytes and decoded by the agents' services, so a malformed record becomes a
failed event instead of an exception inside Faust.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust
import msgspec
from faust.types import TP

from app.domain.events import EventRecord
from app.domain.predictions import PredictionRecord, decode_predictions
from app.log import get_logger
from app.settings import Settings

from .folding import Position, ProfileFolder
from .lake import LakeArchiver
from .transport import FETCH_MAX_WAIT_MS_HOLDING, StreamApp

log = get_logger(__name__)


def faust_broker_url(brokers: str) -> str:
    """Faust's broker URL for a ``host:port[,host:port]`` list."""
    return ";".join(f"kafka://{b.strip()}" for b in brokers.split(",") if b.strip())


def create_stream_app(
    settings: Settings,
    *,
    brokers: str,
    replication: int,
    folder: ProfileFolder,
    archiver: LakeArchiver[EventRecord],
    prediction_archiver: LakeArchiver[PredictionRecord],
    housekeeping: Callable[[], Awaitable[object]] | None = None,
    hop_archiver: LakeArchiver[Any] | None = None,
) -> faust.App:
    """The Faust app with the fold and archive agents wired to their services.

    Every agent and timer of the process is registered here. ``housekeeping`` (lake
    compaction and retention) runs every ``lake_compact_interval_s`` on the group leader
    only (one copy does it), if given and the interval is positive.
    """
    app = _faust_app(settings, brokers, replication)
    events = _raw_topic(app, settings, settings.events_topic)
    predictions = _raw_topic(app, settings, settings.predictions_topic)
    _register_fold(app, settings, events, folder, archiver)
    _register_prediction_archive(app, predictions, prediction_archiver)
    buffers: list[LakeArchiver[Any]] = [archiver, prediction_archiver]
    buffers += [hop_archiver] if hop_archiver is not None else []
    _register_timers(app, settings, buffers, housekeeping)
    return app


def _faust_app(settings: Settings, brokers: str, replication: int) -> faust.App:
    app = StreamApp(
        settings.consumer_group,
        broker=faust_broker_url(brokers),
        web_enabled=False,
        autodiscover=False,
        store="memory://",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=replication,
        consumer_auto_offset_reset="earliest",
        # Short group timeouts: a first join on the embedded broker waits for them.
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=3.0,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=max(4096, settings.fold_batch_max * 2),
        producer_acks=-1,
        # Events wait in the archive buffer, unacknowledged, until their Parquet file is
        # written: Faust must not wait for those acks to stop or rebalance (it would hang
        # until the next flush, or forever once our timers stopped). Unacknowledged means
        # redelivered to the next owner: deduplicated by the fold and by the lake's views.
        stream_wait_empty=False,
    )
    if settings.embedded_broker and settings.broker == "memory":
        app.fetch_max_wait_ms = FETCH_MAX_WAIT_MS_HOLDING
    return app


def _raw_topic(app: faust.App, settings: Settings, name: str) -> Any:
    # Raw bytes: the services decode, so a malformed record never raises inside Faust.
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )


def _register_fold(
    app: faust.App,
    settings: Settings,
    topic: Any,
    folder: ProfileFolder,
    archiver: LakeArchiver[EventRecord],
) -> None:
    def reassigned(_app: Any, /, *_partitions: Any, signal: Any, **_: Any) -> None:
        # Another copy may have folded a partition this one gets (back): its progress is
        # read from PostgreSQL again, not taken from what this process committed.
        folder.forget_progress()

    app.on_partitions_revoked.connect(reassigned)
    app.on_partitions_assigned.connect(reassigned)

    @app.agent(topic, name="events")
    async def fold_and_archive(stream: Any) -> None:
        # One agent does both: Faust's per-event delivery costs as much again for every
        # agent on a topic, and it is the main cost of the fold (see bench/fold.py).
        # Acknowledged by hand: an event is acknowledged once its profile change is
        # committed (fold_batch returns) *and* its Parquet file is written (the archiver
        # calls the ack), so a crash before either means redelivery, never loss.
        async for events in stream.noack_take(
            settings.fold_batch_max, within=settings.fold_batch_within_s
        ):
            folded = await folder.fold_messages(
                [event.value for event in events],
                [
                    Position(m.partition, m.offset, m.timestamp)
                    for m in (event.message for event in events)
                ],
            )
            acks = [e.ack for i, e in enumerate(events) if i not in folded.held]
            archiver.add_batch(folded.records, acks)
            for partition, offset in folded.resume.items():
                await _read_again(app, folder, TP(topic.get_topic_name(), partition), offset)
            if archiver.full:
                await archiver.flush()


async def _read_again(app: faust.App, folder: ProfileFolder, tp: TP, offset: int) -> None:
    """Seek ``tp`` back to ``offset``: the messages from there were not delivered in order.

    If the broker no longer has them (its retention deleted them before they were folded),
    the fold goes on from the earliest offset it has, and says what was lost.
    """
    earliest = (await app.consumer.earliest_offsets(tp)).get(tp, offset)
    if earliest > offset:
        log.error(
            "events deleted by the broker before they were folded",
            partition=tp.partition,
            first_lost=offset,
            resumed_at=earliest,
        )
        folder.accept_from(tp.partition, earliest)
        offset = earliest
    await app.consumer.seek(tp, offset)


def _register_prediction_archive(
    app: faust.App, topic: Any, prediction_archiver: LakeArchiver[PredictionRecord]
) -> None:
    @app.agent(topic, name="predictions")
    async def archive_predictions(stream: Any) -> None:
        # Logs: acknowledged once in the lake, like events; undecodable ones are skipped.
        async for events in stream.noack_take(200, within=0.5):
            records = []
            for event in events:
                try:
                    records.extend(decode_predictions(event.value))
                except (msgspec.DecodeError, msgspec.ValidationError):
                    log.error("undecodable prediction log skipped", size=len(event.value))
            prediction_archiver.add_batch(records, [event.ack for event in events])
            if prediction_archiver.full:
                await prediction_archiver.flush()


def _register_timers(
    app: faust.App,
    settings: Settings,
    buffers: Sequence[LakeArchiver[Any]],
    housekeeping: Callable[[], Awaitable[object]] | None,
) -> None:
    @app.timer(interval=0.5, name="lake-flush")  # type: ignore[untyped-decorator]
    async def flush_lake() -> None:
        for buffer in buffers:
            if buffer.due or buffer.full:
                await buffer.flush()

    if housekeeping is not None and settings.lake_compact_interval_s > 0:

        @app.timer(  # type: ignore[untyped-decorator]
            interval=settings.lake_compact_interval_s, on_leader=True, name="lake-compact"
        )
        async def lake_housekeeping() -> None:
            # One copy (the group leader) does it; it never raises (errors are logged).
            await housekeeping()
