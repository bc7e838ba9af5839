"""Traffic for end-to-end tests: batches sent as an SDK would, and profiles checked.

The sender retries every batch until it is answered 202, against whichever of the
given servers is up, so a test can kill, restart, add and remove servers under it and
still know exactly which events the service accepted: all of them, in the end.
"""

from __future__ import annotations

import random
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from tests.reference import expected_profiles
from tests.support import ROOT, ServeProcess

EXAMPLES = ROOT / "examples"


def purchase(player: str, amount: float = 1.0) -> dict[str, Any]:
    """A purchase by ``player`` now, with a new event id."""
    return {
        "event_id": uuid.uuid4().hex,
        "player_id": player,
        "type": "purchase",
        "ts": datetime.now(UTC).isoformat(),
        "props": {"amount": amount},
    }


def upload_example_model(admin: httpx.Client, name: str = "offers") -> None:
    """Upload the README's example model (examples/) as ``name``, with an admin client."""
    uploaded = admin.post(
        f"/v1/admin/models/{name}",
        files={
            "model": ("m.onnx", (EXAMPLES / "offer_model.onnx").read_bytes()),
            "manifest": (None, (EXAMPLES / "offer_model.manifest.json").read_text()),
        },
    )
    assert uploaded.status_code == 201, uploaded.text


def batches(events: list[dict[str, Any]], size: int, seed: int) -> list[list[dict[str, Any]]]:
    """Shuffled, with a third of the events sent again in other requests."""
    rng = random.Random(seed)
    sent = events + rng.sample(events, len(events) // 3)
    rng.shuffle(sent)
    return [sent[i : i + size] for i in range(0, len(sent), size)]


class Sender:
    """Threads posting batches, each retried until a 202, to any of ``urls``.

    ``urls`` may change while it runs (``set_urls``): a load balancer's view of the
    servers that are up. ``accepted`` counts batches answered 202 so far.
    """

    def __init__(
        self,
        urls: list[str],
        key: str,
        requests: list[list[dict[str, Any]]],
        threads: int = 4,
        seed: int = 0,
    ) -> None:
        self._urls = list(urls)
        self._key = key
        self._pending = list(reversed(requests))
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.accepted = 0
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def set_urls(self, urls: list[str]) -> None:
        """Send to these servers from now on."""
        with self._lock:
            self._urls = list(urls)

    def start(self) -> Sender:
        """Start sending in the background."""
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout: float) -> None:
        """Wait until every batch was accepted; fail if that takes over ``timeout``."""
        for thread in self._threads:
            thread.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "the sender did not finish"
        assert not self.errors, self.errors[:3]

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self._key}"}
        with httpx.Client(headers=headers, timeout=15) as client:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    batch = self._pending.pop()
                self._send(client, batch)

    def _send(self, client: httpx.Client, batch: list[dict[str, Any]]) -> None:
        for _attempt in range(1200):
            with self._lock:
                url = self._rng.choice(self._urls) if self._urls else None
            if url is not None:
                try:
                    response = client.post(f"{url}/v1/events", json={"events": batch})
                except httpx.HTTPError:
                    response = None
                if response is not None and response.status_code == 202:
                    if response.json()["accepted"] != len(batch):
                        self.errors.append(f"partly accepted: {response.text}")
                    with self._lock:
                        self.accepted += 1
                    return
            threading.Event().wait(0.1)  # a retry pause, as an SDK's back-off
        self.errors.append("a batch was never accepted")


def post_all(url: str, key: str, requests: list[list[dict[str, Any]]], workers: int = 4) -> None:
    """Send every batch to ``url``, retrying each until it is answered 202."""
    sender = Sender([url], key, requests, threads=workers).start()
    sender.join(timeout=600)


def profiles_match(server: ServeProcess, key: str, events: list[dict[str, Any]]) -> Any:
    """True once every player's profile equals the reference (each event counted once)."""
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


def lake_counts(server: ServeProcess, game: str) -> tuple[int, int]:
    """(rows, distinct event ids) of ``game`` in the lake's ``events`` view."""
    import json

    out = server.cli(
        "analytics",
        "query",
        f"SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM events WHERE game = '{game}'",
        "--format",
        "json",
    ).stdout
    row = json.loads(out)[0]
    return int(row["n"]), int(row["d"])
