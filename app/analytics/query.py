"""DuckDB over the Parquet lake: the ``events`` view and ad-hoc SQL."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import duckdb
import msgspec


class LakeQueryError(RuntimeError):
    """The SQL failed; the message is DuckDB's."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Column names and rows of a query."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


_EVENT_COLUMNS = {
    "event_id": "VARCHAR",
    "player_id": "VARCHAR",
    "type": "VARCHAR",
    "ts": "TIMESTAMPTZ",
    "props": "VARCHAR",
    "received_at": "TIMESTAMPTZ",
}
_PREDICTION_COLUMNS = {
    "model": "VARCHAR",
    "version": "INTEGER",
    "player_id": "VARCHAR",
    "shadow": "BOOLEAN",
    "ts": "TIMESTAMPTZ",
    "latency_us": "BIGINT",
    "outputs": "VARCHAR",
    "features": "VARCHAR",
}


def _source(folder: Path, columns: dict[str, str]) -> str:
    """A SELECT over a lake table's Parquet files, plus ``game``; no rows if it has none."""
    if any(folder.glob("game=*/date=*/*.parquet")):
        pattern = str(folder / "game=*" / "date=*" / "*.parquet").replace("'", "''")
        return (
            f"SELECT {', '.join(columns)}, game "
            f"FROM read_parquet('{pattern}', hive_partitioning = true, "
            f"hive_types = {{'game': VARCHAR, 'date': DATE}}, union_by_name = true)"
        )
    typed = ", ".join(f"NULL::{kind} AS {name}" for name, kind in columns.items())
    return f"SELECT {typed}, NULL::VARCHAR AS game LIMIT 0"


def connect(lake_dir: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake's views.

    ``events``: every event, each event_id of a game once (the first received).
    ``predictions``: every logged prediction (served and shadow), with ``game``.
    """
    conn = duckdb.connect(":memory:")
    conn.execute("SET TimeZone = 'UTC'")
    events = _source(lake_dir / "events", _EVENT_COLUMNS)
    # An event archived twice (at-least-once delivery) shows once: the first received.
    conn.execute(
        f"""
        CREATE VIEW events AS
        SELECT * EXCLUDE (copy) FROM (
            SELECT *, row_number() OVER (
                PARTITION BY game, event_id ORDER BY received_at, player_id) AS copy
            FROM ({events})
        ) WHERE copy = 1
        """
    )
    conn.execute(
        f"CREATE VIEW predictions AS {_source(lake_dir / 'predictions', _PREDICTION_COLUMNS)}"
    )
    return conn


def run_query(lake_dir: Path, sql: str) -> QueryResult:
    """Run ``sql`` against the lake's views."""
    conn = connect(lake_dir)
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
