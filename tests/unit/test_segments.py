"""Segments: CEL compile and evaluation, transitions, the next window change, the file."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.domain.aggregates import Partial
from app.domain.features import FeatureFileError, parse_features
from app.domain.fold import ProfileState
from app.domain.segments import (
    SegmentDef,
    SegmentError,
    next_window_change_us,
    transitions,
)
from app.segment_rules import GameSegments, compile_segment

FEATURES = parse_features(
    """
[features.spend_total]
event = "purchase"
agg = "sum"
field = "amount"

[features.sessions_7d]
event = "session_start"
agg = "count"
window = "7d"

[features.last_level]
event = "level_complete"
agg = "last"
field = "level"

[features.recent_items]
event = "purchase"
agg = "last_k"
field = "item"
k = 3

[segments.whales]
where = "spend_total >= 100.0 && sessions_7d >= 3"
"""
)


def compiled(where: str, name: str = "s") -> GameSegments:
    return GameSegments.of([compile_segment(SegmentDef(name, where), FEATURES)], FEATURES)


def test_the_file_declares_segments() -> None:
    assert FEATURES.segments == (SegmentDef("whales", "spend_total >= 100.0 && sessions_7d >= 3"),)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[segments.x]\nwhere = ""', "non-empty CEL expression"),
        ('[segments.x]\nwhere = "a"\nother = 1', "exactly one key"),
        ('[segments.1x]\nwhere = "a"', "the name must be"),
        ('[segments.spend]\nwhere = "true"\n[features.spend]\nevent="a"\nagg="count"', "both"),
    ],
)
def test_bad_segment_tables_name_the_problem(text: str, problem: str) -> None:
    base = "" if "[features." in text else '[features.a]\nevent = "e"\nagg = "count"\n'
    with pytest.raises(FeatureFileError, match=problem):
        parse_features(base + text)


@pytest.mark.parametrize(
    ("values", "member"),
    [
        ({"spend_total": 150.0, "sessions_7d": 3}, True),
        ({"spend_total": 150, "sessions_7d": 3}, True),  # an int sum compares with 100.0
        ({"spend_total": 99.5, "sessions_7d": 9}, False),
        ({"spend_total": 500.0, "sessions_7d": 2}, False),
    ],
)
def test_an_expression_is_evaluated_on_feature_values(values: dict[str, Any], member: bool) -> None:
    segments = compiled("spend_total >= 100.0 && sessions_7d >= 3")
    assert segments.members(values) == ({"s"} if member else set())


def test_null_features_and_lists_evaluate_without_raising() -> None:
    assert compiled("last_level > 3").members({"last_level": None}) == set()
    assert compiled("last_level > 3").members({"last_level": 4}) == {"s"}
    assert compiled("'sword' in recent_items").members({"recent_items": ["sword"]}) == {"s"}
    macro = compiled("recent_items.exists(i, i == 'axe')")
    assert macro.members({"recent_items": ["axe", "bow"]}) == {"s"}
    assert macro.segments[0].features == ("recent_items",)


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("spend_total >= ", "not a valid CEL expression"),
        ("spend_totl > 1", r"unknown feature\(s\) \['spend_totl'\]"),
        ("spend_total + 1", "must give true or false"),
        ("spend_total + 1.0", "must give true or false"),
        ("last_level", "must give true or false"),
    ],
)
def test_bad_expressions_name_the_problem(where: str, problem: str) -> None:
    with pytest.raises(SegmentError, match=problem):
        compile_segment(SegmentDef("s", where), FEATURES)


def test_only_the_features_read_are_computed() -> None:
    segments = compiled("sessions_7d >= 1")
    assert segments.reads.names == ("sessions_7d",)
    assert segments.values(ProfileState(), 0) == {"sessions_7d": 0}


def test_transitions_report_entries_exits_and_deciding_features() -> None:
    whales = compile_segment(SegmentDef("whales", "spend_total >= 100.0"), FEATURES)
    active = compile_segment(SegmentDef("active", "sessions_7d >= 1"), FEATURES)
    values = {"spend_total": 120.0, "sessions_7d": 0}
    changes = transitions("g", "p", [whales, active], {"active", "other"}, {"whales"}, values, 7)
    assert [(c.segment, c.kind, c.features, c.at_us) for c in changes] == [
        ("whales", "entered", {"spend_total": 120.0}, 7),
        ("active", "left", {"sessions_7d": 0}, 7),
    ]
    # Segments not judged (unknown here) are neither entered nor left.
    assert transitions("g", "p", [whales], {"whales", "other"}, {"whales"}, values, 7) == []


def test_the_next_window_change_is_when_the_oldest_bucket_slides_out() -> None:
    spec = FEATURES["sessions_7d"]
    assert spec.bucket_s == 3600
    now_us = int(time.time()) * 1_000_000
    hour = 3600 * 1_000_000
    current = now_us // hour
    state = ProfileState(
        windows={"sessions_7d": {current - 10: Partial(n=1), current - 200: Partial(n=1)}}
    )
    due = next_window_change_us(state, FEATURES, ["sessions_7d", "spend_total"], now_us)
    # Bucket current-200 is out already (7 d = 168 buckets); current-10 leaves 168 h later.
    assert due == (current - 10 + 168) * hour
    assert due > now_us
    assert next_window_change_us(ProfileState(), FEATURES, ["sessions_7d"], now_us) is None
    assert next_window_change_us(state, FEATURES, ["spend_total"], now_us) is None
