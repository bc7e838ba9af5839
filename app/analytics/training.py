"""Point-in-time training sets: each label row, plus every feature as of the label's time.

A label row has ``player_id``, ``ts`` and any label columns. Each aggregate's rules live
once, in ``app.domain.aggregates``: its fold and, where DuckDB can compute it exactly, its
SQL fragment. This module only composes them: features whose aggregate has SQL are
computed by DuckDB SQL generated from the features file (:func:`training_sql`), the
others (``FOLDED``: ``distinct_count`` and the sketches) by the fold's own code over the
same events (:func:`fold_rows`); all equal what the live fold gives for the same events:

- Events are the lake's distinct events of the game: each ``(player_id, event_id)`` once,
  the first received, as the fold applies them. A *poison* event (one the fold refuses:
  a non-number, a bool, or a number beyond +-2**53 for ints or +-1e300 for floats where
  a sum/avg/min/max/percentile needs a number; an int beyond 64 bits anywhere in a
  count/first/last/last_k value) counts for no feature at all, as in the fold.
- **No event with an event time after ``ts`` counts**, whatever its bucket: the row is
  the profile the live fold would show when evaluated at time ``ts`` over the events
  whose event time is at or before ``ts``. For a windowed feature that is every such
  event in the window's buckets ending with the bucket of ``ts`` (the live bucket rule,
  ``fold._bucket_range``: buckets ``b`` with ``bucket(ts) - window/bucket < b <=
  bucket(ts)``); the live profile additionally counts events of that last bucket dated
  after ``ts`` (device clocks ahead), which a training row never does.
- **Late arrivals count by event time.** An event received after ``ts`` whose event time
  is at or before ``ts`` counts, as it does in the profile once it arrives (and in a
  profile rebuilt from the lake): the row is what the profile says about the moment
  ``ts`` with everything known now. With ``exclude_late_arrivals`` such events are left
  out too: the row is then the profile as it could have been served at ``ts``
  (``received_at <= ts``), late events missing as they were then.

Consequences for comparing with the live API, which evaluates profiles at request time:
for a label at a player's newest event time, unwindowed features equal the API's
exactly; a windowed feature equals it while no event of that player has slid out of the
window between the label's bucket and the bucket of the request (the live window keeps
sliding after the newest event; the label's does not). A label at "now" equals the API
for every feature, unless an event is dated in the future. A resend of an event after
the dedup horizon (``PLAYERPULSE_DEDUP_HORIZON``) counts twice in the live
profile and once here (and once in a rebuilt profile).

Exactness: sums use ``math.fsum`` (a DuckDB Python UDF over the list of values:
DuckDB's own double sum is not correctly rounded), so a sum or mean is bit-for-bit the
fold's. Everything else in SQL is plain SQL over ``json_extract``. The folded features
run :func:`app.domain.fold.prepare` and :func:`app.domain.fold.fold_value` on each
event's field (JSON text from the lake) in event-time order, so they are the fold's
values; where a sketch's state depends on order (``percentile`` past 300 values,
``top_k`` past 192 distinct ones: see app/domain/sketches.py) a row may differ from the
live profile within the sketch's error bound.

Output columns are typed from the values: an integer feature is BIGINT, a numeric one
DOUBLE (JSON has one number type: ``44`` and ``44.0`` are the same value), strings
VARCHAR, booleans BOOLEAN; a feature whose values mix types is JSON text.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from app.domain.aggregates import AGGREGATES, FOLDED, SQL_FUNCTIONS, SqlColumns
from app.domain.features import FeatureSet, FeatureSpec
from app.domain.fold import FoldRun, PoisonEvent, ProfileState, evaluate, fold_value, prepare
from app.lake_layout import FIRST_RECEIVED

from .location import LakeLocation, connect_lake
from .reports import json_path

RESERVED = "__pp_"


class TrainingSetError(ValueError):
    """The labels or options cannot be used; the message names the problem."""


@dataclass(slots=True)
class TrainingStats(FoldRun):
    """What a training-set run did (events: before the as-of cut)."""

    labels: int = 0


@dataclass(frozen=True, slots=True)
class TrainingSQL:
    """The SQL generated from a features file."""

    events: str
    """Builds table ``ev``: the players' distinct events with per-feature columns."""
    features: str
    """Aggregates features per label row of table ``labels`` over ``ev``, for the players
    from $lo to $hi (both tables sorted by player, so a range reads only its own part)."""
    widths: tuple[int, ...]
    """Bucket widths of the windowed features."""


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _types(events: frozenset[str]) -> str:
    return ", ".join(_lit(t) for t in sorted(events))


def _empty(spec: FeatureSpec) -> str:
    value = spec.empty_value
    return "NULL" if value is None else _lit(msgspec.json.encode(value).decode())


def training_sql(features: FeatureSet, *, exclude_late_arrivals: bool = False) -> TrainingSQL:
    """The DuckDB SQL that computes ``features`` point-in-time, one piece per feature.

    Features whose aggregate is in :data:`FOLDED` get no aggregate here: the events table
    keeps their match flags and field texts for :func:`fold_rows`.
    """
    path_index = _path_index(features)
    widths = tuple(sorted({s.bucket_s for s in features.specs if s.bucket_s is not None}))
    events_sql = _events_sql(features, path_index, widths)
    aggregates = [
        _aggregate_sql(k, spec, path_index)
        for k, spec in enumerate(features.specs)
        if spec.agg not in FOLDED
    ]
    late = " AND e.received_us <= l.ts_us" if exclude_late_arrivals else ""
    listed = "".join(f",\n            {a}" for a in aggregates)
    features_sql = f"""
        SELECT l.{RESERVED}row AS {RESERVED}row{listed}
        FROM (SELECT * FROM labels WHERE player_id BETWEEN $lo AND $hi) l
        LEFT JOIN (SELECT * FROM ev WHERE player_id BETWEEN $lo AND $hi) e
            ON e.player_id = l.player_id AND e.ts_us <= l.ts_us{late}
        GROUP BY l.{RESERVED}row
    """
    return TrainingSQL(events_sql, features_sql, widths)


def _path_index(features: FeatureSet) -> dict[tuple[str, ...], int]:
    """Field path -> its index ``i`` in the events table's columns (``txt{i}``, ...)."""
    paths = sorted({spec.field for spec in features.specs if spec.field is not None})
    return {path: i for i, path in enumerate(paths)}


def _events_sql(
    features: FeatureSet, path_index: dict[tuple[str, ...], int], widths: tuple[int, ...]
) -> str:
    """Table ``ev``: each distinct event's first received copy, typed, flagged per feature."""
    all_types = sorted({t for spec in features.specs for t in spec.events})
    extract = "".join(
        f", json_extract(props, {_lit(json_path(path))}) AS f{i}" for path, i in path_index.items()
    )
    select_paths = "".join(_path_columns(i) for i in path_index.values())
    columns = [_match_column(k, spec, path_index) for k, spec in enumerate(features.specs)]
    buckets = [f"{_floor_div('ts_us', w * 1_000_000)} AS b{w}" for w in widths]
    return f"""
        CREATE OR REPLACE TEMP TABLE ev AS
        WITH copies AS (
            SELECT player_id, event_id, type, ts, received_at, props,
                row_number() OVER (
                    PARTITION BY player_id, event_id {FIRST_RECEIVED}
                ) AS copy
            FROM lake_rows
            WHERE game = $game AND player_id IN (SELECT player_id FROM labels)
        ),
        firsts AS (
            SELECT player_id, event_id, type, epoch_us(ts) AS ts_us,
                epoch_us(received_at) AS received_us{extract}
            FROM copies
            WHERE copy = 1 AND type IN ({", ".join(_lit(t) for t in all_types)})
                AND epoch_us(ts) <= (SELECT max(ts_us) FROM labels)
        ),
        typed AS (
            SELECT player_id, event_id, type, ts_us, received_us{select_paths}
            FROM firsts
        )
        SELECT *, ({_poison_sql(features, path_index)}) AS poison,
            {", ".join([*columns, *buckets])}
        FROM typed
        ORDER BY player_id, ts_us
    """


def _path_columns(j: int) -> str:
    """Per field path: the JSON value, its type, and what the fold's checks need."""
    f = f"f{j}"
    return f""",
            {f}, json_type({f}) AS jt{j}, {f}::VARCHAR AS txt{j},
            coalesce(json_type({f}) <> 'NULL', false) AS present{j},
            (json_type({f}) IN ('BIGINT', 'UBIGINT')
             OR (json_type({f}) = 'DOUBLE' AND regexp_full_match({f}::VARCHAR, '-?[0-9]+')))
                AS isint{j},
            CASE WHEN json_type({f}) IN ('BIGINT', 'UBIGINT', 'DOUBLE')
                 THEN TRY_CAST({f}::VARCHAR AS DOUBLE) END AS num{j}"""


def _match_column(k: int, spec: FeatureSpec, path_index: dict[tuple[str, ...], int]) -> str:
    """``c{k}``: the event counts for feature ``k`` (matched type, field present)."""
    matched = f"type IN ({_types(spec.events)})"
    if spec.field is None:
        return f"({matched}) AS c{k}"
    return f"({matched} AND present{path_index[spec.field]}) AS c{k}"


def _columns(
    spec: FeatureSpec, path_index: dict[tuple[str, ...], int], cond: str, prefix: str = ""
) -> SqlColumns:
    """The columns of table ``ev`` (aliased ``prefix``) an aggregate's SQL reads for ``spec``."""
    i = path_index[spec.field] if spec.field is not None else -1
    return SqlColumns(
        cond=cond,
        jtype=f"{prefix}jt{i}",
        txt=f"{prefix}txt{i}",
        num=f"{prefix}num{i}",
        isint=f"{prefix}isint{i}",
        ts=f"{prefix}ts_us",
        event_id=f"{prefix}event_id",
    )


def _poison_sql(features: FeatureSet, path_index: dict[tuple[str, ...], int]) -> str:
    """True for an event the fold refuses (each aggregate's ``accepts_sql``)."""
    terms = []
    for spec in features.specs:
        accepts = AGGREGATES[spec.agg].accepts_sql
        if spec.field is None or accepts is None:
            continue  # the fold never refuses these
        i = path_index[spec.field]
        ok = accepts(_columns(spec, path_index, "true"))
        terms.append(
            f"(type IN ({_types(spec.events)}) AND present{i} AND NOT coalesce({ok}, false))"
        )
    return " OR ".join(terms) or "false"


def _aggregate_sql(k: int, spec: FeatureSpec, path_index: dict[tuple[str, ...], int]) -> str:
    """Feature ``k`` of a label row, as JSON text, over the events joined to it."""
    cond = f"e.c{k} AND NOT e.poison"
    if spec.bucket_s is not None and spec.window_s is not None:
        w = spec.bucket_s
        cond += f" AND e.b{w} > l.b{w} - {spec.window_s // w}"
    sql = AGGREGATES[spec.agg].sql
    assert sql is not None
    columns = _columns(spec, path_index, cond, "e.")
    return (
        f"CASE WHEN {columns.n} = 0 THEN {_empty(spec)} ELSE {sql(columns)} END "
        f"AS {_ident(spec.name)}"
    )


PARALLEL_FROM_EVENTS = 100_000
"""From this many events to fold, :func:`fold_rows` folds in two processes (split by
player); below, starting a process costs more than it saves."""


def fold_rows(
    conn: duckdb.DuckDBPyConnection,
    features: FeatureSet,
    *,
    exclude_late_arrivals: bool,
    parallel_from: int | None = None,
) -> pa.Table:
    """The :data:`FOLDED` features of every label row, computed by the fold itself.

    Per player, label rows and events both in time order: the fold absorbs each event
    dated at or before a label's ``ts`` (and, with ``exclude_late_arrivals``, received by
    then) with :func:`app.domain.fold.fold_value`, and the row is
    :func:`app.domain.fold.evaluate` at ``ts``. Needs tables ``labels`` and ``ev``. With
    at least ``parallel_from`` (default :data:`PARALLEL_FROM_EVENTS`) events, the players
    are split in two halves folded in two processes (players are independent, so the
    rows are the same).
    """
    folded = [(k, spec) for k, spec in enumerate(features.specs) if spec.agg in FOLDED]
    if not folded:
        return pa.table({f"{RESERVED}row": pa.array([], pa.int64())})
    subset = FeatureSet.of(tuple(spec for _, spec in folded))
    labels = conn.sql(
        f"SELECT {RESERVED}row, player_id, ts_us FROM labels ORDER BY player_id, ts_us"
    ).to_arrow_table()
    events = conn.sql(
        _folded_events_sql(folded, _path_index(features), exclude_late_arrivals)
    ).to_arrow_table()
    if parallel_from is None:
        parallel_from = PARALLEL_FROM_EVENTS
    parts = _split_by_player(labels, events, 2 if events.num_rows >= parallel_from else 1)
    if len(parts) == 1:
        return fold_part(subset, *parts[0])
    with ProcessPoolExecutor(len(parts) - 1, mp_context=get_context("spawn")) as pool:
        others = [pool.submit(fold_part, subset, *part) for part in parts[1:]]
        first = fold_part(subset, *parts[0])
        return pa.concat_tables([first, *(future.result() for future in others)])


def _split_by_player(labels: pa.Table, events: pa.Table, n: int) -> list[tuple[pa.Table, pa.Table]]:
    """``labels`` and ``events`` (both sorted by player) cut into ``n`` ranges of players
    with about as many label rows each; empty ranges are left out."""
    cuts_l, cuts_e = [0], [0]
    for i in range(1, n):
        player = labels.column("player_id")[labels.num_rows * i // n]
        cuts_l.append(pc.sum(pc.less(labels.column("player_id"), player)).as_py() or 0)
        cuts_e.append(pc.sum(pc.less(events.column("player_id"), player)).as_py() or 0)
    cuts_l.append(labels.num_rows)
    cuts_e.append(events.num_rows)
    parts = [
        (
            labels.slice(cuts_l[i], cuts_l[i + 1] - cuts_l[i]),
            events.slice(cuts_e[i], cuts_e[i + 1] - cuts_e[i]),
        )
        for i in range(n)
        if cuts_l[i + 1] > cuts_l[i]
    ]
    return parts or [(labels, events)]


def fold_part(features: FeatureSet, labels: pa.Table, events: pa.Table) -> pa.Table:
    """The rows of :func:`fold_rows` for ``labels`` over ``events`` (of the same players,
    sorted as there): run here or in a worker process."""
    out: dict[str, list[Any]] = {f"{RESERVED}row": [], **{s.name: [] for s in features.specs}}
    rows = _rows(labels)
    stream = _rows(events)
    event = next(stream, None)
    state, player = ProfileState(), None
    for row, label_player, ts in rows:
        if label_player != player:
            state, player = ProfileState(), label_player
            while event is not None and event[0] < player:
                event = next(stream, None)
        while event is not None and event[0] == player and event[1] <= ts:
            _fold_texts(state, features.specs, event)
            event = next(stream, None)
        out[f"{RESERVED}row"].append(row)
        for name, value in evaluate(state, features, ts).items():
            out[name].append(None if value is None else msgspec.json.encode(value).decode())
    return pa.table(
        {
            name: pa.array(values, pa.int64() if name == f"{RESERVED}row" else pa.string())
            for name, values in out.items()
        }
    )


def _rows(table: pa.Table) -> Iterator[tuple[Any, ...]]:
    for batch in table.to_batches(100_000):
        yield from zip(*(column.to_pylist() for column in batch.columns), strict=True)


def _folded_events_sql(
    folded: list[tuple[int, FeatureSpec]], path_index: dict[tuple[str, ...], int], late: bool
) -> str:
    """``(player, at, ts, event_id, text per folded feature)``, by player then ``at``.

    ``at`` is when the event starts to count for a label: its event time, or with
    ``late`` the later of event and receipt time.
    """
    at = "greatest(ts_us, received_us)" if late else "ts_us"
    texts = ", ".join(
        f"CASE WHEN c{k} THEN txt{path_index[spec.field]} END"
        for k, spec in folded
        if spec.field is not None
    )
    matched = " OR ".join(f"c{k}" for k, _ in folded)
    return f"""
        SELECT player_id, {at} AS at_us, ts_us, event_id, {texts}
        FROM ev WHERE NOT poison AND ({matched})
        ORDER BY player_id, at_us, ts_us, event_id
    """


def _fold_texts(
    state: ProfileState, specs: tuple[FeatureSpec, ...], event: tuple[Any, ...]
) -> None:
    """Fold one event (field texts as JSON) into ``state``; a poison event counts for none."""
    _, _, ts, event_id, *texts = event
    try:
        found = [
            (spec, prepare(spec, msgspec.json.decode(text)))
            for spec, text in zip(specs, texts, strict=True)
            if text is not None
        ]
    except PoisonEvent:
        return
    for spec, value in found:
        fold_value(state, spec, value, ts, event_id)


def _floor_div(column: str, divisor: int) -> str:
    # DuckDB's // truncates toward zero; the fold's bucket index is a floor (times before
    # 1970 are negative).
    return f"({column} // {divisor} - CASE WHEN {column} % {divisor} < 0 THEN 1 ELSE 0 END)"


def register_udfs(conn: duckdb.DuckDBPyConnection) -> None:
    """The scalar functions the aggregates' SQL calls (``aggregates.SQL_FUNCTIONS``)."""
    for name, (function, arguments, result) in SQL_FUNCTIONS.items():
        types: list[Any] = list(arguments)
        conn.create_function(name, function, types, result, side_effects=False)


def read_labels(path: Path) -> pa.Table:
    """Labels from CSV or Parquet (by extension); ``player_id`` and ``ts`` are required."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    column_types={"player_id": pa.string(), "ts": pa.string()}
                ),
            )
        elif suffix in (".parquet", ".pq"):
            table = pq.read_table(path)
        else:
            raise TrainingSetError(f"labels {path}: use a .csv or .parquet file")
    except (OSError, pa.ArrowInvalid) as exc:
        raise TrainingSetError(f"labels {path}: {exc}") from None
    missing = [c for c in ("player_id", "ts") if c not in table.column_names]
    if missing:
        raise TrainingSetError(f"labels {path}: no column {', '.join(missing)}")
    return table


def build_training_set(
    location: LakeLocation,
    features: FeatureSet,
    game: str,
    labels_path: Path,
    out_path: Path,
    *,
    exclude_late_arrivals: bool = False,
    chunk_rows: int = 20_000,
    progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
) -> TrainingStats:
    """Write ``out_path`` (CSV or Parquet, by extension): each label row plus its features."""
    started = time.monotonic()
    out_suffix = out_path.suffix.lower()
    if out_suffix not in (".csv", ".parquet", ".pq"):
        raise TrainingSetError(f"output {out_path}: use a .csv or .parquet file")
    labels = _read_checked_labels(labels_path, features)
    labels = labels.append_column(f"{RESERVED}row", pa.array(range(labels.num_rows), pa.int64()))
    sql = training_sql(features, exclude_late_arrivals=exclude_late_arrivals)
    stats = TrainingStats(labels=labels.num_rows)
    spill = tempfile.mkdtemp(prefix="playerpulse-training-")
    conn = connect_lake(location, threads=threads)
    try:
        conn.execute(f"SET temp_directory = {_lit(spill)}")
        register_udfs(conn)
        conn.register("labels_in", labels)
        _load_labels(conn, sql.widths)
        row = conn.execute("SELECT count(DISTINCT player_id) FROM labels").fetchone()
        stats.players = int(row[0]) if row else 0
        conn.execute(sql.events, {"game": game})
        row = conn.execute("SELECT count(*), count(*) FILTER (WHERE poison) FROM ev").fetchone()
        stats.events, stats.poison = (int(row[0]), int(row[1])) if row else (0, 0)

        _compute_features(conn, features, sql, labels.num_rows, chunk_rows, progress)
        conn.register(
            "folded_in", fold_rows(conn, features, exclude_late_arrivals=exclude_late_arrivals)
        )
        conn.execute(
            f"CREATE TEMP TABLE feats AS SELECT {RESERVED}row, "
            f"{', '.join(_ident(n) for n in features.names)} "
            f"FROM sql_feats LEFT JOIN folded_in USING ({RESERVED}row)"
        )
        _write_output(conn, features, out_path)
    finally:
        conn.close()
        shutil.rmtree(spill, ignore_errors=True)
    stats.seconds = time.monotonic() - started
    return stats


def _read_checked_labels(labels_path: Path, features: FeatureSet) -> pa.Table:
    labels = read_labels(labels_path)
    clash = sorted(
        set(labels.column_names) & set(features.names)
        | {c for c in labels.column_names if c.startswith(RESERVED)}
    )
    if clash:
        raise TrainingSetError(
            f"labels {labels_path}: column(s) {', '.join(clash)} clash with feature names "
            f"(or the reserved prefix {RESERVED})"
        )
    return labels


def _write_output(conn: duckdb.DuckDBPyConnection, features: FeatureSet, out_path: Path) -> None:
    """The label rows with their typed feature columns, as CSV or Parquet by extension."""
    casts = _output_casts(conn, features)
    options = (
        "FORMAT csv, HEADER true"
        if out_path.suffix.lower() == ".csv"
        else "FORMAT parquet, COMPRESSION zstd"
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    conn.execute(
        f"""
        COPY (
            SELECT labels_in.* EXCLUDE ({RESERVED}row), {", ".join(casts)}
            FROM labels_in JOIN feats USING ({RESERVED}row)
            ORDER BY {RESERVED}row
        ) TO {_lit(str(out_path))} ({options})
        """
    )


def _compute_features(
    conn: duckdb.DuckDBPyConnection,
    features: FeatureSet,
    sql: TrainingSQL,
    total: int,
    chunk_rows: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Table ``sql_feats``: the SQL-computed features of every label row, in chunks."""
    columns = "".join(
        f", {_ident(spec.name)} VARCHAR" for spec in features.specs if spec.agg not in FOLDED
    )
    conn.execute(f"CREATE TEMP TABLE sql_feats ({RESERVED}row BIGINT{columns})")
    if progress is not None:
        progress(0, total)
    for lo, hi, done in _player_chunks(conn, chunk_rows):
        conn.execute(f"INSERT INTO sql_feats {sql.features}", {"lo": lo, "hi": hi})
        if progress is not None:
            progress(done, total)


def _player_chunks(conn: duckdb.DuckDBPyConnection, chunk_rows: int) -> list[tuple[str, str, int]]:
    """Ranges of players of about ``chunk_rows`` label rows each (a player is never split):
    ``(first player, last player, label rows up to the end of the range)``."""
    return [
        (lo, hi, int(done))
        for lo, hi, done in conn.execute(
            """
            WITH per AS (SELECT player_id, count(*) AS n FROM labels GROUP BY player_id),
            upto AS (SELECT player_id, sum(n) OVER (ORDER BY player_id) AS done FROM per),
            chunked AS (SELECT player_id, done, (done - 1) // $rows AS chunk FROM upto)
            SELECT min(player_id), max(player_id), max(done)
            FROM chunked GROUP BY chunk ORDER BY chunk
            """,
            {"rows": chunk_rows},
        ).fetchall()
    ]


def _load_labels(conn: duckdb.DuckDBPyConnection, widths: tuple[int, ...]) -> None:
    buckets = "".join(f", {_floor_div('ts_us', w * 1_000_000)} AS b{w}" for w in widths)
    conn.execute(
        f"""
        CREATE TEMP TABLE labels AS
        SELECT *{buckets} FROM (
            SELECT {RESERVED}row, player_id::VARCHAR AS player_id,
                epoch_us(TRY_CAST(ts AS TIMESTAMPTZ)) AS ts_us, ts::VARCHAR AS ts_text
            FROM labels_in
        )
        ORDER BY player_id, ts_us
        """
    )
    bad = conn.execute(
        f"SELECT {RESERVED}row, player_id, ts_text FROM labels "
        "WHERE player_id IS NULL OR ts_us IS NULL ORDER BY 1 LIMIT 1"
    ).fetchone()
    if bad is not None:
        problem = "no player_id" if bad[1] is None else f"ts {bad[2]!r} is not a time"
        raise TrainingSetError(f"label row {bad[0] + 1}: {problem}")


def _output_casts(conn: duckdb.DuckDBPyConnection, features: FeatureSet) -> list[str]:
    """Typed output columns from the JSON texts in ``feats``."""
    probes = []
    for name in features.names:
        col = _ident(name)
        probes.append(
            f"list(DISTINCT json_type({col}::JSON)) FILTER (WHERE {col} IS NOT NULL), "
            f"bool_and(TRY_CAST({col} AS BIGINT) IS NOT NULL) FILTER (WHERE "
            f"json_type({col}::JSON) IN ('BIGINT', 'UBIGINT'))"
        )
    row = conn.execute(f"SELECT {', '.join(probes)} FROM feats").fetchone()
    assert row is not None
    casts = []
    for k, spec in enumerate(features.specs):
        kinds = set(row[2 * k] or ())
        ints_fit = row[2 * k + 1] is not False
        col = _ident(spec.name)
        if not kinds:
            casts.append(f"CAST({col} AS {AGGREGATES[spec.agg].sql_type}) AS {col}")
        elif kinds <= {"BIGINT", "UBIGINT"} and ints_fit:
            casts.append(f"CAST({col} AS BIGINT) AS {col}")
        elif kinds <= {"BIGINT", "UBIGINT", "DOUBLE"}:
            casts.append(f"CAST({col} AS DOUBLE) AS {col}")
        elif kinds == {"VARCHAR"}:
            casts.append(f"json_extract_string({col}::JSON, '$') AS {col}")
        elif kinds == {"BOOLEAN"}:
            casts.append(f"CAST({col} AS BOOLEAN) AS {col}")
        else:
            casts.append(f"{col}::JSON AS {col}")
    return casts
