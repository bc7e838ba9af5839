"""Ingest at the edge over the real server: SDKs, compression, limits, clock skew."""

from __future__ import annotations

import gzip
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard

from tests.support import ServeProcess, unique, wait_for


def event(event_id: str, player: str, kind: str = "purchase", **props: Any) -> dict[str, Any]:
    ts = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    return {"event_id": event_id, "player_id": player, "type": kind, "ts": ts, "props": props}


@pytest.fixture(scope="module")
def keys(server: ServeProcess) -> dict[str, str]:
    game = unique("game")
    return {role: server.key(game, role) for role in ("ingest", "read")}


def profile(server: ServeProcess, key: str, player: str, applied: int) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        with server.client(key) as client:
            response = client.get(f"/v1/players/{player}")
        if response.status_code == 200 and response.json()["events_applied"] >= applied:
            return dict(response.json())
        return None

    return dict(wait_for(ready, timeout=30))


def test_segment_sdk_delivers_events_into_profiles(
    server: ServeProcess, keys: dict[str, str]
) -> None:
    import segment.analytics as segment

    errors: list[Any] = []
    client = segment.Client(
        write_key=keys["ingest"],
        host=server.url,
        gzip=True,
        sync_mode=True,
        on_error=lambda error, batch: errors.append(error),
    )
    client.identify("seg-player", {"plan": "gold"})
    client.track("seg-player", "purchase", {"amount": 7})
    client.track("seg-player", "session_start")
    client.flush()
    assert errors == []
    body = profile(server, keys["read"], "seg-player", 3)
    assert body["features"]["spend_total"] == 7
    assert body["features"]["sessions_7d"] == 1


def test_rudderstack_sdk_delivers_events_into_profiles(
    server: ServeProcess, keys: dict[str, str]
) -> None:
    from rudderstack.analytics.client import Client

    errors: list[Any] = []
    client = Client(
        write_key=keys["ingest"],
        host=server.url,
        sync_mode=True,
        on_error=lambda error, batch: errors.append(error),
    )
    client.track("rudder-player", "purchase", {"amount": 3.5})
    client.track("rudder-player", "level_complete", {"level": 4})
    client.flush()
    assert errors == []
    body = profile(server, keys["read"], "rudder-player", 2)
    assert body["features"]["spend_total"] == 3.5
    assert body["features"]["last_level"] == 4


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_compressed_bodies_on_both_ingest_routes(
    server: ServeProcess, keys: dict[str, str], encoding: str
) -> None:
    compress = gzip.compress if encoding == "gzip" else zstandard.ZstdCompressor().compress
    player = unique("zip")
    ours = json.dumps({"events": [event(f"{player}-1", player, amount=2)]}).encode()
    segment_body = json.dumps(
        {
            "batch": [
                {
                    "type": "track",
                    "event": "purchase",
                    "userId": player,
                    "messageId": f"{player}-2",
                    "properties": {"amount": 5},
                    "timestamp": datetime.now(UTC).isoformat(),
                }
            ]
        }
    ).encode()
    headers = {"content-encoding": encoding, "content-type": "application/json"}
    with server.client(keys["ingest"]) as client:
        reply = client.post("/v1/events", content=compress(ours), headers=headers).json()
        assert reply == {"accepted": 1, "rejected": [], "token": reply["token"]}
        assert re.fullmatch(r"\d+\.\d+", reply["token"])  # one event: one partition
        response = client.post("/v1/batch", content=compress(segment_body), headers=headers)
        assert response.json()["accepted"] == 1
        bomb = compress(b'{"events": [' + b" " * (2 * 1024 * 1024) + b"]}")
        assert len(bomb) < 100_000
        for route in ("/v1/events", "/v1/batch"):
            inflated = client.post(route, content=bomb, headers=headers)
            assert inflated.status_code == 413, inflated.text
            assert "decompressed" in inflated.json()["error"]
        broken = client.post("/v1/events", content=b"not compressed", headers=headers)
        assert broken.status_code == 400
        assert encoding in broken.json()["error"]
        odd = client.post("/v1/events", content=ours, headers={"content-encoding": "br"})
        assert odd.status_code == 415
    assert profile(server, keys["read"], player, 2)["features"]["spend_total"] == 7


def test_limits_refuse_with_the_reason(server: ServeProcess, keys: dict[str, str]) -> None:
    with server.client(keys["ingest"]) as client:
        big = event("big-1", "limits", blob="x" * 40_000)
        small = event("small-1", "limits", amount=1)
        response = client.post("/v1/events", json={"events": [big, small]})
        assert response.status_code == 202
        assert response.json()["accepted"] == 1
        assert "bytes" in response.json()["rejected"][0]["error"]
        many = {"events": [event(f"m{i}", "limits") for i in range(2001)]}
        too_many = client.post("/v1/events", json=many)
        assert too_many.status_code == 413
        assert "2000" in too_many.json()["error"]
        huge = client.post("/v1/events", content=b" " * (600 * 1024))
        assert huge.status_code == 413


def test_rate_limit_per_key_answers_429_with_retry_after(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path, {"PLAYERPULSE_RATE_LIMIT_EVENTS_S": "50"}).start()
    try:
        key, other = server.key("g", "ingest"), server.key("g", "ingest")
        batch = {"events": [event(f"r{i}", "rate") for i in range(60)]}
        with server.client(key) as client:
            assert client.post("/v1/events", json=batch).status_code == 202  # the burst
            refused = client.post("/v1/events", json=batch)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert "rate limit" in refused.json()["error"]
        with server.client(other) as client:  # per key: another key is not affected
            assert client.post("/v1/events", json=batch).status_code == 202
    finally:
        assert server.stop() == 0


def test_clock_skew_is_corrected_from_sent_at_and_the_device_time_kept(
    server: ServeProcess, keys: dict[str, str]
) -> None:
    # The device clock is an hour behind: it stamps events and the send an hour early.
    now = datetime.now(UTC)
    device_now = now - timedelta(hours=1)
    player = unique("skew")
    ours = {
        "event_id": f"{player}-a",
        "player_id": player,
        "type": "session_start",
        "ts": (device_now - timedelta(seconds=30)).isoformat(),
    }
    segment_message = {
        "type": "track",
        "event": "session_start",
        "userId": player,
        "messageId": f"{player}-b",
        "timestamp": (device_now - timedelta(seconds=60)).isoformat(),
    }
    with server.client(keys["ingest"]) as client:
        client.post(
            "/v1/events", json={"events": [ours]}, headers={"X-Sent-At": device_now.isoformat()}
        ).raise_for_status()
        client.post(
            "/v1/batch", json={"batch": [segment_message], "sentAt": device_now.isoformat()}
        ).raise_for_status()
        bad = client.post("/v1/events", json={"events": [ours]}, headers={"X-Sent-At": "soon"})
        assert bad.status_code == 400
        assert "X-Sent-At" in bad.json()["error"]

    def archived() -> Any:
        out = server.cli(
            "analytics",
            "query",
            "SELECT event_id, epoch(ts) AS ts, epoch(received_at) AS received "
            f"FROM events WHERE player_id = '{player}' ORDER BY event_id",
            "--format",
            "json",
        ).stdout
        rows = json.loads(out)
        return rows if len(rows) == 2 else None

    rows = wait_for(archived, timeout=60, interval=0.5)
    for row, lag in zip(rows, (30, 60), strict=True):
        # Corrected onto our clock: received minus how long before the send it happened.
        assert abs(row["received"] - lag - row["ts"]) < 2.0, row
    original = server.cli(
        "analytics",
        "query",
        "SELECT count(*) AS n FROM read_parquet("
        f"'{server.env['PLAYERPULSE_DATA_DIR']}/lake/events/*/*/*.parquet') "
        f"WHERE event_id LIKE '{player}%' AND device_ts < ts - INTERVAL 50 MINUTE",
        "--format",
        "json",
    ).stdout
    assert json.loads(original) == [{"n": 2}]


def test_basic_auth_with_the_key_as_user_name(server: ServeProcess, keys: dict[str, str]) -> None:
    auth = httpx.BasicAuth(keys["ingest"], "")
    with httpx.Client(base_url=server.url, auth=auth) as client:
        response = client.post("/v1/events", json={"events": [event("basic-1", "basic")]})
        assert response.status_code == 202
    with httpx.Client(base_url=server.url, auth=httpx.BasicAuth("pp_nope", "")) as client:
        assert client.post("/v1/batch", json={"batch": []}).status_code == 401
