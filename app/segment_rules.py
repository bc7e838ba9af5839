"""CEL for segments: compile each expression once, evaluate it on a player's features.

Through ``common-expression-language`` (the Rust CEL interpreter, ``cel`` module): about
1 us per segment and player once the player's values are in a context, against about
900 us for the pure-Python ``cel-python`` (measured on this project's machine, 2 cores,
shared). Never ``eval``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cel

from app.domain.features import FeatureSet
from app.domain.fold import ProfileState, evaluate
from app.domain.segments import CompiledSegment, SegmentDef, SegmentError

# Variables a macro binds (``list.exists(x, x > 1)``): not features.
_MACRO_VARIABLE = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")


def compile_segment(definition: SegmentDef, features: FeatureSet) -> CompiledSegment:
    """Compile a segment's expression; :class:`SegmentError` names what is wrong."""
    name, where = definition.name, definition.where
    try:
        program = cel.compile(where)
    except (ValueError, RuntimeError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SegmentError(f"segment {name!r}: not a valid CEL expression: {first}") from None
    bound = set(_MACRO_VARIABLE.findall(where))
    variables = set(program.variables()) - bound
    unknown = sorted(v for v in variables if v not in features)
    if unknown:
        raise SegmentError(
            f"segment {name!r}: unknown feature(s) {unknown}; "
            f"the features are {sorted(features.names)}"
        )
    reads = tuple(sorted(variables))
    for probe in _probes(features, variables):
        try:
            result = program.execute(probe)
        except (ValueError, RuntimeError, TypeError):
            continue  # such values make it fail (a null, an int beside a float): not a member
        if not isinstance(result, bool):
            raise SegmentError(
                f"segment {name!r}: the expression must give true or false, "
                f"not {type(result).__name__}"
            )

    def predicate(activation: Any) -> bool:
        try:
            return program.execute(activation) is True
        except (ValueError, RuntimeError, TypeError):
            # Types that do not fit (a null feature compared with a number): not a member.
            return False

    return CompiledSegment(definition, reads, predicate)


def _probes(features: FeatureSet, variables: set[str]) -> list[dict[str, Any]]:
    """Feature values to try an expression on: the empty profile's, and with every
    number as an int, then as a float (CEL does not mix them in arithmetic)."""
    empty = {s.name: s.empty_value for s in features.specs if s.name in variables}
    numbers = [
        {
            name: kind(1) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
            for name, v in empty.items()
        }
        for kind in (int, float)
    ]
    for spec in features.specs:  # a feature whose empty value is null may hold a number
        if spec.name in variables and empty[spec.name] is None:
            numbers[0][spec.name], numbers[1][spec.name] = 1, 1.0
    return [empty, *numbers]


@dataclass(frozen=True, slots=True)
class GameSegments:
    """The segments one game's players are judged on, compiled, and what they read."""

    segments: tuple[CompiledSegment, ...]
    reads: FeatureSet = field(default_factory=lambda: FeatureSet(()))
    """Only the features the segments read (computed per player, the rest is not)."""

    @classmethod
    def of(cls, segments: Iterable[CompiledSegment], features: FeatureSet) -> GameSegments:
        chosen = tuple(sorted(segments, key=lambda s: s.name))
        names = {name for segment in chosen for name in segment.features}
        return cls(chosen, FeatureSet.of(tuple(s for s in features.specs if s.name in names)))

    @property
    def names(self) -> frozenset[str]:
        return frozenset(segment.name for segment in self.segments)

    def values(self, state: ProfileState | None, now_us: int) -> dict[str, Any]:
        """The values, as of ``now_us``, of the features these segments read."""
        return evaluate(state, self.reads, now_us)

    def members(self, values: Mapping[str, Any]) -> set[str]:
        """The segments a player with these values belongs to (one CEL context for all)."""
        context = cel.Context()
        context.update(dict(values))
        return {segment.name for segment in self.segments if segment.predicate(context)}
