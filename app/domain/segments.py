"""Segments: named audiences of players, each a boolean expression over their features.

The expression is CEL (Common Expression Language); compiling and running it is the
job of the adapter in :mod:`app.segment_rules` (a library, never ``eval``). This module
holds what needs no library: a segment's definition and name rules, the membership
changes (transitions) between two evaluations, and the next moment a player's windowed
features change without any new event (when a bucket slides out of its window), which
is when a time-driven exit can happen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from .features import FeatureSet
from .fold import ProfileState
from .segment_defs import (
    MAX_WHERE_CHARS,
    SEGMENT_NAME,
    SegmentDef,
    SegmentError,
    check_name,
    parse_segments,
)

__all__ = [
    "ENTERED",
    "LEFT",
    "MAX_WHERE_CHARS",
    "SEGMENT_NAME",
    "CompiledSegment",
    "Kind",
    "Predicate",
    "SegmentDef",
    "SegmentError",
    "Transition",
    "check_name",
    "next_window_change_us",
    "parse_segments",
    "transitions",
]

Kind = Literal["entered", "left"]
ENTERED: Kind = "entered"
LEFT: Kind = "left"


Predicate = Callable[[Any], bool]
"""A compiled segment: True if the player is a member. It takes the activation its
compiler built once from the player's feature values (shared by the game's segments)."""


@dataclass(frozen=True, slots=True)
class CompiledSegment:
    """A segment ready to evaluate: its definition, the features it reads, its predicate."""

    definition: SegmentDef
    features: tuple[str, ...]
    """The feature names the expression reads (sorted): the ones a transition reports."""
    predicate: Predicate

    @property
    def name(self) -> str:
        return self.definition.name


class Transition(msgspec.Struct, frozen=True):
    """A player entered or left a segment, at ``at_us``, decided by these feature values."""

    game: str
    player_id: str
    segment: str
    kind: Kind
    at_us: int
    features: dict[str, Any]


def transitions(
    game: str,
    player_id: str,
    segments: Iterable[CompiledSegment],
    before: set[str] | frozenset[str],
    now: set[str] | frozenset[str],
    values: Mapping[str, Any],
    at_us: int,
) -> list[Transition]:
    """The transitions from memberships ``before`` to ``now``, judged over ``segments``.

    Only ``segments`` are judged: a membership in a segment not among them (one this
    process has not heard of yet, or one being removed) is neither entered nor left here.
    Each transition reports the values of the features its segment reads.
    """
    changes: list[Transition] = []
    for segment in segments:
        name = segment.name
        member = name in now
        if member != (name in before):
            decided = {feature: values.get(feature) for feature in segment.features}
            kind: Kind = ENTERED if member else LEFT
            changes.append(Transition(game, player_id, name, kind, at_us, decided))
    return changes


def next_window_change_us(
    state: ProfileState, features: FeatureSet, names: Iterable[str], now_us: int
) -> int | None:
    """When the first of these windowed features next changes with no new event, if ever.

    A windowed feature changes by itself when its oldest bucket slides out of the window:
    bucket ``i`` of a window of ``w`` buckets is inside until bucket ``i + w`` begins.
    """
    earliest: int | None = None
    for name in names:
        if name not in features:
            continue
        spec = features[name]
        if spec.bucket_s is None or spec.window_s is None:
            continue
        buckets = state.windows.get(name)
        if not buckets:
            continue
        width_us = spec.bucket_s * 1_000_000
        current = now_us // width_us
        span = spec.window_s // spec.bucket_s
        inside = [i for i in buckets if i > current - span]
        if not inside:
            continue
        due = (min(inside) + span) * width_us
        if earliest is None or due < earliest:
            earliest = due
    return earliest
