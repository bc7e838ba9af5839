"""Logged predictions: the record written to the predictions topic and the lake."""

from __future__ import annotations

from typing import Any

import msgspec


class PredictionRecord(msgspec.Struct, omit_defaults=True):
    """One prediction (served or shadow): model, version, inputs, outputs and latency.

    ``ts`` is microseconds since the epoch, UTC; ``latency_us`` is the model's run time.
    """

    game: str
    model: str
    version: int
    ts: int
    latency_us: int
    outputs: dict[str, Any]
    features: dict[str, Any]
    shadow: bool = False
    player_id: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(list[PredictionRecord] | PredictionRecord)


def encode_predictions(records: list[PredictionRecord]) -> bytes:
    """One topic message holding several predictions (a JSON array)."""
    return _encoder.encode(records)


def decode_predictions(payload: bytes) -> list[PredictionRecord]:
    """The predictions of one topic message; raises ``msgspec.DecodeError`` otherwise."""
    decoded = _decoder.decode(payload)
    return decoded if isinstance(decoded, list) else [decoded]


class ProbabilitySpec(msgspec.Struct, forbid_unknown_fields=True):
    """Where a classifier's outputs hold the probability of the positive class.

    ``output`` names the model output; ``class`` the key of a map output (scikit-learn's
    ZipMap: ``{"0": 0.2, "1": 0.8}``) or the index in a list output. Without ``class``,
    a list of two takes its second element and a number is the probability itself.
    """

    output: str
    class_: str | None = msgspec.field(default=None, name="class")


def positive_probability(outputs: dict[str, Any], spec: ProbabilitySpec) -> float | None:
    """The positive class's probability in one prediction's outputs; None if absent (or if
    what is there is no probability)."""
    value = outputs.get(spec.output)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (dict, list)):
        value = value[0]
    if isinstance(value, dict):
        value = value.get(spec.class_) if spec.class_ is not None else None
    elif isinstance(value, list):
        if spec.class_ is not None:
            index = int(spec.class_) if spec.class_.isdigit() else -1
            value = value[index] if 0 <= index < len(value) else None
        else:
            value = value[1] if len(value) == 2 else None
    # A probability is a float from 0 to 1: an integer output is a label, not a probability.
    if not isinstance(value, float) or not 0.0 <= value <= 1.0:
        return None
    return value
