"""Prometheus metrics, served at ``GET /metrics``.

Under ``serve`` each worker process writes its metrics to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, chosen when this
module is imported), and ``/metrics`` adds up every worker's, whichever answers.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess


def registry() -> CollectorRegistry:
    """The registry to export: all workers' metrics under ``serve``, else this process's."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
    return collected


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

EVENTS_ACCEPTED = Counter(
    "playerpulse_events_accepted", "Events acknowledged by the broker and answered 202."
)
EVENTS_REJECTED = Counter("playerpulse_events_rejected", "Events refused at ingest, by field.")
EVENTS_FOLDED = Counter("playerpulse_events_folded", "Events applied to a profile.")
EVENTS_DUPLICATE = Counter(
    "playerpulse_events_duplicate", "Deliveries of events already applied (no effect)."
)
EVENTS_FAILED = Counter(
    "playerpulse_events_failed", "Events that could not be folded (kept in failed_events)."
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
