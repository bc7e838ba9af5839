"""Incoming event batches: validation, per-event rejections, exact UTC microseconds."""

from __future__ import annotations

import calendar
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.events import (
    BatchError,
    EventRecord,
    Rejection,
    decode_record,
    encode_record,
    from_micros,
    parse_batch,
    to_micros,
)

pytestmark = pytest.mark.unit

JAN_1_2024 = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z in µs
RECEIVED = 1_704_067_999_000_000


def event(**changes: Any) -> dict[str, Any]:
    """A valid event, with ``changes`` applied (a value of ``...`` removes the key)."""
    base: dict[str, Any] = {
        "event_id": "e-1",
        "player_id": "p-1",
        "type": "purchase",
        "ts": "2024-01-01T00:00:00Z",
        "props": {"amount": 4.99, "item": {"sku": "gem-pack"}},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def batch(*events: Any) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def parse(*events: Any) -> tuple[list[EventRecord], list[Rejection]]:
    return parse_batch(batch(*events), "game-1", RECEIVED)


# --- accepted events -----------------------------------------------------------------------


def test_a_valid_event_becomes_a_record() -> None:
    records, rejections = parse(event())
    assert rejections == []
    assert records == [
        EventRecord(
            game="game-1",
            event_id="e-1",
            player_id="p-1",
            type="purchase",
            ts=JAN_1_2024,
            received_at=RECEIVED,
            props={"amount": 4.99, "item": {"sku": "gem-pack"}},
        )
    ]


def test_props_are_optional_and_may_be_null() -> None:
    records, rejections = parse(event(props=...), event(event_id="e-2", props=None))
    assert rejections == []
    assert [r.props for r in records] == [None, None]


def test_unknown_event_fields_are_ignored() -> None:
    records, rejections = parse(event(extra="ignored", sdk={"v": 2}))
    assert rejections == []
    assert len(records) == 1


@pytest.mark.parametrize(
    ("ts", "micros"),
    [
        ("2024-01-01T00:00:00Z", JAN_1_2024),
        ("2024-01-01T00:00:00+00:00", JAN_1_2024),
        ("2024-01-01T01:00:00+01:00", JAN_1_2024),
        ("2023-12-31T23:00:00-01:00", JAN_1_2024),
        ("2024-01-01T05:30:00.000001+05:30", JAN_1_2024 + 1),
        ("2023-12-31T14:14:59.999999-09:45", JAN_1_2024 - 1),
        ("2024-01-01T00:00:00.5Z", JAN_1_2024 + 500_000),
        ("2024-01-01T00:00:00.123456Z", JAN_1_2024 + 123_456),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.999999Z", -1),
        ("2024-02-29T23:59:59Z", JAN_1_2024 + (59 * 86_400 + 86_399) * 1_000_000),
    ],
)
def test_ts_becomes_exact_utc_microseconds(ts: str, micros: int) -> None:
    records, rejections = parse(event(ts=ts))
    assert rejections == []
    assert records[0].ts == micros


def test_valid_events_are_accepted_beside_rejected_ones() -> None:
    records, rejections = parse(
        event(event_id="a"),
        event(event_id="b", ts="yesterday"),
        event(event_id="c"),
        event(event_id="d", type=""),
    )
    assert [r.event_id for r in records] == ["a", "c"]
    assert [r.index for r in rejections] == [1, 3]
    assert "$.events[1].ts" in rejections[0].error
    assert "$.events[3].type" in rejections[1].error


def test_an_empty_batch_accepts_nothing_and_rejects_nothing() -> None:
    assert parse() == ([], [])


def test_boundary_lengths_are_accepted() -> None:
    records, rejections = parse(event(event_id="x" * 128, player_id="p" * 128, type="t" * 64))
    assert rejections == []
    assert len(records[0].event_id) == 128


# --- rejected events -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"event_id": ""}, "event_id"),
        ({"event_id": "x" * 129}, "event_id"),
        ({"event_id": 12}, "event_id"),
        ({"event_id": "a\x00b"}, "event_id"),
        ({"player_id": ""}, "player_id"),
        ({"player_id": "p" * 129}, "player_id"),
        ({"type": ""}, "type"),
        ({"type": "t" * 65}, "type"),
        ({"ts": "2024-01-01T00:00:00"}, "ts"),
        ({"ts": "2024-01-01"}, "ts"),
        ({"ts": "yesterday"}, "ts"),
        ({"ts": "2024-13-01T00:00:00Z"}, "ts"),
        ({"ts": "01/02/2024 10:00 +01:00"}, "ts"),
        ({"ts": 1_704_067_200}, "ts"),
        ({"ts": None}, "ts"),
        ({"props": [1, 2]}, "props"),
        ({"props": "amount=3"}, "props"),
        ({"props": 3}, "props"),
    ],
)
def test_a_bad_field_is_rejected_naming_it_with_its_index(
    changes: dict[str, Any], field: str
) -> None:
    records, rejections = parse(event(event_id="first"), event(**{"event_id": "second", **changes}))
    assert [r.event_id for r in records] == ["first"]
    assert len(rejections) == 1
    assert rejections[0].index == 1
    assert f"`$.events[1].{field}`" in rejections[0].error


@pytest.mark.parametrize("field", ["event_id", "player_id", "type", "ts"])
def test_a_missing_required_field_is_rejected_naming_it(field: str) -> None:
    records, rejections = parse(event(event_id="ok"), event(**{field: ...}))
    assert [r.event_id for r in records] == ["ok"]
    assert [r.index for r in rejections] == [1]
    assert f"`{field}`" in rejections[0].error
    assert "missing" in rejections[0].error


def test_a_missing_field_is_named_with_its_place() -> None:
    _, rejections = parse(event(), event(event_id=...))
    assert "`event_id`" in rejections[0].error
    assert "`$.events[1]`" in rejections[0].error


@pytest.mark.parametrize("item", [5, "event", None, [1]])
def test_an_event_that_is_not_an_object_is_rejected(item: Any) -> None:
    records, rejections = parse(event(), item)
    assert len(records) == 1
    assert [r.index for r in rejections] == [1]
    assert "object" in rejections[0].error
    assert "`$.events[1]`" in rejections[0].error


# --- unusable bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not valid JSON"),
        (b"not json", "not valid JSON"),
        (b'{"events": [', "not valid JSON"),
        (b"\x1f\x8b\x08\x00", "not valid JSON"),
        (b"{}", "events"),
        (b'{"event": []}', "events"),
        (b"[]", "object"),
        (b'{"events": null}', "$.events"),
        (b'{"events": {"0": {}}}', "$.events"),
        (b'{"events": "[]"}', "$.events"),
    ],
)
def test_an_unusable_body_is_a_batch_error(body: bytes, message: str) -> None:
    with pytest.raises(BatchError, match=r"^body") as info:
        parse_batch(body, "g", RECEIVED)
    assert message in str(info.value)


# --- records and time ----------------------------------------------------------------------


def test_record_wire_form_round_trips_and_keys_by_game_and_player() -> None:
    records, _ = parse(event())
    record = records[0]
    assert decode_record(encode_record(record)) == record
    assert record.partition_key == b"game-1/p-1"
    bare = EventRecord("g", "e", "p", "t", -5, 0)
    assert b"props" not in encode_record(bare)
    assert decode_record(encode_record(bare)) == bare


FIXED_OFFSETS = st.builds(
    timezone,
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
        lambda minutes: timedelta(minutes=minutes)
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=FIXED_OFFSETS
    )
)
def test_to_micros_is_exact_and_from_micros_inverts_it(moment: datetime) -> None:
    micros = to_micros(moment)
    utc = moment.astimezone(UTC)
    assert micros == calendar.timegm(utc.timetuple()) * 1_000_000 + utc.microsecond
    back = from_micros(micros)
    assert back == moment
    assert back.tzinfo is UTC
    assert back.utcoffset() == timedelta(0)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(
        min_value=to_micros(datetime(1, 1, 2, tzinfo=UTC)), max_value=253_402_300_799_999_999
    )
)
def test_from_micros_then_to_micros_is_the_identity(micros: int) -> None:
    assert to_micros(from_micros(micros)) == micros


@settings(max_examples=100, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=FIXED_OFFSETS
    )
)
def test_an_rfc3339_ts_with_any_offset_parses_to_the_same_instant(moment: datetime) -> None:
    records, rejections = parse(event(ts=moment.isoformat()))
    assert rejections == []
    assert records[0].ts == to_micros(moment)


def test_a_nul_character_in_an_id_is_rejected_on_both_paths() -> None:
    from app.domain.events import parse_batch as parse_events
    from app.domain.segment import parse_segment

    body = json.dumps({"events": [event(player_id="a\x00b"), event(event_id="fine")]}).encode()
    records, rejections = parse_events(body, "g", 0)
    assert [r.event_id for r in records] == ["fine"]
    assert "NUL" in rejections[0].error
    assert "player_id" in rejections[0].error
    segment = json.dumps(
        {"batch": [{"type": "track", "event": "x", "userId": "u", "messageId": "m\x00"}]}
    ).encode()
    records, rejections = parse_segment(segment, "g", 0)
    assert records == []
    assert "messageId" in rejections[0].error
