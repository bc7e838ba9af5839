"""Erasure over the real server (2 workers): every store, while events still arrive, and
it outlasts resends, a replay and compaction; the export equals what the service holds."""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

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

STORES = {
    "profiles",
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


def test_erasure_reaches_every_store_and_outlasts_replay_and_compaction(tmp_path: Path) -> None:
    cold = tmp_path / "cold"
    env = {
        "PLAYERPULSE_WORKERS": "2",
        "PLAYERPULSE_LAKE_FLUSH_S": "3",  # events wait in the archive buffers meanwhile
        "PLAYERPULSE_LAKE_COMPACT_INTERVAL_S": "0",
        "PLAYERPULSE_LAKE_COLD_URL": str(cold),
    }
    server = ServeProcess(tmp_path, env).start()
    lake = Path(server.env["PLAYERPULSE_DATA_DIR"]) / "lake"
    game = unique("game")
    victim, other = unique("victim"), unique("other")
    ingest, read, admin = (server.key(game, role) for role in ("ingest", "read", "admin"))
    stranger = server.key(unique("game"), "admin")
    old, now = datetime.now(UTC) - timedelta(days=40), datetime.now(UTC)
    history = [
        event(f"{label}{i}", p, t)
        for p in (victim, other)
        for label, t in (("old", old), ("now", now))
        for i in range(10)
    ]
    history.append(event("poison", victim, now, amount="not a number"))
    with server.client(ingest) as client:
        assert client.post("/v1/events", json={"events": history}).json()["accepted"] == 41
    with server.client(read) as client:
        wait_for(lambda: client.get(f"/v1/players/{victim}").json().get("events_applied") == 20)
    wait_for(lambda: lake_count(server, game, victim) == 21, timeout=60, interval=1)
    server.cli("lake", "compact")  # the old day moves to the cold root
    assert lake_holds([cold], victim)

    with server.client(admin) as client:
        name = "spend"
        reply = client.post(
            f"/v1/admin/models/{name}",
            files={"model": ("m.onnx", m.sklearn_regressor()), "manifest": (None, m.MANIFEST)},
        )
        assert reply.status_code == 201, reply.text
    with server.client(read) as client:
        assert client.get(f"/v1/players/{victim}/predictions/{name}").status_code == 200
    wait_for(lambda: lake_holds([lake / "predictions"], victim), timeout=60, interval=0.5)

    # Erase while the player's events keep arriving (some in the broker, some buffered).
    with server.client(ingest) as sending, server.client(admin) as client:
        sender = Sender(sending, victim, other)
        sender.start()
        wait_for(lambda: sender.batches >= 5)
        started = client.delete(f"/v1/admin/players/{victim}")
        assert started.status_code == 202, started.text
        body = started.json()
        assert body == {"erasure_id": body["erasure_id"], "player_id": victim, "status": "pending"}
        again = client.delete(f"/v1/admin/players/{victim}").json()
        assert again["erasure_id"] == body["erasure_id"]
        wait_for(lambda: sender.batches >= 25)
        sender.stop.set()
        sender.join(30)
        erasure = body["erasure_id"]

        with server.client(read) as reader:
            assert reader.delete(f"/v1/admin/players/{victim}").status_code == 403
        with server.client(stranger) as outsider:
            assert outsider.get(f"/v1/admin/erasures/{erasure}").status_code == 404
        unknown = client.get("/v1/admin/erasures/nope")
        assert unknown.status_code == 404
        assert "nope" in unknown.json()["error"]

        receipt = wait_for(
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
    assert receipt["stores"]["lake_cold"]["rows_removed"] == 10
    assert receipt["stores"]["predictions"]["rows_removed"] >= 1
    assert receipt["stores"]["failed_events"]["rows_removed"] == 1
    assert receipt["stores"]["profiles"]["rows_removed"] == 1

    with server.client(read) as client:
        assert client.get(f"/v1/players/{victim}").status_code == 404
        before = dropped_total(client)
    # Later events (a resend of old ones, new ones) are dropped and counted.
    with server.client(ingest) as client:
        late = [event(f"now{i}", victim, now) for i in range(5)] + [
            event(f"after-{i}", victim, datetime.now(UTC)) for i in range(5)
        ]
        marker = event("marker", other, datetime.now(UTC))
        assert client.post("/v1/events", json={"events": [*late, marker]}).json()["accepted"] == 11
    other_sent = [e for e in history if e["player_id"] == other] + sender.other_events + [marker]
    with server.client(read) as client:
        wait_for(
            lambda: (
                client.get(f"/v1/players/{other}").json().get("events_applied") == len(other_sent)
            )
        )
        wait_for(lambda: dropped_total(client) >= before + 10)
        assert client.get(f"/v1/players/{victim}").status_code == 404
    wait_for(lambda: lake_count(server, game, other) == len(other_sent), timeout=60, interval=1)

    # The export holds exactly what the service holds.
    with server.client(admin) as client:
        exported = client.get(f"/v1/admin/players/{other}/export").json()
        nothing = client.get(f"/v1/admin/players/{victim}/export").json()
    assert exported["player_id"] == other
    assert exported["profile"]["events_applied"] == len(other_sent)
    assert sorted((e["event_id"], e["props"]) for e in exported["events"]) == sorted(
        (e["event_id"], e["props"]) for e in other_sent
    )
    assert exported["failed_events"] == []
    assert (nothing["profile"], nothing["events"], nothing["predictions"]) == (None, [], [])
    assert nothing["failed_events"] == []

    assert database_holds(database_url(server), victim) == []
    assert lake_holds([lake, cold], victim) == {}
    assert server.stop() == 0

    # Neither a replay nor a compaction brings anything back.
    server.cli("replay")
    server.cli("lake", "compact", "--cold-after-days", "0")
    assert lake_holds([lake, cold], victim) == {}
    again = ServeProcess(tmp_path, env)
    again.env = {**server.env}
    again.start()
    try:
        with again.client(ingest) as client:
            marker = event("marker-2", other, now)
            resend = [event("now1", victim, now), event("after-x", victim, now), marker]
            assert client.post("/v1/events", json={"events": resend}).json()["accepted"] == 3
        other_sent.append(marker)
        with again.client(read) as client:
            wait_for(lambda: dropped_total(client) >= 2)
            assert client.get(f"/v1/players/{victim}").status_code == 404
            assert client.get(f"/v1/players/{other}").json()["events_applied"] == len(other_sent)
        wait_for(lambda: lake_count(again, game, other) == len(other_sent), timeout=60, interval=1)
        assert lake_holds([lake, cold], victim) == {}
        assert database_holds(database_url(again), victim) == []
        command_line(again, game, victim, other, erasure, other_sent)
        retention(again, game, other, old, len(other_sent))

        # Only an explicit call lets the id count again.
        with again.client(admin) as client:
            reuse = client.post(f"/v1/admin/players/{victim}/reuse")
            assert reuse.json() == {"player_id": victim, "erasures_lifted": 1}
            assert client.post(f"/v1/admin/players/{victim}/reuse").status_code == 404
        with again.client(ingest) as client:
            reborn = {"events": [event("reborn", victim, datetime.now(UTC))]}
            assert client.post("/v1/events", json=reborn).json()["accepted"] == 1
        with again.client(read) as client:
            wait_for(lambda: client.get(f"/v1/players/{victim}").json().get("events_applied") == 1)
    finally:
        assert again.stop() == 0, again.log()


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
