"""Durability of the embedded Apache Kafka across a kill -9 of its JVM.

    .venv/bin/python bench/broker_crash.py [--messages 200000] [--runs 3] [--kill-at 0.5]

Each run starts an EmbeddedKafka in a fresh temp dir, commits a consumer group's offsets,
then produces MESSAGES small messages (acks=all, idempotent, lz4, linger.ms=5), noting each
one the broker acknowledged. Once KILL_AT of them are acknowledged it SIGKILLs the broker
JVM, restarts EmbeddedKafka on the same dir (the producer keeps going and reconnects),
reads the topic back from the beginning and checks that every acknowledged message is
there, exactly once, and that the group's committed offsets survived. Prints the lost
count, the produce throughput and the restart-to-ready time of each run; exits 1 on loss.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from app.embedded.kafka import EmbeddedKafka
from app.log import configure_logging

PARTITIONS = 8
GROUP = "crash-bench"


@dataclass
class RunResult:
    acked: int
    acked_before_kill: int
    lost: int
    duplicates: int
    throughput: float
    restart_s: float
    offsets_kept: bool
    stop_code: int | None
    rss_mb: float


def create_topic(address: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": address})  # held: GC would abort the request
    futures = admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    futures[topic].result(timeout=30)


def commit_offsets(address: str, topic: str, base: int) -> dict[int, int]:
    """Commit one offset per partition for GROUP; the offsets committed."""
    wanted = {p: base + p for p in range(PARTITIONS)}
    consumer = Consumer({"bootstrap.servers": address, "group.id": GROUP})
    consumer.commit(
        offsets=[TopicPartition(topic, p, o) for p, o in wanted.items()], asynchronous=False
    )
    consumer.close()
    return wanted


def committed_offsets(address: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": address, "group.id": GROUP})
    parts = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
    consumer.close()
    return {tp.partition: tp.offset for tp in parts}


def read_back(address: str, topic: str) -> list[int]:
    """Every message id in the topic, from the beginning to the end."""
    consumer = Consumer(
        {
            "bootstrap.servers": address,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    ends = {}
    for p in range(PARTITIONS):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        if high > low:
            ends[p] = high
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    ids: list[int] = []
    deadline = time.monotonic() + 120
    while ends and time.monotonic() < deadline:
        for message in consumer.consume(10000, timeout=1.0):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(str(error))
            value = message.value()
            assert value is not None
            ids.append(int(value.split(b":", 1)[0]))
            offset = message.offset()
            partition = message.partition()
            assert offset is not None
            assert partition is not None
            if partition in ends and offset + 1 >= ends[partition]:
                del ends[partition]
    consumer.close()
    if ends:
        raise RuntimeError(f"could not read partitions {sorted(ends)} to their end")
    return ids


def run_once(messages: int, kill_at: float, root: Path) -> RunResult:
    kafka = EmbeddedKafka(root)
    try:
        return _run(kafka, messages, kill_at)
    finally:
        kafka.stop()


def _run(kafka: EmbeddedKafka, messages: int, kill_at: float) -> RunResult:
    address = kafka.start()
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    create_topic(address, topic)
    commit_offsets(address, topic, 1000)  # creates __consumer_offsets ahead of the clock

    acked: set[int] = set()
    failed = 0

    def on_delivery(err: KafkaError | None, message: Message) -> None:
        nonlocal failed
        if err is not None:
            failed += 1
            return
        value = message.value()
        assert value is not None
        acked.add(int(value.split(b":", 1)[0]))

    producer = Producer(
        {
            "bootstrap.servers": address,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "lz4",
            "linger.ms": 5,
            "log_level": 2,  # the connection errors around the kill are expected
        }
    )
    payload = b":" + b"p" * 40
    kill_after = int(messages * kill_at)
    acked_before_kill = 0
    offsets: dict[int, int] = {}
    restart_s = 0.0
    started = time.monotonic()
    produce_s = 0.0
    for i in range(messages):
        while True:
            try:
                producer.produce(topic, value=str(i).encode() + payload, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if not acked_before_kill and len(acked) >= kill_after:
            acked_before_kill = len(acked)
            produce_s = time.monotonic() - started
            offsets = commit_offsets(address, topic, 2000)  # moments before the kill
            assert kafka.child is not None
            assert kafka.child.proc is not None
            kafka.child.proc.send_signal(signal.SIGKILL)
            kafka.child.proc.wait()
            kafka.stop()  # reaps and closes the log; nothing to stop any more
            restarted = time.monotonic()
            if kafka.start() != address:
                raise RuntimeError("the restarted broker took other ports")
            restart_s = time.monotonic() - restarted
    if not acked_before_kill:
        raise RuntimeError("the producer finished before the kill point; raise --messages")
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} messages still unacknowledged after 120 s")

    ids = read_back(address, topic)
    present = set(ids)
    kept = committed_offsets(address, topic) == offsets
    child = kafka.child
    assert child is not None
    assert child.pid is not None
    rss_mb = psutil.Process(child.pid).memory_info().rss / 2**20
    kafka.stop()
    code = child.proc.returncode if child.proc is not None else None
    return RunResult(
        acked=len(acked),
        acked_before_kill=acked_before_kill,
        lost=len(acked - present),
        duplicates=len(ids) - len(present),
        throughput=acked_before_kill / produce_s if produce_s else 0.0,
        restart_s=restart_s,
        offsets_kept=kept,
        stop_code=code,
        rss_mb=rss_mb,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction acked at the kill")
    args = parser.parse_args(argv)
    configure_logging("console", "warning")
    results: list[RunResult] = []
    for n in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="playerpulse-crash-") as tmp:
            result = run_once(args.messages, args.kill_at, Path(tmp))
        results.append(result)
        print(
            f"run {n}: acked {result.acked} ({result.acked_before_kill} before the kill), "
            f"lost {result.lost}, duplicates {result.duplicates}, "
            f"{result.throughput:,.0f} msgs/s, restart to ready {result.restart_s:.2f} s, "
            f"group offsets {'kept' if result.offsets_kept else 'LOST'}, "
            f"JVM RSS {result.rss_mb:.0f} MB, stop exit code {result.stop_code}",
            flush=True,
        )
    summary: dict[str, Any] = {
        "lost": sum(r.lost for r in results),
        "median msgs/s": f"{statistics.median(r.throughput for r in results):,.0f}",
        "median restart s": f"{statistics.median(r.restart_s for r in results):.2f}",
    }
    print("summary: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    bad = any(r.lost or not r.offsets_kept for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
