"""Fold benchmark: throughput (events/s per process) and event-to-profile freshness.

    python bench/fold.py [--events 200000] [--single-events 50000] [--rate 10000]
                         [--seconds 20]

Starts an embedded PostgreSQL and the embedded Apache Kafka broker (or uses
PLAYERPULSE_DATABASE_URL and PLAYERPULSE_KAFKA_BROKERS), then, all in this one process
as in one `playerpulse serve` worker:

1. baseline: raw aiokafka consumption of a preloaded topic, decoded (no Faust, no
   database), the events counted only once decoded;
2. throughput: the Faust fold agent folding the same preloaded events into PostgreSQL,
   counted when the fold applied them (its transaction committed).
   Both 1 and 2 run for two message shapes, each on its own topic:
   (a) grouped: ``--events`` events produced by the service's producer in 500-event
       requests, so each message holds the events of one request for one partition
       (about 60 events), what ``POST /v1/events`` with batches produces;
   (b) one event per message: ``--single-events`` events, each its own message, what
       one-event requests (``POST /v1/track``, ``/v1/segment/track``) produce when the
       requests of an event-loop turn do not share messages; the Faust consumer's
       messages/s is then the ceiling.
3. freshness: events produced at a steady rate while the fold runs; percentiles of
   (profile change committed) - (event received), per event.

Prints figures and the fold/baseline ratio of each shape, measured in this same run, and
for both the baseline and the fold the CPU microseconds per event of each process, from
/proc: ``fold`` is this process (the consumer: raw, or Faust and the fold), ``kafka``
the broker's JVM, ``postgres`` every PostgreSQL process (the baseline does not use it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import confluent_kafka
from aiokafka import AIOKafkaConsumer
from faust.contrib.asgi import faust_app_running

from app import metrics
from app.bootstrap import open_services
from app.db.engine import migrate
from app.domain.events import EventRecord, decode_records
from app.embedded.kafka import EmbeddedKafka
from app.embedded.postgres import EmbeddedPostgres
from app.gc_tuning import settle_heap
from app.log import configure_logging
from app.settings import Settings
from app.streams.producer import group_messages

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.load import CpuShare

TYPES = ("purchase", "session_start", "level_complete", "purchase", "session_start")


def make_events(count: int, players: int, seed: int, game: str) -> list[EventRecord]:
    rng = random.Random(seed)
    now = time.time_ns() // 1000
    out = []
    for i in range(count):
        kind = TYPES[i % len(TYPES)]
        props = None
        if kind == "purchase":
            props = {"amount": rng.choice([1, 2, 5, 0.99, 4.99])}
        elif kind == "level_complete":
            props = {"level": rng.randint(1, 100)}
        out.append(
            EventRecord(
                game=game,
                event_id=f"e{seed}-{i}",
                player_id=f"p{rng.randrange(players)}",
                type=kind,
                ts=now - rng.randint(0, 6 * 86_400_000_000),
                received_at=now,
                props=props,
            )
        )
    return out


async def produce(services, topic: str, events: list[EventRecord], batch: int = 500) -> None:  # type: ignore[no-untyped-def]
    sends = []
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        sends.append(services.producer.send_events(topic, chunk))
        if len(sends) >= 16:
            await asyncio.gather(*sends)
            sends = []
    await asyncio.gather(*sends)


def produce_single(brokers: str, topic: str, events: list[EventRecord], partitions: int) -> None:
    """Each event its own message, as the service frames it, through a raw producer."""
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": brokers, "acks": "all", "linger.ms": 2, "compression.type": "lz4"}
    )
    failures: list[object] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(err)

    for record in events:
        for partition, value in group_messages([record], partitions):
            while True:
                try:
                    producer.produce(topic, value, partition=partition, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.01)
    if producer.flush(120) or failures:
        raise RuntimeError(f"one-event messages not all acknowledged: {failures[:3]}")


async def raw_consume(brokers: str, topic: str, count: int) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=brokers,
        group_id=f"bench-raw-{time.time_ns()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        rebalance_timeout_ms=3000,
        max_poll_records=5000,
    )
    await consumer.start()
    try:
        while not consumer.assignment():  # joined the group: time the reading only
            await asyncio.sleep(0.05)
        started = time.perf_counter()
        got = 0
        while got < count:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            got += sum(len(decode_records(m.value)) for msgs in batch.values() for m in msgs)
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _renamed(settings: Settings, suffix: str) -> Settings:
    """The same settings on a topic and consumer group of their own."""
    return Settings(
        **{
            **_fields(settings),
            "events_topic": f"{settings.events_topic}-{suffix}",
            "consumer_group": f"{settings.consumer_group}-{suffix}",
        }
    )


async def throughput(settings: Settings, events: list[EventRecord], single: bool) -> dict:  # type: ignore[type-arg]
    """Preload ``events`` on a topic of their own, then time raw consumption and the fold."""
    assert settings.kafka_brokers is not None
    services = await open_services(settings)
    settle_heap()  # as a serving worker does once started
    t = time.perf_counter()
    if single:
        partitions = await services.producer.partition_count(settings.events_topic)
        await asyncio.to_thread(
            produce_single, settings.kafka_brokers, settings.events_topic, events, partitions
        )
    else:
        await produce(services, settings.events_topic, events)
    produce_s = time.perf_counter() - t
    raw = CpuShare(None, own="fold").start()
    raw_s = await raw_consume(settings.kafka_brokers, settings.events_topic, len(events))
    raw.stop()
    raw_cpu = raw.per_event(len(events))
    async with faust_app_running(services.stream_app, stop_timeout=60):
        t = time.perf_counter()
        cpu = CpuShare(None, own="fold").start()
        while services.folder.stats.applied < len(events):
            await asyncio.sleep(0.05)
        fold_s = time.perf_counter() - t
        cpu.stop()
        await services.flush()
    await services.close()
    return {
        "n": len(events),
        "produce_s": produce_s,
        "raw_s": raw_s,
        "raw_cpu": raw_cpu,
        "fold_s": fold_s,
        "cpu": cpu.per_event(len(events)),
    }


async def bench(settings: Settings, args: argparse.Namespace) -> None:
    assert settings.kafka_brokers is not None
    game = "bench"
    # 1 + 2: preload, then raw consume and fold the same events, for each message shape.
    shapes = {
        "grouped (about 60 events a message)": await throughput(
            _renamed(settings, "grouped"),
            make_events(args.events, args.players, seed=1, game=game),
            single=False,
        ),
        "one event per message": await throughput(
            _renamed(settings, "single"),
            make_events(args.single_events, args.players, seed=3, game=game),
            single=True,
        ),
    }

    # 3: steady load while folding.
    steady = _renamed(settings, "steady")
    services = await open_services(steady)
    settle_heap()
    samples: list[float] = []
    services.folder.freshness_samples = samples
    batch_sum0 = metrics.FOLD_BATCH_SECONDS._sum.get()
    batches0 = services.folder.stats.batches
    live = make_events(args.rate * args.seconds, args.players, seed=2, game=game)
    async with faust_app_running(services.stream_app, stop_timeout=60):
        per_tick = max(1, args.rate // 100)  # 100 requests of rate/100 events per second
        t0 = time.perf_counter()
        pending = []
        for tick, start in enumerate(range(0, len(live), per_tick)):
            due = t0 + tick / 100
            await asyncio.sleep(max(0, due - time.perf_counter()))
            now = time.time_ns() // 1000
            chunk = live[start : start + per_tick]
            for e in chunk:
                e.received_at = now
            pending.append(
                asyncio.ensure_future(services.producer.send_events(steady.events_topic, chunk))
            )
        await asyncio.gather(*pending)
        sent_s = time.perf_counter() - t0
        while services.folder.stats.applied < len(live):
            await asyncio.sleep(0.05)
        steady_batches = services.folder.stats.batches - batches0
        batch_seconds = metrics.FOLD_BATCH_SECONDS._sum.get() - batch_sum0
        await services.flush()
    await services.close()

    print(f"\nfold benchmark ({os.cpu_count()} cores, broker and PostgreSQL on this machine)")
    for label, run in shapes.items():
        n = run["n"]
        print(f"  {label}: {n} events produced in {run['produce_s']:.2f}s")
        print(f"    baseline raw aiokafka consume: {n / run['raw_s']:,.0f} events/s")
        print(
            f"    fold into PostgreSQL:          {n / run['fold_s']:,.0f} events/s per process "
            f"(ratio to baseline {run['raw_s'] / run['fold_s']:.2f})"
        )
        print(f"    baseline {run['raw_cpu']}")
        print(f"    fold     {run['cpu']}")
    print(
        f"  steady load {len(live) / sent_s:,.0f} events/s for {sent_s:.1f}s: freshness "
        f"p50 {pct(samples, 0.5) * 1000:.1f} ms, p90 {pct(samples, 0.9) * 1000:.1f} ms, "
        f"p99 {pct(samples, 0.99) * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms, "
        f"mean {statistics.fmean(samples) * 1000:.1f} ms ({len(samples)} events)"
    )
    print(
        f"  steady: {steady_batches} fold transactions, {len(live) / steady_batches:.0f} events "
        f"and {batch_seconds / steady_batches * 1000:.1f} ms each on average"
    )


def _fields(settings: Settings) -> dict:  # type: ignore[type-arg]
    return {f: getattr(settings, f) for f in settings.__dataclass_fields__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="grouped-shape events")
    parser.add_argument(
        "--single-events", type=int, default=50_000, help="one-event-message events"
    )
    parser.add_argument("--players", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--within", type=float, default=Settings().fold_batch_within_s)
    args = parser.parse_args()
    configure_logging("console", "warning")
    work = Path(tempfile.mkdtemp(prefix="pp-bench-"))
    brokers = os.environ.get("PLAYERPULSE_KAFKA_BROKERS")
    database = os.environ.get("PLAYERPULSE_DATABASE_URL")
    broker = EmbeddedKafka(work) if not brokers else None
    postgres = EmbeddedPostgres(work) if not database else None
    try:
        brokers = brokers or broker.start()  # type: ignore[union-attr]
        database = database or postgres.start()  # type: ignore[union-attr]
        migrate(database)
        settings = Settings(
            data_dir=work,
            database_url=database,
            kafka_brokers=brokers,
            events_topic=f"bench-{time.time_ns()}",
            consumer_group=f"bench-{time.time_ns()}",
            lake_flush_s=10,
            fold_batch_within_s=args.within,
        )
        asyncio.run(bench(settings, args))
    finally:
        if broker:
            broker.stop()
        if postgres:
            postgres.stop()


if __name__ == "__main__":
    main()
