"""Ingest over HTTP against a real `playerpulse serve`, next to raw producers on its broker.

    python bench/ingest.py [--seconds 15] [--connections 64] [--batch 100] [--repeat]
                           [--players-per-request N] [--compare-workers]
                           [--baseline-seconds 8] [--no-baseline]

Steps, all in one run on this machine:

1. `playerpulse serve` with its defaults (durable embedded Apache Kafka, embedded
   PostgreSQL, workers = cores; only the log level is lowered) in a temporary data dir.
   One request is checked by hand: 202 and ``"accepted": BATCH``.
2. The load: wrk (Debian package) POSTs ``--batch``-event bodies to ``/v1/events`` over
   ``--connections`` connections for ``--seconds`` after a ``--warmup`` not counted. Every
   request carries new event ids (wrk's Lua fills them in), for ``batch * 1000`` players in
   rotation, so the fold, which runs in the same workers meanwhile, really applies every
   event. ``--repeat`` sends one fixed body instead (the fold then only deduplicates: the
   ingest path's own ceiling, as this benchmark used to measure). ``--players-per-request``
   (default: as many as events, the fold's worst case) sets how many distinct players
   a request's events belong to (1: one device's batch).
   Counted: ONLY answers 202 whose body says all ``--batch`` events were accepted (a Lua
   ``response`` counter); every other answer or socket error is reported as failed.
3. ``--compare-workers``: the same load against a second server with ``--workers 1``.
4. The server is stopped; then the SAME broker is started alone on the server's own data
   dir (``EmbeddedKafka(data_dir)``, the log under data_dir/kafka) and, from this process,
   with nothing else running, a raw confluent-kafka producer (idempotent, lz4, acks=all,
   linger 2 ms: the service's producer settings) sends the same events (the records the
   service would produce, encoded ahead of the clock) for ``--baseline-seconds`` each:
   (a) one message per event, keyed by player, to an 8-partition topic;
   (b) the service's own grouping: ``group_messages`` over ``--batch``-event batches,
       one message per (batch, partition), same partition count as the events topic.
   Rate = events acknowledged / (first produce .. last acknowledgement).

Printed: events/s answered 202 (= 202 answers x batch / wrk's duration), requests/s,
latency p50/p90/p99/max of all answers (wrk), failures by status; how many events/s the
fold applied (or found duplicate) meanwhile (/metrics counters); the CPU each part used
during the measured load (in cores; "others" is the rest of the machine: other jobs on
a shared machine show there) and per event answered 202, in CPU microseconds of each of
the service's processes (workers, Kafka, PostgreSQL, supervisor, from /proc); the two
baselines, each with its CPU microseconds per event (the producer: this process; Kafka),
and HTTP / baseline ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import confluent_kafka
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.domain.events import EventRecord, decode_records, encode_record, parse_batch  # noqa: E402
from app.streams.producer import group_messages, partition_for  # noqa: E402
from bench import wrk  # noqa: E402
from bench.load import GAME, BodyTemplate, CpuShare, Serve, scrape, start_serve  # noqa: E402

PARTITIONS = 8


def wrk_load(
    serve: Serve, template: BodyTemplate, args: argparse.Namespace, seconds: float
) -> dict[str, Any]:
    """One wrk run; counts exactly the 202s with the full accepted count."""
    work = Path(tempfile.mkdtemp(prefix="pp-wrk-"))
    try:
        script = template.lua(work / "body.json", repeat=args.repeat) + (
            'wrk.method = "POST"\n'
            f'wrk.headers["Authorization"] = "Bearer {serve.ingest_key}"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        return wrk.run_script(
            f"{serve.url}/v1/events",
            script,
            seconds=seconds,
            connections=args.connections,
            threads=args.threads,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_one(serve: Serve, template: BodyTemplate) -> None:
    """One request by hand: 202 and every event accepted."""
    response = httpx.post(
        f"{serve.url}/v1/events",
        content=template.body("check", 0),
        headers={"Authorization": f"Bearer {serve.ingest_key}"},
        timeout=30,
    )
    body = response.json()
    if response.status_code != 202 or body.get("accepted") != template.batch:
        raise SystemExit(f"check request: {response.status_code} {body}")


def http_run(serve: Serve, template: BodyTemplate, args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up, then the measured run with the CPU shares."""
    check_one(serve, template)
    if args.warmup:
        wrk_load(serve, template, args, args.warmup)
    before = scrape(serve.url)
    cpu = CpuShare(serve).start()
    result = wrk_load(serve, template, args, args.seconds)
    cpu.stop()
    after = scrape(serve.url)
    result["folded"] = sum(
        after.get(name, 0.0) - before.get(name, 0.0)
        for name in ("playerpulse_events_folded_total", "playerpulse_events_duplicate_total")
    )
    result["cpu"] = cpu.line()
    result["cpu_per_event"] = cpu.per_event(result["ok"] * args.batch)
    result["workers"] = len(serve.worker_pids())
    return result


# -- baselines --------------------------------------------------------------------------------


def producer_config(brokers: str) -> dict[str, Any]:
    """The service's producer settings (app/streams/producer.py EventProducer)."""
    return {
        "bootstrap.servers": brokers,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "lz4",
        "linger.ms": 2,
        "queue.buffering.max.messages": 500_000,
    }


def ensure_topic(brokers: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": brokers})
    futures = admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    try:
        futures[topic].result(30)
    except confluent_kafka.KafkaException as exc:
        if exc.args[0].code() != confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def produce_for(
    brokers: str, topic: str, messages: list[tuple[int, bytes | None, bytes, int]], seconds: float
) -> tuple[float, int]:
    """Produce (partition, key, value, events) in a loop for ``seconds``, then flush.

    Returns (acknowledged events per second, failures).
    """
    producer = confluent_kafka.Producer(producer_config(brokers))
    delivered = [0]
    failures = [0]

    def report(sizes: int) -> Any:
        def on_delivery(err: Any, _msg: Any) -> None:
            if err is None:
                delivered[0] += sizes
            else:
                failures[0] += 1

        return on_delivery

    callbacks = {n: report(n) for n in {m[3] for m in messages}}
    # Warm: metadata and the idempotent producer id, before the clock starts.
    partition, key, value, _events = messages[0]
    producer.produce(topic, value, key, partition)
    if producer.flush(60):
        raise RuntimeError("baseline: the broker did not acknowledge the warm-up message")
    started = time.perf_counter()
    deadline = started + seconds
    i = 0
    while time.perf_counter() < deadline:
        for partition, key, value, events in messages:
            while True:
                try:
                    producer.produce(topic, value, key, partition, on_delivery=callbacks[events])
                    break
                except BufferError:
                    producer.poll(0.005)
            i += 1
            if i % 1000 == 0:
                producer.poll(0)
                if time.perf_counter() >= deadline:
                    break
    producer.flush(120)
    elapsed = time.perf_counter() - started
    return delivered[0] / elapsed, failures[0]


def baselines(data_dir: Path, template: BodyTemplate, seconds: float) -> dict[str, Any]:
    """The broker alone on the server's data dir; (a) per event, (b) service grouping."""
    from app.embedded.kafka import EmbeddedKafka

    records: list[list[EventRecord]] = []
    now = time.time_ns() // 1000
    for k in range(200):
        batch, rejected = parse_batch(template.body(f"base-{k}", k % template.groups), GAME, now)
        assert not rejected
        records.append(batch)
    single = [
        (partition_for(r.partition_key, PARTITIONS), r.partition_key, encode_record(r), 1)
        for batch in records
        for r in batch
    ]
    grouped: list[tuple[int, bytes | None, bytes, int]] = []
    for batch in records:
        for partition, value in group_messages(batch, PARTITIONS):
            grouped.append((partition, None, value, len(decode_records(value))))
    broker = EmbeddedKafka(data_dir)
    try:
        brokers = broker.start()
        ensure_topic(brokers, "bench-baseline-single")
        ensure_topic(brokers, "bench-baseline-grouped")
        cpu_single = CpuShare(None, own="producer").start()
        single_rate, single_failed = produce_for(brokers, "bench-baseline-single", single, seconds)
        cpu_single.stop()
        cpu_grouped = CpuShare(None, own="producer").start()
        grouped_rate, grouped_failed = produce_for(
            brokers, "bench-baseline-grouped", grouped, seconds
        )
        cpu_grouped.stop()
    finally:
        broker.stop()
    return {
        "single": single_rate,
        "single_failed": single_failed,
        "grouped": grouped_rate,
        "grouped_failed": grouped_failed,
        "messages_per_batch": len(grouped) / len(records),
        # Events produced in the window: the rate over the time to the last acknowledgement.
        "single_cpu": cpu_single.per_event(round(single_rate * cpu_single.seconds)),
        "grouped_cpu": cpu_grouped.per_event(round(grouped_rate * cpu_grouped.seconds)),
    }


# -- main -------------------------------------------------------------------------------------


def describe(label: str, run: dict[str, Any], batch: int, seconds: float) -> str:
    failed = run["other"] + run["wrong_body"] + run["socket_errors"]
    statuses = run["statuses"].strip() or "-"
    return (
        f"  {label}: {run['ok'] * batch / run['seconds']:,.0f} events/s answered 202 "
        f"({run['ok'] / run['seconds']:,.0f} requests/s, {run['ok']} requests in "
        f"{run['seconds']:.1f}s)\n"
        f"      latency p50 {run['p50']:.0f} ms, p90 {run['p90']:.0f} ms, "
        f"p99 {run['p99']:.0f} ms, max {run['max']:.0f} ms; "
        f"failed {failed} (other statuses {statuses}, 202 with a short accepted count "
        f"{run['wrong_body']}, socket errors {run['socket_errors']})\n"
        f"      meanwhile the fold, in the same workers, applied or deduplicated "
        f"{run['folded'] / run['seconds']:,.0f} events/s\n"
        f"      {run['cpu']}\n"
        f"      {run['cpu_per_event']} (events answered 202; the workers also fold them)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="measured wrk run")
    parser.add_argument("--warmup", type=float, default=3, help="wrk run before, not counted")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--batch", type=int, default=100, help="events per request")
    parser.add_argument("--repeat", action="store_true", help="the same body every request")
    parser.add_argument(
        "--players-per-request",
        type=int,
        default=None,
        help="distinct players in a request (default: one per event)",
    )
    parser.add_argument("--compare-workers", action="store_true", help="also --workers 1")
    parser.add_argument("--baseline-seconds", type=float, default=8)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    if not wrk.available():
        raise SystemExit("wrk is needed: apt-get install -y wrk")

    template = BodyTemplate(args.batch, args.players_per_request)
    work = Path(tempfile.mkdtemp(prefix="pp-bench-ingest-"))
    runs: list[tuple[str, dict[str, Any]]] = []
    base: dict[str, Any] | None = None
    try:
        serve = start_serve(work / "default")
        try:
            runs.append(
                (
                    f"serve defaults ({len(serve.worker_pids())} workers)",
                    http_run(serve, template, args),
                )
            )
        finally:
            serve.stop()
        if args.compare_workers:
            one = start_serve(work / "one", workers=1)
            try:
                runs.append(("serve --workers 1", http_run(one, template, args)))
            finally:
                one.stop()
        if not args.no_baseline:
            base = baselines(serve.data_dir, template, args.baseline_seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mode = "one fixed body (--repeat)" if args.repeat else "new event ids every request"
    mode += f", {template.per_request} players per request of {template.players:,}"
    print(
        f"\ningest benchmark: {os.cpu_count()} cores, durable embedded Apache Kafka and "
        f"PostgreSQL on this machine; wrk {args.connections} connections, {args.threads} "
        f"threads, {args.batch}-event batches, {mode}, {args.seconds:g}s measured"
    )
    for label, run in runs:
        print(describe(label, run, args.batch, args.seconds))
    if base is not None:
        http = runs[0][1]["ok"] * args.batch / runs[0][1]["seconds"]
        print(
            f"  baseline (a) raw confluent-kafka producer, one message per event (idempotent, "
            f"lz4, acks=all), broker alone: {base['single']:,.0f} events/s "
            f"(failed {base['single_failed']}); HTTP / (a) = {http / base['single']:.2f}\n"
            f"      {base['single_cpu']}"
        )
        print(
            f"  baseline (b) same producer, the service's grouping "
            f"({base['messages_per_batch']:.1f} messages per {args.batch}-event batch): "
            f"{base['grouped']:,.0f} events/s "
            f"(failed {base['grouped_failed']}); HTTP / (b) = {http / base['grouped']:.2f}\n"
            f"      {base['grouped_cpu']}"
        )


if __name__ == "__main__":
    main()
