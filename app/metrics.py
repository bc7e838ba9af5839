"""Prometheus metrics, served at ``GET /metrics``.

Under ``serve`` each worker process writes its metrics to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, chosen when this
module is imported), and ``/metrics`` adds up every worker's, whichever answers.
"""

from __future__ import annotations

import gc
import math
import os
import time
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess


def registry() -> CollectorRegistry:
    """The registry to export: all workers' metrics under ``serve``, else this process's."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
    return collected


def _internals(histogram: Histogram) -> tuple[Any, Any, Any] | None:
    """A histogram child's bucket bounds, bucket values and sum, for bulk updates; None
    if the client library's internals ever differ (callers then fall back to observe)."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        return None
    return bounds, buckets, total


def observe_all(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for each value, with one update per bucket touched.

    Under ``serve`` every update of a metric writes a memory-mapped file (multiprocess
    mode): per event, that was about 5% of the fold's time.
    """
    parts = _internals(histogram)
    if parts is None:
        for value in values:
            histogram.observe(value)
        return
    bounds, buckets, total = parts
    if not values:
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # the first bound >= value, as observe()
    total.inc(math.fsum(values))
    for index, count in enumerate(counts):
        if count:
            buckets[index].inc(count)


def observe_times(histogram: Histogram, value: float, times: int) -> None:
    """``histogram.observe(value)`` ``times`` times, in one update (a request's events)."""
    parts = _internals(histogram)
    if parts is None:
        for _ in range(times):
            histogram.observe(value)
        return
    bounds, buckets, total = parts
    if times > 0:
        total.inc(value * times)
        buckets[bisect_left(bounds, value)].inc(times)


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

EVENTS_ACCEPTED = Counter(
    "playerpulse_events_accepted", "Events acknowledged by the broker and answered 202."
)
EVENTS_REJECTED = Counter("playerpulse_events_rejected", "Events refused at ingest, by field.")
EVENTS_FOLDED = Counter("playerpulse_events_folded", "Events applied to a profile.")
EVENTS_DUPLICATE = Counter(
    "playerpulse_events_duplicate", "Deliveries of events already applied (no effect)."
)
EVENTS_HELD = Counter(
    "playerpulse_messages_held",
    "Topic messages held back because one before them was not delivered (read again).",
)
EVENTS_FAILED = Counter(
    "playerpulse_events_failed", "Events that could not be folded (kept in failed_events)."
)
EVENTS_BEYOND_DEDUP_HORIZON = Counter(
    "playerpulse_events_beyond_dedup_horizon",
    "Events applied that were received more than PLAYERPULSE_DEDUP_HORIZON after their "
    "event time: a resend of an event after the horizon is among them (it counts again).",
)
LATE_EVENTS = Counter(
    "playerpulse_late_events",
    "Events older than the longest window when folded: they count only in unwindowed features.",
)
ERASED_EVENTS_DROPPED = Counter(
    "playerpulse_erased_events_dropped",
    "Events of erased players dropped: never folded, archived or served.",
)
EVENTS_ARCHIVED = Counter("playerpulse_events_archived", "Events written to the Parquet lake.")
FOLD_BATCH_SECONDS = Histogram(
    "playerpulse_fold_batch_seconds",
    "Time to fold and commit one micro-batch.",
    buckets=_LATENCY_BUCKETS,
)
FRESHNESS_SECONDS = Histogram(
    "playerpulse_event_freshness_seconds",
    "From an event's arrival at ingest to its profile change being committed.",
    buckets=_LATENCY_BUCKETS,
)
PREDICTION_SECONDS = Histogram(
    "playerpulse_prediction_seconds",
    "Server time of a prediction request: profile read and model run.",
    buckets=(0.0002, 0.0005, 0.001, 0.0015, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
)
EVENTS_THROTTLED = Counter(
    "playerpulse_events_throttled",
    "Events refused with 429/503 and Retry-After (rate limit, or too many in flight).",
)

HOP_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 3600.0, 86400.0,
)  # fmt: skip
EVENT_HOPS = (
    "device_to_received",
    "received_to_acked",
    "appended_to_folded",
    "received_to_folded",
    "device_to_folded",
)
EVENT_HOP_SECONDS = Histogram(
    "playerpulse_event_hop_seconds",
    "An event's latency per hop: device_to_received (its device time, clock-corrected, to "
    "its arrival at ingest), received_to_acked (arrival to the broker's acknowledgement), "
    "appended_to_folded (the broker's append time to the profile change committed), and "
    "the totals received_to_folded and device_to_folded.",
    ["hop"],
    buckets=HOP_BUCKETS,
)
PREDICTION_HOPS = ("profile", "model", "total")
PREDICTION_HOP_SECONDS = Histogram(
    "playerpulse_prediction_hop_seconds",
    "A prediction for a player's profile, per hop in the handler: profile (read and "
    "evaluate the profile), model (choose the version and run it), total (the handler).",
    ["hop"],
    buckets=(0.0002, 0.0005, 0.001, 0.0015, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
)
PREDICTIONS_BY_VERSION = Histogram(
    "playerpulse_model_prediction_seconds",
    "Server time of each prediction answered, by model and version (its count is the "
    "number of predictions).",
    ["model", "version"],
    buckets=(0.0002, 0.0005, 0.001, 0.0015, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
)
DISK_FREE_BYTES = Gauge(
    "playerpulse_disk_free_bytes",
    "Free space of each directory the service writes, at the last check (about every second).",
    ["directory", "path"],
    multiprocess_mode="max",
)
DISK_MIN_FREE_BYTES = Gauge(
    "playerpulse_disk_min_free_bytes",
    "The watermark (PLAYERPULSE_DISK_MIN_FREE) of each directory, in bytes: below it, "
    "ingest answers 507 and the lake archive pauses.",
    ["directory", "path"],
    multiprocess_mode="max",
)
DISK_WRITES_REFUSED = Gauge(
    "playerpulse_disk_writes_refused",
    "1 while some directory is below its watermark (ingest answers 507), else 0.",
    multiprocess_mode="max",
)
RESIDENT_BYTES = Gauge(
    "playerpulse_process_resident_bytes",
    "Resident memory (RSS) of each process of the service, by role (worker-N, supervisor, "
    "postgresql, broker).",
    ["process"],
    multiprocess_mode="mostrecent",
)
FOLD_CACHE_BYTES = Gauge(
    "playerpulse_fold_cache_bytes",
    "Estimated memory of the fold's cache of player states, per worker "
    "(bounded by PLAYERPULSE_FOLD_CACHE_BYTES).",
    ["worker"],
    multiprocess_mode="mostrecent",
)
FOLD_CACHE_PLAYERS = Gauge(
    "playerpulse_fold_cache_players",
    "Player states in the fold's cache, per worker.",
    ["worker"],
    multiprocess_mode="mostrecent",
)
GC_SECONDS = Counter(
    "playerpulse_gc_seconds",
    "Time this process spent in the garbage collector, by generation collected (2: full).",
    ["generation"],
)


def watch_gc() -> None:
    """Count every garbage collection's time in :data:`GC_SECONDS` (once per process)."""
    started: list[float] = [0.0]
    children = [GC_SECONDS.labels(str(generation)) for generation in range(3)]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            children[info["generation"]].inc(time.perf_counter() - started[0])

    if not any(getattr(c, "__name__", "") == "on_gc" for c in gc.callbacks):
        gc.callbacks.append(on_gc)
