"""Real ONNX models made in the test run: scikit-learn (skl2onnx) and LightGBM (onnxmltools)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

FEATURES = ["spend_total", "purchases_7d", "sessions_7d"]
MANIFEST = json.dumps({"inputs": {"float_input": FEATURES}})


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [rng.gamma(1.2, 20.0, 600), rng.poisson(1.5, 600), rng.poisson(6.0, 600)]
    ).astype(np.float32)
    y = np.where(x[:, 0] > 40, 2, np.where(x[:, 1] == 0, 1, 0))
    return x, y


def sklearn_classifier() -> bytes:
    """A decision tree with scikit-learn's ZipMap output (label + class probabilities)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.tree import DecisionTreeClassifier

    x, y = _data()
    model = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x, y)
    return bytes(
        to_onnx(
            model, initial_types=[("float_input", FloatTensorType([None, 3]))], target_opset=17
        ).SerializeToString()
    )


def sklearn_regressor() -> bytes:
    """Gradient boosting regression of spend."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingRegressor

    x, _ = _data(1)
    model = GradientBoostingRegressor(n_estimators=20, random_state=0).fit(x, x[:, 0] * 0.3)
    return bytes(
        to_onnx(
            model, initial_types=[("float_input", FloatTensorType([None, 3]))], target_opset=17
        ).SerializeToString()
    )


def lightgbm_classifier() -> bytes:
    """LightGBM, converted by onnxmltools (a second converter)."""
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    x, y = _data(2)
    model = lightgbm.LGBMClassifier(n_estimators=15, verbose=-1).fit(x, y)
    return bytes(
        convert_lightgbm(
            model, initial_types=[("float_input", FloatTensorType([None, 3]))], target_opset=15
        ).SerializeToString()
    )


def reference(raw: bytes, row: list[float]) -> dict[str, Any]:
    """onnxruntime's own outputs for one row, by output name."""
    session = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    values = session.run(None, {"float_input": np.array([row], dtype=np.float32)})
    return {o.name: v for o, v in zip(session.get_outputs(), values, strict=True)}


def same(served: Any, expected: Any) -> bool:
    """Served JSON equals onnxruntime's output for one row (float32 tolerance)."""
    if isinstance(expected, np.ndarray):
        expected = expected[0].tolist() if expected.ndim > 1 else expected[0].item()
    if isinstance(expected, list) and expected and isinstance(expected[0], dict):
        expected = expected[0]
    if isinstance(expected, dict):
        return set(served) == {str(k) for k in expected} and all(
            same(served[str(k)], v) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return len(served) == len(expected) and all(
            same(a, b) for a, b in zip(served, expected, strict=True)
        )
    if isinstance(expected, float):
        return bool(abs(served - expected) <= 1e-5 * max(1.0, abs(expected)))
    return bool(served == expected)


def custom_domain_model() -> bytes:
    """A graph using an operator outside the standard domains."""
    node = helper.make_node("Magic", ["float_input"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "magic",
        [helper.make_tensor_value_info("float_input", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    return bytes(model.SerializeToString())


def failing_checker_model() -> bytes:
    """A graph whose node reads an input nothing defines: onnx.checker refuses it."""
    node = helper.make_node("Relu", ["nowhere"], ["y"])
    graph = helper.make_graph(
        [node],
        "broken",
        [helper.make_tensor_value_info("float_input", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
    )
    return bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )


def external_data_model() -> bytes:
    """A model whose weights point at an external file (as large models are saved)."""
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    weights.data_location = TensorProto.EXTERNAL
    entry = weights.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    del weights.float_data[:]
    node = helper.make_node("Mul", ["float_input", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "external",
        [helper.make_tensor_value_info("float_input", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        initializer=[weights],
    )
    return bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )


def int_input_model() -> bytes:
    """A model taking int64 features: a null feature without default cannot feed it."""
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "ints",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [None, 1])],
    )
    return bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )


__all__ = ["onnx"]
