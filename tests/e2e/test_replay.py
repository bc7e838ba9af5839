"""New features are filled for existing players from the lake; poison is kept and shown."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.support import ROOT, ServeProcess, unique, wait_for

BASE = (ROOT / "app" / "features.example.toml").read_text()
EXTRA = """
[features.levels_seen]
event = "level_complete"
agg = "distinct_count"
field = "level"

[features.spend_total]
event = ["purchase", "refund"]
agg = "sum"
field = "amount"

[features.levels_top]
event = "level_complete"
agg = "top_k"
field = "level"
k = 2

[features.levels_recent]
event = "level_complete"
agg = "last_k"
field = "level"
k = 2

[features.level_median]
event = "level_complete"
agg = "percentile"
field = "level"
q = 0.5

[features.levels_approx]
event = "level_complete"
agg = "approx_distinct"
field = "level"
window = "7d"
"""


def test_added_and_changed_features_are_rebuilt_from_the_lake(tmp_path: Path) -> None:
    features = tmp_path / "features.toml"
    features.write_text(BASE)
    server = ServeProcess(tmp_path, {"PLAYERPULSE_FEATURES": str(features)}).start()
    game = unique("game")
    ingest, read = server.key(game, "ingest"), server.key(game, "read")
    ts = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    events = [
        {
            "event_id": f"l{i}",
            "player_id": "p1",
            "type": "level_complete",
            "ts": ts,
            "props": {"level": i % 3},
        }
        for i in range(7)
    ] + [
        {
            "event_id": "buy",
            "player_id": "p1",
            "type": "purchase",
            "ts": ts,
            "props": {"amount": 10},
        },
        {
            "event_id": "back",
            "player_id": "p1",
            "type": "refund",
            "ts": ts,
            "props": {"amount": -4},
        },
        {
            "event_id": "other",
            "player_id": "p2",
            "type": "purchase",
            "ts": ts,
            "props": {"amount": 1},
        },
    ]
    with server.client(ingest) as client:
        assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 10
    with server.client(read) as client:
        wait_for(lambda: client.get("/v1/players/p1").json().get("events_applied") == 9)
        before = client.get("/v1/players/p1").json()["features"]
    assert before["spend_total"] == 10
    assert "levels_seen" not in before
    assert server.stop() == 0  # a clean stop drains and flushes the lake

    features.write_text(
        BASE.replace(
            '[features.spend_total]\nevent = "purchase"\nagg = "sum"\nfield = "amount"\n', ""
        )
        + EXTRA
    )
    again = ServeProcess(tmp_path, {"PLAYERPULSE_FEATURES": str(features)})
    again.env = {**server.env}
    again.start()
    try:
        assert "rebuilding from the lake" in again.log()
        with again.client(read) as client:
            p1 = client.get("/v1/players/p1").json()
            p2 = client.get("/v1/players/p2").json()
        assert p1["features"]["levels_seen"] == 3
        # Sketch aggregates rebuilt from the lake too: levels 0, 1, 2, 0, 1, 2, 0 (l0..l6).
        assert p1["features"]["levels_top"] == [[0, 3], [1, 2]]
        assert p1["features"]["levels_recent"] == [0, 2]  # one event time: l6, then l5
        assert p1["features"]["level_median"] == 1.0
        assert p1["features"]["levels_approx"] == 3
        assert p1["features"]["spend_total"] == 6  # the refund now counts
        assert p1["features"]["last_level"] == before["last_level"]
        assert p1["events_applied"] == 9  # the refund matched no feature before, yet applied
        assert p2["features"]["spend_total"] == 1
        # Resending after the rebuild is still a no-op.
        with again.client(ingest) as client:
            client.post("/v1/events", json={"events": events})
            client.post("/v1/events", json={"events": [{**events[0], "event_id": "l-new"}]})
        with again.client(read) as client:
            wait_for(lambda: client.get("/v1/players/p1").json()["events_applied"] == 10)
            assert client.get("/v1/players/p1").json()["features"]["spend_total"] == 6
        refused = again.cli("replay", check=False)
        assert refused.returncode == 1
        assert "stop every copy" in refused.stderr
    finally:
        assert again.stop() == 0

    replayed = again.cli("replay")
    assert "rebuilt 2 profiles from 11 events" in replayed.stdout


def test_poison_events_are_listed_for_admins_and_operators(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path).start()
    try:
        game = unique("game")
        ingest, admin = server.key(game, "ingest"), server.key(game, "admin")
        ts = datetime.now(UTC).isoformat()
        batch = [
            {
                "event_id": "p-1",
                "player_id": "x",
                "type": "purchase",
                "ts": ts,
                "props": {"amount": "lots"},
            },
            {
                "event_id": "p-2",
                "player_id": "x",
                "type": "purchase",
                "ts": ts,
                "props": {"amount": 3},
            },
        ]
        with server.client(ingest) as client:
            client.post("/v1/events", json={"events": batch})
        with server.client(admin) as client:
            failed = wait_for(lambda: client.get("/v1/admin/failed-events").json()["failed"])
            assert client.get("/v1/players/x").json()["features"]["spend_total"] == 3
        assert [f["event_id"] for f in failed] == ["p-1"]
        assert "spend_total" in failed[0]["reason"]
        assert failed[0]["record"]["props"] == {"amount": "lots"}
        other = server.key(unique("other"), "admin")
        with server.client(other) as client:
            assert client.get("/v1/admin/failed-events").json()["failed"] == []
        listed = json.loads(server.cli("failed-events", "--format", "json").stdout)
        assert [row["event_id"] for row in listed] == ["p-1"]
    finally:
        assert server.stop() == 0
