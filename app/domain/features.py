"""Feature definitions: the features file a data scientist writes, parsed and checked."""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from .segment_defs import SegmentDef, SegmentError, parse_segments


class Agg(StrEnum):
    """How a feature folds the events it matches.

    ``count``, ``sum``, ``min``, ``max``, ``avg``, ``first``, ``last`` and ``last_k`` are
    exact. ``distinct_count`` is exact up to ``fold.DISTINCT_EXACT_MAX`` values (or
    ``fold.DISTINCT_EXACT_MAX_CHARS`` characters of them), then an HLL estimate, a float.
    ``approx_distinct`` (HLL, within 2%), ``percentile`` (KLL, rank error 0.9%) and
    ``top_k`` (frequent items, counts within 1.4% of the values seen) are sketches, exact
    at small sizes: app/domain/sketches.py gives each bound.
    """

    COUNT = "count"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    AVG = "avg"
    FIRST = "first"
    LAST = "last"
    DISTINCT_COUNT = "distinct_count"
    APPROX_DISTINCT = "approx_distinct"
    PERCENTILE = "percentile"
    TOP_K = "top_k"
    LAST_K = "last_k"


ZERO_DEFAULT = frozenset({Agg.COUNT, Agg.SUM, Agg.DISTINCT_COUNT, Agg.APPROX_DISTINCT})
NUMERIC = frozenset({Agg.SUM, Agg.MIN, Agg.MAX, Agg.AVG, Agg.PERCENTILE})
"""Aggregates that need a number in their field."""
KEYED = frozenset({Agg.DISTINCT_COUNT, Agg.APPROX_DISTINCT, Agg.TOP_K})
"""Aggregates that key values by their canonical JSON text (``"1"``, ``1``, ``1.0`` differ)."""
LIST_AGGS = frozenset({Agg.TOP_K, Agg.LAST_K})
"""Aggregates whose value is a list ([] when nothing matched)."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_WINDOW = re.compile(r"^([1-9][0-9]*)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Window resolution: the coarsest of these bucket widths that still cuts the window into
# at least 60 buckets, so a sliding window is exact to 1/60 of its length or better
# (windows under a minute use 1-second buckets).
_BUCKET_LADDER = (3600, 600, 60, 10, 1)
_MIN_BUCKETS = 60
_KNOWN_KEYS = frozenset({"event", "agg", "field", "window", "default", "description", "q", "k"})


class FeatureFileError(ValueError):
    """The features file cannot be used; the message names the feature and the problem."""


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One real-time feature of a player profile."""

    name: str
    events: frozenset[str]
    agg: Agg
    field: tuple[str, ...] | None = None
    window_s: int | None = None
    bucket_s: int | None = None
    default: Any = None
    description: str = ""
    q: float | None = None
    """Quantile of a ``percentile``, strictly between 0 and 1."""
    k: int | None = None
    """How many values a ``top_k`` or ``last_k`` keeps."""

    @property
    def fingerprint(self) -> str:
        """What the stored state of this feature depends on (not its default or text).

        When it changes, existing profiles must be rebuilt for this feature.
        """
        parts: tuple[str, ...] = (
            ",".join(sorted(self.events)),
            self.agg.value,
            ".".join(self.field or ()),
            str(self.window_s),
            str(self.bucket_s),
        )
        if self.q is not None or self.k is not None:  # older features keep their prints
            parts = (*parts, f"q={self.q!r}", f"k={self.k!r}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    @property
    def empty_value(self) -> Any:
        """The value when no event matched: the default, else 0 or null by aggregate."""
        if self.default is not None:
            return self.default
        if self.agg in LIST_AGGS:
            return []
        return 0 if self.agg in ZERO_DEFAULT else None


@dataclass(frozen=True, slots=True)
class FeatureSet:
    """All features of the file, indexed by the event types that feed them."""

    specs: tuple[FeatureSpec, ...]
    by_event: Mapping[str, tuple[FeatureSpec, ...]] = field(default_factory=dict)
    segments: tuple[SegmentDef, ...] = ()
    """The file's ``[segments.NAME]`` (every game has them; compiled by app/segment_rules)."""

    @classmethod
    def of(
        cls, specs: tuple[FeatureSpec, ...], segments: tuple[SegmentDef, ...] = ()
    ) -> FeatureSet:
        """Build the event-type index for ``specs``."""
        index: dict[str, list[FeatureSpec]] = {}
        for spec in specs:
            for event_type in sorted(spec.events):
                index.setdefault(event_type, []).append(spec)
        return cls(specs, {k: tuple(v) for k, v in index.items()}, segments)

    @property
    def fingerprints(self) -> dict[str, str]:
        """Feature name -> fingerprint of its stored state."""
        return {spec.name: spec.fingerprint for spec in self.specs}

    @property
    def longest_window_s(self) -> int | None:
        """The longest window of any feature, if any feature has one."""
        windows = [spec.window_s for spec in self.specs if spec.window_s is not None]
        return max(windows) if windows else None

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names in file order."""
        return tuple(spec.name for spec in self.specs)

    def __getitem__(self, name: str) -> FeatureSpec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(spec.name == name for spec in self.specs)


def parse_window(text: str) -> int:
    """Seconds in a window such as ``7d``; raises ``ValueError`` naming the rule."""
    match = _WINDOW.match(text)
    if not match:
        raise ValueError(f"window {text!r} must be a positive integer followed by s, m, h or d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def bucket_width(window_s: int) -> int:
    """Bucket width, in seconds, used to slide a window of ``window_s`` seconds."""
    for width in _BUCKET_LADDER:
        if window_s % width == 0 and window_s // width >= _MIN_BUCKETS:
            return width
    return 1


def load_features(path: Path) -> FeatureSet:
    """Read and check a features file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FeatureFileError(f"features file {path}: {exc.strerror or exc}") from exc
    return parse_features(text, source=str(path))


def parse_features(text: str, source: str = "features file") -> FeatureSet:
    """Parse features TOML; every problem is reported with the feature it belongs to."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FeatureFileError(f"{source}: not valid TOML: {exc}") from exc
    unknown = set(document) - {"features", "segments"}
    if unknown:
        raise FeatureFileError(f"{source}: unknown top-level table(s) {sorted(unknown)}")
    table = document.get("features")
    if not isinstance(table, dict) or not table:
        raise FeatureFileError(f"{source}: no [features.NAME] tables")
    specs = tuple(_parse_spec(name, body, source) for name, body in table.items())
    try:
        segments = parse_segments(document.get("segments"), source)
    except SegmentError as exc:
        raise FeatureFileError(str(exc)) from None
    clash = {s.name for s in segments} & {s.name for s in specs}
    if clash:
        raise FeatureFileError(f"{source}: {sorted(clash)} named both a feature and a segment")
    return FeatureSet.of(specs, segments)


class _Bad(ValueError):
    """One problem with one feature (the caller adds the file and the feature's name)."""


# Aggregate parameters: key -> (the aggregates that take it, its parser). An aggregate
# listed here needs its parameter; no other aggregate may have it.
TOP_K_MAX = 50
"""Largest ``k`` of ``top_k`` (its sketch tracks 192 values exactly; see sketches.py)."""
LAST_K_MAX = 100
"""Largest ``k`` of ``last_k``."""


def _parse_q(raw: Any, agg: Agg) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 < raw < 1:
        raise _Bad(f"'q' of a percentile must be a number strictly between 0 and 1, not {raw!r}")
    return float(raw)


def _parse_k(raw: Any, agg: Agg) -> int:
    top = TOP_K_MAX if agg is Agg.TOP_K else LAST_K_MAX
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= top:
        raise _Bad(f"'k' of {agg.value} must be an integer from 1 to {top}, not {raw!r}")
    return raw


_PARAMS: dict[str, tuple[frozenset[Agg], Any]] = {
    "q": (frozenset({Agg.PERCENTILE}), _parse_q),
    "k": (frozenset({Agg.TOP_K, Agg.LAST_K}), _parse_k),
}


def _parse_spec(name: str, body: Any, source: str) -> FeatureSpec:
    try:
        return _spec(name, body)
    except _Bad as exc:
        raise FeatureFileError(f"{source}: feature {name!r}: {exc}") from None


def _spec(name: str, body: Any) -> FeatureSpec:
    if not _NAME.match(name):
        raise _Bad("the name must be a letter or _ then letters, digits or _ (at most 63)")
    if not isinstance(body, dict):
        raise _Bad("must be a table")
    extra = set(body) - _KNOWN_KEYS
    if extra:
        raise _Bad(f"unknown key(s) {sorted(extra)}; allowed: {sorted(_KNOWN_KEYS)}")
    agg = _parse_agg(body.get("agg"))
    params = {}
    for key, (aggs, parse) in _PARAMS.items():
        if agg in aggs:
            if key not in body:
                raise _Bad(f"agg {agg.value!r} needs {key!r}")
            params[key] = parse(body[key], agg)
        elif key in body:
            raise _Bad(f"{key!r} applies only to {sorted(a.value for a in aggs)}")
    window_s = _parse_window_key(body)
    description = body.get("description", "")
    if not isinstance(description, str):
        raise _Bad("'description' must be a string")
    return FeatureSpec(
        name=name,
        events=_parse_events(body.get("event")),
        agg=agg,
        field=_parse_field(body.get("field"), agg),
        window_s=window_s,
        bucket_s=None if window_s is None else bucket_width(window_s),
        default=_parse_default(body.get("default"), agg),
        description=description,
        q=params.get("q"),
        k=params.get("k"),
    )


def _parse_events(raw: Any) -> frozenset[str]:
    if isinstance(raw, str):
        raw = [raw]
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(e, str) and 0 < len(e) <= 64 for e in raw)
    ):
        raise _Bad("'event' must be an event type or a non-empty list of them")
    return frozenset(raw)


def _parse_agg(raw: Any) -> Agg:
    try:
        return Agg(str(raw))
    except ValueError:
        raise _Bad(f"'agg' is {raw!r}; it must be one of {[a.value for a in Agg]}") from None


def _parse_field(raw: Any, agg: Agg) -> tuple[str, ...] | None:
    if raw is None:
        if agg is not Agg.COUNT:
            raise _Bad(f"agg {agg.value!r} needs a 'field' to read from props")
        return None
    if not isinstance(raw, str) or not raw or any(not part for part in raw.split(".")):
        raise _Bad("'field' must be a key of props, or a dotted path such as 'item.price'")
    return tuple(raw.split("."))


def _parse_window_key(body: dict[str, Any]) -> int | None:
    if "window" not in body:
        return None
    if not isinstance(body["window"], str):
        raise _Bad("'window' must be a string such as '7d'")
    try:
        return parse_window(body["window"])
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _parse_default(default: Any, agg: Agg) -> Any:
    if default is None:
        return None
    if agg in LIST_AGGS:
        raise _Bad(f"a {agg.value} feature takes no 'default' (it is [] when nothing matched)")
    if not isinstance(default, (int, float, str, bool)):
        raise _Bad("'default' must be a number, string or boolean")
    if agg in NUMERIC | ZERO_DEFAULT | {Agg.COUNT} and (
        isinstance(default, bool) or not isinstance(default, (int, float))
    ):
        raise _Bad(f"'default' of a {agg.value} feature must be a number")
    return default
