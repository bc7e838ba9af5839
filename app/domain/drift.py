"""Training feature statistics an upload may carry: bins per feature (see drift reports)."""

from __future__ import annotations

from typing import Any

import msgspec


class DriftError(ValueError):
    """Statistics or a training set that cannot be used; the message names the problem."""


class FeatureBins(msgspec.Struct, forbid_unknown_fields=True):
    """One feature's training distribution: bins by inner edges, and null values."""

    edges: list[float]
    counts: list[int]
    missing: int = 0


class TrainingStats(msgspec.Struct, forbid_unknown_fields=True):
    """Per feature, the training set's bins (the JSON an upload carries)."""

    features: dict[str, FeatureBins]


def parse_stats(
    raw: bytes | str | dict[str, Any], features: list[str] | None = None
) -> TrainingStats:
    """Decode and check training statistics; raises DriftError naming the bad field."""
    try:
        if isinstance(raw, dict):
            stats = msgspec.convert(raw, type=TrainingStats)
        else:
            stats = msgspec.json.decode(raw, type=TrainingStats)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise DriftError(f"training_stats: {exc}") from None
    for name, bins in stats.features.items():
        if len(bins.counts) != len(bins.edges) + 1:
            raise DriftError(
                f"training_stats.features.{name}: counts needs one more entry than edges "
                f"({len(bins.edges)} edges, {len(bins.counts)} counts)"
            )
        if bins.edges != sorted(set(bins.edges)) or any(c < 0 for c in bins.counts):
            raise DriftError(
                f"training_stats.features.{name}: edges must increase and counts be >= 0"
            )
    unknown = sorted(set(stats.features) - set(features)) if features is not None else []
    if unknown:
        raise DriftError(f"training_stats: {unknown} are not features of the model's manifest")
    return stats
