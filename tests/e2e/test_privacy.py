"""Erasure over the real server (2 workers): every store, while events still arrive, and
it outlasts resends, a replay and compaction; the export equals what the service holds."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.embedded.postgres import EmbeddedPostgres
from tests import onnx_models as m
from tests.support import (
    EXTERNAL_DATABASE,
    ServeProcess,
    database_holds,
    parquet_holds,
    unique,
    wait_for,
)

pytestmark = pytest.mark.kafka  # erasure against a separate Apache Kafka too

STORES = {
    "profiles",
    "segments",
    "applied_ids",
    "failed_events",
    "broker",
    "archive_buffers",
    "lake_hot",
    "lake_cold",
    "predictions",
    "training_sets",
}


def event(event_id: str, player: str, ts: datetime, amount: Any = 1) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "player_id": player,
        "type": "purchase",
        "ts": ts.isoformat(),
        "props": {"amount": amount, "sku": f"sku-{event_id}"},
    }


class Sender(threading.Thread):
    """Sends events of two players in a loop until stopped; remembers what was accepted."""

    def __init__(self, client: httpx.Client, victim: str, other: str) -> None:
        super().__init__(daemon=True)
        self.client, self.victim, self.other = client, victim, other
        self.stop = threading.Event()
        self.batches = 0
        self.other_events: list[dict[str, Any]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            now = datetime.now(UTC)
            batch = [event(f"live-{self.batches}-{i}", self.victim, now) for i in range(20)]
            mine = [event(f"live-{self.batches}-{i}", self.other, now) for i in range(5)]
            reply = self.client.post("/v1/events", json={"events": batch + mine})
            assert reply.status_code == 202, reply.text
            self.other_events.extend(mine)
            self.batches += 1


def dropped_total(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    found = re.search(r"^playerpulse_erased_events_dropped_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def database_url(server: ServeProcess) -> str:
    if EXTERNAL_DATABASE:
        return EXTERNAL_DATABASE
    url = EmbeddedPostgres(Path(server.env["PLAYERPULSE_DATA_DIR"])).running_url()
    assert url is not None
    return url


def lake_holds(roots: list[Path], needle: str) -> dict[str, list[str]]:
    """Every file under the lake roots holding ``needle`` (any file: raw bytes; Parquet:
    read back and its statistics too)."""
    found = {}
    for root in roots:
        for path in root.rglob("*"):
            if not path.is_file():
                continue
            where = (
                parquet_holds(path, needle)
                if path.suffix == ".parquet"
                else (["raw bytes"] if needle.encode() in path.read_bytes() else [])
            )
            if where:
                found[str(path)] = where
    return found


def lake_count(server: ServeProcess, game: str, player: str) -> int:
    sql = (
        "SELECT count(*) AS n FROM distinct_events "
        f"WHERE game = '{game}' AND player_id = '{player}'"
    )
    out = server.cli("analytics", "query", sql, "--format", "json").stdout
    return int(json.loads(out)[0]["n"])


@dataclass
class Scene:
    """One game on a running server: keys, the player to erase, and another one."""

    server: ServeProcess
    cold: Path
    game: str = field(default_factory=lambda: unique("game"))
    victim: str = field(default_factory=lambda: unique("victim"))
    other: str = field(default_factory=lambda: unique("other"))
    old: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(days=40))
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    other_sent: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        roles = ("ingest", "read", "admin")
        self.ingest, self.read, self.admin = (self.server.key(self.game, r) for r in roles)

    @property
    def lake(self) -> Path:
        return Path(self.server.env["PLAYERPULSE_DATA_DIR"]) / "lake"

    def send(self, events: list[dict[str, Any]]) -> None:
        with self.server.client(self.ingest) as client:
            reply = client.post("/v1/events", json={"events": events})
        assert reply.json()["accepted"] == len(events), reply.text
        self.other_sent += [e for e in events if e["player_id"] == self.other]

    def holds_nothing(self) -> None:
        assert database_holds(database_url(self.server), self.victim) == []
        assert lake_holds([self.lake, self.cold], self.victim) == {}


def seed(scene: Scene) -> None:
    """Both players' history, hot and cold; a poison event; a logged prediction."""
    server, victim = scene.server, scene.victim
    history = [
        event(f"{label}{i}", p, t)
        for p in (victim, scene.other)
        for label, t in (("old", scene.old), ("now", scene.now))
        for i in range(10)
    ]
    scene.send([*history, event("poison", victim, scene.now, amount="not a number")])
    with server.client(scene.read) as client:
        wait_for(lambda: client.get(f"/v1/players/{victim}").json().get("events_applied") == 20)
    wait_for(lambda: lake_count(server, scene.game, victim) == 21, timeout=60, interval=1)
    server.cli("lake", "compact")  # the old day moves to the cold root
    assert lake_holds([scene.cold], victim)
    with server.client(scene.admin) as client:
        reply = client.post(
            "/v1/admin/models/spend",
            files={"model": ("m.onnx", m.sklearn_regressor()), "manifest": (None, m.MANIFEST)},
        )
        assert reply.status_code == 201, reply.text
    with server.client(scene.read) as client:
        assert client.get(f"/v1/players/{victim}/predictions/spend").status_code == 200
    wait_for(lambda: lake_holds([scene.lake / "predictions"], victim), timeout=60, interval=0.5)


def erase_while_sending(scene: Scene) -> str:
    """Erase while the player's events keep arriving (some in the broker, some buffered)."""
    server, victim = scene.server, scene.victim
    with server.client(scene.ingest) as sending, server.client(scene.admin) as client:
        sender = Sender(sending, victim, scene.other)
        sender.start()
        wait_for(lambda: sender.batches >= 5)
        started = client.delete(f"/v1/admin/players/{victim}")
        assert started.status_code == 202, started.text
        body = started.json()
        assert body == {"erasure_id": body["erasure_id"], "player_id": victim, "status": "pending"}
        assert client.delete(f"/v1/admin/players/{victim}").json() == body
        wait_for(lambda: sender.batches >= 25)
        sender.stop.set()
        sender.join(30)
    scene.other_sent += sender.other_events
    return str(body["erasure_id"])


def refusals(scene: Scene, erasure: str) -> None:
    """A read key cannot erase; another game sees no erasure; an unknown id is named."""
    with scene.server.client(scene.read) as reader:
        assert reader.delete(f"/v1/admin/players/{scene.victim}").status_code == 403
    with scene.server.client(scene.server.key(unique("game"), "admin")) as outsider:
        assert outsider.get(f"/v1/admin/erasures/{erasure}").status_code == 404
    with scene.server.client(scene.admin) as client:
        unknown = client.get("/v1/admin/erasures/nope")
    assert unknown.status_code == 404
    assert "nope" in unknown.json()["error"]


def receipt_when_done(scene: Scene, erasure: str) -> dict[str, Any]:
    with scene.server.client(scene.admin) as client:
        receipt: dict[str, Any] = wait_for(
            lambda: (
                (r := client.get(f"/v1/admin/erasures/{erasure}").json())["status"] == "done" and r
            ),
            timeout=180,
            interval=0.5,
        )
    assert set(receipt["stores"]) == STORES
    assert all(store["status"] == "done" for store in receipt["stores"].values())
    assert receipt["player_id"] is None  # the ledger no longer holds the id
    assert receipt["completed_at"] >= receipt["requested_at"]
    with scene.server.client(scene.read) as client:
        assert dropped_total(client) > 0  # sent during the erasure: dropped, not folded
    stores = receipt["stores"]
    assert stores["lake_cold"]["rows_removed"] == 10
    assert stores["predictions"]["rows_removed"] >= 1
    assert stores["failed_events"]["rows_removed"] == 1
    assert stores["profiles"]["rows_removed"] == 1
    return receipt


def later_events_dropped(scene: Scene, marker_id: str, resent: list[dict[str, Any]]) -> None:
    """Events for the erased player are dropped and counted; the other player's fold on."""
    server = scene.server
    with server.client(scene.read) as client:
        assert client.get(f"/v1/players/{scene.victim}").status_code == 404
        before = dropped_total(client)
    scene.send([*resent, event(marker_id, scene.other, datetime.now(UTC))])
    with server.client(scene.read) as client:
        expected = len(scene.other_sent)
        wait_for(
            lambda: (
                client.get(f"/v1/players/{scene.other}").json().get("events_applied") == expected
            )
        )
        wait_for(lambda: dropped_total(client) >= before + len(resent))
        assert client.get(f"/v1/players/{scene.victim}").status_code == 404
    wait_for(
        lambda: lake_count(server, scene.game, scene.other) == expected, timeout=60, interval=1
    )


def export_matches(scene: Scene) -> None:
    """The export holds exactly what the service holds: every event sent, the profile."""
    with scene.server.client(scene.admin) as client:
        exported = client.get(f"/v1/admin/players/{scene.other}/export").json()
        nothing = client.get(f"/v1/admin/players/{scene.victim}/export").json()
    assert exported["player_id"] == scene.other
    assert exported["profile"]["events_applied"] == len(scene.other_sent)
    assert sorted((e["event_id"], e["props"]) for e in exported["events"]) == sorted(
        (e["event_id"], e["props"]) for e in scene.other_sent
    )
    assert exported["failed_events"] == []
    assert (nothing["profile"], nothing["events"], nothing["predictions"]) == (None, [], [])
    assert nothing["failed_events"] == []


def test_erasure_reaches_every_store_and_outlasts_replay_and_compaction(tmp_path: Path) -> None:
    cold = tmp_path / "cold"
    env = {
        "PLAYERPULSE_WORKERS": "2",
        "PLAYERPULSE_LAKE_FLUSH_S": "3",  # events wait in the archive buffers meanwhile
        "PLAYERPULSE_LAKE_COMPACT_INTERVAL_S": "0",
        "PLAYERPULSE_LAKE_COLD_URL": str(cold),
    }
    scene = Scene(ServeProcess(tmp_path, env).start(), cold)
    seed(scene)
    erasure = erase_while_sending(scene)
    refusals(scene, erasure)
    receipt_when_done(scene, erasure)
    victim, now = scene.victim, scene.now
    resent = [event(f"now{i}", victim, now) for i in range(5)]
    later_events_dropped(
        scene, "marker", resent + [event(f"after-{i}", victim, now) for i in range(5)]
    )
    export_matches(scene)
    scene.holds_nothing()
    first = scene.server
    assert first.stop() == 0

    # Neither a replay nor a compaction brings anything back, nor does a restart.
    first.cli("replay")
    first.cli("lake", "compact", "--cold-after-days", "0")
    assert lake_holds([scene.lake, cold], victim) == {}
    scene.server = ServeProcess(tmp_path, env)
    scene.server.env = {**first.env}
    scene.server.start()
    try:
        later_events_dropped(
            scene, "marker-2", [event("now1", victim, now), event("x", victim, now)]
        )
        scene.holds_nothing()
        command_line(scene.server, scene.game, victim, scene.other, erasure, scene.other_sent)
        retention(scene.server, scene.game, scene.other, scene.old, len(scene.other_sent))
        reuse(scene)
    finally:
        assert scene.server.stop() == 0, scene.server.log()


def reuse(scene: Scene) -> None:
    """Only an explicit call lets the id count again."""
    with scene.server.client(scene.admin) as client:
        lifted = client.post(f"/v1/admin/players/{scene.victim}/reuse")
        assert lifted.json() == {"player_id": scene.victim, "erasures_lifted": 1}
        assert client.post(f"/v1/admin/players/{scene.victim}/reuse").status_code == 404
    scene.send([event("reborn", scene.victim, datetime.now(UTC))])
    with scene.server.client(scene.read) as client:
        wait_for(
            lambda: client.get(f"/v1/players/{scene.victim}").json().get("events_applied") == 1
        )


def command_line(
    server: ServeProcess,
    game: str,
    victim: str,
    other: str,
    erasure: str,
    sent: list[dict[str, Any]],
) -> None:
    """`players erase` returns the erasure in force; `players export` the same document."""
    receipt = json.loads(server.cli("players", "erase", "--game", game, victim).stdout)
    assert (receipt["erasure_id"], receipt["status"]) == (erasure, "done")
    document = json.loads(server.cli("players", "export", "--game", game, other).stdout)
    assert sorted((e["event_id"], e["props"]) for e in document["events"]) == sorted(
        (e["event_id"], e["props"]) for e in sent
    )
    assert document["profile"]["events_applied"] == len(sent)


def retention(server: ServeProcess, game: str, other: str, old: datetime, held: int) -> None:
    """`lake retention` reports the old partition, leaves it on a dry run, then drops it."""
    args = ("lake", "retention", "--days", "30", "--format", "json")
    planned = json.loads(server.cli(*args, "--dry-run").stdout)
    mine = [p for p in planned["partitions"] if p["game"] == game]
    assert [(p["kind"], p["date"]) for p in mine] == [("events", old.date().isoformat())]
    assert lake_count(server, game, other) == held
    done = json.loads(server.cli(*args).stdout)
    assert done["dry_run"] is False
    assert [p for p in done["partitions"] if p["game"] == game] == mine
    assert lake_count(server, game, other) == held - 10
