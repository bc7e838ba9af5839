"""Guarded rollouts: a version whose traffic breaks its guard leaves the split.

Each serving process judges the traffic it served itself, in tumbling windows of
``window_s`` seconds per model version; a window with at least ``min_requests``
predictions whose error rate or 99th-percentile latency is over the guard's limits
is a breach. The removal then goes through the registry (one locked database change,
announced to every process), so all processes stop serving the version together.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime

import msgspec


class GuardError(ValueError):
    """A guard that cannot be used; the message names the field."""


@dataclass(frozen=True, slots=True)
class Guard:
    """Limits a serving version must keep: a share of failed predictions and a p99."""

    max_error_rate: float | None = None
    max_p99_ms: float | None = None

    def __post_init__(self) -> None:
        if self.max_error_rate is None and self.max_p99_ms is None:
            raise GuardError("guard: name max_error_rate, max_p99_ms or both")
        rate = self.max_error_rate
        if rate is not None and not (0 <= rate < 1 and math.isfinite(rate)):
            raise GuardError("guard.max_error_rate: a fraction from 0 up to (not including) 1")
        p99 = self.max_p99_ms
        if p99 is not None and not (p99 > 0 and math.isfinite(p99)):
            raise GuardError("guard.max_p99_ms: a positive number of milliseconds")

    def as_dict(self) -> dict[str, float]:
        """The JSON form (only the limits that are set)."""
        out: dict[str, float] = {}
        if self.max_error_rate is not None:
            out["max_error_rate"] = self.max_error_rate
        if self.max_p99_ms is not None:
            out["max_p99_ms"] = self.max_p99_ms
        return out


class Breach(msgspec.Struct, frozen=True):
    """A window of a version's traffic that broke its guard."""

    version: int
    requests: int
    errors: int
    p99_ms: float
    reason: str

    def removal(self, before: dict[int, int], after: dict[int, int]) -> GuardEvent:
        """The record of this breach taking its version out of a split ``before`` -> ``after``."""
        return GuardEvent(
            **msgspec.structs.asdict(self), split_before=dict(before), split_after=dict(after)
        )


def p99(latencies_ms: list[float]) -> float:
    """The 99th percentile (nearest rank) of some latencies; 0 for none."""
    if not latencies_ms:
        return 0.0
    ordered = sorted(latencies_ms)
    rank = math.ceil(0.99 * len(ordered)) - 1
    return ordered[max(rank, 0)]


def judge(
    guard: Guard, version: int, requests: int, errors: int, latencies_ms: list[float]
) -> Breach | None:
    """The breach of one closed window, or None if the guard held."""
    slowest = p99(latencies_ms)
    reasons = []
    if guard.max_error_rate is not None and errors / requests > guard.max_error_rate:
        reasons.append(
            f"error rate {errors / requests:.4f} over max_error_rate {guard.max_error_rate}"
        )
    if guard.max_p99_ms is not None and slowest > guard.max_p99_ms:
        reasons.append(f"p99 {slowest:.2f} ms over max_p99_ms {guard.max_p99_ms}")
    if not reasons:
        return None
    return Breach(version, requests, errors, slowest, "; ".join(reasons))


LATENCY_SAMPLES = 10_000
"""Most latencies a window keeps: past that, a uniform sample of them (memory stays flat
however busy the version is; the p99 of 10,000 samples is within a fraction of a
percentile of the true one)."""


@dataclass(slots=True)
class _Window:
    started: float
    requests: int = 0
    errors: int = 0
    answered: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def add_latency(self, latency_ms: float, rng: random.Random) -> None:
        # Reservoir sampling (Vitter's algorithm R): each latency is kept with equal odds.
        self.answered += 1
        if len(self.latencies_ms) < LATENCY_SAMPLES:
            self.latencies_ms.append(latency_ms)
            return
        slot = rng.randrange(self.answered)
        if slot < LATENCY_SAMPLES:
            self.latencies_ms[slot] = latency_ms


class GuardWatch:
    """Tumbling windows of traffic per (model key, version), judged as each one closes."""

    def __init__(self, window_s: float, min_requests: int) -> None:
        self.window_s = window_s
        self.min_requests = min_requests
        self._windows: dict[tuple[str, int], _Window] = {}
        self._rng = random.Random(0)

    def record(
        self, key: str, version: int, guard: Guard, ok: bool, latency_ms: float, now: float
    ) -> Breach | None:
        """Count one prediction at monotonic time ``now``; a breach if a window closed badly.

        The window a prediction closes is judged before the prediction starts the next.
        """
        slot = (key, version)
        window = self._windows.get(slot)
        breach = None
        if window is not None and now - window.started >= self.window_s:
            if window.requests >= self.min_requests:
                breach = judge(guard, version, window.requests, window.errors, window.latencies_ms)
            window = None
        if window is None:
            window = self._windows[slot] = _Window(started=now)
        window.requests += 1
        if ok:
            window.add_latency(latency_ms, self._rng)
        else:
            window.errors += 1
        return breach

    def reset(self, key: str, version: int) -> None:
        """Forget a version's current window (after it left the split)."""
        self._windows.pop((key, version), None)


class GuardEvent(Breach, frozen=True):
    """A version a guard took out of the split: the breach, and the change it made."""

    split_before: dict[int, int]
    split_after: dict[int, int]
    at: datetime | None = None
