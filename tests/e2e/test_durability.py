"""A 202 survives anything: kill -9 of every process, a worker's death, copies coming and going.

Each test sends batches (a third of the events twice) as an SDK would, retrying until a
202, while it kills and restarts servers under the traffic. In the end every event was
accepted, so the profiles must equal the reference (each event counted exactly once)
and the lake's ``events`` view must hold each event once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.reference import FEATURES_ALL, generate
from tests.support import EXTERNAL_BROKERS, EXTERNAL_DATABASE, ServeProcess, unique, wait_for
from tests.traffic import Sender, batches, lake_counts, profiles_match

pytestmark = pytest.mark.kafka  # rerun against a separate Apache Kafka


def _distinct(events: list[dict[str, object]]) -> int:
    return len({e["event_id"] for e in events})


def _accepted(sender: Sender, more: int) -> Callable[[], bool]:
    """A condition: ``more`` batches accepted from now on."""
    target = sender.accepted + more
    return lambda: sender.accepted >= target


def test_sigkill_of_every_process_three_times_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(9)
    server = ServeProcess(tmp_path, {"PLAYERPULSE_FEATURES": str(FEATURES_ALL)}).start()
    game = unique("game")
    ingest, read = server.key(game, "ingest"), server.key(game, "read")
    events = generate(players=80, events=8000, seed=11)
    requests = batches(events, 50, seed=12)
    sender = Sender([server.url], ingest, requests, threads=3).start()
    try:
        for _round in range(3):
            # A random moment, measured in accepted batches since the (re)start.
            wait_for(_accepted(sender, rng.randint(5, 40)), timeout=180, interval=0.01)
            killed = server.kill_tree()
            assert len(killed) >= 4, killed  # serve, its workers, PostgreSQL, the broker
            server.start(timeout=120)
        sender.join(timeout=600)
        assert sender.accepted == len(requests)
        wait_for(lambda: profiles_match(server, read, events), timeout=120, interval=1)
        distinct = _distinct(events)
        wait_for(lambda: lake_counts(server, game)[1] == distinct, timeout=90, interval=1)
        assert lake_counts(server, game) == (distinct, distinct)  # the view holds each once
    finally:
        assert server.stop() == 0, server.log()


def test_a_killed_worker_is_restarted_and_nothing_is_lost_or_doubled(tmp_path: Path) -> None:
    env = {"PLAYERPULSE_FEATURES": str(FEATURES_ALL), "PLAYERPULSE_WORKERS": "2"}
    server = ServeProcess(tmp_path, env).start()
    game = unique("game")
    ingest, read = server.key(game, "ingest"), server.key(game, "read")
    events = generate(players=60, events=6000, seed=21)
    requests = batches(events, 50, seed=22)
    try:
        workers = wait_for(lambda: len(server.workers()) == 2 and server.workers())
        sender = Sender([server.url], ingest, requests, threads=3).start()
        wait_for(lambda: sender.accepted >= 20, timeout=120, interval=0.01)
        victim = workers[0]
        victim.kill()
        survivors = {w.pid for w in workers[1:]}

        def replaced() -> bool:
            now = {w.pid for w in server.workers()}
            return len(now) == 2 and victim.pid not in now and survivors <= now

        wait_for(replaced, timeout=60)
        sender.join(timeout=600)
        wait_for(lambda: profiles_match(server, read, events), timeout=120, interval=1)
        distinct = _distinct(events)
        wait_for(lambda: lake_counts(server, game)[1] == distinct, timeout=90, interval=1)
        assert lake_counts(server, game) == (distinct, distinct)
        assert "worker died; restarting it" in server.log()
    finally:
        assert server.stop() == 0, server.log()


@pytest.fixture
def shared_services(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """One Kafka and one PostgreSQL outside every copy: CI's, or started here."""
    from app.embedded.kafka import EmbeddedKafka
    from app.embedded.postgres import EmbeddedPostgres

    kafka = None if EXTERNAL_BROKERS else EmbeddedKafka(tmp_path / "kafka")
    postgres = None if EXTERNAL_DATABASE else EmbeddedPostgres(tmp_path / "pg")
    try:
        brokers = EXTERNAL_BROKERS or kafka.start()  # type: ignore[union-attr]
        database = EXTERNAL_DATABASE or postgres.start()  # type: ignore[union-attr]
        yield brokers, database
    finally:
        if kafka is not None:
            kafka.stop()
        if postgres is not None:
            postgres.stop()


def test_three_copies_share_the_work_while_copies_die_and_join(
    tmp_path: Path, shared_services: tuple[str, str]
) -> None:
    brokers, database = shared_services
    env = {
        "PLAYERPULSE_FEATURES": str(FEATURES_ALL),
        "PLAYERPULSE_KAFKA_BROKERS": brokers,
        "PLAYERPULSE_DATABASE_URL": database,
        "PLAYERPULSE_LAKE_URL": str(tmp_path / "lake"),  # one lake, as on shared storage
        "PLAYERPULSE_EVENTS_TOPIC": unique("events"),
        "PLAYERPULSE_CONSUMER_GROUP": unique("group"),
        "PLAYERPULSE_WORKERS": "1",
    }

    def copy(name: str) -> ServeProcess:
        return ServeProcess(tmp_path / name, env).start(timeout=120)

    copies = {name: copy(name) for name in ("a", "b", "c")}
    game = unique("game")
    ingest, read = copies["a"].key(game, "ingest"), copies["a"].key(game, "read")
    events = generate(players=90, events=9000, seed=31)
    requests = batches(events, 50, seed=32)
    sender = Sender([c.url for c in copies.values()], ingest, requests, threads=3).start()
    try:
        wait_for(lambda: sender.accepted >= 30, timeout=120, interval=0.01)
        copies["a"].kill_tree()  # a machine lost
        sender.set_urls([copies["b"].url, copies["c"].url])
        wait_for(lambda: sender.accepted >= 60, timeout=120, interval=0.01)
        copies["d"] = copy("d")  # a machine added
        sender.set_urls([copies["b"].url, copies["c"].url, copies["d"].url])
        wait_for(lambda: sender.accepted >= 90, timeout=120, interval=0.01)
        sender.set_urls([copies["c"].url, copies["d"].url])
        assert copies["b"].stop() == 0, copies["b"].log()  # a machine retired cleanly
        sender.join(timeout=600)
        last = copies["d"]
        wait_for(lambda: profiles_match(last, read, events), timeout=120, interval=1)
        distinct = _distinct(events)
        wait_for(lambda: lake_counts(last, game)[1] == distinct, timeout=90, interval=1)
        assert lake_counts(last, game) == (distinct, distinct)
    finally:
        for name in ("c", "d"):
            if name in copies:
                assert copies[name].stop() == 0, copies[name].log()
