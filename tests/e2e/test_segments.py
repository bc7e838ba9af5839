"""Segments end to end: a real `playerpulse serve`, a real webhook receiver on 127.0.0.1.

One server for the module. Players enter segments by events and leave one by time
alone; the whole process tree is SIGKILLed mid-stream and started again; the receiver
fails for a while. In the end every transition reached the webhook exactly once per
``webhook-id``, signed, in order per player, and the SSE stream, the Kafka topic, the
profile replies, the segment's size and the lake agree with it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer

from app.backup import running_embedded_broker
from tests.support import EXTERNAL_BROKERS, ServeProcess, unique, wait_for
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.kafka  # the outcome depends on the broker keeping what it acked

WINDOW_S = 20
FEATURES = f"""
[features.spend_total]
event = "purchase"
agg = "sum"
field = "amount"

[features.sessions_recent]
event = "session_start"
agg = "count"
window = "{WINDOW_S}s"

[segments.whales]
where = "spend_total >= 100.0"

[segments.active]
where = "sessions_recent >= 1"
"""
GAME = "segments-game"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    workdir = tmp_path_factory.mktemp("segments")
    features = workdir / "features.toml"
    features.write_text(FEATURES)
    env = {
        "PLAYERPULSE_FEATURES": str(features),
        "PLAYERPULSE_WEBHOOK_ALLOW_PRIVATE": "1",  # the receiver is on 127.0.0.1
        "PLAYERPULSE_WEBHOOK_BACKOFF_S": "0.2",
        "PLAYERPULSE_WEBHOOK_RETRIES": "12",
        "PLAYERPULSE_SEGMENT_CLOCK_S": "0.5",
        "PLAYERPULSE_WORKERS": "2",
        "PLAYERPULSE_SEGMENTS_TOPIC": unique("segment-changes"),
    }
    process = ServeProcess(workdir, env).start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def admin(server: ServeProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.key(GAME, 'admin')}"}


def test_bad_definitions_and_webhooks_get_422_naming_the_problem(
    server: ServeProcess, admin: dict[str, str]
) -> None:
    url = f"{server.url}/v1/admin/segments"
    bad = httpx.put(f"{url}/broken", json={"where": "spend_total >= "}, headers=admin)
    assert bad.status_code == 422
    assert "not a valid CEL expression" in bad.json()["detail"]["where"]
    unknown = httpx.put(f"{url}/typo", json={"where": "spend_totl > 1.0"}, headers=admin)
    assert unknown.status_code == 422
    assert "unknown feature(s) ['spend_totl']" in unknown.json()["detail"]["where"]
    not_bool = httpx.put(f"{url}/sum", json={"where": "spend_total + 1.0"}, headers=admin)
    assert not_bool.status_code == 422
    file_one = httpx.put(f"{url}/whales", json={"where": "true"}, headers=admin)
    assert file_one.status_code == 409
    hooks = f"{server.url}/v1/admin/webhooks"
    ftp = httpx.post(hooks, json={"url": "ftp://example.com/x"}, headers=admin)
    assert ftp.status_code == 422
    assert "scheme must be http or https" in ftp.json()["detail"]["url"]
    # Defined, listed, read, removed through the API; every process follows.
    made = httpx.put(f"{url}/big", json={"where": "spend_total >= 1000.0"}, headers=admin)
    assert made.status_code == 200, made.text
    assert made.json()["source"] == "api"
    listed = httpx.get(url, headers=admin).json()["segments"]
    assert [(s["name"], s["source"]) for s in listed] == [
        ("active", "file"),
        ("big", "api"),
        ("whales", "file"),
    ]
    assert httpx.delete(f"{url}/big", headers=admin).status_code == 204
    assert httpx.get(f"{url}/big", headers=admin).status_code == 404


class SseReader(threading.Thread):
    """Reads the SSE stream, reconnecting with Last-Event-ID until stopped."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key = url, key
        self.ids: list[int] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            headers = {"Authorization": f"Bearer {self.key}"}
            if self.ids:
                headers["Last-Event-ID"] = str(self.ids[-1])
            params = {} if self.ids else {"after": "0"}
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.stream("GET", self.url, headers=headers, params=params, timeout=3) as reply,
            ):
                for line in reply.iter_lines():
                    if line.startswith("id:"):
                        self.ids.append(int(line[3:].strip()))
                    if self.stopping.is_set():
                        return
            time.sleep(0.2)


def _send(server: ServeProcess, key: str, events: list[dict[str, Any]]) -> None:
    reply = httpx.post(
        f"{server.url}/v1/events",
        json={"events": events},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert reply.status_code == 202, reply.text
    assert reply.json()["accepted"] == len(events)


def _events(player: str, amount: float, tag: str, *, session: bool) -> list[dict[str, Any]]:
    now = datetime.now().astimezone().isoformat()
    found = [
        {
            "event_id": f"{player}-{tag}-buy",
            "player_id": player,
            "type": "purchase",
            "ts": now,
            "props": {"amount": amount},
        },
    ]
    if session:
        found.append(
            {
                "event_id": f"{player}-{tag}-s",
                "player_id": player,
                "type": "session_start",
                "ts": now,
            }
        )
    return found


def _topic_ids(server: ServeProcess, topic: str) -> list[int]:
    brokers = EXTERNAL_BROKERS or running_embedded_broker(Path(server.env["PLAYERPULSE_DATA_DIR"]))
    assert brokers is not None
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": unique("reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    ids: list[int] = []
    deadline = time.monotonic() + 20
    idle = 0
    try:
        while time.monotonic() < deadline and idle < 6:
            message = consumer.poll(0.5)
            if message is None or message.error():
                idle += 1 if ids else 0
                continue
            idle = 0
            body = json.loads(message.value() or b"null")
            assert message.key() == f"{GAME}/{body['data']['player_id']}".encode()
            if body["data"]["game"] == GAME:
                ids.append(body["id"])
    finally:
        consumer.close()
    return ids


def test_every_transition_reaches_every_outlet_once_through_a_sigkill_and_an_outage(
    server: ServeProcess, admin: dict[str, str], receiver: Receiver
) -> None:
    hook = httpx.post(
        f"{server.url}/v1/admin/webhooks",
        json={"url": receiver.url, "events": ["segment.entered", "segment.left"]},
        headers=admin,
    )
    assert hook.status_code == 201, hook.text
    assert hook.json()["secret"].startswith("whsec_")
    receiver.secret = hook.json()["secret"]
    key = admin["Authorization"].removeprefix("Bearer ")
    sse = SseReader(f"{server.url}/v1/segments/changes", key)
    sse.start()
    players = [f"p{i:02d}" for i in range(16)]
    spend = {p: (150.0 if i % 2 == 0 else 10.0) for i, p in enumerate(players)}
    expected: set[tuple[str, str, str]] = set()
    try:
        # Phase A: the first half play; whales among them enter at once.
        for player in players[:8]:
            _send(server, key, _events(player, spend[player], "a", session=True))
        wait_for(lambda: len(receiver.snapshot()) >= 8, timeout=60)
        # Phase B, then SIGKILL of every process right after the 202s: nothing is lost.
        for player in players[8:]:
            _send(server, key, _events(player, spend[player], "b", session=True))
        server.kill_tree()
        server.start(timeout=180)
        restarted = time.time()
        # Phase C: the receiver fails for a while; the odd players become whales.
        receiver.failing = True
        for player in players[1::2]:
            _send(server, key, _events(player, 200.0, "c", session=False))
            spend[player] += 200.0
        wait_for(lambda: receiver.refused >= 3, timeout=60)
        receiver.failing = False
        for player in players:
            expected |= {(player, "active", "entered"), (player, "active", "left")}
            expected.add((player, "whales", "entered"))

        def delivered() -> set[tuple[str, str, str]]:
            return {
                (
                    d["body"]["data"]["player_id"],
                    d["body"]["data"]["segment"],
                    d["body"]["type"].removeprefix("segment."),
                )
                for d in receiver.snapshot()
            }

        wait_for(lambda: delivered() >= expected, timeout=WINDOW_S + 90, interval=0.5)
    finally:
        sse.stopping.set()
    got = receiver.snapshot()
    assert receiver.bad_signatures == 0
    first: dict[str, dict[str, Any]] = {}
    for delivery in got:  # at-least-once: a repeat carries the same webhook-id
        first.setdefault(delivery["id"], delivery)
    bodies = [d["body"] for d in first.values()]
    keys = [
        (b["data"]["player_id"], b["data"]["segment"], b["type"].removeprefix("segment."))
        for b in bodies
    ]
    assert sorted(keys) == sorted(expected)  # each transition exactly once per webhook-id
    for delivery in first.values():
        assert delivery["id"] == f"seg_{delivery['body']['id']}"
    for player in players:  # in order per player
        ids = [b["id"] for b in bodies if b["data"]["player_id"] == player]
        assert ids == sorted(ids), (player, ids)
    for body in bodies:
        if body["type"] == "segment.left":  # time alone made them leave
            assert body["data"]["segment"] == "active"
            assert body["data"]["features"] == {"sessions_recent": 0}
            left_at = datetime.fromisoformat(body["data"]["at"]).timestamp()
            entered = next(
                b
                for b in bodies
                if b["data"]["player_id"] == body["data"]["player_id"]
                and b["data"]["segment"] == "active"
                and b["type"] == "segment.entered"
            )
            window_end = datetime.fromisoformat(entered["data"]["at"]).timestamp() + WINDOW_S
            assert left_at >= window_end - 1.5
            if window_end > restarted + 1:  # the clock ran throughout: within 5 s
                assert left_at - window_end <= 5, body
    webhook_ids = sorted(b["id"] for b in bodies)

    # The SSE stream and the Kafka topic carry the same transitions.
    sse.join(10)
    assert sorted(set(sse.ids)) == webhook_ids
    topic = server.env["PLAYERPULSE_SEGMENTS_TOPIC"]
    assert sorted(set(_topic_ids(server, topic))) == webhook_ids

    # The profile reply, the segment's size and the lake agree.
    read = {"Authorization": admin["Authorization"]}
    for player in players:
        profile = httpx.get(f"{server.url}/v1/players/{player}", headers=read).json()
        assert profile["segments"] == ["whales"], profile
    size = httpx.get(f"{server.url}/v1/segments/whales", headers=read).json()
    assert size == {"name": "whales", "where": "spend_total >= 100.0", "players": 16}
    page = httpx.get(
        f"{server.url}/v1/segments/whales/players", params={"limit": 10}, headers=read
    ).json()
    assert [m["player_id"] for m in page["players"]] == players[:10]
    assert page["next"] == "p09"
    assert httpx.get(f"{server.url}/v1/segments/active", headers=read).json()["players"] == 0

    def lake_ids() -> list[int]:
        out = server.cli(
            "analytics",
            "query",
            "--format",
            "json",
            f"SELECT id FROM segment_changes WHERE game = '{GAME}' ORDER BY id",
        )
        return [row["id"] for row in json.loads(out.stdout)]

    wait_for(lambda: lake_ids() == webhook_ids, timeout=60, interval=1)
