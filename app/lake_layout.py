"""The Parquet lake's layout: what the archive writes and compaction rewrites.

``<lake>/events/game=GAME/date=YYYY-MM-DD/*.parquet``, and the same for ``predictions``
and ``hops`` (the per-hop time sample, dated by when the event was received). One
definition, so every writer keeps every column, and one definition of which copy of an
event counts (:data:`FIRST_RECEIVED`), so every reader keeps the same one.
"""

from __future__ import annotations

import time

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")

EVENTS_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("player_id", pa.string()),
        ("type", pa.string()),
        ("ts", TIMESTAMP),
        ("props", pa.string()),
        ("received_at", TIMESTAMP),
        # The device's own time, when the request let us correct its clock (ts is then
        # the corrected time); null otherwise. An extension of the contract's columns.
        ("device_ts", TIMESTAMP),
    ]
)

PREDICTIONS_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("version", pa.int32()),
        ("player_id", pa.string()),
        ("shadow", pa.bool_()),
        ("ts", TIMESTAMP),
        ("latency_us", pa.int64()),
        ("outputs", pa.string()),
        ("features", pa.string()),
    ]
)


HOPS_SCHEMA = pa.schema(
    [
        # A sample of folded events (PLAYERPULSE_HOP_SAMPLE), with the time of each hop.
        # No player or event id: a latency sample says nothing about anyone.
        ("type", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("ts", TIMESTAMP),  # event time: the device's, clock-corrected
        ("device_ts", TIMESTAMP),  # the device's own time when corrected, else null
        ("received_at", TIMESTAMP),
        ("appended_at", TIMESTAMP),  # the broker's timestamp (millisecond precision)
        ("folded_at", TIMESTAMP),  # once the fold transaction holding it committed
    ]
)


_SQL_TYPES = {
    pa.string(): "VARCHAR",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.bool_(): "BOOLEAN",
    TIMESTAMP: "TIMESTAMPTZ",
}


SEGMENT_CHANGES_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("player_id", pa.string()),
        ("segment", pa.string()),
        ("kind", pa.string()),
        ("at", TIMESTAMP),
        ("features", pa.string()),
    ]
)
"""Columns of ``<lake>/segment_changes/game=/date=/`` (``features``: JSON text)."""


def typed_nulls(schema: pa.Schema) -> str:
    """A select list of typed NULLs, one per column (``NULL::VARCHAR AS event_id, ...``):
    what a query over a lake without files selects, so its views keep their columns."""
    return ", ".join(f'NULL::{_SQL_TYPES[f.type]} AS "{f.name}"' for f in schema)


EVENT_COLUMNS = ", ".join(EVENTS_SCHEMA.names)
"""The events columns in schema order, for SQL select lists."""

PREDICTION_COLUMNS = ", ".join(PREDICTIONS_SCHEMA.names)
"""The predictions columns in schema order, for SQL select lists."""

FIRST_RECEIVED = "ORDER BY received_at, ts, type, props"
"""The order of a ``row_number()`` window whose first row is the copy of an event that
counts: the first received (ties broken on content, so every reader picks the same row).
Use it as ``row_number() OVER (PARTITION BY player_id, event_id {FIRST_RECEIVED})``."""


def event_date(ts_us: int) -> str:
    """The UTC date partition of a time in microseconds."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts_us // 1_000_000))
