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
