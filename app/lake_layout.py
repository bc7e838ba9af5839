"""The Parquet lake's layout: what the archive writes and compaction rewrites.

``<lake>/events/game=GAME/date=YYYY-MM-DD/*.parquet`` (CONTRACT.md), and the same for
``predictions``. One definition, so every writer keeps every column.
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


def event_date(ts_us: int) -> str:
    """The UTC date partition of a time in microseconds."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts_us // 1_000_000))
