"""The features file: parsing, windows, and every way a file can be refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.features import (
    Agg,
    FeatureFileError,
    FeatureSet,
    bucket_width,
    load_features,
    parse_features,
    parse_window,
)

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "app" / "features.example.toml"


def one(body: str, name: str = "f") -> FeatureSet:
    """Parse a file holding the single feature ``name`` with the given TOML body."""
    return parse_features(f"[features.{name}]\n{body}\n")


def refused(text: str) -> str:
    """The message of the FeatureFileError that ``text`` must raise."""
    with pytest.raises(FeatureFileError) as info:
        parse_features(text)
    return str(info.value)


# --- the shipped example -------------------------------------------------------------------


def test_example_file_parses_to_the_documented_features() -> None:
    features = load_features(EXAMPLE)
    assert features.names == ("purchases_7d", "spend_total", "sessions_7d", "last_level")

    purchases = features["purchases_7d"]
    assert purchases.agg is Agg.COUNT
    assert purchases.events == frozenset({"purchase"})
    assert purchases.field is None
    assert purchases.window_s == 7 * 86_400
    assert purchases.empty_value == 0

    spend = features["spend_total"]
    assert spend.agg is Agg.SUM
    assert spend.field == ("amount",)
    assert spend.window_s is None
    assert spend.bucket_s is None
    assert spend.empty_value == 0

    last_level = features["last_level"]
    assert last_level.agg is Agg.LAST
    assert last_level.field == ("level",)
    assert last_level.default == 0
    assert last_level.empty_value == 0


def test_example_file_indexes_features_by_event_type() -> None:
    features = load_features(EXAMPLE)
    assert [s.name for s in features.by_event["purchase"]] == ["purchases_7d", "spend_total"]
    assert [s.name for s in features.by_event["session_start"]] == ["sessions_7d"]
    assert [s.name for s in features.by_event["level_complete"]] == ["last_level"]
    assert set(features.by_event) == {"purchase", "session_start", "level_complete"}
    assert "spend_total" in features
    assert "nope" not in features
    with pytest.raises(KeyError):
        features["nope"]


def test_load_features_reports_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(FeatureFileError, match=re.escape(str(missing))):
        load_features(missing)


def test_load_features_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('[features.x]\nevent = "e"\nagg = "nope"\n', encoding="utf-8")
    with pytest.raises(FeatureFileError, match=re.escape(str(path))):
        load_features(path)


# --- each aggregate ------------------------------------------------------------------------


@pytest.mark.parametrize("agg", list(Agg))
def test_each_aggregate_parses(agg: Agg) -> None:
    body = f'event = "e"\nagg = "{agg.value}"'
    if agg is not Agg.COUNT:
        body += '\nfield = "v"'
    body += {Agg.PERCENTILE: "\nq = 0.95", Agg.TOP_K: "\nk = 3", Agg.LAST_K: "\nk = 100"}.get(
        agg, ""
    )
    spec = one(body)["f"]
    assert spec.agg is agg
    assert spec.events == frozenset({"e"})
    assert spec.field == (None if agg is Agg.COUNT else ("v",))
    assert spec.window_s is None
    assert spec.bucket_s is None
    zero = (Agg.COUNT, Agg.SUM, Agg.DISTINCT_COUNT, Agg.APPROX_DISTINCT)
    empty: object = [] if agg in (Agg.TOP_K, Agg.LAST_K) else 0 if agg in zero else None
    assert spec.empty_value == empty
    assert (spec.q, spec.k) == {
        Agg.PERCENTILE: (0.95, None),
        Agg.TOP_K: (None, 3),
        Agg.LAST_K: (None, 100),
    }.get(agg, (None, None))


def test_parameters_change_the_fingerprint_and_older_features_keep_theirs() -> None:
    a = one('event = "e"\nagg = "percentile"\nfield = "v"\nq = 0.5')["f"]
    b = one('event = "e"\nagg = "percentile"\nfield = "v"\nq = 0.9')["f"]
    assert a.fingerprint != b.fingerprint
    # A feature without parameters hashes as it did before parameters existed.
    count = one('event = "e"\nagg = "count"')["f"]
    assert count.fingerprint == "848a68cad61697d0"


def test_count_may_read_a_field() -> None:
    assert one('event = "e"\nagg = "count"\nfield = "v"')["f"].field == ("v",)


@pytest.mark.parametrize(
    ("agg", "default"),
    [("count", 5), ("sum", 1.5), ("min", -3), ("last", "none yet"), ("first", True)],
)
def test_an_explicit_default_is_the_empty_value(agg: str, default: object) -> None:
    literal = {str: '"none yet"', bool: "true"}.get(type(default), repr(default))
    spec = one(f'event = "e"\nagg = "{agg}"\nfield = "v"\ndefault = {literal}')["f"]
    assert spec.default == default
    assert spec.empty_value == default
    assert type(spec.empty_value) is type(default)


def test_description_is_kept() -> None:
    spec = one('event = "e"\nagg = "count"\ndescription = "how many"')["f"]
    assert spec.description == "how many"


# --- events and fields ---------------------------------------------------------------------


def test_one_event_type_or_several() -> None:
    features = parse_features(
        '[features.one]\nevent = "a"\nagg = "count"\n'
        '[features.many]\nevent = ["a", "b", "c"]\nagg = "count"\n'
    )
    assert features["one"].events == frozenset({"a"})
    assert features["many"].events == frozenset({"a", "b", "c"})
    assert [s.name for s in features.by_event["a"]] == ["one", "many"]
    assert [s.name for s in features.by_event["b"]] == ["many"]
    assert [s.name for s in features.by_event["c"]] == ["many"]


def test_dotted_field_paths_split_into_keys() -> None:
    spec = one('event = "e"\nagg = "sum"\nfield = "item.price.usd"')["f"]
    assert spec.field == ("item", "price", "usd")


# --- windows -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "seconds", "bucket"),
    [("30s", 30, 1), ("15m", 900, 10), ("24h", 86_400, 600), ("7d", 604_800, 3600)],
)
def test_windows_parse_to_seconds_and_buckets(window: str, seconds: int, bucket: int) -> None:
    spec = one(f'event = "e"\nagg = "count"\nwindow = "{window}"')["f"]
    assert spec.window_s == seconds
    assert spec.bucket_s == bucket
    assert seconds % bucket == 0
    # At least 60 buckets; a window shorter than a minute is cut into whole seconds.
    assert seconds // bucket >= min(60, seconds)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=100_000), st.sampled_from("smhd"))
def test_any_window_is_cut_into_equal_buckets(amount: int, unit: str) -> None:
    seconds = amount * {"s": 1, "m": 60, "h": 3600, "d": 86_400}[unit]
    assert parse_window(f"{amount}{unit}") == seconds
    bucket = bucket_width(seconds)
    assert bucket in (1, 10, 60, 600, 3600)
    assert seconds % bucket == 0
    assert seconds // bucket >= min(60, seconds)
    # The coarsest width that still gives 60 buckets: the next one up would not.
    coarser = [w for w in (10, 60, 600, 3600) if w > bucket]
    assert all(seconds % w or seconds // w < 60 for w in coarser)


@pytest.mark.parametrize("window", ["7w", "0d", "d7", "7", "", "-1d", "1.5h", "7 d", "07d", "7D"])
def test_bad_windows_are_refused_naming_the_feature(window: str) -> None:
    message = refused(f'[features.recent]\nevent = "e"\nagg = "count"\nwindow = "{window}"\n')
    assert "'recent'" in message
    assert "window" in message
    assert repr(window) in message


def test_a_non_string_window_is_refused() -> None:
    message = refused('[features.recent]\nevent = "e"\nagg = "count"\nwindow = 7\n')
    assert "'recent'" in message
    assert "'window' must be a string" in message


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('event = "e"\nagg = "median"\nfield = "v"', "'agg' is 'median'"),
        ('event = "e"\nagg = "COUNT"', "'agg' is 'COUNT'"),
        ('event = "e"', "'agg' is None"),
        ('event = "e"\nagg = 3', "'agg' is 3"),
        ('event = "e"\nagg = "sum"', "agg 'sum' needs a 'field'"),
        ('event = "e"\nagg = "last"', "agg 'last' needs a 'field'"),
        ('event = "e"\nagg = "distinct_count"', "agg 'distinct_count' needs a 'field'"),
        ('event = "e"\nagg = "count"\nwindw = "7d"', "unknown key(s) ['windw']"),
        ('event = "e"\nagg = "sum"\nfield = "v"\ndefault = "zero"', "must be a number"),
        ('event = "e"\nagg = "sum"\nfield = "v"\ndefault = true', "must be a number"),
        ('event = "e"\nagg = "count"\ndefault = "none"', "must be a number"),
        ('event = "e"\nagg = "avg"\nfield = "v"\ndefault = "x"', "must be a number"),
        ('event = "e"\nagg = "last"\nfield = "v"\ndefault = [1]', "'default' must be"),
        ('event = "e"\nagg = "last"\nfield = "v"\ndefault = {a = 1}', "'default' must be"),
        ('agg = "count"', "'event' must be"),
        ('event = []\nagg = "count"', "'event' must be"),
        ('event = ""\nagg = "count"', "'event' must be"),
        ('event = 5\nagg = "count"', "'event' must be"),
        ('event = ["a", 1]\nagg = "count"', "'event' must be"),
        (f'event = "{"x" * 65}"\nagg = "count"', "'event' must be"),
        ('event = "e"\nagg = "sum"\nfield = ""', "'field' must be"),
        ('event = "e"\nagg = "sum"\nfield = "a..b"', "'field' must be"),
        ('event = "e"\nagg = "sum"\nfield = ".a"', "'field' must be"),
        ('event = "e"\nagg = "sum"\nfield = 3', "'field' must be"),
        ('event = "e"\nagg = "count"\ndescription = 1', "'description' must be a string"),
        ('event = "e"\nagg = "percentile"\nfield = "v"', "agg 'percentile' needs 'q'"),
        ('event = "e"\nagg = "percentile"\nfield = "v"\nq = 0', "strictly between 0 and 1"),
        ('event = "e"\nagg = "percentile"\nfield = "v"\nq = 1', "strictly between 0 and 1"),
        ('event = "e"\nagg = "percentile"\nfield = "v"\nq = 1.5', "strictly between 0 and 1"),
        ('event = "e"\nagg = "percentile"\nfield = "v"\nq = "p95"', "strictly between"),
        ('event = "e"\nagg = "percentile"\nfield = "v"\nq = true', "strictly between"),
        ('event = "e"\nagg = "top_k"\nfield = "v"', "agg 'top_k' needs 'k'"),
        (
            'event = "e"\nagg = "top_k"\nfield = "v"\nk = 0',
            "'k' of top_k must be an integer from 1 to 50",
        ),
        ('event = "e"\nagg = "top_k"\nfield = "v"\nk = 51', "from 1 to 50"),
        (
            'event = "e"\nagg = "last_k"\nfield = "v"\nk = 101',
            "'k' of last_k must be an integer from 1 to 100",
        ),
        ('event = "e"\nagg = "last_k"\nfield = "v"\nk = 2.0', "from 1 to 100, not 2.0"),
        ('event = "e"\nagg = "last_k"\nfield = "v"', "agg 'last_k' needs 'k'"),
        ('event = "e"\nagg = "sum"\nfield = "v"\nq = 0.5', "'q' applies only to ['percentile']"),
        ('event = "e"\nagg = "count"\nk = 3', "'k' applies only to ['last_k', 'top_k']"),
        ('event = "e"\nagg = "last_k"\nfield = "v"\nk = 3\ndefault = 1', "takes no 'default'"),
        ('event = "e"\nagg = "approx_distinct"\nfield = "v"\ndefault = "x"', "must be a number"),
    ],
)
def test_bad_features_are_refused_naming_feature_and_problem(body: str, problem: str) -> None:
    message = refused(f"[features.churn_risk]\n{body}\n")
    assert "feature 'churn_risk'" in message
    assert problem in message


@pytest.mark.parametrize("name", ["1st", "has-dash", "has.dot_quoted", "x" * 64, "ünï", ""])
def test_bad_names_are_refused(name: str) -> None:
    message = refused(f'[features."{name}"]\nevent = "e"\nagg = "count"\n')
    assert repr(name) in message
    assert "name" in message


def test_longest_allowed_name_is_accepted() -> None:
    name = "a" * 63
    assert one('event = "e"\nagg = "count"', name=name).names == (name,)


def test_a_feature_that_is_not_a_table_is_refused() -> None:
    message = refused("[features]\nsessions = 1\n")
    assert "feature 'sessions'" in message
    assert "table" in message


@pytest.mark.parametrize("text", ["", "# only a comment\n", "[features]\n", "features = 1\n"])
def test_a_file_without_features_is_refused(text: str) -> None:
    assert "no [features.NAME] tables" in refused(text)


def test_unknown_top_level_tables_are_refused() -> None:
    message = refused('[feature.x]\nevent = "e"\nagg = "count"\n')
    assert "unknown top-level" in message
    assert "feature" in message


@pytest.mark.parametrize(
    "text",
    [
        "[features.x\nevent = 'e'",
        "[features.x]\nevent = ",
        "[features.x]\nevent = 'e'\nevent = 'f'",
    ],
)
def test_invalid_toml_is_refused(text: str) -> None:
    assert "not valid TOML" in refused(text)


def test_errors_name_the_source() -> None:
    with pytest.raises(FeatureFileError, match=r"^my\.toml: feature 'x'"):
        parse_features('[features.x]\nevent = "e"\nagg = "bad"\n', source="my.toml")


def test_the_first_bad_feature_is_named_even_after_good_ones() -> None:
    message = refused(
        '[features.good]\nevent = "e"\nagg = "count"\n[features.bad]\nevent = "e"\nagg = "sum"\n'
    )
    assert "feature 'bad'" in message
    assert "'good'" not in message


def test_a_datetime_default_is_refused() -> None:
    message = refused(
        '[features.seen]\nevent = "e"\nagg = "last"\nfield = "v"\ndefault = 2024-01-01T00:00:00Z\n'
    )
    assert "'default' must be" in message
