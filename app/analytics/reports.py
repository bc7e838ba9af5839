"""Reports over the lake: active players, retention, funnels and revenue, one SQL each.

Days are UTC dates of event time (the lake's ``date`` partitions, so a date range reads
only its partitions). A report with no ``--from``/``--to`` covers the game's first to
last day in the lake; days without events show 0.

Who-did-what-when reports (dau, mau, retention, funnel) read every archived row without
deduplicating: copies of an event are the same event (same player, type and time, per
the contract), so they cannot change who was active on a day or who reached a step, and
skipping the deduplication is what keeps a daily-active report over tens of millions of
events well under a second. ``arpdau`` sums money, so it counts each purchase once: per
(player_id, event_id), the first received, as the live fold does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import duckdb

from app.lake_layout import FIRST_RECEIVED

from .query import QueryResult

REPORTS = ("dau", "mau", "retention", "funnel", "arpdau")
MAU_DAYS = 30
RETENTION_DAYS = (1, 7, 30)


class ReportError(ValueError):
    """The report cannot be made as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class ReportRequest:
    """One report: which, for which game and days, with its own options."""

    name: str
    game: str
    start: date | None = None
    end: date | None = None
    steps: tuple[str, ...] = ()
    """funnel: the event types, in order."""
    purchase_event: str = "purchase"
    """arpdau: the event type that carries revenue."""
    revenue_field: str = "amount"
    """arpdau: the props field (dotted path) holding the amount."""


def run_report(conn: duckdb.DuckDBPyConnection, request: ReportRequest) -> QueryResult:
    """Run a report on a connection made by :func:`app.analytics.location.connect_lake`."""
    builder = _BUILDERS.get(request.name)
    if builder is None:
        raise ReportError(f"unknown report {request.name!r}; one of {', '.join(REPORTS)}")
    if request.start and request.end and request.start > request.end:
        raise ReportError("--from is after --to")
    if request.name == "funnel" and not request.steps:
        raise ReportError("a funnel needs --steps, for example --steps install,tutorial,purchase")
    span = _span(conn, request)
    if span is None:
        return QueryResult(_EMPTY_COLUMNS[request.name], [])
    params: dict[str, Any] = {"game": request.game, "start": span[0], "end": span[1]}
    sql = builder(request, params)
    cursor = conn.execute(sql, params)
    columns = [c[0] for c in cursor.description or []]
    return QueryResult(columns, cursor.fetchall())


_EMPTY_COLUMNS = {
    "dau": ["day", "players"],
    "mau": ["day", "players"],
    "retention": [
        "cohort",
        "players",
        *(f"day{n}" for n in RETENTION_DAYS),
        *(f"day{n}_rate" for n in RETENTION_DAYS),
    ],
    "funnel": ["step", "type", "players", "from_previous", "from_first"],
    "arpdau": ["day", "players", "payers", "purchases", "revenue", "arpdau"],
}


def _span(conn: duckdb.DuckDBPyConnection, request: ReportRequest) -> tuple[date, date] | None:
    """The report's first and last day: as asked, else the game's first/last in the lake."""
    start, end = request.start, request.end
    if start is None or end is None:
        row = conn.execute(
            "SELECT min(date), max(date) FROM lake_rows WHERE game = $game",
            {"game": request.game},
        ).fetchone()
        first, last = row if row is not None else (None, None)
        start = start or first
        end = end or last
    if start is None or end is None or start > end:
        return None
    return start, end


_DAYS = "SELECT CAST(range AS DATE) AS day FROM range($start::DATE, $end::DATE + 1, INTERVAL 1 DAY)"


def _dau(r: ReportRequest, params: dict[str, Any]) -> str:
    sql = f"""
        WITH days AS ({_DAYS}),
        active AS (
            SELECT date AS day, count(DISTINCT player_id) AS players
            FROM lake_rows
            WHERE game = $game AND date BETWEEN $start AND $end
            GROUP BY date
        )
        SELECT days.day, coalesce(active.players, 0) AS players
        FROM days LEFT JOIN active USING (day)
        ORDER BY days.day
    """
    return sql


def _mau(r: ReportRequest, params: dict[str, Any]) -> str:
    sql = f"""
        WITH days AS ({_DAYS}),
        pairs AS (
            SELECT DISTINCT player_id, date
            FROM lake_rows
            WHERE game = $game AND date BETWEEN $start::DATE - {MAU_DAYS - 1} AND $end
        )
        SELECT days.day, count(DISTINCT pairs.player_id) AS players
        FROM days LEFT JOIN pairs
            ON pairs.date BETWEEN days.day - {MAU_DAYS - 1} AND days.day
        GROUP BY days.day
        ORDER BY days.day
    """
    return sql


def _retention(r: ReportRequest, params: dict[str, Any]) -> str:
    # A cohort is the players first seen on a day (over the game's whole history); day N
    # counts those active again exactly N days later. It is null while day N is after the
    # game's last day in the lake (not known yet), not 0.
    counts = ",\n".join(
        f"count(DISTINCT p.player_id) FILTER (WHERE p.date = f.cohort + {n}) AS active{n}"
        for n in RETENTION_DAYS
    )
    days = ", ".join(f"f.cohort + {n}" for n in RETENTION_DAYS)
    shown = ",\n".join(
        f"CASE WHEN cohort + {n} <= (SELECT last FROM last_day) THEN active{n} END AS day{n}"
        for n in RETENTION_DAYS
    )
    rates = ",\n".join(f"round(day{n} / players, 4) AS day{n}_rate" for n in RETENTION_DAYS)
    sql = f"""
        WITH pairs AS (
            SELECT DISTINCT player_id, date FROM lake_rows WHERE game = $game
        ),
        last_day AS (SELECT max(date) AS last FROM pairs),
        firsts AS (SELECT player_id, min(date) AS cohort FROM pairs GROUP BY player_id),
        counted AS (
            SELECT f.cohort, count(DISTINCT f.player_id) AS players,
            {counts}
            FROM firsts f LEFT JOIN pairs p
                ON p.player_id = f.player_id AND p.date IN ({days})
            WHERE f.cohort BETWEEN $start AND $end
            GROUP BY f.cohort
        ),
        shown AS (SELECT cohort, players, {shown} FROM counted)
        SELECT cohort, players, {", ".join(f"day{n}" for n in RETENTION_DAYS)}, {rates}
        FROM shown
        ORDER BY cohort
    """
    return sql


def _funnel(r: ReportRequest, params: dict[str, Any]) -> str:
    # Step k+1 is the player's earliest event of its type strictly after the event that
    # reached step k, by (event time, event_id): so "a,a" means two distinct events.
    ctes = [
        "ev AS (SELECT player_id, type, struct_pack(ts := ts, id := event_id) AS reached "
        "FROM lake_rows WHERE game = $game AND date BETWEEN $start AND $end "
        "AND type IN (SELECT unnest($types)))"
    ]
    params["types"] = list(dict.fromkeys(r.steps))
    for k, step in enumerate(r.steps, start=1):
        params[f"t{k}"] = step
        if k == 1:
            ctes.append(
                "s1 AS (SELECT player_id, min(reached) AS reached FROM ev WHERE type = $t1 "
                "GROUP BY player_id)"
            )
        else:
            ctes.append(
                f"s{k} AS (SELECT e.player_id, min(e.reached) AS reached FROM ev e "
                f"JOIN s{k - 1} s USING (player_id) WHERE e.type = $t{k} AND e.reached > s.reached "
                "GROUP BY e.player_id)"
            )
    counts = " UNION ALL ".join(
        f"SELECT {k} AS step, $t{k} AS type, (SELECT count(*) FROM s{k}) AS players"
        for k in range(1, len(r.steps) + 1)
    )
    sql = f"""
        WITH {", ".join(ctes)},
        counts AS ({counts})
        SELECT step, type, players,
            round(players / nullif(lag(players) OVER (ORDER BY step), 0), 4) AS from_previous,
            round(players / nullif(first_value(players) OVER (ORDER BY step), 0), 4)
                AS from_first
        FROM counts
        ORDER BY step
    """
    return sql


def _arpdau(r: ReportRequest, params: dict[str, Any]) -> str:
    path = json_path(tuple(r.revenue_field.split(".")))
    sql = f"""
        WITH days AS ({_DAYS}),
        active AS (
            SELECT date AS day, count(DISTINCT player_id) AS players
            FROM lake_rows WHERE game = $game AND date BETWEEN $start AND $end
            GROUP BY date
        ),
        purchases AS (
            SELECT date AS day, player_id, json_extract(props, $path) AS amount FROM (
                SELECT *, row_number() OVER (
                    PARTITION BY player_id, event_id {FIRST_RECEIVED}) AS copy
                FROM lake_rows
                WHERE game = $game AND type = $event AND date BETWEEN $start AND $end
            ) WHERE copy = 1
        ),
        revenue AS (
            SELECT day, count(DISTINCT player_id) AS payers, count(*) AS purchases,
                fsum(CASE WHEN json_type(amount) IN ('BIGINT', 'UBIGINT', 'DOUBLE')
                          THEN amount::DOUBLE END) AS revenue
            FROM purchases GROUP BY day
        )
        SELECT days.day, coalesce(active.players, 0) AS players,
            coalesce(revenue.payers, 0) AS payers,
            coalesce(revenue.purchases, 0) AS purchases,
            coalesce(revenue.revenue, 0.0) AS revenue,
            coalesce(revenue.revenue, 0.0) / nullif(active.players, 0) AS arpdau
        FROM days LEFT JOIN active USING (day) LEFT JOIN revenue USING (day)
        ORDER BY days.day
    """
    params.update(event=r.purchase_event, path=path)
    return sql


def json_path(parts: tuple[str, ...]) -> str:
    """A DuckDB JSONPath for a dotted props field: quoted keys, so only objects are entered."""
    quoted = ('"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"' for part in parts)
    return "$." + ".".join(quoted)


# Each builder gets the request and the parameters every report binds ($game, $start and
# $end, the span's first and last day) and returns its SQL, adding parameters of its own.
_BUILDERS: dict[str, Callable[[ReportRequest, dict[str, Any]], str]] = {
    "dau": _dau,
    "mau": _mau,
    "retention": _retention,
    "funnel": _funnel,
    "arpdau": _arpdau,
}


def plot(result: QueryResult, name: str, path: Path) -> None:
    """Draw a report as a PNG (needs matplotlib): lines over days, bars for a funnel."""
    try:
        import matplotlib
    except ImportError:
        raise ReportError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 5))
    try:
        if name == "funnel":
            labels = [f"{row[0]}. {row[1]}" for row in result.rows]
            axes.bar(labels, [row[2] for row in result.rows])
            axes.set_ylabel("players")
        else:
            xs = [row[0] for row in result.rows]
            wanted = {
                "dau": ["players"],
                "mau": ["players"],
                "retention": [f"day{n}_rate" for n in RETENTION_DAYS],
                "arpdau": ["arpdau"],
            }[name]
            for column in wanted:
                index = result.columns.index(column)
                axes.plot(xs, [row[index] for row in result.rows], marker=".", label=column)
            axes.legend()
            figure.autofmt_xdate()
        axes.set_title(name)
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
