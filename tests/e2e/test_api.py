"""The HTTP contract over the real server: auth, scoping, errors, ingest, predictions."""

from __future__ import annotations

import gzip
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support import ROOT, ServeProcess, unique, wait_for

MODEL = (ROOT / "examples" / "offer_model.onnx").read_bytes()
MANIFEST = (ROOT / "examples" / "offer_model.manifest.json").read_text()


def event(event_id: str, player: str, kind: str, **props: Any) -> dict[str, Any]:
    ts = datetime.now(UTC) - timedelta(minutes=1)
    body: dict[str, Any] = {
        "event_id": event_id,
        "player_id": player,
        "type": kind,
        "ts": ts.isoformat(),
    }
    if props:
        body["props"] = props
    return body


def profile_when(client: httpx.Client, player: str, applied: int) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        response = client.get(f"/v1/players/{player}")
        if response.status_code == 200 and response.json()["events_applied"] >= applied:
            return dict(response.json())
        return None

    return dict(wait_for(ready, timeout=30))


@pytest.fixture(scope="module")
def game(server: ServeProcess) -> dict[str, str]:
    name = unique("game")
    return {role: server.key(name, role) for role in ("ingest", "read", "admin")}


def test_health_needs_no_key(server: ServeProcess) -> None:
    with server.client() as client:
        assert client.get("/health").json()["status"] == "ok"


def test_openapi_schema_is_served(server: ServeProcess) -> None:
    with server.client() as client:
        schema = client.get("/schema/openapi.json").json()
        assert "/v1/events" in schema["paths"]
        assert client.get("/schema/swagger").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/events"),
        ("GET", "/v1/players/p1"),
        ("POST", "/v1/admin/models/m"),
        ("GET", "/v1/players/p1/predictions/m"),
    ],
)
def test_missing_or_unknown_key_is_401(server: ServeProcess, method: str, path: str) -> None:
    with server.client() as client:
        missing = client.request(method, path)
        assert missing.status_code == 401
        assert "Authorization" in missing.json()["error"]
    with server.client("pp_not-a-real-key") as client:
        unknown = client.request(method, path)
        assert unknown.status_code == 401
        assert unknown.json() == {"error": "unknown API key", "detail": None}


def test_roles_are_enforced(server: ServeProcess, game: dict[str, str]) -> None:
    batch = {"events": [event("r-1", "p-roles", "session_start")]}
    with server.client(game["read"]) as reader:
        denied = reader.post("/v1/events", json=batch)
        assert denied.status_code == 403
        assert "ingest" in denied.json()["error"]
        upload = reader.post(
            "/v1/admin/models/m", files={"model": MODEL, "manifest": (None, MANIFEST)}
        )
        assert upload.status_code == 403
    with server.client(game["ingest"]) as ingester:
        assert ingester.get("/v1/players/p-roles").status_code == 403
        assert ingester.post("/v1/events", json=batch).status_code == 202
    with server.client(game["admin"]) as admin:  # admin may do what the others do
        profile_when(admin, "p-roles", 1)
        assert admin.post("/v1/events", json=batch).status_code == 202


def test_games_are_isolated(server: ServeProcess, game: dict[str, str]) -> None:
    other = {role: server.key(unique("other"), role) for role in ("read", "admin")}
    with server.client(game["ingest"]) as ingester:
        ingester.post(
            "/v1/events", json={"events": [event("iso-1", "p-iso", "purchase", amount=3)]}
        )
    with server.client(game["admin"]) as admin:
        profile_when(admin, "p-iso", 1)
        response = admin.post(
            "/v1/admin/models/iso-model", files={"model": MODEL, "manifest": (None, MANIFEST)}
        )
        assert response.status_code == 201
        assert admin.get("/v1/players/p-iso/predictions/iso-model").status_code == 200
    with server.client(other["admin"]) as stranger:
        assert stranger.get("/v1/players/p-iso").status_code == 404
        assert stranger.get("/v1/players/p-iso/predictions/iso-model").status_code == 404
        # The same model name in another game is a separate registry entry.
        response = stranger.post(
            "/v1/admin/models/iso-model", files={"model": MODEL, "manifest": (None, MANIFEST)}
        )
        assert response.json() == {"name": "iso-model", "version": 1}


def test_batch_accepts_valid_events_and_names_invalid_fields(
    server: ServeProcess, game: dict[str, str]
) -> None:
    batch = {
        "events": [
            event("v-1", "p-valid", "purchase", amount=5),
            {"event_id": "v-2", "player_id": "p-valid", "type": "purchase"},
            {**event("v-3", "p-valid", "purchase"), "ts": "2026-11-27T10:00:00"},
            {**event("v-4", "p-valid", "purchase"), "props": [1, 2]},
            "not an object",
            event("v-6", "p-valid", "purchase", amount=7),
        ]
    }
    with server.client(game["ingest"]) as client:
        response = client.post("/v1/events", json=batch)
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    errors = {r["index"]: r["error"] for r in body["rejected"]}
    assert set(errors) == {1, 2, 3, 4}
    assert "`$.events[1]`" in errors[1]
    assert "ts" in errors[1]
    assert "$.events[2].ts" in errors[2]
    assert "$.events[3].props" in errors[3]
    with server.client(game["read"]) as reader:
        profile = profile_when(reader, "p-valid", 2)
    assert profile["features"]["spend_total"] == 12
    assert profile["events_applied"] == 2


def test_body_errors_accept_nothing(server: ServeProcess, game: dict[str, str]) -> None:
    with server.client(game["ingest"]) as client:
        not_json = client.post(
            "/v1/events", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert not_json.status_code == 400
        assert "JSON" in not_json.json()["error"]
        no_events = client.post("/v1/events", json={"evnts": []})
        assert no_events.status_code == 400
        assert "events" in no_events.json()["error"]
        too_large = client.post("/v1/events", content=b" " * (5 * 1024 * 1024 + 10))
        assert too_large.status_code == 413
        bomb = gzip.compress(b'{"events": [' + b" " * (6 * 1024 * 1024) + b"]}")
        inflated = client.post("/v1/events", content=bomb, headers={"content-encoding": "gzip"})
        assert inflated.status_code == 413
        assert "decompressed" in inflated.json()["error"]


def test_gzip_body_is_accepted(server: ServeProcess, game: dict[str, str]) -> None:
    body = json.dumps({"events": [event("gz-1", "p-gzip", "session_start")]}).encode()
    with server.client(game["ingest"]) as client:
        response = client.post(
            "/v1/events",
            content=gzip.compress(body),
            headers={"content-encoding": "gzip", "content-type": "application/json"},
        )
    reply = response.json()
    assert reply == {"accepted": 1, "rejected": [], "token": reply["token"]}
    assert re.fullmatch(r"\d+\.\d+", reply["token"])
    with server.client(game["read"]) as reader:
        assert profile_when(reader, "p-gzip", 1)["features"]["sessions_7d"] == 1


def test_duplicates_across_requests_count_once(server: ServeProcess, game: dict[str, str]) -> None:
    batch = {
        "events": [
            event("d-1", "p-dup", "purchase", amount=10),
            event("d-2", "p-dup", "session_start"),
        ]
    }
    with server.client(game["ingest"]) as client:
        for _ in range(3):
            assert client.post("/v1/events", json=batch).json()["accepted"] == 2
        client.post("/v1/events", json={"events": [event("d-3", "p-dup", "purchase", amount=1)]})
    with server.client(game["read"]) as reader:
        profile = profile_when(reader, "p-dup", 3)
    assert profile["events_applied"] == 3
    assert profile["features"]["spend_total"] == 11
    assert profile["features"]["purchases_7d"] == 2


def test_unknown_player_and_model_are_404(server: ServeProcess, game: dict[str, str]) -> None:
    with server.client(game["read"]) as reader:
        missing = reader.get("/v1/players/never-seen")
        assert missing.status_code == 404
        assert "never-seen" in missing.json()["error"]
    with server.client(game["ingest"]) as client:
        client.post("/v1/events", json={"events": [event("m-1", "p-model", "session_start")]})
    with server.client(game["read"]) as reader:
        profile_when(reader, "p-model", 1)
        unknown = reader.get("/v1/players/p-model/predictions/no-such-model")
        assert unknown.status_code == 404
        assert "no-such-model" in unknown.json()["error"]


def test_bad_model_uploads_are_422_and_the_serving_version_stays(
    server: ServeProcess, game: dict[str, str]
) -> None:
    with server.client(game["admin"]) as admin:
        ok = admin.post(
            "/v1/admin/models/stay", files={"model": MODEL, "manifest": (None, MANIFEST)}
        )
        assert ok.json() == {"name": "stay", "version": 1}
        bad_manifest = json.dumps(
            {"inputs": {"float_input": ["spend_total", "nope", "sessions_7d"]}}
        )
        cases: dict[str, Any] = {
            "not onnx": {"model": b"garbage", "manifest": (None, MANIFEST)},
            "unknown feature": {"model": MODEL, "manifest": (None, bad_manifest)},
            "wrong width": {
                "model": MODEL,
                "manifest": (None, json.dumps({"inputs": {"float_input": ["spend_total"]}})),
            },
            "bad json": {"model": MODEL, "manifest": (None, "{")},
            "no model part": {"manifest": (None, MANIFEST)},
        }
        reasons = {}
        for name, files in cases.items():
            response = admin.post("/v1/admin/models/stay", files=files)
            assert response.status_code == 422, (name, response.text)
            reasons[name] = response.json()["error"]
        assert "not an ONNX model" in reasons["not onnx"]
        assert "'nope'" in reasons["unknown feature"]
        assert "takes 3" in reasons["wrong width"]
        assert "JSON" in reasons["bad json"]
        assert "'model'" in reasons["no model part"]
        admin.post("/v1/events", json={"events": [event("s-1", "p-stay", "session_start")]})
        profile_when(admin, "p-stay", 1)
        served = admin.get("/v1/players/p-stay/predictions/stay").json()
        assert served["version"] == 1
        assert served["player_id"] == "p-stay"
        again = admin.post(
            "/v1/admin/models/stay", files={"model": MODEL, "manifest": (None, MANIFEST)}
        )
        assert again.json()["version"] == 2
        assert admin.get("/v1/players/p-stay/predictions/stay").json()["version"] == 2
