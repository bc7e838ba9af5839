"""Backups that restore, against real servers: back up while events arrive, send more,
restore into a new data dir, and find profiles, keys, models and lake as they were at the
backup plus the events the broker still held, each counted once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests import onnx_models as m
from tests.support import EXTERNAL_BROKERS, ServeProcess, unique, wait_for

pytestmark = pytest.mark.e2e

PLAYERS = [f"p{i}" for i in range(20)]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """A broker outside both servers: it keeps the events across the restore."""
    from app.embedded.kafka import EmbeddedKafka

    if EXTERNAL_BROKERS:
        yield EXTERNAL_BROKERS
        return
    kafka = EmbeddedKafka(tmp_path / "kafka")
    try:
        yield kafka.start()
    finally:
        kafka.stop()


def send(client: httpx.Client, tag: str, count: int) -> int:
    """``count`` events per player, ids tagged; returns how many were accepted."""
    now = datetime.now(UTC).isoformat()
    events = [
        {"event_id": f"{tag}-{p}-{i}", "player_id": p, "type": "session_start", "ts": now}
        for p in PLAYERS
        for i in range(count)
    ]
    reply = client.post("/v1/events", json={"events": events})
    assert reply.status_code == 202, reply.text
    accepted: int = reply.json()["accepted"]
    return accepted


def applied(client: httpx.Client) -> dict[str, int]:
    out = {}
    for player in PLAYERS:
        got = client.get(f"/v1/players/{player}")
        out[player] = got.json()["events_applied"] if got.status_code == 200 else 0
    return out


def test_backup_during_ingest_then_restore_into_a_new_data_dir(tmp_path: Path, broker: str) -> None:
    shared = {
        "PLAYERPULSE_KAFKA_BROKERS": broker,
        "PLAYERPULSE_EVENTS_TOPIC": unique("events"),
        "PLAYERPULSE_CONSUMER_GROUP": unique("group"),
        "PLAYERPULSE_WORKERS": "1",
    }
    first = ServeProcess(tmp_path / "first", shared).start()
    game = "backup-game"
    try:
        ingest_key, read_key = first.key(game, "ingest"), first.key(game, "read")
        admin = first.key(game, "admin")
        with first.client(admin) as api:
            upload = api.post(
                "/v1/admin/models/churn",
                files={"model": ("m.onnx", m.sklearn_classifier()), "manifest": (None, m.MANIFEST)},
            )
            assert upload.status_code == 201, upload.text
        lake_count = """SELECT count(*) AS n FROM events WHERE game = 'backup-game'"""

        def lake_has(server: ServeProcess, n: int) -> bool:
            out = server.cli("analytics", "query", lake_count, "--format", "json").stdout
            return bool(json.loads(out)[0]["n"] == n)

        sent = 0
        with first.client(ingest_key) as ingest, first.client(read_key) as read:
            sent += send(ingest, "before", 5)
            wait_for(lambda: sum(applied(read).values()) == sent, timeout=60)
            # Folded and archived, so acknowledged: the group has offsets to record.
            wait_for(lambda: lake_has(first, sent), timeout=60)

            stop = threading.Event()
            during = [0]

            def keep_sending() -> None:
                with first.client(ingest_key) as c:
                    n = 0
                    while not stop.is_set():
                        during[0] += send(c, f"during{n}", 1)
                        n += 1

            sender = threading.Thread(target=keep_sending)
            sender.start()
            try:
                made = first.cli("backup", "create", str(tmp_path / "backup"))
            finally:
                stop.set()
                sender.join()
            assert made.stdout.startswith(f"backup in {tmp_path / 'backup'}:"), made.stderr
            assert "committed no offset" not in made.stderr, made.stderr
            sent += during[0]
            sent += send(ingest, "after", 3)  # accepted after the backup, held by the broker
            wait_for(lambda: sum(applied(read).values()) == sent, timeout=60)
            expected = applied(read)
        wait_for(lambda: lake_has(first, sent), timeout=60)
    finally:
        assert first.stop() == 0, first.log()

    verified = first.cli("backup", "verify", str(tmp_path / "backup"))
    assert "verified" in verified.stdout

    (tmp_path / "second").mkdir()
    second = ServeProcess(tmp_path / "second", shared)
    restored = second.cli("backup", "restore", str(tmp_path / "backup"))
    assert "restored" in restored.stdout
    assert "rewound to the backup's offsets" in restored.stdout
    second.start()
    try:
        with second.client(read_key) as read:  # the key came back with the database
            wait_for(lambda: applied(read) == expected, timeout=60)
            for player, count in expected.items():  # each event once, not twice
                assert read.get(f"/v1/players/{player}").json()["events_applied"] == count
        with second.client(admin) as api:
            assert api.get("/v1/admin/models/churn").json()["name"] == "churn"

        wait_for(lambda: lake_has(second, sent), timeout=60)
        actions = [
            r["action"] for r in json.loads(second.cli("audit", "list", "--format", "json").stdout)
        ]
        assert "backup.restore" in actions
    finally:
        assert second.stop() == 0, second.log()

    # A damaged file is caught.
    lake_file = next((tmp_path / "backup" / "lake").rglob("*.parquet"))
    lake_file.write_bytes(lake_file.read_bytes()[:-10] + b"0123456789")
    damaged = first.cli("backup", "verify", str(tmp_path / "backup"), check=False)
    assert damaged.returncode == 1
    assert "checksum mismatch" in damaged.stderr
    assert lake_file.name in damaged.stderr
