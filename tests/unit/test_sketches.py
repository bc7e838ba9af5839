"""Sketch aggregates against exact references, past their exact sizes, and their bounds."""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain import sketches
from app.domain.events import EventRecord
from app.domain.features import FeatureSet, parse_features
from app.domain.fold import (
    DISTINCT_EXACT_MAX,
    Partial,
    ProfileState,
    absorb,
    encode_state,
    evaluate,
    fold_event,
    merge,
    prepare,
)

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000_000
SECOND = 1_000_000
FEW = settings(max_examples=6, deadline=None)


def spec_of(toml: str) -> FeatureSet:
    return parse_features(toml)


def fold_values(features: FeatureSet, name: str, values: list[Any], buckets: int = 1) -> Any:
    """The feature's value after absorbing ``values`` spread over ``buckets`` merged partials."""
    spec = features[name]
    partials = [Partial() for _ in range(buckets)]
    for i, value in enumerate(values):
        absorb(partials[i % buckets], spec, prepare(spec, value), T0 + i, f"e{i}")
    state = ProfileState(totals={name: merge(partials, spec)})
    return evaluate(state, features, T0)[name]


APPROX = spec_of('[features.u]\nevent = "e"\nagg = "approx_distinct"\nfield = "v"')


@FEW
@given(seed=st.integers(0, 2**32), n=st.integers(90_000, 110_000))
def test_approx_distinct_is_within_2_percent_at_100000(seed: int, n: int) -> None:
    rng = random.Random(seed)
    values = [f"{rng.getrandbits(64):x}" for _ in range(n)]
    state = sketches.hll_add(None, values)
    truth = len(set(values))
    assert abs(sketches.hll_estimate(state) - truth) <= 0.02 * truth
    # Merging parts gives the same registers, hence the same estimate, in any order.
    parts = [sketches.hll_add(None, values[k::3]) for k in range(3)]
    rng.shuffle(parts)
    assert sketches.hll_estimate(sketches.hll_merge(parts)) == sketches.hll_estimate(state)


@FEW
@given(seed=st.integers(0, 2**32), n=st.integers(1, 12_000), buckets=st.integers(1, 5))
def test_approx_distinct_through_the_fold_any_order(seed: int, n: int, buckets: int) -> None:
    rng = random.Random(seed)
    values: list[Any] = [rng.randrange(n) for _ in range(n)] + ["1", 1.0, {"a": [1]}]
    truth = len({msgspec.json.encode(v) for v in values})
    got = fold_values(APPROX, "u", values, buckets)
    assert isinstance(got, int)
    assert abs(got - truth) <= 0.02 * truth
    rng.shuffle(values)
    assert fold_values(APPROX, "u", values, buckets) == got


def true_ranks(ordered: list[float], value: float) -> tuple[float, float]:
    n = len(ordered)
    return bisect.bisect_left(ordered, value) / n, bisect.bisect_right(ordered, value) / n


@FEW
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 60_000),
    q=st.sampled_from([0.01, 0.05, 0.25, 0.5, 0.9, 0.95, 0.99]),
    buckets=st.integers(1, 4),
)
def test_percentile_rank_error_is_at_most_1_percent(
    seed: int, n: int, q: float, buckets: int
) -> None:
    features = spec_of(f'[features.p]\nevent = "e"\nagg = "percentile"\nfield = "v"\nq = {q}')
    rng = random.Random(seed)
    values: list[Any] = [
        rng.choice([rng.randrange(-1000, 1000), rng.lognormvariate(0, 2)]) for _ in range(n)
    ]
    got = fold_values(features, "p", values, buckets)
    ordered = sorted(float(v) for v in values)
    below, at_or_below = true_ranks(ordered, got)
    assert got in ordered
    assert below - 0.01 <= q <= at_or_below + 0.01, (below, at_or_below)
    if n <= sketches.KLL_K:  # exact: the nearest-rank value
        assert got == ordered[max(0, math.ceil(q * n) - 1)]


@FEW
@given(seed=st.integers(0, 2**32), n=st.integers(1_000, 40_000), k=st.integers(1, 50))
def test_top_k_counts_are_within_epsilon_n_past_the_exact_size(seed: int, n: int, k: int) -> None:
    features = spec_of(f'[features.t]\nevent = "e"\nagg = "top_k"\nfield = "v"\nk = {k}')
    rng = random.Random(seed)
    # Zipf-like: a few heavy values and a long tail of thousands of distinct ones.
    values = [int(rng.paretovariate(0.8)) for _ in range(n)]
    truth = Counter(values)
    got = fold_values(features, "t", values, buckets=3)
    epsilon = 3.5 / 2**sketches.FREQ_LG_MAX
    assert len(got) == min(k, len(truth)) or len(truth) > sketches.FREQ_TRACKED
    for value, count in got:
        assert abs(count - truth[value]) <= epsilon * n
    counts = [count for _, count in got]
    assert counts == sorted(counts, reverse=True)
    # The heaviest value is found, whatever the tail.
    heaviest, most = truth.most_common(1)[0]
    if most > 2 * epsilon * n:
        assert got[0][0] == heaviest


def test_top_k_is_exact_and_order_free_up_to_its_tracked_size() -> None:
    features = spec_of('[features.t]\nevent = "e"\nagg = "top_k"\nfield = "v"\nk = 5')
    rng = random.Random(7)
    values: list[Any] = [rng.randrange(sketches.FREQ_TRACKED - 2) for _ in range(5_000)]
    values += ["3", "3", 3.0]  # text and float keep their own counts
    truth = Counter(msgspec.json.encode(v) for v in values)
    want = sorted(truth.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    got = fold_values(features, "t", values, buckets=4)
    assert got == [[msgspec.json.decode(text), count] for text, count in want]
    rng.shuffle(values)
    assert fold_values(features, "t", values, buckets=2) == got


def test_last_k_keeps_the_k_newest_by_event_time_ties_by_event_id() -> None:
    features = spec_of(
        '[features.l]\nevent = "e"\nagg = "last_k"\nfield = "v"\nk = 3\nwindow = "1h"\n'
        '[features.lt]\nevent = "e"\nagg = "last_k"\nfield = "v"\nk = 3'
    )
    events = [
        EventRecord("g", eid, "p", "e", ts, ts, {"v": value})
        for eid, ts, value in [
            ("b", T0 + 5, "tie-b"),
            ("a", T0 + 5, "tie-a"),
            ("c", T0 + 1, "old"),
            ("d", T0 + 9 * 60 * SECOND, "newest"),
            ("e", T0 + 2, {"obj": [1]}),
        ]
    ]
    for order in (events, events[::-1], sorted(events, key=lambda e: repr(e.props))):
        state = ProfileState()
        for event in order:
            fold_event(state, event, features)
        values = evaluate(state, features, T0 + 10 * 60 * SECOND)
        assert values == {"l": ["newest", "tie-b", "tie-a"], "lt": ["newest", "tie-b", "tie-a"]}
        assert len(state.totals["lt"].recent or ()) == 3  # bounded by k


DISTINCT = spec_of(
    '[features.d]\nevent = "e"\nagg = "distinct_count"\nfield = "v"\n'
    '[features.dw]\nevent = "e"\nagg = "distinct_count"\nfield = "v"\nwindow = "1h"'
)


def test_distinct_count_is_exact_to_its_cap_then_an_estimate_said_so_by_a_float() -> None:
    exact = fold_values(DISTINCT, "d", list(range(DISTINCT_EXACT_MAX)) * 2)
    assert exact == DISTINCT_EXACT_MAX
    assert isinstance(exact, int)
    over = fold_values(DISTINCT, "d", list(range(5_000)) * 2, buckets=3)
    assert isinstance(over, float)
    assert abs(over - 5_000) <= 0.02 * 5_000
    # Many short buckets each under the cap, over it together: the window is an estimate.
    state = ProfileState()
    for i in range(3_000):
        ts = T0 + (i % 30) * 60 * SECOND
        fold_event(state, EventRecord("g", f"e{i}", "p", "e", ts, ts, {"v": i}), DISTINCT)
    values = evaluate(state, DISTINCT, T0 + 30 * 60 * SECOND)
    assert isinstance(values["dw"], float)
    assert abs(values["dw"] - 3_000) <= 60
    assert all(p.sketch is None for p in state.windows["dw"].values())  # 100 per bucket


ALL_SKETCHES = """
[features.d]
event = "e"
agg = "distinct_count"
field = "v"
[features.u]
event = "e"
agg = "approx_distinct"
field = "v"
[features.p]
event = "e"
agg = "percentile"
field = "n"
q = 0.99
[features.t]
event = "e"
agg = "top_k"
field = "v"
k = 50
[features.l]
event = "e"
agg = "last_k"
field = "v"
k = 100
"""
PROFILE_MAX_BYTES = 64_000
"""The documented bound for this profile (README): a little under 60 KB."""


def test_a_player_with_a_million_distinct_values_keeps_a_small_profile() -> None:
    features = parse_features(ALL_SKETCHES)
    state = ProfileState()
    rng = random.Random(1)
    n = 1_000_000
    # Through the fold for the first 20,000 events (every switch: the exact set to HLL,
    # HLL coupons to registers, KLL and frequent items into estimation mode) ...
    head = 20_000
    for i in range(head):
        fold_event(
            state,
            EventRecord("g", f"e{i}", "p", "e", T0 + i, T0 + i, {"v": f"v{i}", "n": rng.random()}),
            features,
        )
    sizes = [len(encode_state(state))]
    # ... then the remaining 980,000 values into the same fixed-size sketches in bulk (the
    # fold's own sketch calls, a million events through fold_event takes a minute).
    totals = state.totals
    tail = [f"v{i}" for i in range(head, n)]
    for name in ("d", "u"):
        totals[name].sketch = sketches.hll_add(totals[name].sketch, tail)
    for _ in range(head, n, 10):
        totals["p"].sketch = sketches.kll_add(totals["p"].sketch, rng.random())
    totals["t"].sketch = sketches.freq_merge(
        [totals["t"].sketch or b"", *[sketches.freq_add(None, v) for v in tail[::1000]]]
    )
    for i in range(head, head + 1000):  # and more events through the fold
        fold_event(state, EventRecord("g", f"x{i}", "p", "e", T0 + i, T0, {"v": f"v{i}"}), features)
    size = len(encode_state(state))
    sizes.append(size)
    values = evaluate(state, features, T0)
    assert abs(values["d"] - n) <= 0.02 * n
    assert isinstance(values["d"], float)
    assert abs(values["u"] - n) <= 0.02 * n
    assert len(values["l"]) == 100
    assert len(values["t"]) == 50
    assert max(sizes) < PROFILE_MAX_BYTES, sizes
    for name in ("d", "u"):
        assert len(totals[name].sketch or b"") <= sketches.HLL_MAX_BYTES
    assert len(totals["p"].sketch or b"") <= sketches.KLL_MAX_BYTES


def test_last_k_keeps_an_event_once_even_if_folded_twice() -> None:
    features = spec_of('[features.l]\nevent = "e"\nagg = "last_k"\nfield = "v"\nk = 3')
    state = ProfileState()
    for eid, ts in [("a", T0), ("b", T0 + 1), ("b", T0 + 1), ("c", T0 + 2), ("c", T0 + 2)]:
        fold_event(state, EventRecord("g", eid, "p", "e", ts, ts, {"v": eid}), features)
    assert evaluate(state, features, T0)["l"] == ["c", "b", "a"]
