"""Loading an ONNX model against its manifest, and running it on one player's features.

Everything that can be checked is checked at load time (that is, at upload): the
model loads in onnxruntime, every graph input is mapped by the manifest to features
of the right number and type, and a test run on default features succeeds. After
that, a prediction can only fail on a feature value the input type cannot hold, which
is reported as a clear error, never a crash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import onnx
import onnxruntime as ort
from onnx import external_data_helper

from app.domain.features import FeatureSet
from app.domain.predictions import ProbabilitySpec, positive_probability


class ModelRejected(ValueError):
    """The model or its manifest cannot be served; the message names the reason."""


class PredictionFailed(RuntimeError):
    """A valid model could not run on these feature values; the message says why."""


class Manifest(msgspec.Struct, forbid_unknown_fields=True):
    """How features fill a model's inputs (the README's model section says how)."""

    inputs: dict[str, list[str]]
    defaults: dict[str, float | int | bool | str] = msgspec.field(default_factory=dict)
    probability: ProbabilitySpec | None = None
    """Classifiers: where the positive class's probability is (for calibration reports)."""


_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}
_FLOATING = (np.float16, np.float32, np.float64)
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
"""Operator domains a model may use: standard ONNX and ONNX-ML, nothing custom."""


def check_onnx(raw: bytes) -> None:
    """Refuse what onnxruntime would load but we will not serve; raises ModelRejected.

    Not ONNX, failing the ONNX checker, tensors in external data files (they would be
    read from the server's disk), or operators outside the standard domains.
    """
    try:
        model = onnx.load_model_from_string(raw)
    except Exception as exc:
        raise ModelRejected(f"model: not an ONNX model ({_clean(exc)})") from None
    if not model.graph.node and not model.graph.input:
        raise ModelRejected("model: not an ONNX model (no graph)")
    external = [
        t.name for t in external_data_helper._get_all_tensors(model) if t.data_location == 1
    ]
    if external:
        raise ModelRejected(
            f"model: tensors {external[:5]} are stored in external data files; "
            "embed them in the model (onnx.save_model(..., save_as_external_data=False))"
        )
    domains = {o.domain for o in model.opset_import} | {n.domain for n in model.graph.node}
    custom = sorted(domains - STANDARD_DOMAINS)
    if custom:
        raise ModelRejected(
            f"model: uses operators of the domain(s) {custom}; only the standard ONNX "
            "domains (ai.onnx, ai.onnx.ml) are served"
        )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelRejected(f"model: fails the ONNX checker: {_clean(exc)}") from None


def parse_manifest(raw: bytes | str) -> Manifest:
    """Decode a manifest; raises :class:`ModelRejected` naming the bad field."""
    try:
        manifest = msgspec.json.decode(raw, type=Manifest)
    except msgspec.ValidationError as exc:
        raise ModelRejected(f"manifest: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ModelRejected(f"manifest: not valid JSON: {exc}") from None
    if not manifest.inputs:
        raise ModelRejected("manifest.inputs: maps no model input to features")
    return manifest


@dataclass(frozen=True, slots=True)
class InputBinding:
    """One graph input and the features that fill its last dimension, in order."""

    name: str
    dtype: Any
    features: tuple[str, ...]


class LoadedModel:
    """An ONNX session bound to a manifest, ready to run for one player at a time."""

    def __init__(
        self, raw: bytes, manifest: Manifest, features: FeatureSet, *, checked: bool = False
    ) -> None:
        if not checked:
            check_onnx(raw)
        options = ort.SessionOptions()
        # One player per call: threads would only add hand-off latency on a small machine.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                raw, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelRejected(f"model: onnxruntime cannot load it: {_clean(exc)}") from None
        self.manifest = manifest
        self.bindings = _bind(self.session, manifest, features)
        self.output_names = [o.name for o in self.session.get_outputs()]
        try:
            outputs = self.run({name: features[name].empty_value for name in features.names})
        except PredictionFailed as exc:
            raise ModelRejected(f"model failed a test run on default features: {exc}") from None
        if manifest.probability is not None:
            _check_probability(manifest.probability, outputs)
        self.batchable = self._runs_in_batches(features, outputs)

    def _runs_in_batches(self, features: FeatureSet, one: dict[str, Any]) -> bool:
        """Whether rows can share one ``session.run``: every input takes any number of
        rows, and two stacked default rows give the one-row answer twice."""
        if any(isinstance(i.shape[0], int) for i in self.session.get_inputs()):
            return False
        row = {name: features[name].empty_value for name in features.names}
        feeds = {}
        try:
            for binding in self.bindings:
                line = self.filled(binding, [row.get(name) for name in binding.features])
                feeds[binding.name] = np.array([line, line], dtype=binding.dtype)
            outputs = self.session.run(self.output_names, feeds)
        except Exception:
            return False
        for name, value in zip(self.output_names, outputs, strict=True):
            if isinstance(value, np.ndarray):
                if value.ndim == 0 or value.shape[0] != 2:
                    return False
            elif not isinstance(value, list) or len(value) != 2:
                return False
            if row_json(value[0]) != one[name] or row_json(value[1]) != one[name]:
                return False
        return True

    def filled(self, binding: InputBinding, line: list[Any]) -> list[Any]:
        """One player's row for ``binding`` with null features replaced by their
        defaults (NaN for float inputs without one); raises PredictionFailed."""
        return [
            self._default(binding, name) if value is None else value
            for name, value in zip(binding.features, line, strict=True)
        ]

    def run(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Outputs for one player, as plain JSON values, by output name."""
        feeds = {}
        for binding in self.bindings:
            row = [values.get(name) for name in binding.features]
            if any(value is None for value in row):  # rare: defaults, then NaN or an error
                row = self.filled(binding, row)
            try:
                feeds[binding.name] = np.array([row], dtype=binding.dtype)
            except (TypeError, ValueError) as exc:
                raise PredictionFailed(
                    f"input {binding.name!r}: feature values {row!r} do not fit "
                    f"{np.dtype(binding.dtype).name}: {exc}"
                ) from None
        try:
            outputs = self.session.run(self.output_names, feeds)
        except Exception as exc:
            raise PredictionFailed(f"onnxruntime: {_clean(exc)}") from None
        return {
            name: to_json(value) for name, value in zip(self.output_names, outputs, strict=True)
        }

    def _default(self, binding: InputBinding, name: str) -> Any:
        """The manifest's default for a null feature; NaN for a float input without one."""
        value = self.manifest.defaults.get(name)
        if value is None:
            if binding.dtype not in _FLOATING:
                raise PredictionFailed(f"feature {name!r} has no value and no default")
            value = math.nan
        return value


def _check_probability(spec: ProbabilitySpec, outputs: dict[str, Any]) -> None:
    if spec.output not in outputs:
        raise ModelRejected(
            f"manifest.probability.output: {spec.output!r} is not an output of the model; "
            f"its outputs are {sorted(outputs)}"
        )
    if positive_probability(outputs, spec) is None:
        raise ModelRejected(
            f"manifest.probability: output {spec.output!r} holds {outputs[spec.output]!r} on "
            f"a test run, with no number for class {spec.class_!r}"
        )


def _bind(
    session: ort.InferenceSession, manifest: Manifest, features: FeatureSet
) -> list[InputBinding]:
    graph_inputs = {i.name: i for i in session.get_inputs()}
    missing = sorted(set(graph_inputs) - set(manifest.inputs))
    if missing:
        raise ModelRejected(
            f"manifest.inputs: no features for model input(s) {missing}; "
            f"the model's inputs are {sorted(graph_inputs)}"
        )
    unknown = sorted(set(manifest.inputs) - set(graph_inputs))
    if unknown:
        raise ModelRejected(
            f"manifest.inputs: {unknown} not input(s) of the model; "
            f"its inputs are {sorted(graph_inputs)}"
        )
    bindings = []
    for name, names in manifest.inputs.items():
        node = graph_inputs[name]
        dtype = _DTYPES.get(node.type)
        if dtype is None:
            raise ModelRejected(
                f"model input {name!r} has type {node.type}, which is not supported"
            )
        shape = node.shape
        if len(shape) != 2:
            raise ModelRejected(
                f"model input {name!r} has shape {shape}; expected [batch, features]"
            )
        width = shape[-1]
        if isinstance(width, int) and width != len(names):
            raise ModelRejected(
                f"manifest.inputs.{name}: lists {len(names)} feature(s) but the model "
                f"input takes {width}"
            )
        if not names:
            raise ModelRejected(f"manifest.inputs.{name}: lists no features")
        for feature in names:
            if feature not in features and feature not in manifest.defaults:
                raise ModelRejected(
                    f"manifest.inputs.{name}: feature {feature!r} is not in the features "
                    f"file and has no default in manifest.defaults (features: "
                    f"{', '.join(features.names)})"
                )
        bindings.append(InputBinding(name, dtype, tuple(names)))
    return bindings


def to_json(value: Any) -> Any:
    """One player's part of an ONNX output as plain JSON: number, string, list or object."""
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return _plain(value.item())
        if value.shape[0] == 1:  # the batch dimension: we ran one player
            return _plain(value[0].tolist() if value.ndim > 1 else value[0])
        return _plain(value.tolist())
    if isinstance(value, list):  # a sequence, e.g. scikit-learn's ZipMap: one map per row
        return _plain(value[0]) if len(value) == 1 else _plain(value)
    return _plain(value)


def row_json(value: Any) -> Any:
    """One row of a batched output (``output[i]``) as plain JSON, as :func:`to_json`
    gives it for a one-row run."""
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    return _plain(value)


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind is int or kind is str or kind is bool:  # the usual cases first
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _clean(exc: Exception) -> str:
    text = str(exc).strip()
    return text if len(text) < 500 else text[:497] + "..."
