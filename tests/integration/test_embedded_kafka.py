"""The embedded Apache Kafka: its log and a group's offsets survive a kill -9; it stops cleanly."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from structlog.testing import capture_logs

from app.embedded.kafka import EmbeddedKafka
from tests.support import unique

MESSAGES = 2000
GROUP_READS = 300


def produce(address: str, topic: str) -> set[bytes]:
    """Produce MESSAGES; the values the broker acknowledged."""
    acked: set[bytes] = set()

    def on_delivery(err: KafkaError | None, message: Message) -> None:
        value = message.value()
        if err is None and value is not None:
            acked.add(value)

    producer = Producer(
        {
            "bootstrap.servers": address,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "lz4",
            "linger.ms": 5,
        }
    )
    for i in range(MESSAGES):
        producer.produce(topic, key=str(i % 16), value=b"event-%d" % i, on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0
    return acked


def consume_and_commit(address: str, topic: str, group: str) -> dict[int, int]:
    """Read GROUP_READS messages as ``group`` and commit; the committed offsets."""
    consumer = Consumer(
        {"bootstrap.servers": address, "group.id": group, "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(8)])
    read = 0
    deadline = time.monotonic() + 30
    while read < GROUP_READS and time.monotonic() < deadline:
        read += sum(1 for m in consumer.consume(GROUP_READS - read, 1.0) if m.error() is None)
    assert read == GROUP_READS
    committed = consumer.commit(asynchronous=False)
    consumer.close()
    assert committed is not None
    return {tp.partition: tp.offset for tp in committed if tp.offset >= 0}


def committed_offsets(address: str, topic: str, group: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": address, "group.id": group})
    parts = consumer.committed([TopicPartition(topic, p) for p in range(8)], timeout=30)
    consumer.close()
    return {tp.partition: tp.offset for tp in parts if tp.offset >= 0}


def read_all(address: str, topic: str) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": address,
            "group.id": unique("reader"),
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(8)])
    values: list[bytes] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + 30
    while len(at_end) < 8 and time.monotonic() < deadline:
        for message in consumer.consume(1000, 1.0):
            error = message.error()
            partition = message.partition()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                assert partition is not None
                at_end.add(partition)
                continue
            assert error is None, error
            value = message.value()
            assert value is not None
            values.append(value)
    consumer.close()
    assert len(at_end) == 8, "did not reach the end of every partition"
    return values


def test_log_and_group_offsets_survive_kill_and_stop_is_clean(tmp_path: Path) -> None:
    kafka = EmbeddedKafka(tmp_path)
    try:
        address = kafka.start()
        assert (tmp_path / "kafka" / "data" / "meta.properties").exists()
        topic, group = unique("durable"), unique("group")
        acked = produce(address, topic)
        assert len(acked) == MESSAGES
        offsets = consume_and_commit(address, topic, group)
        assert sum(offsets.values()) == GROUP_READS

        killed = kafka.child
        assert killed is not None
        assert killed.proc is not None
        killed.proc.kill()
        assert killed.proc.wait(10) == -9

        # The same dir: the log and the ports (still free) are reused.
        assert kafka.start() == address
        values = read_all(address, topic)
        assert set(values) == acked
        assert len(values) == len(acked)  # and no duplicates
        assert committed_offsets(address, topic, group) == offsets

        child = kafka.child
        assert child is not None
        assert child.proc is not None
        pid = child.proc.pid
        started = time.monotonic()
        with capture_logs() as logs:
            kafka.stop()
        assert time.monotonic() - started < 15
        # SIGTERM did it: a SIGKILL would show as -9, and be logged.
        assert child.proc.returncode in (0, 143)
        events = [entry["event"] for entry in logs]
        assert "embedded kafka stopped" in events, events
        assert not any("did not stop in time" in event for event in events), events
        assert not psutil.pid_exists(pid)
        assert not kafka.pid_file.exists()
        kafka.stop()  # idempotent
    finally:
        kafka.stop()
