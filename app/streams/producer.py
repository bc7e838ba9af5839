"""Producing accepted events to Kafka, awaited per request batch.

Events are grouped by the partition their (game, player) key hashes to (CRC-32), and
each group becomes one message: a JSON array of records. So every event of a player
still lands on one partition, folded by one consumer at a time, while the broker,
librdkafka and above all Faust handle messages per group rather than per event (Faust's
per-message cost is the fold's main cost). The requests that reach the producer in the
same turn of the event loop share those messages: their groups are joined, in order,
per partition, and produced together at the end of the turn, so a message may carry
several requests' events and under load there are fewer, larger messages.
confluent-kafka (librdkafka) does the batching, compression and retries in C; a poll
thread turns its delivery reports into one asyncio future per request, so a request
awaits once, and gets its answer once every message holding one of its events is
acknowledged. (confluent-kafka's own ``aio.AIOProducer`` adds a Python-side buffer
flushed on a timer of at least 100 ms: too slow for ingest.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import confluent_kafka
from confluent_kafka import admin as kafka_admin
from confluent_kafka.cimpl import NewTopic

from app.domain.events import EventRecord, encode_many, encode_record, encode_records
from app.domain.partitioning import group_by_partition
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


def _chunks(records: list[EventRecord], max_bytes: int) -> list[tuple[bytes, int]]:
    """Messages (JSON arrays) of about ``max_bytes`` at most holding ``records`` in order,
    each with how many records it holds. One record never splits."""
    whole = encode_many(records)
    if len(whole) <= max_bytes:
        return [(whole, len(records))]
    out = []
    chunk: list[bytes] = []
    size = 0
    for record in records:
        item = encode_record(record)
        if chunk and size + len(item) > max_bytes:
            out.append((encode_records(chunk), len(chunk)))
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 1
    out.append((encode_records(chunk), len(chunk)))
    return out


def group_messages(
    records: Sequence[EventRecord], partitions: int, max_bytes: int = MAX_MESSAGE_BYTES
) -> list[tuple[int, bytes]]:
    """(partition, message) pairs carrying ``records``, grouped by their key's partition."""
    return [
        (partition, message)
        for partition, group in sorted(group_by_partition(records, partitions).items())
        for message, _count in _chunks(group, max_bytes)
    ]


class BrokerUnavailable(RuntimeError):
    """The broker did not acknowledge the events in time: nothing may be assumed durable."""


class _BatchDelivery:
    """Counts delivery reports of one batch; resolves its future on the loop when all came."""

    __slots__ = ("error", "future", "lock", "loop", "offsets", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.pending = 0
        self.error: Any = None
        self.lock = threading.Lock()
        self.offsets: dict[int, int] = {}
        """Per partition, the offset of the last acknowledged message of this batch."""

    def on_delivery(self, err: Any, msg: Any) -> None:
        """Delivery report, on the poll thread."""
        if err is not None and self.error is None:
            self.error = err
        with self.lock:
            if err is None and msg is not None:
                partition, offset = msg.partition(), msg.offset()
                if offset > self.offsets.get(partition, -1):
                    self.offsets[partition] = offset
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

    def fail(self, exc: BaseException) -> None:
        """Resolve now with ``exc`` (on the loop): some of the batch could not be enqueued."""
        if not self.future.done():
            self.future.set_exception(exc)

    def _resolve(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(BrokerUnavailable(str(self.error)))
        else:
            self.future.set_result(None)


class _SharedMessage:
    """One produced message holding events of several requests: reports to each of them."""

    __slots__ = ("batches",)

    def __init__(self, batches: list[_BatchDelivery]) -> None:
        self.batches = batches

    def on_delivery(self, err: Any, msg: Any) -> None:
        for batch in self.batches:
            batch.on_delivery(err, msg)


class _Turn:
    """Events handed to the producer during one turn of the event loop, for one topic."""

    __slots__ = ("batches", "groups", "partitions")

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        # Per partition: (request, its records for that partition), in arrival order.
        self.groups: dict[int, list[tuple[_BatchDelivery, list[EventRecord]]]] = {}
        self.batches: dict[_BatchDelivery, int] = {}
        """Each request and how many messages it was enqueued in so far."""

    def add(self, batch: _BatchDelivery, records: Sequence[EventRecord]) -> None:
        groups = self.groups
        for partition, group in group_by_partition(records, self.partitions).items():
            entries = groups.get(partition)
            if entries is None:
                groups[partition] = [(batch, group)]
            else:
                entries.append((batch, group))
        self.batches[batch] = 0

    def enqueued(self) -> None:
        """Every message went to librdkafka: each request now waits for its reports."""
        for batch, count in self.batches.items():
            batch.expect(count)

    def fail(
        self, unsent: list[tuple[int, bytes, list[_BatchDelivery]]], exc: BaseException
    ) -> None:
        """The ``unsent`` messages will not go: their requests fail; the others wait."""
        failed = {batch for _partition, _value, batches in unsent for batch in batches}
        for batch, count in self.batches.items():
            if batch in failed:
                batch.fail(exc)
            else:
                batch.expect(count)

    def messages(self, max_bytes: int) -> list[tuple[int, bytes, list[_BatchDelivery]]]:
        """(partition, message, requests it carries events of), partitions in order."""
        out = []
        for partition, entries in sorted(self.groups.items()):
            if len(entries) == 1:
                batch, records = entries[0]
                out += [(partition, m, [batch]) for m, _n in _chunks(records, max_bytes)]
                continue
            joined = [record for _batch, records in entries for record in records]
            owners = [batch for batch, records in entries for _ in records]
            start = 0
            for message, count in _chunks(joined, max_bytes):
                carried = list(dict.fromkeys(owners[start : start + count]))
                out.append((partition, message, carried))
                start += count
        return out


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
        self._turns: dict[str, _Turn] = {}
        self._background: set[asyncio.Task[None]] = set()
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

    async def send_events(self, topic: str, records: Sequence[EventRecord]) -> dict[int, int]:
        """Produce records; return once the broker acknowledged every one, with the offset
        of the last message holding some of them, per partition (for read-your-writes).

        Raises :class:`BrokerUnavailable` if any was not acknowledged in time. Some of the
        batch may then be in Kafka anyway: a retry is safe, events are deduplicated by id.
        The records are produced at the end of this turn of the event loop, in the same
        messages as those of any other request of the same turn.
        """
        if not records:
            return {}
        partitions = await self.partition_count(topic)
        loop = asyncio.get_running_loop()
        batch = _BatchDelivery(loop)
        turn = self._turns.get(topic)
        if turn is None:
            turn = self._turns[topic] = _Turn(partitions)
            loop.call_soon(self._produce_turn, topic)
        turn.add(batch, records)
        await self._await(batch)
        self.delivered += len(records)
        return batch.offsets

    def _produce_turn(self, topic: str) -> None:
        """Enqueue the turn's messages (on the loop); a full queue hands the rest to a task."""
        turn = self._turns.pop(topic)
        messages: list[tuple[int, bytes, list[_BatchDelivery]]] = []
        try:
            messages = turn.messages(MAX_MESSAGE_BYTES)
            self._renew_if_failed()
            done = self._enqueue(topic, turn, messages)
        except Exception as exc:  # to the requests, as a direct produce call would raise it
            turn.fail(messages or [(0, b"", list(turn.batches))], exc)
            return
        if done < len(messages):
            # librdkafka's queue is full: the broker is slow or gone. Wait for room.
            task = asyncio.ensure_future(self._enqueue_later(topic, turn, messages[done:]))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        else:
            turn.enqueued()

    def _enqueue(
        self, topic: str, turn: _Turn, messages: list[tuple[int, bytes, list[_BatchDelivery]]]
    ) -> int:
        """Produce messages in order until the queue is full; return how many went."""
        produce = self._producer.produce
        counts = turn.batches
        for index, (partition, value, batches) in enumerate(messages):
            if len(batches) == 1:
                callback = batches[0].on_delivery
            else:
                callback = _SharedMessage(batches).on_delivery
            try:
                produce(topic, value, None, partition, on_delivery=callback)
            except BufferError:
                return index
            for batch in batches:
                counts[batch] += 1
        return len(messages)

    async def _enqueue_later(
        self, topic: str, turn: _Turn, messages: list[tuple[int, bytes, list[_BatchDelivery]]]
    ) -> None:
        deadline = time.monotonic() + self.timeout_s
        try:
            while messages:
                await asyncio.sleep(0.005)
                messages = messages[self._enqueue(topic, turn, messages) :]
                if messages and time.monotonic() > deadline:
                    turn.fail(messages, BrokerUnavailable("producer queue full"))
                    return
        except Exception as exc:
            turn.fail(messages, exc)
            return
        turn.enqueued()

    async def _await(self, batch: _BatchDelivery) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(batch.future), self.timeout_s + 5)
        except TimeoutError:
            batch.future.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise BrokerUnavailable("no acknowledgement from the broker in time") from None
        except BrokerUnavailable:
            if _fatal(batch.error):
                self._fatal = batch.error
            raise

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
    # The broker stamps each message with its append time, which the fold reports as the
    # start of the ``appended_to_folded`` hop (a topic made elsewhere may keep the
    # producer's clock, CreateTime: the hop then also holds the wait for the broker).
    config = {"message.timestamp.type": "LogAppendTime"}
    futures = admin.create_topics(
        [NewTopic(topic, partitions, factor, config=config)], operation_timeout=30
    )
    try:
        futures[topic].result(timeout=30)
        log.info("topic created", topic=topic, partitions=partitions, replication=factor)
    except confluent_kafka.KafkaException as exc:
        if exc.args[0].code() != confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    with contextlib.suppress(Exception):
        admin.poll(0)
    return factor
