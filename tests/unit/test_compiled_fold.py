"""The compiled fold equals the reference fold, for random feature files and events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.domain.compiled_fold import compile_fold
from app.domain.events import EventRecord
from app.domain.features import LIST_AGGS, Agg, FeatureSet, parse_features
from app.domain.fold import PoisonEvent, ProfileState, encode_state, fold_event

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_123_456
SECOND = 1_000_000
TYPES = ["a", "b", "c", "d"]
PATHS = ["n", "x", "item.price", "meta.tag", "deep.er.value"]
WINDOWS = ["30s", "90s", "15m", "1h", "7d"]


@st.composite
def feature_files(draw: st.DrawFn) -> str:
    """A features file of 1 to 12 features: any aggregate, path, window, events, order."""
    count = draw(st.integers(1, 12))
    names = draw(
        st.lists(
            st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    tables = []
    for name in names:
        agg = draw(st.sampled_from(list(Agg)))
        events = draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True))
        lines = [f"[features.{name}]", f"event = {json.dumps(events)}", f'agg = "{agg.value}"']
        field = draw(st.sampled_from(PATHS))
        if agg is not Agg.COUNT or draw(st.booleans()):
            lines.append(f'field = "{field}"')
        if draw(st.booleans()):
            lines.append(f'window = "{draw(st.sampled_from(WINDOWS))}"')
        if agg is Agg.PERCENTILE:
            lines.append(f"q = {draw(st.sampled_from([0.1, 0.5, 0.9]))}")
        elif agg in LIST_AGGS:
            lines.append(f"k = {draw(st.integers(1, 5))}")
        if agg not in LIST_AGGS and draw(st.integers(0, 3)) == 0:
            lines.append('default = "z"' if agg in (Agg.FIRST, Agg.LAST) else "default = 3")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


NUMBERS = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([0.1, 0.2, -0.0, 1e300, 2**53, -(2**53), 1.0, 1]),
)
# Values some aggregates refuse: beyond the numeric bounds, beyond 64 bits, not numbers.
ODD = st.sampled_from([2**53 + 1, -(2**60), 2**64, -(2**70), 1e301, -1e308, True, False])
VALUES = st.one_of(
    NUMBERS,
    NUMBERS,
    st.text(alphabet="ab1", max_size=3),
    st.booleans(),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["k", "m"]), st.integers(0, 2**65), max_size=2),
    st.none(),
    ODD,
)


def _nest(path: str, value: Any, shape: int) -> dict[str, Any]:
    """``value`` at ``path``, or a path broken by a non-object on the way (shape 0)."""
    keys = path.split(".")
    node: Any = value
    for key in reversed(keys[1:]):
        node = 7 if shape == 0 else {key: node}
    return {keys[0]: node}


@st.composite
def props(draw: st.DrawFn) -> dict[str, Any] | None:
    if draw(st.integers(0, 9)) == 0:
        return None
    out: dict[str, Any] = {}
    for path in draw(st.lists(st.sampled_from(PATHS), max_size=4, unique=True)):
        nested = _nest(path, draw(VALUES), draw(st.integers(0, 4)))
        key = next(iter(nested))
        if isinstance(out.get(key), dict) and isinstance(nested[key], dict):
            out[key].update(nested[key])
        else:
            out.update(nested)
    return out


@st.composite
def events(draw: st.DrawFn) -> list[EventRecord]:
    count = draw(st.integers(0, 40))
    ids = draw(
        st.lists(
            st.text(alphabet="abc01", min_size=1, max_size=4),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    span = draw(st.sampled_from([10, 600, 10 * 86400]))
    moments = st.builds(
        lambda s, us: T0 + s * SECOND + us,
        st.integers(0, span),
        st.sampled_from([0, 1, 999_999]),
    )
    # A few shared instants, so that ties on ts (broken by event_id) are common.
    instants = draw(st.lists(moments, min_size=1, max_size=3))
    records = [
        EventRecord(
            game="g",
            event_id=event_id,
            player_id="p",
            type=draw(st.sampled_from(TYPES)),
            ts=draw(st.one_of(st.sampled_from(instants), moments)),
            received_at=T0 + draw(st.integers(0, 10**9)),
            props=draw(props()),
        )
        for event_id in ids
    ]
    return draw(st.permutations(records))


def _fold_both(features: FeatureSet, records: list[EventRecord]) -> tuple[Any, Any]:
    """Fold ``records`` through both folds: each outcome (state or refusal) in order."""
    compiled = compile_fold(features)
    reference_state, compiled_state = ProfileState(), ProfileState()
    reference_log: list[Any] = []
    compiled_log: list[Any] = []
    for record in records:
        for fold, state, log in (
            (lambda s, r: fold_event(s, r, features), reference_state, reference_log),
            (compiled, compiled_state, compiled_log),
        ):
            try:
                fold(state, record)
                log.append(encode_state(state))
            except PoisonEvent as exc:
                log.append(("refused", str(exc), encode_state(state)))
    return (reference_state, reference_log), (compiled_state, compiled_log)


@settings(max_examples=200, deadline=None)
@given(text=feature_files(), records=events())
@example(
    text='[features.s]\nevent = "a"\nagg = "sum"\nfield = "n"\n\n'
    '[features.t]\nevent = "a"\nagg = "last"\nfield = "n"',
    records=[EventRecord("g", "e1", "p", "a", T0, T0, {"n": True})],
)
def test_compiled_fold_equals_the_reference(text: str, records: list[EventRecord]) -> None:
    features = parse_features(text)
    (reference_state, reference_log), (compiled_state, compiled_log) = _fold_both(features, records)
    # The same state after every event, byte for byte (so the same rows are written),
    # and the same refusals with the same words.
    assert compiled_log == reference_log
    assert compiled_state == reference_state


def test_a_refused_event_changes_nothing() -> None:
    features = parse_features(
        '[features.c]\nevent = "a"\nagg = "count"\n\n'
        '[features.s]\nevent = "a"\nagg = "sum"\nfield = "item.price"'
    )
    fold = compile_fold(features)
    state = fold(ProfileState(), EventRecord("g", "e1", "p", "a", T0, T0, {"item": {"price": 2}}))
    before = encode_state(state)
    poison = EventRecord("g", "e2", "p", "a", T0, T0, {"item": {"price": "two"}})
    refusal = r"feature 's' \(sum\) needs a number at props.item.price"
    with pytest.raises(PoisonEvent, match=refusal):
        fold(state, poison)
    assert encode_state(state) == before
    assert state.events_applied == 1
    assert state.totals["c"].n == 1


def test_names_and_paths_are_never_source_code() -> None:
    # A path is any text: it reaches the generated fold only as a constant.
    features = parse_features(
        '[features.x]\nevent = "a"\nagg = "last"\nfield = "a\\"); import os; (\\"b"'
    )
    key = 'a"); import os; ("b'
    state = compile_fold(features)(
        ProfileState(), EventRecord("g", "e1", "p", "a", T0, T0, {key: 5})
    )
    assert state.totals["x"].last == (T0, "e1", 5)
