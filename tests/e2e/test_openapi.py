"""The OpenAPI document against the real server: schemathesis finds no failure, every
route's statuses, security and error body are what the service does, and a client that
openapi-python-client generates from it has every operation and drives ingest, a profile
read and predictions end to end."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests import onnx_models as m
from tests.support import BIN, ServeProcess, unique

CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = os.environ.get("PLAYERPULSE_SCHEMATHESIS_SEED", "20261128")
"""Fixed by default so that a run in CI is repeatable; set another (or "random") to explore."""
ERROR = {"$ref": "#/components/schemas/ErrorReply"}


def test_schemathesis_finds_no_failure(server: ServeProcess) -> None:
    operations = sum(len(item) for item in server.openapi()["paths"].values())
    admin = server.key(unique("game"), "admin")
    command = [
        str(BIN / "schemathesis"),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{server.url}/schema/openapi.json",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        "40",
        "--workers",
        "1",
        *([] if SEED == "random" else ["--seed", SEED]),
        "-H",
        f"Authorization: Bearer {admin}",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=server.workdir
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-20000:]
    assert f"Tested: {operations}" in out, out[-5000:]


def test_every_route_documents_its_errors_and_who_may_call_it(server: ServeProcess) -> None:
    document = server.openapi()
    assert "security" not in document  # per operation, below
    error = document["components"]["schemas"]["ErrorReply"]
    assert sorted(error["required"]) == ["detail", "error"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            errors = {status for status in responses if status.startswith(("4", "5"))}
            assert "500" in errors, (method, path)
            for status in errors:
                schema = responses[status]["content"]["application/json"]["schema"]
                assert schema == ERROR, (method, path, status, schema)
            if path in ("/health", "/metrics", "/dashboard"):
                assert "security" not in operation, (method, path)
            else:
                assert operation["security"] == [{"apiKey": []}], (method, path)
                assert {"401", "403"} <= errors, (method, path)
    schemas = document["components"]["schemas"]
    strict_bodies = ("ActivateBody", "GuardBody", "OutcomeBody", "RolloutBody")
    predict_forms = ("PredictOnFeatures", "PredictOnInstances", "PredictForPlayers")
    for strict in (*strict_bodies, *predict_forms):
        assert schemas[strict]["additionalProperties"] is False, strict
    events = document["paths"]["/v1/events"]["post"]
    assert set(events["responses"]) == {
        "202",
        "400",
        "401",
        "403",
        "413",
        "415",
        "429",
        "500",
        "503",
        "507",
    }
    assert events["requestBody"]["content"]["application/json"]["schema"]["required"] == ["events"]

    # What the document says is what the service does: an error body, and open routes.
    with server.client() as client:
        missing = client.get("/v1/players/p1")
        assert missing.status_code == 401
        assert set(missing.json()) == {"error", "detail"}
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 200
        for asset in (
            "/docs/assets/swagger-ui/swagger-ui-bundle.js",
            "/docs/assets/swagger-ui/swagger-ui.css",
            "/docs/assets/redoc/redoc.standalone.js",
        ):
            assert client.get(asset).status_code == 200, asset


# -- The API as client generators see it -----------------------------------------------

PACKAGE = "playerpulse_generated_client"


def _snake(operation_id: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation_id).lower()


@pytest.fixture(scope="module")
def generated(
    server: ServeProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str]]:
    """The client package generated from the served document, importable, and the
    generator's output (which lists what it skipped)."""
    root = tmp_path_factory.mktemp("client")
    result = subprocess.run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--url",
            f"{server.url}/schema/openapi.json",
            "--output-path",
            str(root / PACKAGE),
            "--meta",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        # Its post-generation hooks run ruff, from this environment.
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    sys.path.insert(0, str(root))
    try:
        yield root / PACKAGE, out
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def _operation(package: Path, operation_id: str) -> ModuleType:
    module = _snake(operation_id)
    found = list((package / "api").glob(f"*/{module}.py"))
    assert len(found) == 1, (operation_id, found)
    tag = found[0].parent.name
    return importlib.import_module(f"{PACKAGE}.api.{tag}.{module}")


def test_every_operation_has_a_short_unique_id_and_a_generated_function(
    server: ServeProcess, generated: tuple[Path, str]
) -> None:
    package, out = generated
    document = server.openapi()
    assert "WARNING" not in out, out
    ids = [
        operation["operationId"]
        for item in document["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "responses" in operation
    ]
    assert len(ids) == len(set(ids)), sorted(ids)
    assert {"sendEvents", "getProfile", "predictForPlayer", "predict"} <= set(ids)
    for operation_id in ids:
        assert re.fullmatch(r"[a-z][A-Za-z]{2,30}", operation_id), operation_id
        module = _operation(package, operation_id)
        assert callable(module.sync_detailed), operation_id


def test_generated_client_ingests_reads_and_predicts(
    server: ServeProcess, generated: tuple[Path, str]
) -> None:
    package, _ = generated
    api = importlib.import_module(PACKAGE)
    models = importlib.import_module(f"{PACKAGE}.models")
    types = importlib.import_module(f"{PACKAGE}.types")
    game, player = unique("game"), unique("player")
    admin_key, ingest_key = server.key(game, "admin"), server.key(game, "ingest")
    read_key = server.key(game, "read")

    def client(key: str) -> Any:
        return api.AuthenticatedClient(base_url=server.url, token=key, timeout=httpx.Timeout(30))

    now = datetime.now(UTC).replace(microsecond=0)
    events = [
        models.Event(
            event_id=unique("e"),
            player_id=player,
            type_="purchase",
            ts=now,
            props=models.EventPropsType0.from_dict({"amount": amount}),
        )
        for amount in (4.5, 20.0)
    ]
    sent = _operation(package, "sendEvents").sync_detailed(
        client=client(ingest_key), body=models.SendEventsBody(events=events)
    )
    assert sent.status_code == 202, sent.content
    assert sent.parsed.accepted == 2
    token = sent.parsed.token

    profile = _operation(package, "getProfile").sync_detailed(
        player, client=client(read_key), after=token
    )
    assert profile.status_code == 200, profile.content
    features = profile.parsed.features.to_dict()
    assert features["spend_total"] == pytest.approx(24.5)
    assert features["purchases_7d"] == 2

    uploaded = _operation(package, "uploadModel").sync_detailed(
        "offers",
        client=client(admin_key),
        body=models.UploadModelBody(
            model=types.File(payload=m.sklearn_regressor(), file_name="model.onnx"),
            manifest=m.MANIFEST,
        ),
    )
    assert uploaded.status_code == 201, uploaded.content
    assert uploaded.parsed.version == 1

    row = [features[name] for name in m.FEATURES]
    expected = m.reference(m.sklearn_regressor(), row)
    one = _operation(package, "predictForPlayer").sync_detailed(
        player, "offers", client=client(read_key), after=token
    )
    assert one.status_code == 200, one.content
    assert one.parsed.version == 1
    outputs = one.parsed.outputs.to_dict()
    assert set(outputs) == set(expected)
    assert all(m.same(outputs[name], value) for name, value in expected.items()), outputs

    several = _operation(package, "predict").sync_detailed(
        "offers", client=client(read_key), body=models.PredictForPlayers(players=[player])
    )
    assert several.status_code == 200, several.content
    assert [p.player_id for p in several.parsed.predictions] == [player]
    assert several.parsed.predictions[0].outputs.to_dict() == outputs
