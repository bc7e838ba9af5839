"""DuckDB over the Parquet lake: the ``events`` view and ad-hoc SQL."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import duckdb
import msgspec
import pyarrow as pa

from app.lake_layout import HOPS_SCHEMA, PREDICTIONS_SCHEMA, SEGMENT_CHANGES_SCHEMA, typed_nulls
from app.lake_store import LakeStoreError, list_lake

from .location import LakeLocation, connect_lake, files_source


class LakeQueryError(RuntimeError):
    """The SQL failed; the message is DuckDB's."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Column names and rows of a query."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


def _kind_source(conn: duckdb.DuckDBPyConnection, root: str, kind: str, schema: pa.Schema) -> str:
    """A SELECT over a kind's files under the hot root, plus ``game``; no rows if none."""
    listing = list_lake([root], kind)
    source = files_source(conn, listing.files, schema, listing.hidden)
    if source is None:
        return f"SELECT {typed_nulls(schema)}, NULL::VARCHAR AS game LIMIT 0"
    quoted = ", ".join(f'"{name}"' for name in schema.names)  # offset is a keyword
    return f"SELECT {quoted}, game FROM ({source})"


def connect(lake: Path | LakeLocation) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake's views, over its hot and cold roots.

    ``events``: every event, each event_id of a game once (the first received); also
    ``lake_rows`` and ``distinct_events`` (see :func:`connect_lake`).
    ``predictions``: every logged prediction (served and shadow), with ``game``.
    ``hops``: the sample of folded events with each hop's time (PLAYERPULSE_HOP_SAMPLE).
    ``segment_changes``: every segment transition (id, player_id, segment, kind, at,
    features as JSON text, game).
    """
    location = lake if isinstance(lake, LakeLocation) else LakeLocation(str(lake))
    conn = connect_lake(location)
    predictions = _kind_source(conn, location.hot, "predictions", PREDICTIONS_SCHEMA)
    conn.execute(f"CREATE VIEW predictions AS {predictions}")
    hops = _kind_source(conn, location.hot, "hops", HOPS_SCHEMA)
    conn.execute(f"CREATE VIEW hops AS {hops}")
    changes = _kind_source(conn, location.hot, "segment_changes", SEGMENT_CHANGES_SCHEMA)
    # A relay that crashed after writing a file and before its cursor moved writes the
    # same transitions again: each (game, id) once.
    conn.execute(f"CREATE VIEW segment_changes AS SELECT DISTINCT * FROM ({changes})")
    return conn


def run_query(lake: Path | LakeLocation, sql: str) -> QueryResult:
    """Run ``sql`` against the lake's views."""
    try:
        conn = connect(lake)
    except (LakeStoreError, OSError, duckdb.Error) as exc:  # the lake cannot be listed
        raise LakeQueryError(str(exc)) from None
    try:
        cursor = conn.execute(sql)
        if cursor.description is None:
            return QueryResult([], [])
        columns = [c[0] for c in cursor.description]
        return QueryResult(columns, cursor.fetchall())
    except duckdb.Error as exc:
        raise LakeQueryError(str(exc)) from None
    finally:
        conn.close()


def render(result: QueryResult, fmt: str, out: TextIO) -> None:
    """Print a result as a table, CSV or one JSON array of row objects."""
    if fmt == "json":
        rows = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
        out.write(msgspec.json.encode(rows, enc_hook=str).decode() + "\n")
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(result.columns)
        writer.writerows(result.rows)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*result.columns)
        for row in result.rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        Console(file=out).print(table)
