"""The fold: player events into a profile snapshot, independent of order and repeats.

A profile keeps, per feature, a *partial*: a summary that can absorb one event or be
merged with another partial, with the same result whatever the order. Windowed
features keep one partial per time bucket, merged at read time over the buckets
inside the window, so a 7-day count decays without new events. What each aggregate
does to a partial (absorb, merge, finish) is defined once, in :mod:`app.domain.aggregates`,
next to the SQL training sets use for it; this module applies it to profiles.

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

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from .aggregates import (
    AGGREGATES,
    DISTINCT_EXACT_MAX,
    DISTINCT_EXACT_MAX_CHARS,
    INT64,
    MAX_EXACT_INT,
    MAX_FLOAT,
    Partial,
    merge_plain,
    storable,
)
from .events import EventRecord
from .features import KEYED, NUMERIC, FeatureSet, FeatureSpec

__all__ = [
    "DISTINCT_EXACT_MAX",
    "DISTINCT_EXACT_MAX_CHARS",
    "INT64",
    "MAX_EXACT_INT",
    "MAX_FLOAT",
    "Partial",
    "PoisonEvent",
    "ProfileState",
    "absorb",
    "contributions",
    "decode_state",
    "encode_state",
    "evaluate",
    "finish",
    "fold_event",
    "fold_value",
    "merge",
    "prepare",
    "prune_windows",
    "storable",
]

_MISSING: Any = object()


@dataclass(slots=True)
class FoldRun:
    """What folding the lake's events of a set of players did (a replay, a training set)."""

    players: int = 0
    events: int = 0
    """Distinct events of those players considered."""
    poison: int = 0
    """Of those, events the fold refuses, which count for no feature."""
    seconds: float = 0.0


class PoisonEvent(ValueError):
    """The event cannot be folded; the message says why. It goes to failed events."""


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
        values[spec.name] = finish(spec, partial)
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
    out = merge_plain(partials)
    finish_merge = AGGREGATES[spec.agg].merge
    if finish_merge is not None:
        finish_merge(out, partials, spec)
    return out


def absorb(partial: Partial, spec: FeatureSpec, value: Any, ts: int, event_id: str) -> None:
    """Add one event's prepared ``value`` (see :func:`prepare`) to ``partial``."""
    partial.n += 1
    AGGREGATES[spec.agg].absorb(partial, spec, value, ts, event_id)


def finish(spec: FeatureSpec, partial: Partial | None) -> Any:
    """The feature's value from its (merged) partial; its empty value if no event matched."""
    if partial is None or partial.n == 0:
        return spec.empty_value
    return AGGREGATES[spec.agg].finish(spec, partial)


def _lookup(props: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    node: Any = props
    for key in path:
        if not isinstance(node, dict):
            return _MISSING
        node = node.get(key, _MISSING)
        if node is _MISSING:
            return _MISSING
    return node


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
