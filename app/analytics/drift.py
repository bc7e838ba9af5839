"""Drift: do live players still look like the training set? PSI per feature.

An upload may carry the training set's statistics: per feature, ``edges`` (the inner cut
points of its bins, deciles of the training values), ``counts`` (one more than the
edges: values up to the first edge, ..., above the last) and ``missing`` (null values).
The live side is the features of the version's logged predictions in a period, binned
the same way. The population stability index sums ``(live - train) * ln(live / train)``
over the bins' shares; above 0.2 a feature is flagged (the usual reading: under 0.1
stable, 0.1 to 0.2 a moderate shift, above 0.2 a major one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from app.domain.drift import DriftError, FeatureBins, TrainingStats, parse_stats

from .reports import json_path

__all__ = ["DriftError", "FeatureBins", "TrainingStats", "parse_stats"]

PSI_FLAG = 0.2
BINS = 10
_FLOOR = 1e-4  # a share of 0 would make the logarithm infinite


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """One feature: its PSI, whether it is flagged, and how many values each side had."""

    feature: str
    psi: float
    flagged: bool
    live: int
    training: int


def as_floats(column: Any) -> np.ndarray:
    """A DuckDB numpy column as floats, NaN for null (DuckDB masks nulls)."""
    return np.ma.filled(np.ma.asarray(column, dtype=float), np.nan)


def bin_values(values: np.ndarray) -> FeatureBins:
    """A feature's bins from training values: decile edges (distinct), counts, nulls."""
    finite = values[~np.isnan(values)]
    if len(finite) == 0:
        return FeatureBins([], [0], len(values))
    quantiles = np.quantile(finite, np.linspace(0, 1, BINS + 1)[1:-1])
    edges = sorted({float(q) for q in quantiles})
    return FeatureBins(edges, count_bins(edges, finite), int(len(values) - len(finite)))


def count_bins(edges: list[float], values: np.ndarray) -> list[int]:
    """How many values fall in each bin: (-inf, e1], (e1, e2], ..., (ek, inf)."""
    index = np.searchsorted(np.array(edges, dtype=float), values, side="left")
    return [int(n) for n in np.bincount(index, minlength=len(edges) + 1)]


def psi(expected: list[int], actual: list[int]) -> float:
    """The population stability index of two histograms over the same bins."""
    e = np.array(expected, dtype=float)
    a = np.array(actual, dtype=float)
    if e.sum() == 0 or a.sum() == 0:
        return math.nan
    e = np.maximum(e / e.sum(), _FLOOR)
    a = np.maximum(a / a.sum(), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def feature_drift(name: str, bins: FeatureBins, live: np.ndarray) -> FeatureDrift:
    """Compare one feature's live values (NaN for null) with its training bins."""
    finite = live[~np.isnan(live)]
    actual = [*count_bins(bins.edges, finite), int(len(live) - len(finite))]
    expected = [*bins.counts, bins.missing]
    value = psi(expected, actual)
    return FeatureDrift(name, value, bool(value > PSI_FLAG), len(live), sum(expected))


def stats_from_table(path: Path, features: list[str]) -> TrainingStats:
    """Training statistics from a Parquet (or CSV) training set with the features' columns."""
    conn = duckdb.connect(":memory:")
    try:
        reader = "read_csv_auto" if path.suffix.lower() == ".csv" else "read_parquet"
        source = f"{reader}('{str(path).replace(chr(39), chr(39) * 2)}')"
        columns = [c[0] for c in conn.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
        missing = [f for f in features if f not in columns]
        if missing:
            raise DriftError(f"--training: {path} has no column(s) {missing}")
        select = ", ".join(f'TRY_CAST("{f}" AS DOUBLE) AS "{f}"' for f in features)
        table = conn.execute(f"SELECT {select} FROM {source}").fetchnumpy()
    except duckdb.Error as exc:
        raise DriftError(f"--training: {exc}") from None
    finally:
        conn.close()
    return TrainingStats({f: bin_values(as_floats(table[f])) for f in features})


def live_features(
    conn: duckdb.DuckDBPyConnection,
    game: str,
    model: str,
    version: int,
    features: list[str],
    start: datetime,
    end: datetime,
) -> dict[str, np.ndarray]:
    """The features of a version's logged predictions (served and shadow) in a period."""
    columns = ", ".join(
        f"TRY_CAST(json_extract(features, $p{i}) AS DOUBLE) AS c{i}" for i in range(len(features))
    )
    params: dict[str, Any] = {
        "game": game,
        "model": model,
        "version": version,
        "start": start,
        "end": end,
    }
    params.update({f"p{i}": json_path((f,)) for i, f in enumerate(features)})
    result = conn.execute(
        f"SELECT {columns} FROM predictions WHERE game = $game AND model = $model "
        "AND version = $version AND ts >= $start AND ts < $end",
        params,
    ).fetchnumpy()
    return {f: as_floats(result[f"c{i}"]) for i, f in enumerate(features)}
