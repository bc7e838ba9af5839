"""The fold compiled for one feature set: :func:`app.domain.fold.fold_event`, specialised.

:func:`fold_event` walks the general feature language for every event: the features of
its type, each one's field path, the checks of its aggregate, its window, then the
aggregate's ``absorb`` through a table. :func:`compile_fold` does that walk once, when
the features file is loaded, and returns a function that, per event type, runs only the
closures its features need: a field read specialised to the path's length, the checks
of the aggregate with a fast path for the common types (anything unusual goes through
the reference :func:`~app.domain.fold.prepare`, which also words the refusal), and the
absorb inlined for the exact aggregates (count, sum, avg, min, max, first, last).

The general fold stays the reference: a property test folds random feature files and
events through both and requires the same states (``tests/unit/test_compiled_fold.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .aggregates import AGGREGATES, INT64, MAX_EXACT_INT, MAX_FLOAT, Partial, grow
from .events import EventRecord
from .features import KEYED, NUMERIC, Agg, FeatureSet, FeatureSpec
from .fold import ProfileState, prepare

__all__ = ["CompiledFold", "compile_fold"]

CompiledFold = Callable[[ProfileState, EventRecord], ProfileState]
"""Folds one new event into a state in place and returns it.

Raises :class:`~app.domain.fold.PoisonEvent`, leaving the state untouched.
"""

_SKIP: Any = object()
"""A matched event whose field is absent or null: no contribution to that feature."""

Read = Callable[[dict[str, Any] | None], Any]
"""The prepared value of one feature's field in an event's props, or ``_SKIP``."""
Apply = Callable[[ProfileState, Any, int, str], None]
"""Absorb one prepared value into the right partial of a state."""


def compile_fold(features: FeatureSet) -> CompiledFold:
    """The fold of ``features``, equal to ``fold_event(state, event, features)``."""
    plans: dict[str, Callable[[ProfileState, EventRecord], None]] = {
        event_type: _generate(specs) for event_type, specs in features.by_event.items()
    }
    get_plan = plans.get

    def fold(state: ProfileState, event: EventRecord) -> ProfileState:
        plan = get_plan(event.type)
        if plan is not None:
            plan(state, event)
        ts = event.ts
        state.events_applied += 1
        last = state.last_event_us
        if last is None or ts > last:
            state.last_event_us = ts
        received = event.received_at
        last = state.last_received_us
        if last is None or received > last:
            state.last_received_us = received
        return state

    return fold


class _Source:
    """Python source of one event type's fold, and the constants it refers to by name.

    Nothing of the features file is written into the source: names, paths and specs are
    constants the source names ``c0``, ``c1``..., so any text in the file is inert.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}

    def const(self, value: Any) -> str:
        name = f"c{len(self.constants)}"
        self.constants[name] = value
        return name

    def add(self, indent: int, *lines: str) -> None:
        self.lines.extend("    " * indent + line for line in lines)


def _generate(specs: tuple[FeatureSpec, ...]) -> Callable[[ProfileState, EventRecord], None]:
    """One function that folds an event of one type into every feature of ``specs``."""
    src = _Source()
    src.add(1, "ts = event.ts", "event_id = event.event_id", "props = event.props")
    # Every value is read and checked before anything is applied: a poison event
    # changes nothing.
    # Features that read the same field with the same checks share one read, made where
    # the first of them reads it (so a refusal names the feature the reference names).
    reads: dict[tuple[tuple[str, ...], str], str] = {}
    for spec in specs:
        if spec.field is not None and (spec.field, _kind(spec)) not in reads:
            var = reads[spec.field, _kind(spec)] = f"v{len(reads)}"
            _emit_read(src, var, spec)
    for spec in specs:
        if spec.field is None:
            _emit_apply(src, 1, "None", spec)
        else:
            var = reads[spec.field, _kind(spec)]
            src.add(1, f"if {var} is not SKIP:")
            _emit_apply(src, 2, var, spec)
    namespace: dict[str, Any] = {
        "SKIP": _SKIP,
        "Partial": Partial,
        "grow": grow,
        "prepare": prepare,
        "isinstance": isinstance,
        "int": int,
        "float": float,
        "str": str,
        "bool": bool,
        "dict": dict,
        "type": type,
    }
    namespace.update(src.constants)
    code = "def fold(state, event):\n" + "\n".join(src.lines) + "\n"
    # The source is built above from fixed text; the file's text is in constants only.
    exec(compile(code, "<compiled fold>", "exec"), namespace)
    function: Callable[[ProfileState, EventRecord], None] = namespace["fold"]
    return function


# --- reading a field ---------------------------------------------------------------------


def _kind(spec: FeatureSpec) -> str:
    """Which checks :func:`prepare` makes for this spec (the same for the same kind)."""
    if spec.agg in NUMERIC:
        return "number"
    return "keyed" if spec.agg in KEYED else "any"


def _emit_read(src: _Source, var: str, spec: FeatureSpec) -> None:
    """``var`` = the prepared value of the spec's field, or ``SKIP`` if absent or null."""
    assert spec.field is not None
    path = spec.field
    src.add(1, f"{var} = SKIP if props is None else props.get({src.const(path[0])}, SKIP)")
    for key in path[1:]:
        src.add(
            1,
            f"if {var} is not SKIP:",
            f"    {var} = {var}.get({src.const(key)}, SKIP) "
            f"if type({var}) is dict or isinstance({var}, dict) else SKIP",
        )
    src.add(1, f"if {var} is None:", f"    {var} = SKIP", f"elif {var} is not SKIP:")
    ref = src.const(spec)
    # The fast path takes the common types as they are; anything else goes through the
    # reference prepare(), which refuses it in the reference's words, or converts it.
    if spec.agg in NUMERIC:
        src.add(
            2,
            f"if type({var}) is int:",
            f"    if not -{MAX_EXACT_INT} <= {var} <= {MAX_EXACT_INT}:",
            f"        {var} = prepare({ref}, {var})",
            f"elif type({var}) is not float or not -{MAX_FLOAT!r} <= {var} <= {MAX_FLOAT!r}:",
            f"    {var} = prepare({ref}, {var})",
        )
    elif spec.agg in KEYED:
        src.add(2, f"{var} = prepare({ref}, {var})")
    else:
        low, high = INT64
        src.add(
            2,
            f"kind = type({var})",
            "if not (kind is str or kind is float or kind is bool "
            f"or (kind is int and {low} <= {var} <= {high})):",
            f"    {var} = prepare({ref}, {var})",
        )


# --- applying a value --------------------------------------------------------------------


def _emit_apply(src: _Source, indent: int, var: str, spec: FeatureSpec) -> None:
    """Locate the feature's partial (its total, or the event's bucket), then absorb."""
    name = src.const(spec.name)
    if spec.bucket_s is None:
        src.add(
            indent,
            f"p = state.totals.get({name})",
            "if p is None:",
            f"    p = state.totals[{name}] = Partial()",
        )
    else:
        src.add(
            indent,
            f"b = state.windows.get({name})",
            "if b is None:",
            f"    b = state.windows[{name}] = {{}}",
            f"i = ts // {spec.bucket_s * 1_000_000}",
            "p = b.get(i)",
            "if p is None:",
            "    p = b[i] = Partial()",
        )
    src.add(indent, "p.n += 1")
    src.add(indent, *_absorb(src, var, spec))


def _absorb(src: _Source, v: str, spec: FeatureSpec) -> list[str]:
    """The aggregate's absorb of ``v`` into ``p``, inlined for the exact aggregates."""
    agg = spec.agg
    if agg is Agg.COUNT:
        return []
    if agg in (Agg.SUM, Agg.AVG):
        return [f"grow(p.fsum, float({v}))", f"if not isinstance({v}, int):", "    p.floats = True"]
    if agg in (Agg.MIN, Agg.MAX):
        attr, op = ("lo", "<") if agg is Agg.MIN else ("hi", ">")
        return [
            f"if p.{attr} is None or {v} {op} p.{attr} "
            f"or ({v} == p.{attr} and isinstance({v}, int)):",
            f"    p.{attr} = {v}",
        ]
    if agg in (Agg.FIRST, Agg.LAST):
        attr, op = ("first", "<") if agg is Agg.FIRST else ("last", ">")
        return [
            f"k = p.{attr}",
            f"if k is None or ts {op} k[0] or (ts == k[0] and event_id {op} k[1]):",
            f"    p.{attr} = (ts, event_id, {v})",
        ]
    absorb, ref = src.const(AGGREGATES[agg].absorb), src.const(spec)
    return [f"{absorb}(p, {ref}, {v}, ts, event_id)"]
