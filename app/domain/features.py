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


class Agg(StrEnum):
    """How a feature folds the events it matches."""

    COUNT = "count"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    AVG = "avg"
    FIRST = "first"
    LAST = "last"
    DISTINCT_COUNT = "distinct_count"


ZERO_DEFAULT = frozenset({Agg.COUNT, Agg.SUM, Agg.DISTINCT_COUNT})
NUMERIC = frozenset({Agg.SUM, Agg.MIN, Agg.MAX, Agg.AVG})

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_WINDOW = re.compile(r"^([1-9][0-9]*)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Window resolution: the coarsest of these bucket widths that still cuts the window into
# at least 60 buckets, so a sliding window is exact to 1/60 of its length or better
# (windows under a minute use 1-second buckets).
_BUCKET_LADDER = (3600, 600, 60, 10, 1)
_MIN_BUCKETS = 60
_KNOWN_KEYS = frozenset({"event", "agg", "field", "window", "default", "description"})


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

    @property
    def fingerprint(self) -> str:
        """What the stored state of this feature depends on (not its default or text).

        When it changes, existing profiles must be rebuilt for this feature.
        """
        parts = (
            ",".join(sorted(self.events)),
            self.agg.value,
            ".".join(self.field or ()),
            str(self.window_s),
            str(self.bucket_s),
        )
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    @property
    def empty_value(self) -> Any:
        """The value when no event matched: the default, else 0 or null by aggregate."""
        if self.default is not None:
            return self.default
        return 0 if self.agg in ZERO_DEFAULT else None


@dataclass(frozen=True, slots=True)
class FeatureSet:
    """All features of the file, indexed by the event types that feed them."""

    specs: tuple[FeatureSpec, ...]
    by_event: Mapping[str, tuple[FeatureSpec, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, specs: tuple[FeatureSpec, ...]) -> FeatureSet:
        """Build the event-type index for ``specs``."""
        index: dict[str, list[FeatureSpec]] = {}
        for spec in specs:
            for event_type in sorted(spec.events):
                index.setdefault(event_type, []).append(spec)
        return cls(specs, {k: tuple(v) for k, v in index.items()})

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
    unknown = set(document) - {"features"}
    if unknown:
        raise FeatureFileError(f"{source}: unknown top-level table(s) {sorted(unknown)}")
    table = document.get("features")
    if not isinstance(table, dict) or not table:
        raise FeatureFileError(f"{source}: no [features.NAME] tables")
    specs = tuple(_parse_spec(name, body, source) for name, body in table.items())
    return FeatureSet.of(specs)


def _parse_spec(name: str, body: Any, source: str) -> FeatureSpec:
    def fail(problem: str) -> FeatureFileError:
        return FeatureFileError(f"{source}: feature {name!r}: {problem}")

    if not _NAME.match(name):
        raise fail("the name must be a letter or _ then letters, digits or _ (at most 63)")
    if not isinstance(body, dict):
        raise fail("must be a table")
    extra = set(body) - _KNOWN_KEYS
    if extra:
        raise fail(f"unknown key(s) {sorted(extra)}; allowed: {sorted(_KNOWN_KEYS)}")

    raw_events = body.get("event")
    if isinstance(raw_events, str):
        raw_events = [raw_events]
    if (
        not isinstance(raw_events, list)
        or not raw_events
        or not all(isinstance(e, str) and 0 < len(e) <= 64 for e in raw_events)
    ):
        raise fail("'event' must be an event type or a non-empty list of them")

    try:
        agg = Agg(str(body.get("agg")))
    except ValueError:
        raise fail(
            f"'agg' is {body.get('agg')!r}; it must be one of {[a.value for a in Agg]}"
        ) from None

    raw_field = body.get("field")
    path: tuple[str, ...] | None = None
    if raw_field is not None:
        if (
            not isinstance(raw_field, str)
            or not raw_field
            or any(not part for part in raw_field.split("."))
        ):
            raise fail("'field' must be a key of props, or a dotted path such as 'item.price'")
        path = tuple(raw_field.split("."))
    elif agg is not Agg.COUNT:
        raise fail(f"agg {agg.value!r} needs a 'field' to read from props")

    window_s = bucket_s = None
    if "window" in body:
        if not isinstance(body["window"], str):
            raise fail("'window' must be a string such as '7d'")
        try:
            window_s = parse_window(body["window"])
        except ValueError as exc:
            raise fail(str(exc)) from None
        bucket_s = bucket_width(window_s)

    default = body.get("default")
    if default is not None and not isinstance(default, (int, float, str, bool)):
        raise fail("'default' must be a number, string or boolean")
    if (
        default is not None
        and agg in NUMERIC | {Agg.COUNT, Agg.DISTINCT_COUNT}
        and (isinstance(default, bool) or not isinstance(default, (int, float)))
    ):
        raise fail(f"'default' of a {agg.value} feature must be a number")

    description = body.get("description", "")
    if not isinstance(description, str):
        raise fail("'description' must be a string")
    return FeatureSpec(
        name=name,
        events=frozenset(raw_events),
        agg=agg,
        field=path,
        window_s=window_s,
        bucket_s=bucket_s,
        default=default,
        description=description,
    )
