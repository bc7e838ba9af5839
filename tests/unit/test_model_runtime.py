"""ONNX models bound to manifests: outputs as plain JSON, and every upload refusal."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from app.domain.features import parse_features
from app.models.runtime import (
    LoadedModel,
    Manifest,
    ModelRejected,
    PredictionFailed,
    parse_manifest,
    to_json,
)

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
window = "7d"
[features.sessions_7d]
event = "session_start"
agg = "count"
window = "7d"
[features.favourite_mode]
event = "match"
agg = "last"
field = "mode"
"""
)
INPUT = "float_input"
COLUMNS = ["spend_total", "purchases_7d", "sessions_7d"]
MANIFEST = Manifest(inputs={INPUT: COLUMNS})

X = np.array(
    [[0, 0, 0], [1, 2, 3], [5, 1, 0], [2, 8, 1], [9, 9, 9], [0, 3, 7], [30, 2, 2], [4, 0, 12]],
    dtype=np.float32,
)
INT_LABELS = np.array([0, 1, 2, 1, 2, 0, 2, 1])
STR_LABELS = np.array(["stay", "churn", "stay", "churn", "churn", "stay", "stay", "churn"])

PLAYERS: list[dict[str, Any]] = [
    {"spend_total": 12.5, "purchases_7d": 3, "sessions_7d": 7},
    {"spend_total": 0, "purchases_7d": 0, "sessions_7d": 0},
    {"spend_total": 30.25, "purchases_7d": 1, "sessions_7d": 2},
    {"spend_total": 3, "purchases_7d": 9, "sessions_7d": 11},
]


def sklearn_onnx(model: Any, width: int = 3) -> bytes:
    proto = convert_sklearn(model, initial_types=[(INPUT, FloatTensorType([None, width]))])
    return bytes(proto.SerializeToString())


@pytest.fixture(scope="module")
def tree_classifier() -> bytes:
    return sklearn_onnx(DecisionTreeClassifier(random_state=0).fit(X, INT_LABELS))


@pytest.fixture(scope="module")
def string_classifier() -> bytes:
    return sklearn_onnx(LogisticRegression(max_iter=1000).fit(X, STR_LABELS))


@pytest.fixture(scope="module")
def regressor() -> bytes:
    targets = X @ np.array([0.5, -1.25, 2.0], dtype=np.float32) + 0.1
    return sklearn_onnx(LinearRegression().fit(X, targets))


def graph_model(inputs: Sequence[tuple[str, int, list[Any]]]) -> bytes:
    """A tiny model: each input goes through Identity to an output of the same name + '_out'."""
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name, _, _ in inputs]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, kind, shape) for name, kind, shape in inputs],
        [helper.make_tensor_value_info(f"{name}_out", kind, shape) for name, kind, shape in inputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def reference_outputs(onnx_bytes: bytes, row: Sequence[float]) -> list[Any]:
    """What onnxruntime itself answers for one row."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return list(session.run(None, {INPUT: np.array([row], dtype=np.float32)}))


def row_of(values: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> list[float]:
    defaults = defaults or {}
    return [
        math.nan if (v := values.get(name, defaults.get(name))) is None else float(v)
        for name in COLUMNS
    ]


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type, all the way down; NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


# --- outputs equal onnxruntime's own ------------------------------------------------------


@pytest.mark.parametrize("player", PLAYERS)
def test_int_label_classifier_outputs_match_onnxruntime(
    tree_classifier: bytes, player: dict[str, Any]
) -> None:
    model = LoadedModel(tree_classifier, MANIFEST, FEATURES)
    assert model.output_names == ["output_label", "output_probability"]
    label, probabilities = reference_outputs(tree_classifier, row_of(player))

    outputs = model.run(player)

    expected_label = int(label[0])
    expected_probabilities = {str(k): float(v) for k, v in probabilities[0].items()}
    assert same(outputs["output_label"], expected_label)
    assert same(outputs["output_probability"], expected_probabilities)
    assert set(outputs["output_probability"]) == {"0", "1", "2"}
    assert math.isclose(sum(outputs["output_probability"].values()), 1.0, rel_tol=1e-6)


def test_the_tree_classifier_predicts_its_training_rows(tree_classifier: bytes) -> None:
    model = LoadedModel(tree_classifier, MANIFEST, FEATURES)
    for row, label in zip(X.tolist(), INT_LABELS.tolist(), strict=True):
        outputs = model.run(dict(zip(COLUMNS, row, strict=True)))
        assert outputs["output_label"] == label
        assert outputs["output_probability"][str(label)] == 1.0


@pytest.mark.parametrize("player", PLAYERS)
def test_regressor_output_matches_onnxruntime(regressor: bytes, player: dict[str, Any]) -> None:
    model = LoadedModel(regressor, MANIFEST, FEATURES)
    (value,) = reference_outputs(regressor, row_of(player))
    outputs = model.run(player)
    assert list(outputs) == ["variable"]
    assert same(outputs["variable"], [float(value[0][0])])
    expected = 0.5 * player["spend_total"] - 1.25 * player["purchases_7d"]
    expected += 2.0 * player["sessions_7d"] + 0.1
    assert outputs["variable"][0] == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_a_missing_float_feature_is_fed_as_nan_and_comes_back_as_null(regressor: bytes) -> None:
    model = LoadedModel(regressor, MANIFEST, FEATURES)
    (value,) = reference_outputs(regressor, row_of({"purchases_7d": 1, "sessions_7d": 1}))
    assert math.isnan(value[0][0])
    assert model.run({"purchases_7d": 1, "sessions_7d": 1, "spend_total": None}) == {
        "variable": [None]
    }


def test_manifest_defaults_fill_features_without_a_value(regressor: bytes) -> None:
    manifest = Manifest(inputs={INPUT: COLUMNS}, defaults={"spend_total": 100.0})
    model = LoadedModel(regressor, manifest, FEATURES)
    player = {"purchases_7d": 2, "sessions_7d": 5}
    (value,) = reference_outputs(regressor, row_of(player, manifest.defaults))
    assert same(model.run(player), {"variable": [float(value[0][0])]})
    # A value of the player wins over the default.
    assert model.run({**player, "spend_total": 0}) != model.run(player)


def test_a_feature_outside_the_features_file_with_a_default_is_accepted(
    regressor: bytes,
) -> None:
    manifest = Manifest(
        inputs={INPUT: ["spend_total", "purchases_7d", "prior_ltv"]}, defaults={"prior_ltv": 2.0}
    )
    model = LoadedModel(regressor, manifest, FEATURES)
    (value,) = reference_outputs(regressor, [10.0, 1.0, 2.0])
    assert same(
        model.run({"spend_total": 10, "purchases_7d": 1}), {"variable": [float(value[0][0])]}
    )


def test_feature_order_in_the_manifest_is_the_column_order(regressor: bytes) -> None:
    swapped = LoadedModel(
        regressor,
        Manifest(inputs={INPUT: ["sessions_7d", "purchases_7d", "spend_total"]}),
        FEATURES,
    )
    player = {"spend_total": 1, "purchases_7d": 2, "sessions_7d": 30}
    (value,) = reference_outputs(regressor, [30.0, 2.0, 1.0])
    assert same(swapped.run(player), {"variable": [float(value[0][0])]})
    assert swapped.run(player) != LoadedModel(regressor, MANIFEST, FEATURES).run(player)


def test_a_classifier_without_zipmap_returns_lists() -> None:
    proto = convert_sklearn(
        DecisionTreeClassifier(random_state=0).fit(X, INT_LABELS),
        initial_types=[(INPUT, FloatTensorType([None, 3]))],
        options={"zipmap": False},
    )
    onnx_bytes = bytes(proto.SerializeToString())
    player = PLAYERS[0]
    label, probabilities = reference_outputs(onnx_bytes, row_of(player))
    outputs = LoadedModel(onnx_bytes, MANIFEST, FEATURES).run(player)
    assert list(outputs) == ["label", "probabilities"]
    assert same(outputs["label"], int(label[0]))
    assert same(outputs["probabilities"], [float(p) for p in probabilities[0]])


@pytest.mark.parametrize("player", PLAYERS)
def test_string_label_classifier_outputs_match_onnxruntime(
    string_classifier: bytes, player: dict[str, Any]
) -> None:
    label, probabilities = reference_outputs(string_classifier, row_of(player))
    model = LoadedModel(string_classifier, MANIFEST, FEATURES)
    outputs = model.run(player)
    assert same(outputs["output_label"], str(label[0]))
    assert outputs["output_label"] in ("stay", "churn")
    assert same(
        outputs["output_probability"], {str(k): float(v) for k, v in probabilities[0].items()}
    )


def test_string_label_classifier_probabilities_reach_onnxruntime(string_classifier: bytes) -> None:
    # The model itself answers string labels, so the test above compares like with like.
    label, probabilities = reference_outputs(string_classifier, row_of(PLAYERS[0]))
    assert label.dtype == object
    assert isinstance(label[0], str)
    assert set(probabilities[0]) == {"stay", "churn"}


# --- refusals at load time -----------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"", b"not an onnx model", b"\x08\x07" + bytes(range(200))])
def test_garbage_bytes_are_rejected(garbage: bytes) -> None:
    with pytest.raises(ModelRejected, match="not an ONNX model"):
        LoadedModel(garbage, MANIFEST, FEATURES)


def test_an_unknown_feature_without_default_is_rejected(regressor: bytes) -> None:
    manifest = Manifest(inputs={INPUT: ["spend_total", "purchases_7d", "mystery"]})
    with pytest.raises(ModelRejected, match="feature 'mystery' is not in the features file"):
        LoadedModel(regressor, manifest, FEATURES)


@pytest.mark.parametrize("columns", [COLUMNS[:2], [*COLUMNS, "sessions_7d"]])
def test_the_wrong_width_is_rejected(regressor: bytes, columns: list[str]) -> None:
    with pytest.raises(ModelRejected, match=rf"lists {len(columns)} feature\(s\).*takes 3"):
        LoadedModel(regressor, Manifest(inputs={INPUT: columns}), FEATURES)


def test_a_graph_input_missing_from_the_manifest_is_rejected() -> None:
    two_inputs = graph_model(
        [("a", TensorProto.FLOAT, [None, 1]), ("b", TensorProto.FLOAT, [None, 1])]
    )
    with pytest.raises(ModelRejected, match=r"no features for model input\(s\) \['b'\]"):
        LoadedModel(two_inputs, Manifest(inputs={"a": ["spend_total"]}), FEATURES)
    both = LoadedModel(
        two_inputs, Manifest(inputs={"a": ["spend_total"], "b": ["sessions_7d"]}), FEATURES
    )
    assert both.run({"spend_total": 2.5, "sessions_7d": 4}) == {"a_out": [2.5], "b_out": [4.0]}


def test_an_extra_input_name_is_rejected(regressor: bytes) -> None:
    manifest = Manifest(inputs={INPUT: COLUMNS, "bogus": ["spend_total"]})
    with pytest.raises(ModelRejected, match=r"\['bogus'\] not input\(s\) of the model"):
        LoadedModel(regressor, manifest, FEATURES)


def test_an_input_of_unsupported_type_is_rejected() -> None:
    model = graph_model([("x", TensorProto.UINT8, [None, 1])])
    with pytest.raises(ModelRejected, match="tensor\\(uint8\\), which is not supported"):
        LoadedModel(model, Manifest(inputs={"x": ["spend_total"]}), FEATURES)


def test_an_input_that_is_not_batch_by_features_is_rejected() -> None:
    model = graph_model([("x", TensorProto.FLOAT, [None, 2, 2])])
    with pytest.raises(ModelRejected, match=r"expected \[batch, features\]"):
        LoadedModel(model, Manifest(inputs={"x": ["spend_total"] * 4}), FEATURES)


def test_an_empty_feature_list_is_rejected_for_a_free_width_input() -> None:
    model = graph_model([("x", TensorProto.FLOAT, [None, None])])
    with pytest.raises(ModelRejected, match="lists no features"):
        LoadedModel(model, Manifest(inputs={"x": []}), FEATURES)
    free = LoadedModel(model, Manifest(inputs={"x": ["spend_total", "sessions_7d"]}), FEATURES)
    assert free.run({"spend_total": 1.5, "sessions_7d": 2}) == {"x_out": [1.5, 2.0]}


def test_a_model_that_fails_its_test_run_is_rejected() -> None:
    # A string input fed by a feature that is null by default, with no manifest default.
    model = graph_model([("mode", TensorProto.STRING, [None, 1])])
    with pytest.raises(ModelRejected, match=r"test run.*'favourite_mode' has no value"):
        LoadedModel(model, Manifest(inputs={"mode": ["favourite_mode"]}), FEATURES)
    with_default = LoadedModel(
        model,
        Manifest(inputs={"mode": ["favourite_mode"]}, defaults={"favourite_mode": "solo"}),
        FEATURES,
    )
    assert with_default.manifest.defaults == {"favourite_mode": "solo"}


def test_a_value_the_input_cannot_hold_is_a_prediction_failure(regressor: bytes) -> None:
    model = LoadedModel(regressor, MANIFEST, FEATURES)
    with pytest.raises(PredictionFailed, match=r"'float_input'.*do not fit float32"):
        model.run({"spend_total": "lots", "purchases_7d": 1, "sessions_7d": 1})


# --- manifests -----------------------------------------------------------------------------


def test_parse_manifest_reads_the_contract_example() -> None:
    manifest = parse_manifest(
        b'{"inputs": {"float_input": ["spend_total", "purchases_7d", "sessions_7d"]},'
        b' "defaults": {"spend_total": 0.0}}'
    )
    assert manifest.inputs == {INPUT: COLUMNS}
    assert manifest.defaults == {"spend_total": 0.0}
    assert parse_manifest('{"inputs": {"x": ["a"]}}').defaults == {}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"inputs: x", "not valid JSON"),
        (b"[]", "Expected `object`"),
        (b"{}", "missing required field `inputs`"),
        (b'{"inputs": ["a"]}', "$.inputs"),
        (b'{"inputs": {"x": "a"}}', "$.inputs"),
        (b'{"inputs": {"x": [1]}}', "$.inputs"),
        (b'{"inputs": {"x": ["a"]}, "defaults": []}', "$.defaults"),
        (b'{"inputs": {"x": ["a"]}, "defaults": {"a": [1]}}', "$.defaults"),
        (b'{"inputs": {"x": ["a"]}, "defaults": {"a": null}}', "$.defaults"),
        (b'{"inputs": {"x": ["a"]}, "input": {}}', "unknown field `input`"),
        (b'{"inputs": {}}', "manifest.inputs: maps no model input"),
    ],
)
def test_parse_manifest_rejects_naming_the_problem(raw: bytes, problem: str) -> None:
    with pytest.raises(ModelRejected, match=r"^manifest") as info:
        parse_manifest(raw)
    assert problem in str(info.value)


# --- to_json -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.int64(3), 3),
        (np.int32(-2), -2),
        (np.float32(0.5), 0.5),
        (np.float64(0.1), 0.1),
        (np.bool_(True), True),
        (np.str_("gold"), "gold"),
        (np.array(5), 5),
        (np.array([7], dtype=np.int64), 7),
        (np.array([0.25], dtype=np.float32), 0.25),
        (np.array([[1.5, 2.5]], dtype=np.float32), [1.5, 2.5]),
        (np.array([[1, 2], [3, 4]]), [[1, 2], [3, 4]]),
        (np.array([1, 2, 3]), [1, 2, 3]),
        (np.array([[np.nan, 1.0]]), [None, 1.0]),
        (np.array([[np.inf, -np.inf]]), [None, None]),
        (np.array([np.nan]), None),
        (np.array(np.nan), None),
        (np.array([["a", "b"]], dtype=object), ["a", "b"]),
        ([{1: np.float32(0.25), 2: 0.75}], {"1": 0.25, "2": 0.75}),
        ([{"a": 1.0}, {"a": 0.0}], [{"a": 1.0}, {"a": 0.0}]),
        ({"k": (1, 2)}, {"k": [1, 2]}),
        (b"bytes", "bytes"),
        ("text", "text"),
        (float("nan"), None),
        (None, None),
    ],
)
def test_to_json_gives_plain_values(value: Any, expected: Any) -> None:
    assert same(to_json(value), expected)


@pytest.mark.parametrize(
    "value",
    [np.float64("nan"), np.float32("nan"), np.float32("inf"), [{"a": np.float32("nan")}]],
)
def test_to_json_turns_non_finite_numpy_scalars_into_null(value: Any) -> None:
    result = to_json(value)
    assert (result["a"] if isinstance(result, dict) else result) is None


@pytest.mark.parametrize(
    "value", [np.array(["stay"], dtype=object), np.array([b"x"], dtype=object)]
)
def test_to_json_handles_a_one_row_string_tensor(value: Any) -> None:
    assert to_json(value) in ("stay", "x")


def test_a_manifest_may_name_the_positive_class_probability(tree_classifier: bytes) -> None:
    manifest = parse_manifest(
        '{"inputs": {"float_input": ["spend_total", "purchases_7d", "sessions_7d"]},'
        ' "probability": {"output": "output_probability", "class": "1"}}'
    )
    assert manifest.probability is not None
    assert manifest.probability.class_ == "1"
    LoadedModel(tree_classifier, manifest, FEATURES)


@pytest.mark.parametrize(
    ("probability", "reason"),
    [
        ('{"output": "nope"}', "manifest.probability.output: 'nope' is not an output"),
        ('{"output": "output_probability", "class": "7"}', "no number for class '7'"),
        ('{"output": "output_label"}', "no number for class None"),
        ('{"output": "output_probability", "klass": "1"}', "manifest: Object contains unknown"),
    ],
)
def test_a_probability_the_outputs_do_not_hold_is_refused(
    tree_classifier: bytes, probability: str, reason: str
) -> None:
    raw = (
        '{"inputs": {"float_input": ["spend_total", "purchases_7d", "sessions_7d"]},'
        f' "probability": {probability}}}'
    )
    with pytest.raises(ModelRejected, match=re.escape(reason)):
        LoadedModel(tree_classifier, parse_manifest(raw), FEATURES)
