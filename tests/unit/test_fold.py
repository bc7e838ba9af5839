"""The pure fold: order- and repeat-insensitive, and equal to a plain reference."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.events import EventRecord
from app.domain.features import LIST_AGGS, NUMERIC, Agg, FeatureSet, parse_features
from app.domain.fold import (
    PoisonEvent,
    ProfileState,
    decode_state,
    encode_state,
    evaluate,
    fold_event,
    prune_windows,
)

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_123_456  # µs; deliberately not aligned to any bucket width
SECOND = 1_000_000
MISSING: Any = object()
PROPERTY = settings(max_examples=100, deadline=None)

# --- features ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefSpec:
    """What the test itself knows about a generated feature (the reference reads this)."""

    name: str
    events: frozenset[str]
    agg: Agg
    field: tuple[str, ...] | None
    window_s: int | None
    default: Any
    param: float | int | None = None
    """``q`` of a percentile, ``k`` of a top_k or last_k."""

    def toml(self) -> str:
        lines = [f"[features.{self.name}]"]
        events = sorted(self.events)
        lines.append(f"event = {json.dumps(events[0] if len(events) == 1 else events)}")
        lines.append(f'agg = "{self.agg.value}"')
        if self.field is not None:
            lines.append(f'field = "{".".join(self.field)}"')
        if self.window_s is not None:
            lines.append(f'window = "{WINDOW_TEXT[self.window_s]}"')
        if self.default is not None:
            lines.append(f"default = {json.dumps(self.default)}")
        if self.param is not None:
            lines.append(f"{'q' if self.agg is Agg.PERCENTILE else 'k'} = {self.param!r}")
        return "\n".join(lines)


WINDOW_TEXT = {90: "90s", 900: "15m", 3600: "1h", 600: "10m"}
NUMERIC_FIELDS = [("n",), ("item", "price")]
ANY_FIELDS = [("x",), ("meta", "tag"), ("n",)]
EVENT_TYPES = ["a", "b", "c"]  # no feature listens to "c"


@st.composite
def feature_specs(draw: st.DrawFn) -> list[RefSpec]:
    """Every aggregate at least twice: once unwindowed and once windowed."""
    specs: list[RefSpec] = []
    for agg in Agg:
        for windowed in (False, True):
            events = draw(st.sets(st.sampled_from(["a", "b"]), min_size=1))
            if agg is Agg.COUNT:
                field = draw(st.one_of(st.none(), st.sampled_from(NUMERIC_FIELDS)))
            elif agg in NUMERIC:
                field = draw(st.sampled_from(NUMERIC_FIELDS))
            else:
                field = draw(st.sampled_from(ANY_FIELDS))
            window = draw(st.sampled_from(sorted(WINDOW_TEXT))) if windowed else None
            default = None if agg in LIST_AGGS else draw(st.one_of(st.none(), st.just(-7)))
            param: float | int | None = None
            if agg is Agg.PERCENTILE:
                param = draw(st.sampled_from([0.01, 0.1, 0.25, 0.3, 0.5, 0.9, 0.99]))
            elif agg in LIST_AGGS:
                param = draw(st.integers(1, 4))
            name = f"{agg.value}_{'w' if windowed else 't'}"
            specs.append(RefSpec(name, frozenset(events), agg, field, window, default, param))
    return specs


def feature_set(specs: Sequence[RefSpec]) -> FeatureSet:
    return parse_features("\n".join(spec.toml() for spec in specs))


# --- events --------------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    st.integers(min_value=-999, max_value=999).map(lambda tenths: tenths / 10),
    st.sampled_from([0.1, 0.2, 0.3, -0.1, 0.7, 1e-17, 1e16, -1e16, 0.0, -0.0, 1, 1.0, 1e300]),
)
# Letters only: no text that is also the JSON of a number, a boolean or null.
TEXTS = st.text(alphabet="abxyz", min_size=0, max_size=3)
ANY_VALUE = st.one_of(NUMBERS, TEXTS, st.booleans(), st.lists(st.integers(0, 3), max_size=2))


def maybe(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value, an explicit null, or the key left out."""
    return st.one_of(values, values, values, st.none(), st.just(MISSING))


@st.composite
def props(draw: st.DrawFn) -> dict[str, Any] | None:
    if draw(st.integers(0, 9)) == 0:
        return None
    out: dict[str, Any] = {}
    for key, value in [("n", draw(maybe(NUMBERS))), ("x", draw(maybe(ANY_VALUE)))]:
        if value is not MISSING:
            out[key] = value
    for outer, inner, values in [("item", "price", NUMBERS), ("meta", "tag", ANY_VALUE)]:
        shape = draw(st.integers(0, 5))
        if shape == 0:
            continue  # no nested object
        if shape == 1:
            out[outer] = 7  # not an object: the path does not exist
        else:
            value = draw(maybe(values))
            out[outer] = {} if value is MISSING else {inner: value}
    return out


@st.composite
def event_lists(draw: st.DrawFn) -> list[EventRecord]:
    count = draw(st.one_of(st.integers(0, 3), st.integers(10, 30), st.integers(10, 30)))
    ids = draw(
        st.lists(
            st.text(alphabet="abc012", min_size=1, max_size=4),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    # Dense or spread out, so that windows hold several buckets or few; and a few shared
    # instants so that ties on ts (broken by event_id) are common.
    span_s = draw(st.sampled_from([100, 600, 1000, 4000]))
    # Whole seconds picked evenly (hypothesis would favour tiny integers), then any µs.
    offsets = st.builds(
        lambda s, us: s * SECOND + us,
        st.sampled_from(range(span_s + 1)),
        st.one_of(st.just(0), st.integers(0, SECOND - 1)),
    )
    instants = draw(st.lists(offsets, min_size=1, max_size=4))
    records = []
    for event_id in ids:
        offset = draw(st.one_of(st.sampled_from(instants), offsets, offsets))
        records.append(
            EventRecord(
                game="g",
                event_id=event_id,
                player_id="p",
                type=draw(st.sampled_from(EVENT_TYPES)),
                ts=T0 + offset,
                received_at=T0 + draw(st.integers(0, 10**10)),
                props=draw(props()),
            )
        )
    return records


NOW = st.integers(min_value=T0 - 100 * SECOND, max_value=T0 + 3 * 3600 * SECOND)


def nows(records: Sequence[EventRecord]) -> st.SearchStrategy[int]:
    """Any instant, or often one where some event is just at the edge of some window."""
    if not records:
        return NOW
    edge = st.builds(
        lambda record, window, jitter: record.ts + window * SECOND + jitter,
        st.sampled_from(records),
        st.sampled_from(sorted(WINDOW_TEXT)),
        st.integers(-3 * SECOND, 3 * SECOND),
    )
    latest = max(record.ts for record in records)
    around = st.builds(
        lambda s, us: T0 + s * SECOND + us,
        st.sampled_from(range(-100, (latest - T0) // SECOND + 3700)),
        st.integers(0, SECOND - 1),
    )
    return st.one_of(around, edge, edge)


# --- delivery and reference ----------------------------------------------------------------


def deliver(records: Iterable[EventRecord], features: FeatureSet) -> ProfileState:
    """Fold like the stream agent: each event_id is applied the first time it is seen."""
    state = ProfileState()
    applied: set[str] = set()
    for record in records:
        if record.event_id in applied:
            continue
        applied.add(record.event_id)
        fold_event(state, record, features)
    return state


def in_order(records: Iterable[EventRecord]) -> list[EventRecord]:
    return sorted(records, key=lambda r: (r.ts, r.event_id))


def lookup(props: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    node: Any = props
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return MISSING
        node = node[key]
    return node


def distinct_key(value: Any) -> tuple[str, str]:
    if isinstance(value, str):
        return ("text", value)
    return ("json", json.dumps(value, sort_keys=True))


def reference(
    specs: Sequence[RefSpec], features: FeatureSet, records: Sequence[EventRecord], now_us: int
) -> dict[str, Any]:
    """Plain-Python feature values over the distinct ``records``, as of ``now_us``."""
    out: dict[str, Any] = {}
    for spec in specs:
        matched = [r for r in records if r.type in spec.events]
        if spec.window_s is not None:
            bucket_s = features[spec.name].bucket_s
            assert bucket_s is not None
            width = bucket_s * SECOND
            newest = now_us // width
            oldest_excluded = newest - spec.window_s // bucket_s
            matched = [r for r in matched if oldest_excluded < r.ts // width <= newest]
        pairs: list[tuple[EventRecord, Any]]
        if spec.field is None:
            pairs = [(r, None) for r in matched]
        else:
            looked = [(r, lookup(r.props, spec.field)) for r in matched]
            pairs = [(r, v) for r, v in looked if v is not MISSING and v is not None]
        values = [v for _, v in pairs]
        empty = spec.default if spec.default is not None else None
        if spec.agg in (Agg.COUNT, Agg.SUM, Agg.DISTINCT_COUNT, Agg.APPROX_DISTINCT):
            empty = 0 if empty is None else empty
        if spec.agg in LIST_AGGS:
            empty = []
        if not pairs:
            out[spec.name] = empty
            continue
        if spec.agg in SKETCHED:
            out[spec.name] = sketch_reference(spec, pairs)
            continue
        if spec.agg is Agg.COUNT:
            out[spec.name] = len(pairs)
        elif spec.agg is Agg.SUM:
            floats = any(isinstance(v, float) for v in values)
            out[spec.name] = math.fsum(values) if floats else sum(values)
        elif spec.agg is Agg.AVG:
            out[spec.name] = math.fsum(values) / len(values)
        elif spec.agg is Agg.MIN:  # an int wins over an equal float
            out[spec.name] = min(values, key=lambda v: (v, isinstance(v, float)))
        elif spec.agg is Agg.MAX:
            out[spec.name] = max(values, key=lambda v: (v, isinstance(v, int)))
        elif spec.agg is Agg.FIRST:
            out[spec.name] = min(pairs, key=lambda p: (p[0].ts, p[0].event_id))[1]
        elif spec.agg is Agg.LAST:
            out[spec.name] = max(pairs, key=lambda p: (p[0].ts, p[0].event_id))[1]
        else:
            out[spec.name] = len({distinct_key(v) for v in values})
    return out


SKETCHED = frozenset({Agg.APPROX_DISTINCT, Agg.PERCENTILE, Agg.TOP_K, Agg.LAST_K})
CANONICAL = msgspec.json.Encoder(order="sorted")


def sketch_reference(spec: RefSpec, pairs: list[tuple[EventRecord, Any]]) -> Any:
    """Exact values of the sketch aggregates (the sketches are exact at these sizes)."""
    values = [v for _, v in pairs]
    if spec.agg is Agg.APPROX_DISTINCT:
        return len({distinct_key(v) for v in values})
    if spec.agg is Agg.PERCENTILE:  # nearest rank
        assert isinstance(spec.param, float)
        ordered = sorted(float(v) for v in values)
        return ordered[max(0, math.ceil(spec.param * len(ordered)) - 1)]
    assert isinstance(spec.param, int)
    if spec.agg is Agg.TOP_K:
        counts = Counter(CANONICAL.encode(v).decode() for v in values)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: spec.param]
        return [[msgspec.json.decode(text), n] for text, n in ranked]
    newest = sorted(pairs, key=lambda p: (p[0].ts, p[0].event_id), reverse=True)
    return [v for _, v in newest[: spec.param]]


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type, all the way down (so 3 and 3.0 differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def assert_same(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual.keys() == expected.keys()
    wrong = {k: (actual[k], expected[k]) for k in actual if not same(actual[k], expected[k])}
    assert not wrong, f"(actual, expected) differ: {wrong!r}"


def copy(state: ProfileState) -> ProfileState:
    return decode_state(encode_state(state))


# --- properties ----------------------------------------------------------------------------


@PROPERTY
@given(data=st.data(), specs=feature_specs(), records=event_lists())
def test_any_order_with_repeats_equals_one_in_order_delivery(
    data: st.DataObject, specs: list[RefSpec], records: list[EventRecord]
) -> None:
    features = feature_set(specs)
    now = data.draw(nows(records))
    repeats = data.draw(st.lists(st.sampled_from(records), max_size=15) if records else st.just([]))
    delivery = data.draw(st.permutations([*records, *repeats]))

    expected_state = deliver(in_order(records), features)
    state = deliver(delivery, features)

    assert_same(evaluate(state, features, now), evaluate(expected_state, features, now))
    assert state.events_applied == expected_state.events_applied == len(records)
    assert state.last_event_us == expected_state.last_event_us
    assert state.last_received_us == expected_state.last_received_us


@PROPERTY
@given(data=st.data(), specs=feature_specs(), records=event_lists())
def test_fold_equals_a_plain_reference(
    data: st.DataObject, specs: list[RefSpec], records: list[EventRecord]
) -> None:
    features = feature_set(specs)
    now = data.draw(nows(records))
    state = deliver(data.draw(st.permutations(records)), features)
    assert_same(evaluate(state, features, now), reference(specs, features, records, now))
    assert state.events_applied == len(records)
    assert state.last_event_us == max((r.ts for r in records), default=None)
    assert state.last_received_us == max((r.received_at for r in records), default=None)


@PROPERTY
@given(data=st.data(), specs=feature_specs(), records=event_lists())
def test_encode_decode_round_trip_keeps_every_value(
    data: st.DataObject, specs: list[RefSpec], records: list[EventRecord]
) -> None:
    features = feature_set(specs)
    now = data.draw(nows(records))
    state = deliver(records, features)
    restored = decode_state(encode_state(state))
    assert restored == state
    assert_same(evaluate(restored, features, now), evaluate(state, features, now))
    # Folding on after a round trip is the same as never having stored the state.
    extra = EventRecord("g", "zz-extra", "p", "a", T0, T0, {"n": 0.1, "x": "z"})
    assert_same(
        evaluate(fold_event(restored, extra, features), features, now),
        evaluate(fold_event(copy(state), extra, features), features, now),
    )


@PROPERTY
@given(
    data=st.data(),
    specs=feature_specs(),
    records=event_lists(),
    later=st.lists(
        st.one_of(st.integers(0, 4 * 3600 * SECOND), st.integers(0, 120 * SECOND)),
        min_size=1,
        max_size=5,
    ),
)
def test_pruning_drops_only_buckets_that_can_never_count_again(
    data: st.DataObject, specs: list[RefSpec], records: list[EventRecord], later: list[int]
) -> None:
    features = feature_set(specs)
    now = data.draw(nows(records))
    state = deliver(records, features)
    pruned = copy(state)
    prune_windows(pruned, features, now)
    for delta in [0, *later]:
        assert_same(evaluate(pruned, features, now + delta), evaluate(state, features, now + delta))
    # Totals are never pruned, and bucket sets only shrink.
    assert pruned.totals == state.totals
    for name, buckets in pruned.windows.items():
        assert set(buckets) <= set(state.windows[name])


@st.composite
def paired_specs(draw: st.DrawFn) -> list[tuple[RefSpec, RefSpec]]:
    """Each generated feature, unwindowed, beside the same feature over a 1 h window."""
    pairs = []
    for spec in draw(feature_specs()):
        if spec.window_s is None:
            windowed = RefSpec(
                f"{spec.name}_1h",
                spec.events,
                spec.agg,
                spec.field,
                3600,
                spec.default,
                spec.param,
            )
            pairs.append((spec, windowed))
    return pairs


@PROPERTY
@given(data=st.data(), pairs=paired_specs(), records=event_lists())
def test_a_window_holding_every_event_equals_the_unwindowed_feature(
    data: st.DataObject, pairs: list[tuple[RefSpec, RefSpec]], records: list[EventRecord]
) -> None:
    # Up to 50 one-minute buckets, all inside the window: merging buckets must be exact.
    records = [r for r in records if r.ts < T0 + 3000 * SECOND]
    features = feature_set([spec for pair in pairs for spec in pair])
    state = deliver(data.draw(st.permutations(records)), features)
    values = evaluate(state, features, T0 + 3000 * SECOND)
    for total, windowed in pairs:
        assert same(values[windowed.name], values[total.name]), (total, windowed)


# --- examples ------------------------------------------------------------------------------

ALL_AGGS = """
[features.n_count]
event = ["a", "b"]
agg = "count"
[features.n_sum]
event = "a"
agg = "sum"
field = "n"
[features.n_min]
event = "a"
agg = "min"
field = "n"
[features.n_max]
event = "a"
agg = "max"
field = "n"
[features.n_avg]
event = "a"
agg = "avg"
field = "n"
[features.x_first]
event = "a"
agg = "first"
field = "x"
[features.x_last]
event = "a"
agg = "last"
field = "x"
[features.x_distinct]
event = "a"
agg = "distinct_count"
field = "x"
[features.price_sum_1h]
event = "a"
agg = "sum"
field = "item.price"
window = "1h"
"""


def record(event_id: str, ts: int, type_: str = "a", **props: Any) -> EventRecord:
    return EventRecord("g", event_id, "p", type_, ts, ts, props or None)


def test_float_sums_are_exact_in_every_order() -> None:
    features = parse_features(ALL_AGGS)
    values = [0.1, 0.2, 0.3]
    assert (0.1 + 0.2) + 0.3 != 0.6  # a naive fold would differ by order
    for order in itertools.permutations(range(3)):
        state = deliver([record(f"e{i}", T0 + i, n=values[i]) for i in order], features)
        result = evaluate(state, features, T0)
        assert result["n_sum"] == 0.6
        assert result["n_avg"] == 0.6 / 3


def test_int_sums_stay_ints_and_mixed_sums_are_floats() -> None:
    features = parse_features(ALL_AGGS)
    ints = deliver([record("a", T0, n=2), record("b", T0, n=3)], features)
    assert same(evaluate(ints, features, T0)["n_sum"], 5)
    mixed = deliver([record("a", T0, n=2), record("b", T0, n=0.5)], features)
    assert same(evaluate(mixed, features, T0)["n_sum"], 2.5)


def test_min_and_max_prefer_an_int_over_an_equal_float() -> None:
    features = parse_features(ALL_AGGS)
    for order in ([1.0, 1], [1, 1.0]):
        state = deliver([record(f"e{i}", T0, n=v) for i, v in enumerate(order)], features)
        result = evaluate(state, features, T0)
        assert same(result["n_min"], 1)
        assert same(result["n_max"], 1)


def test_first_and_last_break_ties_on_ts_by_event_id() -> None:
    features = parse_features(ALL_AGGS)
    events = [record("b", T0, x="from b"), record("a", T0, x="from a"), record("c", T0 - 1)]
    for order in itertools.permutations(events):
        result = evaluate(deliver(order, features), features, T0)
        assert result["x_first"] == "from a"
        assert result["x_last"] == "from b"


def test_distinct_count_counts_values_not_events() -> None:
    features = parse_features(ALL_AGGS)
    values = ["sword", "shield", "sword", 3, 3, 3.5, {"k": 1}, {"k": 1}]
    state = deliver([record(f"e{i}", T0, x=v) for i, v in enumerate(values)], features)
    assert evaluate(state, features, T0)["x_distinct"] == 5


def test_events_without_the_field_or_with_null_do_not_contribute() -> None:
    features = parse_features(ALL_AGGS)
    events = [
        record("a", T0, n=None, x=None),
        record("b", T0, other=1),
        EventRecord("g", "c", "p", "a", T0, T0, None),
        record("d", T0, item=5),  # item is not an object: item.price does not exist
    ]
    result = evaluate(deliver(events, features), features, T0)
    assert result["n_count"] == 4  # count without a field counts every matching event
    assert result["n_sum"] == 0
    assert result["n_min"] is None
    assert result["x_first"] is None
    assert result["x_distinct"] == 0
    assert result["price_sum_1h"] == 0


def test_unmatched_event_types_change_no_feature_but_are_applied() -> None:
    features = parse_features(ALL_AGGS)
    state = deliver([record("e", T0, "c", n=5, x="q")], features)
    assert evaluate(state, features, T0) == evaluate(None, features, T0)
    assert state.events_applied == 1
    assert state.last_event_us == T0


def test_dotted_paths_read_nested_props() -> None:
    features = parse_features(ALL_AGGS)
    state = deliver(
        [record("a", T0, item={"price": 2.5}), record("b", T0, item={"price": 4})], features
    )
    assert evaluate(state, features, T0)["price_sum_1h"] == 6.5


def test_a_window_slides_over_event_time_without_new_events() -> None:
    features = parse_features(ALL_AGGS)  # price_sum_1h: 1 h window, 60 s buckets
    assert features["price_sum_1h"].bucket_s == 60
    base = (T0 // (60 * SECOND)) * 60 * SECOND  # start of a bucket
    state = deliver(
        [
            record("old", base, item={"price": 1}),
            record("new", base + 1800 * SECOND, item={"price": 10}),
        ],
        features,
    )

    def at(now: int) -> Any:
        return evaluate(state, features, now)["price_sum_1h"]

    assert at(base - 1) == 0  # both events are in the future
    assert at(base) == 1
    assert at(base + 1800 * SECOND) == 11
    assert at(base + 3600 * SECOND - 1) == 11  # the old bucket's last instant in the window
    assert at(base + 3600 * SECOND) == 10  # 60 buckets later, the old bucket has slid out
    assert at(base + 5400 * SECOND - 1) == 10
    assert at(base + 5400 * SECOND) == 0  # back to the default
    assert at(10**20) == 0


def test_prune_windows_drops_old_buckets_and_keeps_the_rest() -> None:
    features = parse_features(ALL_AGGS)
    base = (T0 // (60 * SECOND)) * 60 * SECOND
    state = deliver(
        [
            record("old", base, item={"price": 1}),
            record("new", base + 1800 * SECOND, item={"price": 10}),
            record("future", base + 9000 * SECOND, item={"price": 100}),
        ],
        features,
    )
    assert len(state.windows["price_sum_1h"]) == 3
    prune_windows(state, features, base + 3599 * SECOND)
    assert len(state.windows["price_sum_1h"]) == 3  # "old" is still inside the window
    prune_windows(state, features, base + 3600 * SECOND)
    assert sorted(state.windows["price_sum_1h"]) == [
        (base + 1800 * SECOND) // (60 * SECOND),
        (base + 9000 * SECOND) // (60 * SECOND),
    ]
    for now in (base + 3600 * SECOND, base + 9000 * SECOND):
        assert evaluate(state, features, now)["price_sum_1h"] == (
            10 if now < base + 5400 * SECOND else 100
        )


# --- defaults ------------------------------------------------------------------------------


def test_defaults_when_no_event_matched() -> None:
    features = parse_features(
        ALL_AGGS
        + """
[features.with_default]
event = "a"
agg = "max"
field = "n"
default = 42
[features.windowed_default]
event = "a"
agg = "count"
window = "90s"
default = -1
[features.text_default]
event = "a"
agg = "last"
field = "x"
default = "nobody"
"""
    )
    expected = {
        "n_count": 0,
        "n_sum": 0,
        "n_min": None,
        "n_max": None,
        "n_avg": None,
        "x_first": None,
        "x_last": None,
        "x_distinct": 0,
        "price_sum_1h": 0,
        "with_default": 42,
        "windowed_default": -1,
        "text_default": "nobody",
    }
    assert evaluate(None, features, T0) == expected
    assert evaluate(ProfileState(), features, T0) == expected
    # Events that slid out of the window leave the default, not a stale value.
    state = deliver([record("a", T0, n=5)], features)
    later = evaluate(state, features, T0 + 10 * 3600 * SECOND)
    assert later["windowed_default"] == -1
    assert later["price_sum_1h"] == 0
    assert later["with_default"] == 5


# --- poison events -------------------------------------------------------------------------


@pytest.mark.parametrize("agg", ["sum", "min", "max", "avg"])
@pytest.mark.parametrize("value", ["12", True, [1], {"v": 1}])
def test_a_non_number_where_a_number_is_needed_is_poison(agg: str, value: Any) -> None:
    features = parse_features(
        f'[features.hits]\nevent = "a"\nagg = "count"\n'
        f'[features.bad]\nevent = "a"\nagg = "{agg}"\nfield = "item.amount"\n'
    )
    state = deliver([record("ok", T0, item={"amount": 3})], features)
    before = copy(state)
    with pytest.raises(PoisonEvent, match=r"'bad'.*item\.amount") as info:
        fold_event(state, record("poison", T0 + 1, item={"amount": value}), features)
    assert agg in str(info.value)
    assert state == before  # not even the count of the first feature moved
    assert evaluate(state, features, T0 + 1) == evaluate(before, features, T0 + 1)


def test_strings_are_fine_for_first_last_and_distinct_count() -> None:
    features = parse_features(ALL_AGGS)
    state = deliver([record("a", T0, x="12")], features)
    result = evaluate(state, features, T0)
    assert (result["x_first"], result["x_last"], result["x_distinct"]) == ("12", "12", 1)


# --- edges: overflow, big ints, distinct types -------------------------------------------

SUM_ONLY = '[features.total]\nevent = "a"\nagg = "sum"\nfield = "n"\n'


def test_float_sum_overflow_is_poison_or_evaluates_the_same_in_every_order() -> None:
    features = parse_features(SUM_ONLY)
    results = set()
    for order in itertools.permutations([1e308, 1e308, -1e308]):
        state = ProfileState()
        for i, value in enumerate(order):
            with contextlib.suppress(PoisonEvent):
                fold_event(state, record(f"e{i}", T0, n=value), features)
            evaluate(state, features, T0)  # must not raise
        results.add(repr(evaluate(state, features, T0)["total"]))
    assert len(results) == 1


@pytest.mark.parametrize(
    ("agg", "values"),
    [("sum", [2**70]), ("sum", [2**63, 2**63]), ("max", [2**64]), ("last", [-(2**63) - 1])],
)
def test_ints_beyond_64_bits_are_poison_or_stored(agg: str, values: list[int]) -> None:
    features = parse_features(f'[features.f]\nevent = "a"\nagg = "{agg}"\nfield = "n"\n')
    state = ProfileState()
    for i, value in enumerate(values):
        stored = copy(state)
        try:
            fold_event(state, record(f"e{i}", T0, n=value), features)
        except PoisonEvent:
            assert state == stored
        encode_state(state)  # must not raise


def test_large_floats_sum_the_same_in_every_order() -> None:
    features = parse_features(SUM_ONLY)
    results = set()
    for order in itertools.permutations([1e300, 1e300, -1e300, 1.0, 0.1]):
        state = deliver([record(f"e{i}", T0, n=v) for i, v in enumerate(order)], features)
        results.add(evaluate(state, features, T0)["total"])
    assert results == {math.fsum([1e300, 1e300, -1e300, 1.0, 0.1])}


@pytest.mark.parametrize("agg", ["sum", "avg", "min", "max"])
@pytest.mark.parametrize("value", [1e308, -1e301, 2**53 + 1, -(2**53) - 1, 2**70])
def test_numbers_beyond_the_exact_range_are_poison(agg: str, value: float) -> None:
    features = parse_features(f'[features.f]\nevent = "a"\nagg = "{agg}"\nfield = "n"\n')
    state = deliver([record("ok", T0, n=1)], features)
    stored = copy(state)
    with pytest.raises(PoisonEvent, match="'f'"):
        fold_event(state, record("big", T0, n=value), features)
    assert state == stored


@pytest.mark.parametrize("agg", ["sum", "avg", "min", "max"])
@pytest.mark.parametrize("value", [1e300, -1e300, 2**53, -(2**53)])
def test_numbers_at_the_edge_of_the_exact_range_are_folded(agg: str, value: float) -> None:
    features = parse_features(f'[features.f]\nevent = "a"\nagg = "{agg}"\nfield = "n"\n')
    state = deliver([record("edge", T0, n=value)], features)
    result = evaluate(decode_state(encode_state(state)), features, T0)["f"]
    assert same(result, float(value) if agg == "avg" else value)


@pytest.mark.parametrize("agg", ["first", "last"])
@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, [1, 2**70], {"deep": {"id": 2**65}}])
def test_ints_beyond_64_bits_in_a_kept_value_are_poison(agg: str, value: Any) -> None:
    features = parse_features(f'[features.f]\nevent = "a"\nagg = "{agg}"\nfield = "n"\n')
    state = deliver([record("ok", T0, n="fine")], features)
    stored = copy(state)
    with pytest.raises(PoisonEvent, match="'f'"):
        fold_event(state, record("big", T0 + 1, n=value), features)
    assert state == stored


@pytest.mark.parametrize("agg", ["first", "last"])
@pytest.mark.parametrize("value", [2**63 - 1, -(2**63), [1, 2**60], {"id": 2**62}])
def test_64_bit_ints_in_a_kept_value_are_stored(agg: str, value: Any) -> None:
    features = parse_features(f'[features.f]\nevent = "a"\nagg = "{agg}"\nfield = "n"\n')
    state = deliver([record("ok", T0, n=value)], features)
    assert evaluate(decode_state(encode_state(state)), features, T0)["f"] == value


def test_distinct_count_tells_a_string_from_a_number() -> None:
    features = parse_features(ALL_AGGS)
    state = deliver(
        [
            record("a", T0, x="1"),
            record("b", T0, x=1),
            record("c", T0, x="true"),
            record("d", T0, x=True),
            record("e", T0, x=[1]),
            record("f", T0, x="[1]"),
        ],
        features,
    )
    assert evaluate(state, features, T0)["x_distinct"] == 6
