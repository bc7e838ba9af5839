"""The garbage collector in a serving process: out of the hot path, and measured."""

from __future__ import annotations

import gc

from app import metrics

GC_THRESHOLDS = (50_000, 20, 100)
"""The collector's thresholds in a serving process (CPython's default: 700, 10, 10).

The fold keeps every hot player's state as Python dicts between transactions, so a full
collection walks all of them: at 10,000 events/s with the defaults the two workers spent
6.5 s of 30 in full collections (``playerpulse_gc_seconds``), 20 % of their CPU. Nearly
everything the hot path allocates is freed by reference counting (states, events and
replies hold no cycles), so collecting rarely loses nothing: with these thresholds the
same load ran no full or middle collection, and young ones took 1.2 s.
"""


def settle_heap() -> None:
    """Once started: freeze what start-up allocated, collect rarely, count the time spent.

    Everything alive at this point lives as long as the process: frozen, the collector
    never scans it again (those scans showed as pauses in request latency).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    metrics.watch_gc()
