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


def _settled(receiver: Receiver, players: list[str], replayed: float) -> bool:
    """Every player entered "whales", left "active" as often as they entered it, and the
    four who played again left after that."""
    seen: dict[str, list[dict[str, Any]]] = {p: [] for p in players}
    ids: set[str] = set()
    for delivery in receiver.snapshot():
        if delivery["id"] not in ids:
            ids.add(delivery["id"])
            seen[delivery["body"]["data"]["player_id"]].append(delivery["body"])
    for index, player in enumerate(players):
        kinds = [(b["data"]["segment"], b["type"]) for b in seen[player]]
        if ("whales", "segment.entered") not in kinds:
            return False
        if kinds.count(("active", "segment.entered")) != kinds.count(("active", "segment.left")):
            return False
        if index < 4 and not any(
            b["type"] == "segment.left"
            and datetime.fromisoformat(b["data"]["at"]).timestamp() > replayed + WINDOW_S - 2
            for b in seen[player]
        ):
            return False
    return True


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
    sessions: dict[str, float] = {}
    """When each player's first session was sent (its event time, within moments)."""
    try:
        # Phase A: the first half play; whales among them enter at once.
        for player in players[:8]:
            sessions[player] = time.time()
            _send(server, key, _events(player, spend[player], "a", session=True))
        wait_for(lambda: len(receiver.snapshot()) >= 8, timeout=60)
        # Phase B, then SIGKILL of every process right after the 202s: nothing is lost.
        for player in players[8:]:
            sessions[player] = time.time()
            _send(server, key, _events(player, spend[player], "b", session=True))
        server.kill_tree()
        server.start(timeout=180)
        # Phase C: the receiver fails for a while; the odd players become whales, and
        # four players play again (they leave "active" by time while the server runs).
        receiver.failing = True
        for player in players[1::2]:
            _send(server, key, _events(player, 200.0, "c", session=False))
            spend[player] += 200.0
        replayed = time.time()
        for player in players[:4]:
            _send(server, key, _events(player, 0.0, "d", session=True))
        wait_for(lambda: receiver.refused >= 3, timeout=60)
        receiver.failing = False
        wait_for(lambda: _settled(receiver, players, replayed), timeout=WINDOW_S + 60)
    except BaseException:
        sse.stopping.set()
        raise
    got = receiver.snapshot()
    assert receiver.bad_signatures == 0
    first: dict[str, dict[str, Any]] = {}
    for delivery in got:  # at-least-once: a repeat carries the same webhook-id
        first.setdefault(delivery["id"], delivery)
    for delivery in first.values():
        assert delivery["id"] == f"seg_{delivery['body']['id']}"
    bodies = [d["body"] for d in first.values()]
    for player in players:
        mine = [b for b in bodies if b["data"]["player_id"] == player]
        assert [b["id"] for b in mine] == sorted(b["id"] for b in mine)  # in order per player
        # Each transition once: whales entered once; active entered and left in turn.
        assert [b["type"] for b in mine if b["data"]["segment"] == "whales"] == [
            "segment.entered"
        ], player
        active = [b for b in mine if b["data"]["segment"] == "active"]
        kinds = [b["type"].removeprefix("segment.") for b in active]
        assert kinds == ["entered", "left"] * (len(kinds) // 2), (player, kinds)
        for entered, left in zip(active[::2], active[1::2], strict=True):
            # Time alone made them leave: no event came, the window moved.
            assert left["data"]["features"] == {"sessions_recent": 0}
            assert entered["data"]["features"] == {"sessions_recent": 1}
            left_at = datetime.fromisoformat(left["data"]["at"]).timestamp()
            entered_at = datetime.fromisoformat(entered["data"]["at"]).timestamp()
            # Entered when the event was folded (late, after the restart, for some), left
            # when the window of its session ended: after entering, never before the window.
            assert left_at > entered_at
            assert left_at >= sessions[player] + WINDOW_S - 1.5
    for player in players[:4]:  # played after the restart: left within 5 s of the window
        last = [b for b in bodies if b["data"]["player_id"] == player][-1]
        assert last["type"] == "segment.left"
        window_end = replayed + WINDOW_S
        left_at = datetime.fromisoformat(last["data"]["at"]).timestamp()
        assert window_end - 1.5 <= left_at <= window_end + 5 + 1, (player, left_at - window_end)
    webhook_ids = sorted(b["id"] for b in bodies)

    # The SSE stream and the Kafka topic carry the same transitions.
    try:
        wait_for(lambda: set(sse.ids) >= set(webhook_ids), timeout=30)
    finally:
        sse.stopping.set()
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
