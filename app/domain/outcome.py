"""A model's outcome: which later event of an exposed player counts, and how.

A player's exposure is their first served prediction of the model in a period; their
outcome is made of their events of type ``event`` in the ``within`` seconds after it:
``any`` (1 if there is one), ``count`` (how many), or ``sum:FIELD`` (the sum of a props
field, a dotted path).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .features import parse_window

VALUE_KINDS = ("any", "count", "sum")
_FIELD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class OutcomeError(ValueError):
    """An outcome that cannot be used; the message names the field."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What counts as the result of a prediction, for a model."""

    event: str
    within_s: int
    kind: str
    field: str | None = None

    @classmethod
    def parse(cls, event: str, within: str, value: str) -> Outcome:
        """Check the API/CLI form: ``within`` as 30m/24h/7d, ``value`` any|count|sum:FIELD."""
        if not 1 <= len(event) <= 64:
            raise OutcomeError("event: an event type of 1 to 64 characters")
        try:
            within_s = parse_window(within)
        except ValueError:
            raise OutcomeError(
                f"within: {within!r} is not a duration such as 30m, 24h or 7d"
            ) from None
        kind, _, field = value.partition(":")
        if kind not in VALUE_KINDS or (kind == "sum") != bool(field):
            raise OutcomeError(f"value: {value!r} is not any, count or sum:FIELD")
        if field and not _FIELD.match(field):
            raise OutcomeError(f"value: {field!r} is not a props field (dotted path)")
        return cls(event, within_s, kind, field or None)

    @property
    def value(self) -> str:
        """The API form of the value."""
        return f"sum:{self.field}" if self.kind == "sum" else self.kind

    @property
    def within(self) -> str:
        """The API form of the duration (the largest whole unit)."""
        for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
            if self.within_s % seconds == 0:
                return f"{self.within_s // seconds}{unit}"
        return f"{self.within_s}s"
