"""Profiles that are always right, over the real server: shuffled, repeated, crashed."""

from __future__ import annotations

import random
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.embedded.broker import EmbeddedBroker
from tests.reference import FEATURES_ALL, expected_profiles, generate
from tests.support import EXTERNAL_BROKERS, ServeProcess, unique, wait_for


def batches(events: list[dict[str, Any]], size: int, seed: int) -> list[list[dict[str, Any]]]:
    """Shuffled, with a third of the events sent again in other requests."""
    rng = random.Random(seed)
    sent = events + rng.sample(events, len(events) // 3)
    rng.shuffle(sent)
    return [sent[i : i + size] for i in range(0, len(sent), size)]


def post_all(url: str, key: str, requests: list[list[dict[str, Any]]], workers: int = 4) -> None:
    """Send every batch, retrying each until it is answered 202 (as an SDK would)."""
    pending = list(reversed(requests))
    lock = threading.Lock()
    errors: list[str] = []

    def worker() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
            while True:
                with lock:
                    if not pending:
                        return
                    batch = pending.pop()
                for _attempt in range(600):
                    try:
                        response = client.post("/v1/events", json={"events": batch}, timeout=15)
                    except httpx.HTTPError:
                        threading.Event().wait(0.1)
                        continue
                    if response.status_code == 202:
                        assert response.json()["accepted"] == len(batch), response.text
                        break
                    threading.Event().wait(0.1)
                else:
                    errors.append("a batch was never accepted")

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def profiles_match(server: ServeProcess, key: str, events: list[dict[str, Any]]) -> Any:
    """True once every player's profile equals the reference; else the first difference."""
    want = expected_profiles(events, datetime.now(UTC))
    counts: dict[str, int] = {}
    for e in {e["event_id"]: e for e in events}.values():
        counts[e["player_id"]] = counts.get(e["player_id"], 0) + 1
    with server.client(key) as client:
        for player, features in sorted(want.items()):
            response = client.get(f"/v1/players/{player}")
            if response.status_code != 200:
                return False
            body = response.json()
            if body["features"] != features or body["events_applied"] != counts[player]:
                return False
    return True


def test_thousands_of_shuffled_repeated_events_match_the_reference(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path, {"PLAYERPULSE_FEATURES": str(FEATURES_ALL)}).start()
    try:
        game = unique("game")
        ingest, read = server.key(game, "ingest"), server.key(game, "read")
        events = generate(players=150, events=4000, seed=1)
        post_all(server.url, ingest, batches(events, 100, seed=2))
        wait_for(lambda: profiles_match(server, read, events), timeout=90, interval=1)
        with server.client() as client:
            metrics = client.get("/metrics").text
        assert "playerpulse_events_duplicate_total" in metrics
        assert "playerpulse_late_events_total" in metrics
    finally:
        assert server.stop() == 0, server.log()


@pytest.fixture
def outside_broker(tmp_path: Path) -> Any:
    """A broker that outlives the server: Apache Kafka in CI, else a Tansu of our own."""
    if EXTERNAL_BROKERS:
        yield EXTERNAL_BROKERS
        return
    broker = EmbeddedBroker(tmp_path / "broker")
    try:
        yield broker.start()
    finally:
        broker.stop()


def test_sigkill_mid_stream_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, outside_broker: str
) -> None:
    env = {
        "PLAYERPULSE_FEATURES": str(FEATURES_ALL),
        "PLAYERPULSE_KAFKA_BROKERS": outside_broker,
        "PLAYERPULSE_EVENTS_TOPIC": unique("events"),
        "PLAYERPULSE_CONSUMER_GROUP": unique("group"),
    }
    server = ServeProcess(tmp_path, env).start()
    game = unique("game")
    ingest, read = server.key(game, "ingest"), server.key(game, "read")
    events = generate(players=120, events=6000, seed=3)
    requests = batches(events, 50, seed=4)

    sender = threading.Thread(target=post_all, args=(server.url, ingest, requests, 2))
    sender.start()

    def half_folded() -> bool:
        text = httpx.get(f"{server.url}/metrics", timeout=5).text
        line = next(
            (ln for ln in text.splitlines() if ln.startswith("playerpulse_events_folded_total")),
            "x 0",
        )
        return float(line.split()[-1]) > 1500

    wait_for(half_folded, timeout=120, interval=0.05)
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL  # in the middle of the stream

    restarted = ServeProcess(tmp_path, env)
    restarted.port, restarted.url = server.port, server.url  # the sender keeps retrying here
    restarted.env = server.env
    restarted.start()
    try:
        sender.join(timeout=300)
        assert not sender.is_alive()
        wait_for(lambda: profiles_match(restarted, read, events), timeout=120, interval=1)
    finally:
        assert restarted.stop() == 0, restarted.log()
