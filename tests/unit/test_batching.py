"""Batched model runs answer each row exactly as a run of that row alone would."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from onnx import TensorProto, helper

from app.domain.features import parse_features
from app.models.batching import ModelBatcher, run_many
from app.models.runtime import LoadedModel, Manifest, PredictionFailed
from tests import onnx_models

pytestmark = pytest.mark.unit

FEATURES = parse_features(
    """
[features.spend_total]
event = "purchase"
agg = "sum"
field = "amount"
[features.purchases_7d]
event = "purchase"
agg = "count"
[features.sessions_7d]
event = "session_start"
agg = "count"
[features.last_level]
event = "level"
agg = "last"
field = "n"
default = 0
"""
)
COLUMNS = ["spend_total", "purchases_7d", "sessions_7d"]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offer_model.onnx"

ROWS: list[dict[str, Any]] = [
    {"spend_total": float(i * 7 % 90), "purchases_7d": i % 5, "sessions_7d": (i * 3) % 11}
    for i in range(40)
]
ROWS[3]["sessions_7d"] = None  # a null float feature without default: NaN


@pytest.mark.parametrize(
    "raw",
    [
        EXAMPLE.read_bytes(),
        onnx_models.sklearn_classifier(),
        onnx_models.sklearn_regressor(),
        onnx_models.lightgbm_classifier(),
    ],
    ids=["example", "sklearn-zipmap", "regressor", "lightgbm"],
)
def test_a_batched_run_gives_each_row_its_own_answer(raw: bytes) -> None:
    model = LoadedModel(raw, Manifest(inputs={"float_input": COLUMNS}), FEATURES)
    assert model.batchable
    assert run_many(model, ROWS) == [model.run(row) for row in ROWS]


def test_a_row_that_cannot_run_fails_alone() -> None:
    manifest = Manifest(inputs={"x": ["last_level"]})
    model = LoadedModel(onnx_models.int_input_model(), manifest, FEATURES, checked=True)
    answers = run_many(model, [{"last_level": 3}, {"last_level": None}, {"last_level": "x"}])
    assert answers[0] == {"y": [3]}
    assert isinstance(answers[1], PredictionFailed)
    assert "no value and no default" in str(answers[1])
    assert isinstance(answers[2], PredictionFailed)


def test_a_model_with_a_fixed_batch_of_one_runs_row_by_row() -> None:
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    raw = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    model = LoadedModel(raw, Manifest(inputs={"x": COLUMNS}), FEATURES, checked=True)
    assert not model.batchable
    assert run_many(model, ROWS[:5]) == [model.run(row) for row in ROWS[:5]]


def test_runs_asked_in_one_loop_turn_share_one_session_run() -> None:
    model = LoadedModel(EXAMPLE.read_bytes(), Manifest(inputs={"float_input": COLUMNS}), FEATURES)
    batcher = ModelBatcher()

    async def ask() -> list[Any]:
        return await asyncio.gather(*(batcher.run(model, row) for row in ROWS))

    answers = asyncio.run(ask())
    assert [answer for answer, _ in answers] == [model.run(row) for row in ROWS]
    assert (batcher.runs, batcher.rows) == (1, len(ROWS))
