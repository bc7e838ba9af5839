"""Did the model help? Exposures closed with outcomes, per version, against a control.

A player's exposure is their first served prediction of the model in the period (shadow
predictions answer nobody, so they expose nobody); their outcome is made of their own
events of the outcome's type in the ``within`` after it (each event once). The SQL runs
on DuckDB over the lake's ``predictions`` and ``distinct_events``; the statistics are
pure functions of the counts (statsmodels and scipy), unit-tested apart from the lake.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import msgspec
import numpy as np

from app.domain.outcome import Outcome
from app.domain.predictions import ProbabilitySpec, positive_probability

from .reports import json_path

SRM_ALPHA = 0.001
"""Below this chi-square p-value, the split did not expose players as configured."""
RELIABILITY_BINS = 10


@dataclass(frozen=True, slots=True)
class ArmCounts:
    """One version's exposed players, those with an outcome, and the outcome's total."""

    version: int
    players: int
    converted: int
    value_sum: float


@dataclass(frozen=True, slots=True)
class ArmRow:
    """A report row: a version's results, and against the control (None for the control)."""

    version: int
    share: int | None
    players: int
    converted: int
    rate: float | None
    mean_value: float | None
    uplift: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None


@dataclass(frozen=True, slots=True)
class SampleRatio:
    """Did the split expose players in the shares it was set to? (chi-square test)"""

    p_value: float | None
    expected: dict[int, float]
    ok: bool
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    """Predictions whose probability fell in [low, high): how many, mean and observed rate."""

    low: float
    high: float
    players: int
    mean_predicted: float
    observed_rate: float


@dataclass(frozen=True, slots=True)
class Calibration:
    """How well one version's probabilities matched the outcomes (outcome ``any``)."""

    version: int
    players: int
    brier: float
    log_loss: float
    auc: float | None
    reliability: list[ReliabilityBin] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    """The experiment report of one model over a period."""

    model: str
    outcome: dict[str, str]
    control: int | None
    rows: list[ArmRow]
    srm: SampleRatio | None
    calibration: list[Calibration]
    warnings: list[str]

    ROW_COLUMNS = (
        "version",
        "share",
        "players",
        "converted",
        "rate",
        "mean_value",
        "uplift",
        "ci_low",
        "ci_high",
        "p_value",
    )

    def table(self) -> tuple[list[str], list[tuple[Any, ...]]]:
        """The rows as columns and tuples (for table and CSV output)."""
        rows = [tuple(getattr(r, c) for c in self.ROW_COLUMNS) for r in self.rows]
        return list(self.ROW_COLUMNS), rows


# -- statistics (pure) ---------------------------------------------------------------


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def compare(arm: ArmCounts, control: ArmCounts) -> tuple[float, float, float, float | None]:
    """Uplift (difference of rates), its 95% interval (Newcomb) and the score test p-value."""
    from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep

    args = (arm.converted, arm.players, control.converted, control.players)
    uplift = arm.converted / arm.players - control.converted / control.players
    low, high = confint_proportions_2indep(*args, method="newcomb", compare="diff")
    with np.errstate(all="ignore"):
        test = test_proportions_2indep(*args, method="score", compare="diff")
    p_value = _finite(test.pvalue)
    if p_value is None and arm.converted * control.players == control.converted * arm.players:
        p_value = 1.0  # the same rate (all or nothing in both): no difference to test
    # A difference of rates lies in [-1, 1]; the interval's float arithmetic can step past
    # it by an ulp (seen: -1.0000000000000002 for 0 of 20 against 2,230 of 2,230).
    return uplift, max(-1.0, float(low)), min(1.0, float(high)), p_value


def arm_rows(
    arms: list[ArmCounts], control: int | None, shares: dict[int, int] | None
) -> list[ArmRow]:
    """One row per version; each other version compared with the control."""
    by_version = {a.version: a for a in arms}
    base = by_version.get(control) if control is not None else None
    rows = []
    for arm in sorted(arms, key=lambda a: a.version):
        share = shares.get(arm.version) if shares else None
        rate = arm.converted / arm.players if arm.players else None
        mean = arm.value_sum / arm.players if arm.players else None
        row = ArmRow(arm.version, share, arm.players, arm.converted, rate, mean)
        if base is not None and arm.version != control and arm.players and base.players:
            uplift, low, high, p_value = compare(arm, base)
            row = ArmRow(
                arm.version,
                share,
                arm.players,
                arm.converted,
                rate,
                mean,
                uplift,
                low,
                high,
                p_value,
            )
        rows.append(row)
    return rows


def sample_ratio(arms: list[ArmCounts], shares: dict[int, int]) -> SampleRatio:
    """Chi-square test of the exposed players per version against the split's shares."""
    from scipy.stats import chisquare

    versions = sorted(v for v, p in shares.items() if p)
    observed = [next((a.players for a in arms if a.version == v), 0) for v in versions]
    total = sum(observed)
    expected = {v: total * shares[v] / 100 for v in versions}
    if len(versions) < 2 or total == 0:
        return SampleRatio(None, expected, True)
    p_value = float(chisquare(observed, f_exp=[expected[v] for v in versions]).pvalue)
    if p_value >= SRM_ALPHA:
        return SampleRatio(p_value, expected, True)
    seen = ", ".join(f"v{v}: {n}" for v, n in zip(versions, observed, strict=True))
    want = ", ".join(f"v{v}: {expected[v]:.0f}" for v in versions)
    warning = (
        f"sample ratio mismatch: exposed {seen}, the split expects {want} "
        f"(chi-square p = {p_value:.2g} < {SRM_ALPHA}); the arms are not comparable until "
        "the cause (lost logs, a changed split, a version failing) is found"
    )
    return SampleRatio(p_value, expected, False, warning)


def calibrate(version: int, predicted: np.ndarray, actual: np.ndarray) -> Calibration:
    """Brier score, log loss, AUC and a reliability table of probabilities vs outcomes."""
    from scipy.stats import mannwhitneyu

    p = np.clip(predicted.astype(float), 0.0, 1.0)
    y = actual.astype(float)
    brier = float(np.mean((p - y) ** 2))
    q = np.clip(p, 1e-15, 1 - 1e-15)
    log_loss = float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
    positive, negative = p[y == 1], p[y == 0]
    auc = None
    if len(positive) and len(negative):
        u = mannwhitneyu(positive, negative, alternative="two-sided").statistic
        auc = float(u) / (len(positive) * len(negative))
    edges = np.linspace(0.0, 1.0, RELIABILITY_BINS + 1)
    index = np.minimum(np.searchsorted(edges, p, side="right") - 1, RELIABILITY_BINS - 1)
    bins = [
        ReliabilityBin(
            round(float(edges[b]), 6),
            round(float(edges[b + 1]), 6),
            int(np.sum(index == b)),
            float(np.mean(p[index == b])),
            float(np.mean(y[index == b])),
        )
        for b in range(RELIABILITY_BINS)
        if np.any(index == b)
    ]
    return Calibration(version, len(p), brier, log_loss, auc, bins)


def expected_shares(
    history: list[tuple[datetime, dict[int, int]]], versions: set[int]
) -> dict[int, int] | None:
    """The split the exposures came from: the newest whose serving versions are theirs."""
    for _at, split in reversed(history):
        if {v for v, p in split.items() if p} == versions:
            return split
    return None


# -- the lake (DuckDB) ---------------------------------------------------------------

_EXPOSED = """
    exposed AS (
        SELECT player_id, arg_min(version, ts) AS version, min(ts) AS exposed_at,
            arg_min(outputs, ts) AS outputs
        FROM predictions
        WHERE game = $game AND model = $model AND NOT shadow AND player_id IS NOT NULL
            AND ts >= $start AND ts < $end
        GROUP BY player_id
    ),
    hits AS (
        SELECT x.player_id, count(*) AS n, fsum(
            CASE WHEN json_type(json_extract(e.props, $path)) IN ('BIGINT', 'UBIGINT', 'DOUBLE')
                 THEN json_extract(e.props, $path)::DOUBLE END) AS total
        FROM exposed x JOIN distinct_events e
            ON e.player_id = x.player_id AND e.ts >= x.exposed_at
            AND e.ts < x.exposed_at + to_seconds($within)
        WHERE e.game = $game AND e.type = $event AND e.date >= $first_day
        GROUP BY x.player_id
    )
"""

_VALUE_SUM = {
    "any": "count(h.player_id)::DOUBLE",
    "count": "coalesce(sum(h.n), 0)::DOUBLE",
    "sum": "coalesce(fsum(h.total), 0)::DOUBLE",
}


@dataclass(frozen=True, slots=True)
class Exposure:
    """Which exposures an experiment counts: a game's model, an outcome, a time window."""

    game: str
    model: str
    outcome: Outcome
    start: datetime
    end: datetime

    def params(self) -> dict[str, Any]:
        """The query parameters of :data:`_EXPOSED`."""
        return {
            "game": self.game,
            "model": self.model,
            "start": self.start,
            "end": self.end,
            "first_day": self.start.date(),
            "event": self.outcome.event,
            "within": self.outcome.within_s,
            "path": json_path(tuple((self.outcome.field or "_").split("."))),
        }


def exposure_counts(conn: duckdb.DuckDBPyConnection, exposure: Exposure) -> list[ArmCounts]:
    """Exposed players, converted players and the outcome's total, per version."""
    sql = f"""
        WITH {_EXPOSED}
        SELECT x.version, count(*) AS players, count(h.player_id) AS converted,
            {_VALUE_SUM[exposure.outcome.kind]} AS value_sum
        FROM exposed x LEFT JOIN hits h USING (player_id)
        GROUP BY x.version ORDER BY x.version
    """
    rows = conn.execute(sql, exposure.params()).fetchall()
    return [ArmCounts(int(v), int(n), int(c), float(s)) for v, n, c, s in rows]


def exposure_probabilities(
    conn: duckdb.DuckDBPyConnection, exposure: Exposure, specs: dict[int, ProbabilitySpec]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per version with a probability spec: predicted probabilities and outcomes (0/1)."""
    sql = f"""
        WITH {_EXPOSED}
        SELECT x.version, x.outputs, h.player_id IS NOT NULL AS converted
        FROM exposed x LEFT JOIN hits h USING (player_id)
    """
    decoded: dict[int, tuple[list[float], list[int]]] = {}
    for version, outputs, converted in conn.execute(sql, exposure.params()).fetchall():
        spec = specs.get(int(version))
        if spec is None:
            continue
        probability = positive_probability(msgspec.json.decode(outputs), spec)
        if probability is not None:
            predicted, actual = decoded.setdefault(int(version), ([], []))
            predicted.append(probability)
            actual.append(int(converted))
    return {v: (np.array(p), np.array(a)) for v, (p, a) in decoded.items()}


def plot_experiment(report: ExperimentReport, path: Any) -> None:
    """Draw the report as a PNG: rates with 95% intervals per version, and reliability."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if report.calibration else 1
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    try:
        _plot_rates(axes[0][0], report)
        if report.calibration:
            _plot_reliability(axes[0][1], report.calibration)
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=100)
    finally:
        plt.close(figure)


def _plot_rates(axis: Any, report: ExperimentReport) -> None:
    """Conversion per version with Wilson 95% intervals, uplift and p-value on each bar."""
    from statsmodels.stats.proportion import proportion_confint

    rows = [r for r in report.rows if r.players]
    labels = [f"v{r.version}" + (" (control)" if r.version == report.control else "") for r in rows]
    rates = [r.converted / r.players for r in rows]
    low, high = proportion_confint(
        [r.converted for r in rows], [r.players for r in rows], method="wilson"
    )
    errors = [np.subtract(rates, low), np.subtract(high, rates)]
    axis.bar(labels, rates, yerr=errors, capsize=8, color="#4c78a8")
    for x, r in enumerate(rows):
        text = f"{rates[x]:.1%}\nn={r.players}"
        if r.uplift is not None and r.ci_low is not None and r.ci_high is not None:
            text += f"\n{r.uplift * 100:+.1f} pts\n[{r.ci_low * 100:+.1f}, {r.ci_high * 100:+.1f}]"
            if r.p_value is not None:
                text += f"\np = {r.p_value:.2g}"
        axis.text(x, rates[x] / 2, text, ha="center", va="center", color="white")
    axis.set_ylim(0, max(high) * 1.15 if len(rows) else 1)
    axis.set_ylabel(f"rate: {report.outcome['event']} within {report.outcome['within']}")
    title = f"{report.model}: conversion by version (95% intervals)"
    if report.srm is not None and not report.srm.ok:
        title += "\nSAMPLE RATIO MISMATCH"
    axis.set_title(title)


def _plot_reliability(axis: Any, calibration: list[Calibration]) -> None:
    """Observed rate against mean predicted probability, per version."""
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    for c in calibration:
        shown = [b for b in c.reliability if b.players >= 20]  # the rest is noise
        axis.plot(
            [b.mean_predicted for b in shown],
            [b.observed_rate for b in shown],
            marker="o",
            label=f"v{c.version} (Brier {c.brier:.3f})",
        )
    axis.set_xlabel("predicted probability")
    axis.set_ylabel("observed rate")
    axis.set_title("reliability (bins of 20+ players)")
    axis.legend()
