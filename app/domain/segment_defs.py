"""A segment's definition as declared (features file or admin API), before compiling."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SEGMENT_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
"""A segment's name: as a feature's (a letter or _, then letters, digits or _)."""
_NAME = re.compile(SEGMENT_NAME)
MAX_WHERE_CHARS = 2000
"""Longest expression accepted."""


class SegmentError(ValueError):
    """A segment cannot be used; the message names the segment and the problem."""


@dataclass(frozen=True, slots=True)
class SegmentDef:
    """A segment as declared: its name and its CEL expression over feature names."""

    name: str
    where: str


def check_name(name: str) -> None:
    """Raise :class:`SegmentError` unless ``name`` is a valid segment name."""
    if not _NAME.match(name):
        raise SegmentError(
            f"segment {name!r}: the name must be a letter or _ then letters, digits or _ "
            "(at most 63)"
        )


def parse_segments(table: Any, source: str = "features file") -> tuple[SegmentDef, ...]:
    """The ``[segments.NAME] where = "..."`` tables of a features file (not yet compiled)."""
    if table is None:
        return ()
    if not isinstance(table, dict):
        raise SegmentError(f"{source}: 'segments' must be a table of [segments.NAME] tables")
    defs = []
    for name, body in table.items():
        check_name(name)
        if not isinstance(body, dict) or set(body) != {"where"}:
            raise SegmentError(f"{source}: segment {name!r} must have exactly one key, 'where'")
        where = body["where"]
        if not isinstance(where, str) or not where.strip() or len(where) > MAX_WHERE_CHARS:
            raise SegmentError(
                f"{source}: segment {name!r}: 'where' must be a non-empty CEL expression "
                f"of at most {MAX_WHERE_CHARS} characters"
            )
        defs.append(SegmentDef(name, where))
    return tuple(defs)
