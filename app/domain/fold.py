"""The fold: player events into a profile snapshot, independent of order and repeats.

A profile keeps, per feature, a *partial*: a summary that can absorb one event or be
merged with another partial, with the same result whatever the order. Windowed
features keep one partial per time bucket, merged at read time over the buckets
inside the window, so a 7-day count decays without new events.

Sums are kept exactly (Shewchuk's non-overlapping float partials, read with
``math.fsum``: the correctly rounded exact sum), so ``0.1 + 0.2 + 0.3`` is the same in
every order; a sum of ints only is an int. ``first``/``last`` compare
``(event time, event_id)``; ``min``/``max`` prefer an int over an equal float.

Numbers are bounded so that state stays exact and storable: ints within +-2**53 (what
a JSON reader in any language holds exactly) and floats within +-1e300 for numeric
aggregates, and no int beyond 64 bits anywhere in a stored value.

Deduplication (each ``event_id`` counted once) is the caller's job: the stream agent
applies an event only if its id was not applied before, in the same transaction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import msgspec

from . import sketches
from .events import EventRecord
from .features import KEYED, NUMERIC, Agg, FeatureSet, FeatureSpec

_MISSING: Any = object()


class PoisonEvent(ValueError):
    """The event cannot be folded; the message says why. It goes to failed events."""


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


class ProfileState(msgspec.Struct, omit_defaults=True):
    """Everything the fold keeps for one player; features are computed from it at read time."""

    totals: dict[str, Partial] = msgspec.field(default_factory=dict)
    windows: dict[str, dict[int, Partial]] = msgspec.field(default_factory=dict)
    events_applied: int = 0
    last_event_us: int | None = None
    last_received_us: int | None = None


_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(ProfileState)
_canonical = msgspec.json.Encoder(order="sorted")
MAX_EXACT_INT = 2**53
"""Largest int magnitude a numeric aggregate takes (exact as a float, and in JSON readers)."""
MAX_FLOAT = 1e300
"""Largest float magnitude a numeric aggregate takes (sums cannot overflow)."""
INT64 = (-(2**63), 2**63 - 1)
DISTINCT_EXACT_MAX = 1_000
"""Most values a ``distinct_count`` keeps exactly (per player, feature and bucket)."""
DISTINCT_EXACT_MAX_CHARS = 64_000
"""Most characters of value text it keeps exactly; past either cap it becomes an HLL."""


def encode_state(state: ProfileState) -> bytes:
    """Compact binary form of a state, for storage."""
    return _state_encoder.encode(state)


def decode_state(blob: bytes) -> ProfileState:
    """Inverse of :func:`encode_state`."""
    return _state_decoder.decode(blob)


def contributions(event: EventRecord, features: FeatureSet) -> list[tuple[FeatureSpec, Any]]:
    """What ``event`` adds to each feature it matches; raises :class:`PoisonEvent`.

    Checked in full before anything is applied, so a poison event changes nothing.
    A matched event whose field is absent or null does not contribute to that feature.
    """
    found: list[tuple[FeatureSpec, Any]] = []
    for spec in features.by_event.get(event.type, ()):
        if spec.field is None:
            found.append((spec, None))
            continue
        value = _lookup(event.props, spec.field)
        if value is _MISSING or value is None:
            continue
        value = prepare(spec, value)
        found.append((spec, value))
    return found


def prepare(spec: FeatureSpec, value: Any) -> Any:
    """The value ``spec`` absorbs for a non-null field ``value``; raises :class:`PoisonEvent`."""
    assert spec.field is not None
    if spec.agg in NUMERIC:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PoisonEvent(
                f"feature {spec.name!r} ({spec.agg.value}) needs a number at props."
                f"{'.'.join(spec.field)}, got {type(value).__name__} {_short(value)}"
            )
        limit = MAX_EXACT_INT if isinstance(value, int) else MAX_FLOAT
        if not -limit <= value <= limit:
            raise PoisonEvent(
                f"feature {spec.name!r} ({spec.agg.value}): {_short(value)} at props."
                f"{'.'.join(spec.field)} is beyond +-{limit:g}"
            )
    elif spec.agg in KEYED:
        # JSON text, so the string "1" and the number 1 stay distinct.
        value = _canonical.encode(value).decode()
    elif not storable(value):
        raise PoisonEvent(
            f"feature {spec.name!r} ({spec.agg.value}): props.{'.'.join(spec.field)} "
            "holds an integer beyond 64 bits"
        )
    return value


def fold_event(state: ProfileState, event: EventRecord, features: FeatureSet) -> ProfileState:
    """Fold one new (never before applied) event into ``state``, in place, and return it.

    Raises :class:`PoisonEvent`, leaving ``state`` untouched, if the event cannot be folded.
    """
    for spec, value in contributions(event, features):
        fold_value(state, spec, value, event.ts, event.event_id)
    state.events_applied += 1
    if state.last_event_us is None or event.ts > state.last_event_us:
        state.last_event_us = event.ts
    if state.last_received_us is None or event.received_at > state.last_received_us:
        state.last_received_us = event.received_at
    return state


def fold_value(state: ProfileState, spec: FeatureSpec, value: Any, ts: int, event_id: str) -> None:
    """Absorb one event's prepared ``value`` for ``spec`` into the right partial of ``state``.

    Only this feature's state changes (not the event count or times); training sets fold
    with it too, feature by feature, so they compute exactly what the live fold does.
    """
    if spec.bucket_s is None:
        partial = state.totals.get(spec.name)
        if partial is None:
            partial = state.totals[spec.name] = Partial()
    else:
        buckets = state.windows.get(spec.name)
        if buckets is None:
            buckets = state.windows[spec.name] = {}
        index = ts // (spec.bucket_s * 1_000_000)
        partial = buckets.get(index)
        if partial is None:
            partial = buckets[index] = Partial()
    absorb(partial, spec, value, ts, event_id)


def evaluate(state: ProfileState | None, features: FeatureSet, now_us: int) -> dict[str, Any]:
    """Every feature's value as of ``now_us``; a feature no event matched has its default."""
    values: dict[str, Any] = {}
    for spec in features.specs:
        if state is None:
            partial = None
        elif spec.bucket_s is None:
            partial = state.totals.get(spec.name)
        else:
            partial = _window(state.windows.get(spec.name), spec, now_us)
        values[spec.name] = _finish(spec, partial)
    return values


def prune_windows(state: ProfileState, features: FeatureSet, now_us: int) -> None:
    """Drop buckets that have slid out of their window for good (``now`` only moves on)."""
    for spec in features.specs:
        if spec.bucket_s is None or spec.window_s is None:
            continue
        buckets = state.windows.get(spec.name)
        if not buckets:
            continue
        oldest = _bucket_range(spec, now_us)[0]
        for index in [i for i in buckets if i < oldest]:
            del buckets[index]


def _bucket_range(spec: FeatureSpec, now_us: int) -> tuple[int, int]:
    assert spec.bucket_s is not None and spec.window_s is not None
    current = now_us // (spec.bucket_s * 1_000_000)
    return current - spec.window_s // spec.bucket_s + 1, current


def _window(buckets: dict[int, Partial] | None, spec: FeatureSpec, now_us: int) -> Partial | None:
    if not buckets:
        return None
    oldest, newest = _bucket_range(spec, now_us)
    inside = [p for i, p in buckets.items() if oldest <= i <= newest]
    if not inside:
        return None
    return merge(inside, spec)


def merge(partials: Iterable[Partial], spec: FeatureSpec) -> Partial:
    """One partial equal to having absorbed the events of all ``partials`` (of ``spec``)."""
    partials = list(partials)
    out = _merge_plain(partials)
    _merge_sketches(out, partials, spec)
    return out


def _merge_plain(partials: list[Partial]) -> Partial:
    out = Partial()
    for p in partials:
        out.n += p.n
        out.floats = out.floats or p.floats
        for x in p.fsum:
            _grow(out.fsum, x)
        if p.lo is not None:
            out.lo = _lower(out.lo, p.lo)
        if p.hi is not None:
            out.hi = _higher(out.hi, p.hi)
        if p.first is not None and (out.first is None or p.first[:2] < out.first[:2]):
            out.first = p.first
        if p.last is not None and (out.last is None or p.last[:2] > out.last[:2]):
            out.last = p.last
        if p.seen:
            out.seen = set(p.seen) if out.seen is None else out.seen | p.seen
        if p.recent:
            out.recent = [*(out.recent or ()), *p.recent]
    return out


def _merge_sketches(out: Partial, partials: list[Partial], spec: FeatureSpec) -> None:
    states = [p.sketch for p in partials if p.sketch is not None]
    agg = spec.agg
    if agg is Agg.DISTINCT_COUNT:
        if states:
            out.sketch = sketches.hll_merge([*states, sketches.hll_add(None, out.seen or ())])
            out.seen = None
        else:
            _cap_distinct(out)
    elif states:
        if agg is Agg.PERCENTILE:
            out.sketch = sketches.kll_merge(states)
        elif agg is Agg.TOP_K:
            out.sketch = sketches.freq_merge(states)
        else:
            out.sketch = sketches.hll_merge(states)
    if out.recent is not None and spec.k is not None:
        out.recent = sorted(out.recent, key=_when, reverse=True)[: spec.k]


def _when(item: tuple[int, str, Any]) -> tuple[int, str]:
    return item[0], item[1]


def _cap_distinct(partial: Partial) -> None:
    """Past the exact caps, a ``distinct_count`` set becomes an HLL sketch of its values."""
    seen = partial.seen
    if seen is not None and (
        len(seen) > DISTINCT_EXACT_MAX or sum(map(len, seen)) > DISTINCT_EXACT_MAX_CHARS
    ):
        partial.sketch = sketches.hll_add(None, seen)
        partial.seen = None


def absorb(partial: Partial, spec: FeatureSpec, value: Any, ts: int, event_id: str) -> None:
    """Add one event's prepared ``value`` (see :func:`prepare`) to ``partial``."""
    partial.n += 1
    agg = spec.agg
    if agg is Agg.SUM or agg is Agg.AVG:
        # Ints within 2**53 are exact floats: one exact accumulator serves both.
        _grow(partial.fsum, float(value))
        if not isinstance(value, int):
            partial.floats = True
    elif agg is Agg.MIN:
        partial.lo = _lower(partial.lo, value)
    elif agg is Agg.MAX:
        partial.hi = _higher(partial.hi, value)
    elif agg is Agg.FIRST:
        if partial.first is None or (ts, event_id) < partial.first[:2]:
            partial.first = (ts, event_id, value)
    elif agg is Agg.LAST:
        if partial.last is None or (ts, event_id) > partial.last[:2]:
            partial.last = (ts, event_id, value)
    elif agg is Agg.DISTINCT_COUNT:
        if partial.sketch is not None:
            partial.sketch = sketches.hll_add(partial.sketch, (value,))
        elif partial.seen is None:
            partial.seen = {value}
        else:
            partial.seen.add(value)
            _cap_distinct(partial)
    else:
        _absorb_sketch(partial, spec, value, ts, event_id)


def _absorb_sketch(partial: Partial, spec: FeatureSpec, value: Any, ts: int, event_id: str) -> None:
    agg = spec.agg
    if agg is Agg.APPROX_DISTINCT:
        partial.sketch = sketches.hll_add(partial.sketch, (value,))
    elif agg is Agg.PERCENTILE:
        partial.sketch = sketches.kll_add(partial.sketch, float(value))
    elif agg is Agg.TOP_K:
        partial.sketch = sketches.freq_add(partial.sketch, value)
    elif agg is Agg.LAST_K:
        assert spec.k is not None
        recent = partial.recent = partial.recent or []
        item = (ts, event_id, value)
        if any(_when(kept) == (ts, event_id) for kept in recent):
            return  # the same event again (a resend past dedup): kept once, like `last`
        if len(recent) < spec.k:
            recent.append(item)
        else:  # replace the oldest, if this one is newer (ties: the greater event_id)
            oldest = min(range(len(recent)), key=lambda i: _when(recent[i]))
            if _when(item) > _when(recent[oldest]):
                recent[oldest] = item


def _finish(spec: FeatureSpec, partial: Partial | None) -> Any:
    if partial is None or partial.n == 0:
        return spec.empty_value
    agg = spec.agg
    if agg is Agg.COUNT:
        return partial.n
    if agg is Agg.SUM:
        total = math.fsum(partial.fsum)
        return total if partial.floats else int(total)
    if agg is Agg.AVG:
        return math.fsum(partial.fsum) / partial.n
    if agg is Agg.MIN:
        return partial.lo
    if agg is Agg.MAX:
        return partial.hi
    if agg is Agg.FIRST:
        return partial.first[2] if partial.first is not None else spec.empty_value
    if agg is Agg.LAST:
        return partial.last[2] if partial.last is not None else spec.empty_value
    return _finish_sketch(spec, partial)


def _finish_sketch(spec: FeatureSpec, partial: Partial) -> Any:
    agg = spec.agg
    if agg is Agg.DISTINCT_COUNT:
        if partial.sketch is None:
            return len(partial.seen or ())
        # Past the exact cap: the estimate, as a float, so a reader can tell.
        return float(round(sketches.hll_estimate(partial.sketch)))
    if agg is Agg.LAST_K:
        return [value for _, _, value in sorted(partial.recent or (), key=_when, reverse=True)]
    if partial.sketch is None:
        return spec.empty_value
    if agg is Agg.APPROX_DISTINCT:
        return round(sketches.hll_estimate(partial.sketch))
    if agg is Agg.PERCENTILE:
        assert spec.q is not None
        return sketches.kll_quantile(partial.sketch, spec.q)
    assert spec.k is not None  # TOP_K
    return [
        [msgspec.json.decode(text), count]
        for text, count in sketches.freq_top(partial.sketch, spec.k)
    ]


def _grow(partials: list[float], x: float) -> None:
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


def _lower(current: int | float | None, value: int | float) -> int | float:
    if current is None or value < current or (value == current and isinstance(value, int)):
        return value
    return current


def _higher(current: int | float | None, value: int | float) -> int | float:
    if current is None or value > current or (value == current and isinstance(value, int)):
        return value
    return current


def _lookup(props: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    node: Any = props
    for key in path:
        if not isinstance(node, dict):
            return _MISSING
        node = node.get(key, _MISSING)
        if node is _MISSING:
            return _MISSING
    return node


def storable(value: Any) -> bool:
    """No int beyond 64 bits anywhere inside ``value`` (the state's binary form has none)."""
    if isinstance(value, int):
        return INT64[0] <= value <= INT64[1]
    if isinstance(value, dict):
        return all(storable(v) for v in value.values())
    if isinstance(value, list):
        return all(storable(v) for v in value)
    return True


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
