"""A broker that stops answering: bounded 503s, no 2xx for what it did not take, recovery."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.embedded.kafka import EmbeddedKafka
from tests.support import EXTERNAL_BROKERS, ServeProcess, unique, wait_for

pytestmark = pytest.mark.kafka  # rerun against a separate Apache Kafka

PRODUCE_TIMEOUT_S = 3


@pytest.fixture
def freezable_broker(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """(address, pid) of an Apache Kafka broker the test may SIGSTOP: CI's, or its own."""
    pidfile = os.environ.get("PLAYERPULSE_TEST_KAFKA_PIDFILE")
    if EXTERNAL_BROKERS and pidfile:
        yield EXTERNAL_BROKERS, int(Path(pidfile).read_text().strip())
        return
    broker = EmbeddedKafka(tmp_path / "broker")
    address = broker.start()
    assert broker.child is not None
    assert broker.child.pid is not None
    try:
        yield address, broker.child.pid
    finally:
        os.kill(broker.child.pid, signal.SIGCONT)
        broker.stop()


def test_frozen_broker_gives_bounded_503s_and_every_2xx_event_is_folded(
    tmp_path: Path, freezable_broker: tuple[str, int]
) -> None:
    address, pid = freezable_broker
    server = ServeProcess(
        tmp_path,
        {
            "PLAYERPULSE_KAFKA_BROKERS": address,
            "PLAYERPULSE_EVENTS_TOPIC": unique("events"),
            "PLAYERPULSE_CONSUMER_GROUP": unique("group"),
            "PLAYERPULSE_PRODUCE_TIMEOUT_S": str(PRODUCE_TIMEOUT_S),
        },
    ).start()
    game = unique("game")
    ingest, read = server.key(game, "ingest"), server.key(game, "read")
    now = datetime.now(UTC).isoformat()
    # One player per batch: a batch's fate is read straight off that player's profile.
    outcomes: dict[int, list[tuple[int, float, str | None]]] = {}
    stop = threading.Event()
    details: list[str] = []

    def batch(i: int) -> dict[str, Any]:
        return {
            "events": [
                {"event_id": f"{i}-{j}", "player_id": f"b{i}", "type": "session_start", "ts": now}
                for j in range(10)
            ]
        }

    def send() -> None:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ingest}"}) as c:
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                response = c.post("/v1/events", json=batch(i), timeout=PRODUCE_TIMEOUT_S + 20)
                outcomes[i] = [
                    (
                        response.status_code,
                        time.monotonic() - started,
                        response.headers.get("retry-after"),
                    )
                ]
                i += 1
                time.sleep(0.05)

    sender = threading.Thread(target=send)
    sender.start()

    def answered(status: int, after: int = 0, count: int = 1) -> Any:
        return lambda: (
            sum(1 for i, o in list(outcomes.items()) if i >= after and o[0][0] == status) >= count
        )

    try:
        wait_for(answered(202, count=5), timeout=60, interval=0.05)
        os.kill(pid, signal.SIGSTOP)  # the broker stops answering, connections stay open
        frozen_at = len(outcomes)
        wait_for(answered(503, after=frozen_at, count=2), timeout=60, interval=0.05)
        os.kill(pid, signal.SIGCONT)
        thawed_at = len(outcomes) + 1  # the request in flight may still end either way
        wait_for(answered(202, after=thawed_at, count=5), timeout=120, interval=0.05)
    finally:
        os.kill(pid, signal.SIGCONT)
        stop.set()
        sender.join()

    codes = [o[0][0] for o in outcomes.values()]
    assert 503 in codes, codes
    assert codes[-1] == 202, (list(outcomes.values())[-8:], details[-3:])  # recovered by itself
    for status, seconds, retry_after in (o[0] for o in outcomes.values()):
        assert status in (202, 503), status
        assert seconds < PRODUCE_TIMEOUT_S + 10  # never a hang
        if status == 503:
            assert retry_after is not None
    accepted = [i for i, o in outcomes.items() if o[0][0] == 202]
    refused = [i for i, o in outcomes.items() if o[0][0] == 503]

    # Clients resend what was refused, as SDKs do: then every batch is in, exactly once.
    with server.client(ingest) as client:
        for i in refused:

            def resent(i: int = i) -> bool:
                return client.post("/v1/events", json=batch(i)).status_code == 202

            wait_for(resent, timeout=60, interval=0.5)

    def all_folded() -> bool:
        with server.client(read) as client:
            for i in accepted + refused:
                response = client.get(f"/v1/players/b{i}")
                if response.status_code != 200 or response.json()["events_applied"] != 10:
                    return False
        return True

    try:
        wait_for(all_folded, timeout=120, interval=1)
    finally:
        assert server.stop() == 0, server.log()
