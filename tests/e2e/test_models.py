"""The model registry over the real server: converters, rejections, rollouts, shadows."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests import onnx_models as m
from tests.reference import FEATURES_ALL
from tests.support import ServeProcess, unique, wait_for

ROWS = [[12.5, 0.0, 7.0], [80.0, 3.0, 2.0], [41.0, 1.0, 9.0]]


def upload(client: Any, name: str, raw: bytes, manifest: str = m.MANIFEST, **params: Any) -> Any:
    return client.post(
        f"/v1/admin/models/{name}",
        params=params,
        files={"model": ("model.onnx", raw), "manifest": (None, manifest)},
    )


def features(row: list[float]) -> dict[str, float]:
    return dict(zip(m.FEATURES, row, strict=True))


@pytest.fixture(scope="module")
def admin(server: ServeProcess) -> Any:
    key = server.key(unique("game"), "admin")
    with server.client(key) as client:
        yield client


@pytest.mark.parametrize(
    "build", [m.sklearn_classifier, m.sklearn_regressor, m.lightgbm_classifier]
)
def test_converted_models_serve_what_onnxruntime_computes(admin: Any, build: Any) -> None:
    raw = build()
    name = unique(build.__name__)
    assert upload(admin, name, raw).status_code == 201
    for row in ROWS:
        response = admin.post(f"/v1/models/{name}/predict", json={"features": features(row)})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["version"] == 1
        expected = m.reference(raw, row)
        assert set(body["outputs"]) == set(expected)
        for output, value in expected.items():
            assert m.same(body["outputs"][output], value), (output, body["outputs"][output], value)


def test_each_rejection_names_its_reason_and_the_serving_version_stays(
    tmp_path: Path,
) -> None:
    server = ServeProcess(
        tmp_path,
        {"PLAYERPULSE_FEATURES": str(FEATURES_ALL), "PLAYERPULSE_MODEL_MAX_BYTES": "200000"},
    ).start()
    try:
        key = server.key(unique("game"), "admin")
        manifest = json.dumps({"inputs": {"float_input": ["spend", "purchases", "sessions_1d"]}})
        with server.client(key) as admin:
            good = m.sklearn_regressor()
            assert upload(admin, "stay", good, manifest).json() == {"name": "stay", "version": 1}
            cases = {
                "not an ONNX model": (b"\x00garbage" * 10, manifest),
                "fails the ONNX checker": (m.failing_checker_model(), manifest),
                "external data": (m.external_data_model(), manifest),
                "com.example": (m.custom_domain_model(), manifest),
                "not in the features file": (
                    good,
                    json.dumps({"inputs": {"float_input": ["spend", "nope", "sessions_1d"]}}),
                ),
                "takes 3": (good, json.dumps({"inputs": {"float_input": ["spend"]}})),
                "test run": (m.int_input_model(), json.dumps({"inputs": {"x": ["spend_min"]}})),
            }
            for reason, (raw, body) in cases.items():
                response = upload(admin, "stay", raw, body)
                assert response.status_code == 422, (reason, response.text)
                assert reason in response.json()["error"], (reason, response.json())
                served = admin.post("/v1/models/stay/predict", json={"features": {"spend": 10}})
                assert served.json()["version"] == 1, reason
            too_big = upload(admin, "stay", b"\x08" * 300_000, manifest)
            assert too_big.status_code == 422
            assert "bytes" in too_big.json()["error"]
            listed = admin.get("/v1/admin/models/stay").json()
            assert [v["version"] for v in listed["versions"]] == [1]
    finally:
        assert server.stop() == 0


def test_split_is_sticky_and_the_shadow_is_logged_never_returned(
    server: ServeProcess, admin: Any
) -> None:
    raw = m.sklearn_regressor()
    name = unique("split")
    for activate in (True, False, False):
        assert upload(admin, name, raw, activate=str(activate).lower()).status_code == 201
    assert admin.get(f"/v1/admin/models/{name}").json()["rollout"] == {
        "split": {"1": 100},
        "shadow": None,
    }
    rollout = admin.put(
        f"/v1/admin/models/{name}/rollout", json={"split": {"1": 90, "2": 10}, "shadow": 3}
    )
    assert rollout.json() == {"split": {"1": 90, "2": 10}, "shadow": 3}
    players = [f"player-{i}" for i in range(1000)]
    instances = [{"features": features(ROWS[0]), "player_id": p} for p in players]

    def versions() -> dict[str, int]:
        body = admin.post(f"/v1/models/{name}/predict", json={"instances": instances}).json()
        return {p["player_id"]: p["version"] for p in body["predictions"]}

    first, second = versions(), versions()
    assert first == second  # sticky: the same player always gets the same version
    shares = Counter(first.values())
    assert set(shares) == {1, 2}  # never the shadow
    assert 60 <= shares[2] <= 140, shares  # about 10% of 1,000

    def logged() -> Any:
        result = server.cli(
            "analytics",
            "query",
            f"SELECT version, shadow, count(*) AS n FROM predictions WHERE model = '{name}' "
            "GROUP BY ALL ORDER BY ALL",
            "--format",
            "json",
        )
        rows = json.loads(result.stdout)
        return rows if sum(r["n"] for r in rows) >= 4000 else None

    rows = wait_for(logged, timeout=60, interval=1)
    by_kind = {(r["version"], r["shadow"]): r["n"] for r in rows}
    assert by_kind[(3, True)] == 2000  # the shadow ran for every prediction
    assert by_kind[(1, False)] + by_kind[(2, False)] == 2000
    assert (3, False) not in by_kind


def test_activate_and_rollback_through_api_and_cli(server: ServeProcess, admin: Any) -> None:
    name = unique("roll")
    raw = m.sklearn_regressor()
    upload(admin, name, raw)
    upload(admin, name, raw)
    body = {"features": features(ROWS[1])}
    assert admin.post(f"/v1/models/{name}/predict", json=body).json()["version"] == 2
    assert admin.post(f"/v1/admin/models/{name}/activate", json={"version": 1}).status_code == 200
    assert admin.post(f"/v1/models/{name}/predict", json=body).json()["version"] == 1
    assert admin.post(f"/v1/admin/models/{name}/rollback").json()["split"] == {"2": 100}
    assert admin.post(f"/v1/models/{name}/predict", json=body).json()["version"] == 2
    missing = admin.post(f"/v1/admin/models/{name}/activate", json={"version": 9})
    assert missing.status_code == 409
    assert "[9]" in missing.json()["error"]
    bad = admin.put(f"/v1/admin/models/{name}/rollout", json={"split": {"1": 50, "2": 40}})
    assert bad.status_code == 422
    assert "100" in bad.json()["error"]


@pytest.mark.kafka
def test_two_servers_follow_each_others_changes_within_a_second(tmp_path: Path) -> None:
    from app.embedded.kafka import EmbeddedKafka
    from app.embedded.postgres import EmbeddedPostgres
    from tests.support import EXTERNAL_BROKERS

    postgres = EmbeddedPostgres(tmp_path / "pg")
    broker = None if EXTERNAL_BROKERS else EmbeddedKafka(tmp_path / "broker")
    database = postgres.start()
    try:
        brokers = EXTERNAL_BROKERS or broker.start()  # type: ignore[union-attr]
        shared = {
            "PLAYERPULSE_DATABASE_URL": database,
            "PLAYERPULSE_KAFKA_BROKERS": brokers,
            "PLAYERPULSE_EVENTS_TOPIC": unique("events"),
            "PLAYERPULSE_PREDICTIONS_TOPIC": unique("predictions"),
            "PLAYERPULSE_CONSUMER_GROUP": unique("group"),
        }
        one = ServeProcess(tmp_path / "one", shared).start()
        two = ServeProcess(tmp_path / "two", shared).start()
        try:
            key = one.key("shared", "admin")
            raw = m.sklearn_regressor()
            body = {"features": features(ROWS[2])}
            with one.client(key) as a, two.client(key) as b:
                upload(a, "hot", raw)
                assert b.post("/v1/models/hot/predict", json=body).json()["version"] == 1
                upload(a, "hot", raw)
                changed = time.monotonic()
                wait_for(
                    lambda: b.post("/v1/models/hot/predict", json=body).json()["version"] == 2,
                    timeout=1.0,
                    interval=0.02,
                )
                assert time.monotonic() - changed < 1.0
                a.post("/v1/admin/models/hot/activate", json={"version": 1})
                wait_for(
                    lambda: b.post("/v1/models/hot/predict", json=body).json()["version"] == 1,
                    timeout=1.0,
                    interval=0.02,
                )
        finally:
            assert one.stop() == 0
            assert two.stop() == 0
    finally:
        if broker is not None:
            broker.stop()
        postgres.stop()
