"""Experiments over the real server: outcomes per version and arm, SRM, drift, guards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.domain.rollout import Rollout
from tests import onnx_models as m
from tests.browser import dashboard, screenshot
from tests.support import ServeProcess, unique, wait_for

pytestmark = pytest.mark.e2e

CLASSIFIER_MANIFEST = json.dumps(
    {
        "inputs": {"float_input": m.FEATURES},
        "probability": {"output": "output_probability", "class": "1"},
    }
)
PLANTED = {1: 0.10, 2: 0.20}  # outcome rates planted per version


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One server for the module, with a short guard window so a guard test is quick."""
    process = ServeProcess(
        tmp_path_factory.mktemp("experiments"),
        {"PLAYERPULSE_GUARD_WINDOW_S": "2", "PLAYERPULSE_GUARD_MIN_REQUESTS": "20"},
    ).start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture
def game(server: ServeProcess) -> Iterator[tuple[str, Any]]:
    name = unique("game")
    with server.client(server.key(name, "admin")) as client:
        yield name, client


def upload(client: Any, name: str, raw: bytes, manifest: str, **params: Any) -> int:
    response = client.post(
        f"/v1/admin/models/{name}",
        params=params,
        files={"model": ("model.onnx", raw), "manifest": (None, manifest)},
    )
    assert response.status_code == 201, response.text
    return int(response.json()["version"])


def rows(rng: np.random.Generator, n: int, spend_shift: float = 0.0) -> np.ndarray:
    return np.column_stack(
        [rng.gamma(1.2, 20.0, n) + spend_shift, rng.poisson(1.5, n), rng.poisson(6.0, n)]
    )


def predict_players(client: Any, model: str, players: list[str], seed: int) -> dict[str, int]:
    """Predictions for players (their first exposures); the version each one got."""
    values = rows(np.random.default_rng(seed), len(players))
    got: dict[str, int] = {}
    for start in range(0, len(players), 500):
        instances = [
            {"player_id": p, "features": dict(zip(m.FEATURES, map(float, v), strict=True))}
            for p, v in zip(players[start : start + 500], values[start : start + 500], strict=True)
        ]
        response = client.post(f"/v1/models/{model}/predict", json={"instances": instances})
        assert response.status_code == 200, response.text
        got.update({p["player_id"]: p["version"] for p in response.json()["predictions"]})
    return got


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def post_events(client: Any, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 1000):
        response = client.post("/v1/events", json={"events": events[start : start + 1000]})
        assert response.status_code == 202, response.text
        assert response.json()["accepted"] == len(events[start : start + 1000])


def plant_outcomes(client: Any, versions: dict[str, int]) -> dict[int, int]:
    """Purchases after exposure for exactly the planted share of each version's players,
    with noise that must not count: purchases before exposure, other event types, resends.
    Returns the converted players per version."""
    now = datetime.now(UTC)
    events, converted = [], {}
    for version, rate in PLANTED.items():
        players = sorted(p for p, v in versions.items() if v == version)
        buyers = players[: round(rate * len(players))]
        converted[version] = len(buyers)
        for p in buyers:
            purchase = {
                "event_id": f"buy-{p}",
                "player_id": p,
                "type": "purchase",
                "ts": rfc3339(now),
                "props": {"amount": 4.99},
            }
            events += [purchase, purchase]  # a resend is the same event
        for p in players[len(buyers) :][:200]:
            events.append(
                {
                    "event_id": f"old-{p}",
                    "player_id": p,
                    "type": "purchase",
                    "ts": rfc3339(now - timedelta(days=1)),
                    "props": {"amount": 1},
                }
            )
        for p in players:
            events.append(
                {"event_id": f"s-{p}", "player_id": p, "type": "session_start", "ts": rfc3339(now)}
            )
    post_events(client, events)
    return converted


def test_experiment_report_counts_exposures_and_outcomes_exactly(
    server: ServeProcess, game: tuple[str, Any], tmp_path: Path
) -> None:
    game_id, admin = game
    model = unique("offer")
    raw = m.sklearn_classifier()
    for activate in ("true", "false", "false"):
        upload(admin, model, raw, CLASSIFIER_MANIFEST, activate=activate)
    split = {"split": {"1": 50, "2": 50}, "shadow": 3}  # the shadow exposes nobody
    assert admin.put(f"/v1/admin/models/{model}/rollout", json=split).status_code == 200
    bad = admin.put(f"/v1/admin/models/{model}/outcome", json={"event": "purchase", "within": "1x"})
    assert bad.status_code == 422
    assert "within" in bad.json()["error"]
    assert admin.get(f"/v1/admin/models/{model}/experiment").status_code == 409  # no outcome yet
    outcome = {"event": "purchase", "within": "1h", "value": "any"}
    assert admin.put(f"/v1/admin/models/{model}/outcome", json=outcome).json() == outcome
    assert admin.get(f"/v1/admin/models/{model}").json()["outcome"] == outcome

    players = [f"p{i:05d}" for i in range(3000)]
    versions = predict_players(admin, model, players, seed=1)
    predict_players(admin, model, players[:500], seed=2)  # later predictions expose nobody anew
    assert set(versions.values()) == {1, 2}
    exposed = {v: sum(1 for x in versions.values() if x == v) for v in (1, 2)}
    converted = plant_outcomes(admin, versions)

    def report() -> Any:
        body = admin.get(f"/v1/admin/models/{model}/experiment").json()
        got = {r["version"]: (r["players"], r["converted"]) for r in body["rows"]}
        want = {v: (exposed[v], converted[v]) for v in (1, 2)}
        return body if got == want else None

    body = wait_for(report, timeout=90, interval=1)
    assert body["control"] == 1
    control, treated = body["rows"]
    for row in (control, treated):
        v = row["version"]
        assert row["share"] == 50
        assert row["rate"] == converted[v] / exposed[v]
        assert row["mean_value"] == converted[v] / exposed[v]
    assert control["uplift"] is None
    assert treated["uplift"] == pytest.approx(treated["rate"] - control["rate"])
    planted_uplift = PLANTED[2] - PLANTED[1]
    assert treated["ci_low"] < planted_uplift < treated["ci_high"]
    assert treated["ci_low"] > 0
    assert treated["p_value"] < 0.001
    assert body["srm"]["ok"] is True
    assert not body["warnings"]
    quality = {c["version"]: c for c in body["calibration"]}
    assert set(quality) == {1, 2}
    for c in quality.values():
        assert 0 <= c["brier"] <= 1
        assert c["log_loss"] > 0
        assert 0 <= c["auc"] <= 1
        assert sum(b["players"] for b in c["reliability"]) == c["players"]

    now = datetime.now(UTC)
    days = {
        "from": (now - timedelta(days=1)).date().isoformat(),
        "to": (now + timedelta(days=1)).date().isoformat(),
    }
    around = admin.get(f"/v1/admin/models/{model}/experiment", params=days).json()
    assert around["rows"] == body["rows"]
    before = admin.get(f"/v1/admin/models/{model}/experiment", params={"to": "2020-01-01"}).json()
    assert before["rows"] == []
    assert admin.get(f"/v1/admin/models/{model}/experiment?from=soon").status_code == 400
    unknown = admin.get(f"/v1/admin/models/{model}/experiment", params={"control": 9})
    assert unknown.status_code == 409
    assert "control" in unknown.json()["error"]

    # The CLI prints the same report, and draws it.
    plot = tmp_path / "experiment.png"
    out = server.cli(
        "analytics",
        "report",
        "experiment",
        "--game",
        game_id,
        "--model",
        model,
        "--format",
        "json",
        "--plot",
        str(plot),
    ).stdout
    assert json.loads(out)["rows"] == body["rows"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = server.cli(
        "analytics", "report", "experiment", "--game", game_id, "--model", model, "--control", "2"
    ).stdout
    assert "sample ratio" in table
    assert "brier" in table

    # The dashboard shows the same report to an admin key.
    with dashboard(server.url, admin.headers["authorization"].split()[1]) as (page, _):
        page.wait_for_selector(f'.report[data-model="{model}"] table', timeout=60_000)
        cells = page.locator(f'.report[data-model="{model}"] table').first.inner_text()
        screenshot(page, "dashboard-experiment.png")
    for v in (1, 2):
        assert f"{exposed[v]:,}\t{converted[v]:,}" in cells, cells
    assert "control" in cells


def test_a_sixty_forty_imbalance_trips_the_sample_ratio_check(
    server: ServeProcess, game: tuple[str, Any]
) -> None:
    game_id, admin = game
    model = unique("srm")
    raw = m.sklearn_regressor()
    upload(admin, model, raw, m.MANIFEST)
    upload(admin, model, raw, m.MANIFEST, activate="false")
    assert (
        admin.put(f"/v1/admin/models/{model}/rollout", json={"split": {"1": 50, "2": 50}})
    ).status_code == 200
    server.cli(
        "models",
        "outcome",
        "--game",
        game_id,
        model,
        "--event",
        "purchase",
        "--within",
        "24h",
        "--value",
        "sum:amount",
    )
    # Exposures lost for a third of one arm: 1,200 players of v1 and 800 of v2 logged.
    rollout = Rollout({1: 50, 2: 50})
    candidates = [f"q{i:05d}" for i in range(4000)]
    arm = {p: rollout.choose(f"{game_id}/{model}", p) for p in candidates}
    chosen = [p for p in candidates if arm[p] == 1][:1200] + [p for p in candidates if arm[p] == 2][
        :800
    ]
    predict_players(admin, model, chosen, seed=3)

    def report() -> Any:
        body = admin.get(f"/v1/admin/models/{model}/experiment").json()
        return body if [r["players"] for r in body["rows"]] == [1200, 800] else None

    body = wait_for(report, timeout=90, interval=1)
    assert body["srm"]["ok"] is False
    assert body["srm"]["p_value"] < 0.001
    assert body["srm"]["expected"] == {"1": 1000.0, "2": 1000.0}
    assert any("sample ratio mismatch" in w for w in body["warnings"])
    assert body["outcome"] == {"event": "purchase", "within": "1d", "value": "sum:amount"}
    cli = server.cli("analytics", "report", "experiment", "--game", game_id, "--model", model)
    assert "sample ratio mismatch" in cli.stderr


def test_drift_flags_only_the_shifted_feature(
    server: ServeProcess, game: tuple[str, Any], tmp_path: Path
) -> None:
    game_id, admin = game
    model = unique("drift")
    (tmp_path / "model.onnx").write_bytes(m.sklearn_regressor())
    (tmp_path / "manifest.json").write_text(m.MANIFEST)
    training = rows(np.random.default_rng(10), 5000)
    pq.write_table(
        pa.table({f: training[:, i] for i, f in enumerate(m.FEATURES)}), tmp_path / "train.parquet"
    )
    out = server.cli(
        "models",
        "upload",
        "--game",
        game_id,
        model,
        str(tmp_path / "model.onnx"),
        "--manifest",
        str(tmp_path / "manifest.json"),
        "--training",
        str(tmp_path / "train.parquet"),
    ).stdout
    assert f"{model} version 1" in out
    live = rows(np.random.default_rng(11), 2000, spend_shift=40.0)
    for start in range(0, 2000, 500):
        instances = [
            {"features": dict(zip(m.FEATURES, map(float, v), strict=True))}
            for v in live[start : start + 500]
        ]
        response = admin.post(f"/v1/models/{model}/predict", json={"instances": instances})
        assert response.status_code == 200, response.text

    def report() -> Any:
        result = server.cli(
            "analytics", "report", "drift", "--game", game_id, "--model", model, "--format", "json"
        )
        body = json.loads(result.stdout)
        return body if all(r["live"] == 2000 for r in body["rows"]) else None

    body = wait_for(report, timeout=90, interval=1)
    assert body["flagged"] == ["spend_total"]
    psi = {r["feature"]: r["psi"] for r in body["rows"]}
    assert psi["spend_total"] > 0.2
    assert psi["purchases_7d"] < 0.1
    assert psi["sessions_7d"] < 0.1
    assert admin.get(f"/v1/admin/models/{model}/drift").json()["flagged"] == ["spend_total"]
    with dashboard(server.url, admin.headers["authorization"].split()[1]) as (page, _):
        page.wait_for_selector(f'.report[data-model="{model}"] table', timeout=60_000)
        flagged = page.locator(f'.report[data-model="{model}"] td.flagged').all_inner_texts()
    assert "drifted (PSI > 0.2)" in flagged, flagged
    assert len(flagged) == 2, flagged  # the PSI and the verdict of spend_total only
    rejected = admin.post(
        f"/v1/admin/models/{model}",
        files={
            "model": ("model.onnx", m.sklearn_regressor()),
            "manifest": (None, m.MANIFEST),
            "training_stats": (
                None,
                json.dumps({"features": {"nope": {"edges": [], "counts": [1]}}}),
            ),
        },
    )
    assert rejected.status_code == 422
    assert "nope" in rejected.json()["error"]


def test_a_guard_takes_a_failing_version_out_of_the_split(
    server: ServeProcess, game: tuple[str, Any]
) -> None:
    _game_id, admin = game
    model = unique("guarded")
    upload(admin, model, m.sklearn_regressor(), m.MANIFEST)
    # Version 2 reads an integer feature with no default: it fails whenever that is null.
    upload(
        admin,
        model,
        m.int_input_model(),
        json.dumps({"inputs": {"x": ["last_level"]}}),
        activate="false",
    )
    guard = {"max_error_rate": 0.01, "max_p99_ms": 1000}
    reply = admin.put(
        f"/v1/admin/models/{model}/rollout", json={"split": {"1": 50, "2": 50}, "guard": guard}
    )
    assert reply.json() == {"split": {"1": 50, "2": 50}, "shadow": None, "guard": guard}
    bad_guard = admin.put(
        f"/v1/admin/models/{model}/rollout", json={"split": {"1": 100}, "guard": {}}
    )
    assert bad_guard.status_code == 422
    assert "guard" in bad_guard.json()["error"]
    features = dict(zip(m.FEATURES, map(float, m_row()), strict=True))
    sent = {"n": 0, "failed": 0}

    def removed() -> Any:
        for _ in range(20):
            i = sent["n"]
            values: dict[str, float] = dict(features)
            if i % 2 == 0:
                values["last_level"] = 3  # some inputs v2 can take
            body = {"player_id": f"g{i}", "features": values}
            response = admin.post(f"/v1/models/{model}/predict", json=body)
            sent["n"] += 1
            sent["failed"] += response.status_code == 422
        info = admin.get(f"/v1/admin/models/{model}").json()
        return info if info["rollout"]["split"] == {"1": 100} else None

    info = wait_for(removed, timeout=90, interval=0.05)
    assert sent["failed"] > 0
    assert info["rollout"]["guard"] == guard  # the guard stays on the rollout
    event = info["guard_events"][0]
    assert event["version"] == 2
    assert "error rate" in event["reason"]
    assert event["split_before"] == {"1": 50, "2": 50}
    assert event["split_after"] == {"1": 100}
    assert event["errors"] > 0
    assert event["requests"] >= 20

    def only_version_one() -> bool:
        # Every worker follows the change notice: whoever answers, only version 1 does.
        for i in range(40):
            body = {"player_id": f"g{i}", "features": features}
            response = admin.post(f"/v1/models/{model}/predict", json=body)
            if response.status_code != 200 or response.json()["version"] != 1:
                return False
        return True

    wait_for(only_version_one, timeout=10, interval=0.2)


def m_row() -> list[float]:
    return [12.5, 0.0, 7.0]
