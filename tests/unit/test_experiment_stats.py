"""Experiment statistics, drift, outcomes, guards and split changes: pure functions."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.analytics import drift
from app.analytics.experiment import (
    ArmCounts,
    arm_rows,
    calibrate,
    expected_shares,
    sample_ratio,
)
from app.domain.guard import Guard, GuardError, GuardWatch, p99
from app.domain.outcome import Outcome, OutcomeError
from app.domain.predictions import ProbabilitySpec, positive_probability
from app.domain.rollout import Rollout, RolloutError

pytestmark = pytest.mark.unit


# -- experiment rows -----------------------------------------------------------------


def test_rows_compare_each_version_with_the_control() -> None:
    arms = [ArmCounts(1, 1000, 100, 250.0), ArmCounts(2, 1000, 150, 300.0)]
    control, treated = arm_rows(arms, 1, {1: 50, 2: 50})
    assert (control.rate, control.mean_value, control.uplift) == (0.1, 0.25, None)
    assert treated.rate == 0.15
    assert treated.mean_value == 0.3
    assert treated.uplift == pytest.approx(0.05)
    assert treated.ci_low is not None
    assert treated.ci_high is not None
    assert treated.ci_low < 0.05 < treated.ci_high
    # Newcomb's interval for 150/1000 vs 100/1000, from the two Wilson intervals by hand.
    assert treated.ci_low == pytest.approx(0.0210462, abs=1e-6)
    assert treated.ci_high == pytest.approx(0.0790321, abs=1e-6)
    assert treated.p_value is not None
    assert treated.p_value < 0.01


def test_equal_rates_give_no_uplift_and_p_one() -> None:
    rows = arm_rows([ArmCounts(1, 50, 0, 0.0), ArmCounts(2, 80, 0, 0.0)], 1, None)
    assert rows[1].uplift == 0.0
    assert rows[1].p_value == 1.0
    assert rows[1].share is None


@settings(max_examples=60, deadline=None)
@given(
    n1=st.integers(20, 5000),
    n2=st.integers(20, 5000),
    r1=st.floats(0.0, 1.0),
    r2=st.floats(0.0, 1.0),
)
@example(n1=2230, n2=20, r1=1.0, r2=0.0)  # its float interval once ended at -1 - 2**-52
def test_the_interval_always_holds_the_observed_uplift(
    n1: int, n2: int, r1: float, r2: float
) -> None:
    c1, c2 = round(n1 * r1), round(n2 * r2)
    _, treated = arm_rows([ArmCounts(1, n1, c1, c1), ArmCounts(2, n2, c2, c2)], 1, None)
    assert treated.ci_low is not None
    assert treated.ci_high is not None
    assert treated.uplift is not None
    assert -1.0 <= treated.ci_low <= treated.uplift + 1e-9
    assert treated.uplift - 1e-9 <= treated.ci_high <= 1.0
    assert treated.p_value is None or 0.0 <= treated.p_value <= 1.0


def test_sample_ratio_mismatch_is_flagged_with_a_warning() -> None:
    skewed = sample_ratio([ArmCounts(1, 1200, 0, 0), ArmCounts(2, 800, 0, 0)], {1: 50, 2: 50})
    assert not skewed.ok
    assert skewed.p_value is not None
    assert skewed.p_value < 1e-10
    assert skewed.warning is not None
    assert "sample ratio mismatch" in skewed.warning
    fair = sample_ratio([ArmCounts(1, 1010, 0, 0), ArmCounts(2, 990, 0, 0)], {1: 50, 2: 50})
    assert fair.ok
    assert fair.warning is None
    uneven = sample_ratio([ArmCounts(1, 900, 0, 0), ArmCounts(2, 100, 0, 0)], {1: 90, 2: 10})
    assert uneven.ok


def test_expected_shares_come_from_the_newest_split_of_the_exposed_versions() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    history = [(at, {1: 100}), (at, {1: 50, 2: 50}), (at, {1: 90, 2: 10}), (at, {2: 100})]
    assert expected_shares(history, {1, 2}) == {1: 90, 2: 10}
    assert expected_shares(history, {1, 3}) is None


def test_calibration_of_perfect_and_useless_probabilities() -> None:
    y = np.array([0, 1] * 500)
    perfect = calibrate(1, y.astype(float), y)
    assert perfect.brier == 0.0
    assert perfect.auc == 1.0
    assert perfect.log_loss < 1e-10
    useless = calibrate(2, np.full(1000, 0.5), y)
    assert useless.brier == 0.25
    assert useless.auc == 0.5
    assert useless.log_loss == pytest.approx(np.log(2))
    assert [(b.low, b.high, b.players) for b in useless.reliability] == [(0.5, 0.6, 1000)]
    assert useless.reliability[0].observed_rate == 0.5


def test_calibration_without_both_outcomes_has_no_auc() -> None:
    assert calibrate(1, np.array([0.2, 0.9]), np.array([0, 0])).auc is None


# -- probabilities in outputs -------------------------------------------------------------


def test_positive_probability_from_maps_lists_and_numbers() -> None:
    zipmap = {"output_label": 1, "output_probability": {"0": 0.3, "1": 0.7}}
    assert positive_probability(zipmap, ProbabilitySpec("output_probability", "1")) == 0.7
    assert positive_probability({"p": [0.3, 0.7]}, ProbabilitySpec("p")) == 0.7
    assert positive_probability({"p": [0.1, 0.2, 0.7]}, ProbabilitySpec("p", "2")) == 0.7
    assert positive_probability({"p": 0.4}, ProbabilitySpec("p")) == 0.4
    assert positive_probability({"p": [[0.4, 0.6]]}, ProbabilitySpec("p")) == 0.6
    assert positive_probability({"p": {"0": 1.0}}, ProbabilitySpec("p", "1")) is None
    assert positive_probability({"q": 0.4}, ProbabilitySpec("p")) is None
    assert positive_probability({"p": True}, ProbabilitySpec("p")) is None
    assert positive_probability({"p": 1}, ProbabilitySpec("p")) is None  # a label
    assert positive_probability({"p": 1.5}, ProbabilitySpec("p")) is None


# -- drift ------------------------------------------------------------------------------


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    bins = drift.bin_values(rng.normal(0, 1, 5000))
    assert len(bins.edges) == 9
    assert sum(bins.counts) == 5000
    same = drift.feature_drift("x", bins, rng.normal(0, 1, 3000))
    moved = drift.feature_drift("x", bins, rng.normal(1, 1, 3000))
    assert same.psi < 0.02
    assert not same.flagged
    assert moved.psi > 0.2
    assert moved.flagged


def test_nulls_are_a_bin_of_their_own() -> None:
    bins = drift.bin_values(np.array([1.0, 2.0, 3.0, 4.0, np.nan]))
    assert bins.missing == 1
    all_null = drift.feature_drift("x", bins, np.full(100, np.nan))
    assert all_null.flagged


@given(st.lists(st.integers(0, 1000), min_size=2, max_size=12))
def test_psi_of_a_histogram_with_itself_is_zero(counts: list[int]) -> None:
    if sum(counts) == 0:
        assert np.isnan(drift.psi(counts, counts))
    else:
        assert drift.psi(counts, counts) == pytest.approx(0.0, abs=1e-12)


def test_bins_count_values_up_to_each_edge() -> None:
    assert drift.count_bins([1.0, 2.0], np.array([0.5, 1.0, 1.5, 2.0, 9.0])) == [2, 2, 1]


@pytest.mark.parametrize(
    ("stats", "message"),
    [
        ({"features": {"a": {"edges": [1.0], "counts": [1]}}}, "one more entry"),
        ({"features": {"a": {"edges": [2.0, 1.0], "counts": [1, 1, 1]}}}, "increase"),
        ({"features": {"zzz": {"edges": [], "counts": [1]}}}, "zzz"),
        ({"feature": {}}, "training_stats"),
    ],
)
def test_bad_training_stats_name_the_problem(stats: dict[str, object], message: str) -> None:
    with pytest.raises(drift.DriftError, match=message):
        drift.parse_stats(stats, ["a"])


# -- outcomes -----------------------------------------------------------------------------


def test_outcomes_parse_and_print_back() -> None:
    outcome = Outcome.parse("purchase", "24h", "sum:amount.usd")
    assert (outcome.within_s, outcome.kind, outcome.field) == (86400, "sum", "amount.usd")
    assert (outcome.within, outcome.value) == ("1d", "sum:amount.usd")
    assert Outcome.parse("purchase", "90m", "count").within == "90m"


@pytest.mark.parametrize(
    ("event", "within", "value", "field"),
    [
        ("", "24h", "any", "event"),
        ("purchase", "24", "any", "within"),
        ("purchase", "24h", "sum", "value"),
        ("purchase", "24h", "max:amount", "value"),
        ("purchase", "24h", "any:amount", "value"),
    ],
)
def test_bad_outcomes_name_the_field(event: str, within: str, value: str, field: str) -> None:
    with pytest.raises(OutcomeError, match=f"^{field}"):
        Outcome.parse(event, within, value)


# -- guards and split changes ---------------------------------------------------------------


def test_a_guard_needs_a_sane_limit() -> None:
    with pytest.raises(GuardError, match="name max_error_rate"):
        Guard()
    with pytest.raises(GuardError, match="max_error_rate"):
        Guard(max_error_rate=1.5)
    with pytest.raises(GuardError, match="max_p99_ms"):
        Guard(max_p99_ms=0)


def test_p99_is_the_nearest_rank() -> None:
    assert p99([float(i) for i in range(1, 101)]) == 99.0
    assert p99([5.0]) == 5.0
    assert p99([]) == 0.0


def test_a_window_is_judged_when_it_closes_and_only_with_enough_traffic() -> None:
    watch = GuardWatch(window_s=60, min_requests=10)
    guard = Guard(max_error_rate=0.1)
    for i in range(20):
        assert watch.record("g/m", 2, guard, i % 4 != 0, 1.0, now=float(i)) is None
    breach = watch.record("g/m", 2, guard, True, 1.0, now=60.0)
    assert breach is not None
    assert (breach.version, breach.requests, breach.errors) == (2, 20, 5)
    assert "error rate 0.2500" in breach.reason
    # The next window had a single prediction: not judged.
    assert watch.record("g/m", 2, guard, False, 1.0, now=121.0) is None


def test_a_slow_version_breaks_a_latency_guard() -> None:
    watch = GuardWatch(window_s=1, min_requests=5)
    guard = Guard(max_p99_ms=20)
    for i in range(10):
        watch.record("g/m", 1, guard, True, 5.0 if i < 5 else 50.0, now=i / 100)
    breach = watch.record("g/m", 1, guard, True, 1.0, now=2.0)
    assert breach is not None
    assert "p99 50.00 ms" in breach.reason


def test_windows_are_per_version_and_reset_forgets_one() -> None:
    watch = GuardWatch(window_s=1, min_requests=1)
    guard = Guard(max_error_rate=0.0)
    watch.record("g/m", 1, guard, False, 1.0, now=0.0)
    watch.record("g/m", 2, guard, True, 1.0, now=0.0)
    assert watch.record("g/m", 2, guard, True, 1.0, now=1.5) is None
    watch.reset("g/m", 1)
    assert watch.record("g/m", 1, guard, True, 1.0, now=1.5) is None


def test_without_gives_the_share_to_the_others_in_proportion() -> None:
    guard = Guard(max_error_rate=0.01)
    rollout = Rollout({1: 50, 2: 30, 3: 20}, shadow=4, guard=guard)
    after = rollout.without(1)
    assert after.split == {2: 60, 3: 40}
    assert after.shadow == 4
    assert after.guard == guard
    assert Rollout({1: 34, 2: 33, 3: 33}).without(1).split == {2: 50, 3: 50}
    with pytest.raises(RolloutError, match="only one serving"):
        Rollout({1: 100, 2: 0}).without(1)


@given(
    st.dictionaries(st.integers(1, 9), st.integers(0, 100), min_size=2, max_size=6),
    st.data(),
)
def test_without_always_leaves_a_valid_split(shares: dict[int, int], data: st.DataObject) -> None:
    total = sum(shares.values())
    if total == 0:
        return
    versions = sorted(shares)
    scaled = {v: shares[v] * 100 // total for v in versions}
    scaled[versions[0]] += 100 - sum(scaled.values())
    rollout = Rollout(scaled)
    serving = rollout.serving
    if len(serving) < 2:
        return
    gone = data.draw(st.sampled_from(serving))
    after = rollout.without(gone)
    assert sum(after.split.values()) == 100
    assert gone not in after.split
    assert set(after.serving) <= set(serving) - {gone}


def test_null_features_from_duckdb_are_nan_not_zero() -> None:
    import duckdb

    conn = duckdb.connect()
    column = conn.execute("SELECT * FROM (VALUES (1.5::DOUBLE), (NULL), (3.0)) t(c)").fetchnumpy()
    values = drift.as_floats(column["c"])
    assert values[0] == 1.5
    assert np.isnan(values[1])
    assert values[2] == 3.0


def test_a_busy_window_keeps_a_bounded_sample_of_latencies() -> None:
    from app.domain.guard import LATENCY_SAMPLES

    watch = GuardWatch(window_s=10, min_requests=1)
    guard = Guard(max_p99_ms=50)
    n = LATENCY_SAMPLES * 5
    for i in range(n):  # 2% of the predictions take 100 ms: the p99 is over the limit
        watch.record("g/m", 1, guard, True, 100.0 if i % 50 == 0 else 1.0, now=0.0)
    [window] = watch._windows.values()
    assert len(window.latencies_ms) == LATENCY_SAMPLES
    breach = watch.record("g/m", 1, guard, True, 1.0, now=10.0)
    assert breach is not None
    assert breach.requests == n
    assert breach.p99_ms == 100.0
