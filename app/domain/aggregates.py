"""Each aggregate's one definition: its fold (absorb, merge, finish) and its SQL side by side.

:data:`AGGREGATES` maps every :class:`~app.domain.features.Agg` to an :class:`Aggregate`:

- ``absorb`` adds one event's prepared value to a :class:`Partial` (the live fold, replay
  and training sets all call it, through :func:`app.domain.fold.absorb`);
- ``merge`` finishes a merge of partials (windows merge their buckets) past the plain
  fields every partial merges the same way (:func:`merge_plain`);
- ``finish`` reads the feature's value from a non-empty partial;
- ``sql``, for aggregates a DuckDB query can compute exactly, the same value as JSON text
  over the events a label row counts (``SqlColumns.cond``; at least one matched). It is
  ``None`` for ``distinct_count`` and the sketches: training sets run ``absorb`` and
  ``finish`` themselves over the lake's events for those (DuckDB cannot build the
  sketches, and ``distinct_count`` becomes one past its cap);
- ``sql_type``, the SQL type of a training-set column none of whose rows has a value;
- ``accepts_sql``, the SQL form of the check :func:`app.domain.fold.prepare` makes on a
  field value (an event failing it is refused by the fold, so it counts for no
  feature), or ``None`` when the fold takes any value.

SQL fragments are text over column names given in :class:`SqlColumns`; they use two
scalar functions the caller registers from :data:`SQL_FUNCTIONS`. This module runs no
SQL itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from . import sketches
from .features import KEYED, NUMERIC, Agg, FeatureSpec

MAX_EXACT_INT = 2**53
"""Largest int magnitude a numeric aggregate takes (exact as a float, and in JSON readers)."""
MAX_FLOAT = 1e300
"""Largest float magnitude a numeric aggregate takes (sums cannot overflow)."""
INT64 = (-(2**63), 2**63 - 1)
DISTINCT_EXACT_MAX = 1_000
"""Most values a ``distinct_count`` keeps exactly (per player, feature and bucket)."""
DISTINCT_EXACT_MAX_CHARS = 64_000
"""Most characters of value text it keeps exactly; past either cap it becomes an HLL."""


class Partial(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """Mergeable summary of the events one feature matched (in one bucket, if windowed)."""

    n: int = 0
    fsum: list[float] = msgspec.field(default_factory=list)
    floats: bool = False
    lo: int | float | None = None
    hi: int | float | None = None
    first: tuple[int, str, Any] | None = None
    last: tuple[int, str, Any] | None = None
    seen: set[str] | None = None
    sketch: bytes | None = None
    """A DataSketches state (HLL, KLL or frequent items, by aggregate): see sketches.py."""
    recent: list[tuple[int, str, Any]] | None = None
    """``last_k``: its newest ``(event time, event_id, value)``, at most ``k``."""


@dataclass(frozen=True, slots=True)
class SqlColumns:
    """Column names (SQL expressions) a fragment reads for one feature."""

    cond: str
    """True for an event that counts for this feature and label row."""
    jtype: str = ""
    """``json_type`` of the field's value."""
    txt: str = ""
    """The field's value as JSON text."""
    num: str = ""
    """The field's value as a DOUBLE (null unless a JSON number)."""
    isint: str = ""
    """True when the field's value is an integer (JSON text without a fraction)."""
    ts: str = ""
    """Event time, µs."""
    event_id: str = ""

    @property
    def n(self) -> str:
        """How many events count."""
        return f"count(*) FILTER (WHERE {self.cond})"


Absorb = Callable[[Partial, FeatureSpec, Any, int, str], None]
Finish = Callable[[FeatureSpec, Partial], Any]
Merge = Callable[[Partial, list[Partial], FeatureSpec], None]
Sql = Callable[[SqlColumns], str]


@dataclass(frozen=True, slots=True)
class Aggregate:
    """One aggregate: its fold and, if DuckDB can compute it exactly, its SQL."""

    absorb: Absorb
    finish: Finish
    merge: Merge | None = None
    sql: Sql | None = None
    accepts_sql: Sql | None = None
    sql_type: str = "VARCHAR"
    """The SQL type of a column of this feature when nothing tells (no row has a value)."""


# --- exact arithmetic shared by the folds ------------------------------------------------


def grow(partials: list[float], x: float) -> None:
    """Add ``x`` to an exact sum kept as non-overlapping floats (Shewchuk)."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


def lower(current: int | float | None, value: int | float) -> int | float:
    """The smaller; on a tie the int."""
    if current is None or value < current or (value == current and isinstance(value, int)):
        return value
    return current


def higher(current: int | float | None, value: int | float) -> int | float:
    """The larger; on a tie the int."""
    if current is None or value > current or (value == current and isinstance(value, int)):
        return value
    return current


def when(item: tuple[int, str, Any]) -> tuple[int, str]:
    """``(event time, event_id)`` of a kept ``(ts, event_id, value)``: what orders events."""
    return item[0], item[1]


def merge_plain(partials: list[Partial]) -> Partial:
    """The merge of the fields every aggregate merges alike (the rest: ``Aggregate.merge``)."""
    out = Partial()
    for p in partials:
        out.n += p.n
        out.floats = out.floats or p.floats
        for x in p.fsum:
            grow(out.fsum, x)
        if p.lo is not None:
            out.lo = lower(out.lo, p.lo)
        if p.hi is not None:
            out.hi = higher(out.hi, p.hi)
        if p.first is not None and (out.first is None or p.first[:2] < out.first[:2]):
            out.first = p.first
        if p.last is not None and (out.last is None or p.last[:2] > out.last[:2]):
            out.last = p.last
        if p.seen:
            out.seen = set(p.seen) if out.seen is None else out.seen | p.seen
        if p.recent:
            out.recent = [*(out.recent or ()), *p.recent]
    return out


# --- count, sum, avg ---------------------------------------------------------------------


def _absorb_nothing(partial: Partial, spec: FeatureSpec, value: Any, ts: int, eid: str) -> None:
    """``count``: the event count ``n`` (kept for every aggregate) is all it needs."""


def _finish_count(spec: FeatureSpec, partial: Partial) -> Any:
    return partial.n


def _sql_count(c: SqlColumns) -> str:
    return f"{c.n}::VARCHAR"


def _absorb_sum(partial: Partial, spec: FeatureSpec, value: Any, ts: int, eid: str) -> None:
    # Ints within 2**53 are exact floats: one exact accumulator serves sum and avg.
    grow(partial.fsum, float(value))
    if not isinstance(value, int):
        partial.floats = True


def _finish_sum(spec: FeatureSpec, partial: Partial) -> Any:
    total = math.fsum(partial.fsum)
    return total if partial.floats else int(total)


def _sql_sum(c: SqlColumns) -> str:
    total = f"pp_fsum(list({c.num}) FILTER (WHERE {c.cond}))"
    return (
        f"CASE WHEN bool_and({c.isint}) FILTER (WHERE {c.cond}) "
        f"THEN CAST(CAST({total} AS HUGEINT) AS VARCHAR) "
        f"ELSE to_json({total})::VARCHAR END"
    )


def _finish_avg(spec: FeatureSpec, partial: Partial) -> Any:
    return math.fsum(partial.fsum) / partial.n


def _sql_avg(c: SqlColumns) -> str:
    return f"to_json(pp_fsum(list({c.num}) FILTER (WHERE {c.cond})) / {c.n})::VARCHAR"


# --- aggregates that pick one event's value ----------------------------------------------


def _absorb_min(partial: Partial, spec: FeatureSpec, value: Any, ts: int, eid: str) -> None:
    partial.lo = lower(partial.lo, value)


def _absorb_max(partial: Partial, spec: FeatureSpec, value: Any, ts: int, eid: str) -> None:
    partial.hi = higher(partial.hi, value)


def _absorb_first(partial: Partial, spec: FeatureSpec, value: Any, ts: int, eid: str) -> None:
    if partial.first is None or (ts, eid) < partial.first[:2]:
        partial.first = (ts, eid, value)


def _absorb_last(partial: Partial, spec: FeatureSpec, value: Any, ts: int, eid: str) -> None:
    if partial.last is None or (ts, eid) > partial.last[:2]:
        partial.last = (ts, eid, value)


def _pick(order: Callable[[SqlColumns], str]) -> Sql:
    """The SQL of an aggregate that picks the value of the first event in ``order``."""

    def sql(c: SqlColumns) -> str:
        return f"first({c.txt} ORDER BY {order(c)}) FILTER (WHERE {c.cond})"

    return sql


# Ints within 2**53 are exact doubles; on a tie the fold prefers the int.
_sql_min = _pick(lambda c: f"{c.num} ASC, {c.isint} DESC")
_sql_max = _pick(lambda c: f"{c.num} DESC, {c.isint} DESC")
_sql_first = _pick(lambda c: f"{c.ts} ASC, {c.event_id} ASC")
_sql_last = _pick(lambda c: f"{c.ts} DESC, {c.event_id} DESC")


def _finish_min(spec: FeatureSpec, partial: Partial) -> Any:
    return partial.lo


def _finish_max(spec: FeatureSpec, partial: Partial) -> Any:
    return partial.hi


def _finish_first(spec: FeatureSpec, partial: Partial) -> Any:
    return partial.first[2] if partial.first is not None else spec.empty_value


def _finish_last(spec: FeatureSpec, partial: Partial) -> Any:
    return partial.last[2] if partial.last is not None else spec.empty_value


# --- distinct_count and the sketches (folded in training sets too) -----------------------


def cap_distinct(partial: Partial) -> None:
    """Past the exact caps, a ``distinct_count`` set becomes an HLL sketch of its values."""
    seen = partial.seen
    if seen is not None and (
        len(seen) > DISTINCT_EXACT_MAX or sum(map(len, seen)) > DISTINCT_EXACT_MAX_CHARS
    ):
        partial.sketch = sketches.hll_add(None, seen)
        partial.seen = None


def _absorb_distinct(partial: Partial, spec: FeatureSpec, value: Any, ts: int, eid: str) -> None:
    if partial.sketch is not None:
        partial.sketch = sketches.hll_add(partial.sketch, (value,))
    elif partial.seen is None:
        partial.seen = {value}
    else:
        partial.seen.add(value)
        cap_distinct(partial)


def _merge_distinct(out: Partial, partials: list[Partial], spec: FeatureSpec) -> None:
    states = [p.sketch for p in partials if p.sketch is not None]
    if states:
        out.sketch = sketches.hll_merge([*states, sketches.hll_add(None, out.seen or ())])
        out.seen = None
    else:
        cap_distinct(out)


def _finish_distinct(spec: FeatureSpec, partial: Partial) -> Any:
    if partial.sketch is None:
        return len(partial.seen or ())
    # Past the exact cap: the estimate, as a float, so a reader can tell.
    return float(round(sketches.hll_estimate(partial.sketch)))


def _absorb_hll(partial: Partial, spec: FeatureSpec, value: Any, ts: int, eid: str) -> None:
    partial.sketch = sketches.hll_add(partial.sketch, (value,))


def _merging(merge_states: Callable[[list[bytes]], bytes]) -> Merge:
    """A ``merge`` that merges the partials' sketch states with ``merge_states``."""

    def merge(out: Partial, partials: list[Partial], spec: FeatureSpec) -> None:
        states = [p.sketch for p in partials if p.sketch is not None]
        if states:
            out.sketch = merge_states(states)

    return merge


def _finish_hll(spec: FeatureSpec, partial: Partial) -> Any:
    if partial.sketch is None:
        return spec.empty_value
    return round(sketches.hll_estimate(partial.sketch))


def _absorb_kll(partial: Partial, spec: FeatureSpec, value: Any, ts: int, eid: str) -> None:
    partial.sketch = sketches.kll_add(partial.sketch, float(value))


def _finish_kll(spec: FeatureSpec, partial: Partial) -> Any:
    assert spec.q is not None
    if partial.sketch is None:
        return spec.empty_value
    return sketches.kll_quantile(partial.sketch, spec.q)


def _absorb_freq(partial: Partial, spec: FeatureSpec, value: Any, ts: int, eid: str) -> None:
    partial.sketch = sketches.freq_add(partial.sketch, value)


def _finish_freq(spec: FeatureSpec, partial: Partial) -> Any:
    assert spec.k is not None
    if partial.sketch is None:
        return spec.empty_value
    return [
        [msgspec.json.decode(text), count]
        for text, count in sketches.freq_top(partial.sketch, spec.k)
    ]


def _absorb_last_k(partial: Partial, spec: FeatureSpec, value: Any, ts: int, eid: str) -> None:
    assert spec.k is not None
    recent = partial.recent = partial.recent or []
    item = (ts, eid, value)
    if any(when(kept) == (ts, eid) for kept in recent):
        return  # the same event again (a resend past dedup): kept once, like `last`
    if len(recent) < spec.k:
        recent.append(item)
    else:  # replace the oldest, if this one is newer (ties: the greater event_id)
        oldest = min(range(len(recent)), key=lambda i: when(recent[i]))
        if when(item) > when(recent[oldest]):
            recent[oldest] = item


def _merge_last_k(out: Partial, partials: list[Partial], spec: FeatureSpec) -> None:
    if out.recent is not None and spec.k is not None:
        out.recent = sorted(out.recent, key=when, reverse=True)[: spec.k]


def _finish_last_k(spec: FeatureSpec, partial: Partial) -> Any:
    return [value for _, _, value in sorted(partial.recent or (), key=when, reverse=True)]


# --- the checks prepare() makes, in SQL --------------------------------------------------


def _accepts_number(c: SqlColumns) -> str:
    """A JSON number (not a bool) within +-2**53 for ints, +-1e300 for floats."""
    return (
        f"(({c.jtype} IN ('BIGINT', 'UBIGINT') "
        f"AND abs(TRY_CAST({c.txt} AS HUGEINT)) <= {MAX_EXACT_INT}) "
        f"OR ({c.jtype} = 'DOUBLE' AND NOT {c.isint} AND abs({c.num}) <= {MAX_FLOAT:g}))"
    )


def _accepts_storable(c: SqlColumns) -> str:
    """No int beyond 64 bits anywhere inside the value."""
    return (
        f"(CASE {c.jtype} WHEN 'UBIGINT' THEN TRY_CAST({c.txt} AS BIGINT) IS NOT NULL "
        f"WHEN 'DOUBLE' THEN NOT {c.isint} "
        f"WHEN 'OBJECT' THEN pp_storable({c.txt}) WHEN 'ARRAY' THEN pp_storable({c.txt}) "
        "ELSE true END)"
    )


def storable(value: Any) -> bool:
    """No int beyond 64 bits anywhere inside ``value`` (the state's binary form has none)."""
    if isinstance(value, int):
        return INT64[0] <= value <= INT64[1]
    if isinstance(value, dict):
        return all(storable(v) for v in value.values())
    if isinstance(value, list):
        return all(storable(v) for v in value)
    return True


def _fsum(values: list[float] | None) -> float | None:
    return None if values is None else math.fsum(values)


def _storable_text(text: str) -> bool:
    return storable(json.loads(text))


SQL_FUNCTIONS: dict[str, tuple[Callable[..., Any], list[str], str]] = {
    "pp_fsum": (_fsum, ["DOUBLE[]"], "DOUBLE"),
    "pp_storable": (_storable_text, ["VARCHAR"], "BOOLEAN"),
}
"""Scalar functions the SQL fragments call, where SQL alone cannot be exact: name ->
(Python function, argument types, result type). ``pp_fsum`` is the correctly rounded
sum of a list (``math.fsum``, as the fold's exact sum reads)."""


def _sql_type(agg: Agg) -> str:
    if agg in (Agg.COUNT, Agg.DISTINCT_COUNT, Agg.APPROX_DISTINCT, Agg.SUM):
        return "BIGINT"
    return "DOUBLE" if agg in NUMERIC else "VARCHAR"


def _accepts(agg: Agg) -> Sql | None:
    if agg in NUMERIC:
        return _accepts_number
    return None if agg in KEYED else _accepts_storable


_DEFINED: dict[Agg, tuple[Absorb, Finish, Merge | None, Sql | None]] = {
    Agg.COUNT: (_absorb_nothing, _finish_count, None, _sql_count),
    Agg.SUM: (_absorb_sum, _finish_sum, None, _sql_sum),
    Agg.AVG: (_absorb_sum, _finish_avg, None, _sql_avg),
    Agg.MIN: (_absorb_min, _finish_min, None, _sql_min),
    Agg.MAX: (_absorb_max, _finish_max, None, _sql_max),
    Agg.FIRST: (_absorb_first, _finish_first, None, _sql_first),
    Agg.LAST: (_absorb_last, _finish_last, None, _sql_last),
    Agg.DISTINCT_COUNT: (_absorb_distinct, _finish_distinct, _merge_distinct, None),
    Agg.APPROX_DISTINCT: (_absorb_hll, _finish_hll, _merging(sketches.hll_merge), None),
    Agg.PERCENTILE: (_absorb_kll, _finish_kll, _merging(sketches.kll_merge), None),
    Agg.TOP_K: (_absorb_freq, _finish_freq, _merging(sketches.freq_merge), None),
    Agg.LAST_K: (_absorb_last_k, _finish_last_k, _merge_last_k, None),
}

AGGREGATES: dict[Agg, Aggregate] = {
    agg: Aggregate(absorb, finish, merge, sql, _accepts(agg), _sql_type(agg))
    for agg, (absorb, finish, merge, sql) in _DEFINED.items()
}
"""Every aggregate's definition."""

FOLDED = frozenset(agg for agg, aggregate in AGGREGATES.items() if aggregate.sql is None)
"""Aggregates training sets compute with the fold's own code rather than SQL."""
