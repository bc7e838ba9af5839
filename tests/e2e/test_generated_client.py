"""The API as client generators see it: openapi-python-client, run on the document the real
server serves, generates every operation, and the generated client drives ingest, a
profile read and a prediction end to end."""

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
