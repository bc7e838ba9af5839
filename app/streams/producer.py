"""Producing accepted events to Kafka, awaited per request batch.

A request's events are grouped by the partition their (game, player) key hashes to
(CRC-32), and each group becomes one message: a
JSON array of records. So every event of a player still lands on one partition, folded
by one consumer at a time, while the broker, librdkafka and above all Faust handle
messages per group rather than per event (Faust's per-message cost is the fold's main
cost). confluent-kafka (librdkafka) does the batching, compression and retries in C; a
poll thread turns its delivery reports into one asyncio future per request, so a
request awaits once. (confluent-kafka's own ``aio.AIOProducer`` adds a Python-side
buffer flushed on a timer of at least 100 ms: too slow for ingest.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import confluent_kafka
from confluent_kafka import admin as kafka_admin
from confluent_kafka.cimpl import NewTopic

from app.domain.events import EventRecord, encode_record, encode_records
from app.log import get_logger

log = get_logger(__name__)

MAX_MESSAGE_BYTES = 512 * 1024
"""Split a partition's group into messages of about this size (Kafka's default cap: 1 MB)."""


_FENCED = {
    confluent_kafka.KafkaError.PRODUCER_FENCED,
    confluent_kafka.KafkaError.INVALID_PRODUCER_EPOCH,
    confluent_kafka.KafkaError._FATAL,
}


def _fatal(error: Any) -> bool:
    """True for an error after which this producer instance can deliver nothing more."""
    return error is not None and (error.fatal() or error.code() in _FENCED)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a (game, player) key: CRC-32 modulo the partitions.

    Not Kafka's default murmur2: the Python murmur2 costs 1.6 us a key against 0.05 us,
    a sixth of an ingest request's budget; any stable hash keeps a player on one partition.
    """
    return zlib.crc32(key) % partitions


def group_messages(
    records: Sequence[EventRecord], partitions: int, max_bytes: int = MAX_MESSAGE_BYTES
) -> list[tuple[int, bytes]]:
    """(partition, message) pairs carrying ``records``, grouped by their key's partition."""
    groups: dict[int, list[bytes]] = defaultdict(list)
    for record in records:
        groups[partition_for(record.partition_key, partitions)].append(encode_record(record))
    messages = []
    for partition, encoded in sorted(groups.items()):
        chunk: list[bytes] = []
        size = 0
        for item in encoded:
            if chunk and size + len(item) > max_bytes:
                messages.append((partition, encode_records(chunk)))
                chunk, size = [], 0
            chunk.append(item)
            size += len(item) + 1
        messages.append((partition, encode_records(chunk)))
    return messages


class BrokerUnavailable(RuntimeError):
    """The broker did not acknowledge the events in time: nothing may be assumed durable."""


class _BatchDelivery:
    """Counts delivery reports of one batch; resolves its future on the loop when all came."""

    __slots__ = ("error", "future", "lock", "loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.pending = 0
        self.error: Any = None
        self.lock = threading.Lock()

    def on_delivery(self, err: Any, _msg: Any) -> None:
        """Delivery report, on the poll thread."""
        if err is not None and self.error is None:
            self.error = err
        with self.lock:
            self.pending -= 1
            done = self.pending == 0
        if done:
            self.loop.call_soon_threadsafe(self._resolve)

    def expect(self, count: int) -> None:
        """Add ``count`` enqueued messages, on the loop, once enqueueing is over.

        Reports may arrive before this (``pending`` goes below zero meanwhile), so the
        future can only resolve once every message of the batch was accounted for.
        """
        with self.lock:
            self.pending += count
            done = self.pending == 0
        if done:
            self.loop.call_soon(self._resolve)

    def _resolve(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(BrokerUnavailable(str(self.error)))
        else:
            self.future.set_result(None)


class EventProducer:
    """Idempotent, acks=all producer for the events topic."""

    def __init__(self, brokers: str, *, timeout_s: float, client_id: str = "playerpulse") -> None:
        self.timeout_s = timeout_s
        self.delivered = 0
        self._config: dict[str, Any] = {
            "bootstrap.servers": brokers,
            "client.id": client_id,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "lz4",
            "linger.ms": 2,
            "message.timeout.ms": int(timeout_s * 1000),
            "queue.buffering.max.messages": 500_000,
            "logger": logging.getLogger("librdkafka.producer"),
            "error_cb": self._on_error,
        }
        self._fatal: Any = None
        self._producer = confluent_kafka.Producer(self._config)
        self._partitions: dict[str, int] = {}
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _on_error(self, error: Any) -> None:
        # Fatal: the idempotent producer cannot go on (a broker fenced it after timeouts,
        # as the embedded broker does). The next send starts a fresh producer.
        if _fatal(error):
            self._fatal = error
            log.error("producer failed; a new one will take over", error=str(error))

    def _renew_if_failed(self) -> None:
        if self._fatal is None:
            return
        old, self._producer = self._producer, confluent_kafka.Producer(self._config)
        self._fatal = None
        old.purge()  # its queued messages fail now, their requests get 503
        old.poll(0)
        log.warning("producer renewed after a fatal error")

    async def send_events(self, topic: str, records: Sequence[EventRecord]) -> None:
        """Produce records; return once the broker acknowledged every one.

        Raises :class:`BrokerUnavailable` if any was not acknowledged in time. Some of the
        batch may then be in Kafka anyway: a retry is safe, events are deduplicated by id.
        """
        if not records:
            return
        partitions = await self.partition_count(topic)
        messages = group_messages(records, partitions)
        await self.send(topic, [(partition, None, value) for partition, value in messages])
        self.delivered += len(records)

    async def partition_count(self, topic: str) -> int:
        """Partitions of ``topic`` (asked once, then remembered)."""
        count = self._partitions.get(topic)
        if count is None:
            metadata = await asyncio.to_thread(self._producer.list_topics, topic, 10)
            found = metadata.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                raise BrokerUnavailable(
                    f"topic {topic!r} is not available: {found and found.error}"
                )
            count = self._partitions[topic] = len(found.partitions)
        return count

    async def send(
        self, topic: str, messages: Sequence[tuple[int | None, bytes | None, bytes]]
    ) -> None:
        """Produce (partition, key, value) messages; return once all are acknowledged.

        A partition of None lets the key choose. Raises :class:`BrokerUnavailable`.
        """
        if not messages:
            return
        self._renew_if_failed()
        batch = _BatchDelivery(asyncio.get_running_loop())
        deadline = time.monotonic() + self.timeout_s
        produce = self._producer.produce
        callback = batch.on_delivery
        enqueued = 0
        try:
            for partition, key, value in messages:
                while True:
                    try:
                        if partition is None:
                            produce(topic, value, key, on_delivery=callback)
                        else:
                            produce(topic, value, key, partition, on_delivery=callback)
                        break
                    except BufferError:
                        # librdkafka's queue is full: the broker is slow or gone.
                        if time.monotonic() > deadline:
                            raise BrokerUnavailable("producer queue full") from None
                        await asyncio.sleep(0.005)
                enqueued += 1
        except BrokerUnavailable:
            # Nobody will await the partial batch: retrieve its outcome to keep asyncio quiet.
            batch.future.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise
        finally:
            batch.expect(enqueued)
        try:
            await asyncio.wait_for(asyncio.shield(batch.future), self.timeout_s + 5)
        except TimeoutError:
            raise BrokerUnavailable("no acknowledgement from the broker in time") from None
        except BrokerUnavailable:
            if _fatal(batch.error):
                self._fatal = batch.error
            raise

    async def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued, then stop the poll thread."""
        remaining = await asyncio.to_thread(self._producer.flush, timeout)
        if remaining:
            log.error("producer closed with undelivered events", undelivered=remaining)
        self._stop.set()
        await asyncio.to_thread(self._poller.join, 5)


def ensure_topic(brokers: str, topic: str, partitions: int, replication: int) -> int:
    """Create ``topic`` unless it exists; return the replication factor used.

    ``replication`` 0 means min(3, number of brokers in the cluster).
    """
    config: dict[str, Any] = {
        "bootstrap.servers": brokers,
        "logger": logging.getLogger("librdkafka.admin"),
    }
    admin = kafka_admin.AdminClient(config)
    metadata = admin.list_topics(timeout=30)
    factor = replication or min(3, max(1, len(metadata.brokers)))
    if topic in metadata.topics and not metadata.topics[topic].error:
        return factor
    futures = admin.create_topics([NewTopic(topic, partitions, factor)], operation_timeout=30)
    try:
        futures[topic].result(timeout=30)
        log.info("topic created", topic=topic, partitions=partitions, replication=factor)
    except confluent_kafka.KafkaException as exc:
        if exc.args[0].code() != confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    with contextlib.suppress(Exception):
        admin.poll(0)
    return factor
