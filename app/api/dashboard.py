"""The dashboard: a page served by the process itself, and the data it polls.

``GET /dashboard`` and its assets need no key and load nothing from elsewhere (the
charting library, uPlot, is bundled under ``static/uplot``). The page asks for a read
key, keeps it in the browser session only, and polls ``GET /v1/dashboard`` with it: a
snapshot of the service's counters and histograms (summed over every worker, as
``/metrics``) and the fold's lag per partition. The page turns two successive snapshots
into rates and into latency percentiles over the interval between them, so it shows
what happens now, not averages since start.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
from litestar import Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.static_files import create_static_files_router
from prometheus_client import Metric

from app import metrics
from app.domain.access import Role
from app.streams.lag import LagProbe

from .openapi import documented, secured

STATIC = Path(__file__).parent / "static"
PAGE = (STATIC / "dashboard.html").read_bytes()

COUNTERS = (
    "events_accepted",
    "events_rejected",
    "events_throttled",
    "events_folded",
    "events_duplicate",
    "events_failed",
    "late_events",
    "events_archived",
)


class Histogram(msgspec.Struct):
    """Cumulative bucket counts (``le`` upper bounds, the last +Inf as null), count, sum."""

    le: list[float | None]
    counts: list[float]
    count: float
    sum: float


class ModelHistogram(msgspec.Struct):
    """Predictions answered by one version of a model, with their server time."""

    model: str
    version: str
    seconds: Histogram


class DiskSpace(msgspec.Struct):
    """A directory the service writes: its free space and watermark at the last check."""

    directory: str
    path: str
    free_bytes: float
    min_free_bytes: float


class DashboardSnapshot(msgspec.Struct):
    """Totals since the service started (over every worker), the fold's lag now, the free
    space of each directory written (``writes_refused``: ingest answers 507) and the
    resident memory of each process."""

    time: float
    counters: dict[str, float]
    event_hops: dict[str, Histogram]
    prediction_hops: dict[str, Histogram]
    models: list[ModelHistogram]
    lag: dict[str, int]
    disk: list[DiskSpace] = []
    writes_refused: bool = False
    memory: dict[str, float] = {}


def snapshot(families: list[Metric], lag: dict[int, int], now: float) -> DashboardSnapshot:
    """The dashboard's data from collected metric families (pure: tested as such)."""
    by_name = {family.name: family for family in families}
    counters = {name: _total(by_name.get(f"playerpulse_{name}")) for name in COUNTERS}
    hops = _histograms(by_name.get("playerpulse_event_hop_seconds"), ("hop",))
    predictions = _histograms(by_name.get("playerpulse_prediction_hop_seconds"), ("hop",))
    models = _histograms(by_name.get("playerpulse_model_prediction_seconds"), ("model", "version"))
    return DashboardSnapshot(
        time=now,
        counters=counters,
        event_hops={key[0]: value for key, value in hops.items()},
        prediction_hops={key[0]: value for key, value in predictions.items()},
        models=[
            ModelHistogram(model=key[0], version=key[1], seconds=value)
            for key, value in sorted(models.items())
        ],
        lag={str(partition): value for partition, value in sorted(lag.items())},
        disk=_disk(by_name),
        writes_refused=_total_gauge(by_name.get("playerpulse_disk_writes_refused")) > 0,
        memory=_memory(by_name.get("playerpulse_process_resident_bytes")),
    )


def _total_gauge(family: Metric | None) -> float:
    return max((sample.value for sample in family.samples), default=0.0) if family else 0.0


def _disk(by_name: dict[str, Metric]) -> list[DiskSpace]:
    """Free space and watermark per watched directory (the max over workers: they agree)."""
    found: dict[tuple[str, str], dict[str, float]] = {}
    for metric, field in (
        ("playerpulse_disk_free_bytes", "free_bytes"),
        ("playerpulse_disk_min_free_bytes", "min_free_bytes"),
    ):
        family = by_name.get(metric)
        for sample in family.samples if family else []:
            key = (sample.labels.get("directory", ""), sample.labels.get("path", ""))
            values = found.setdefault(key, {})
            values[field] = max(values.get(field, 0.0), sample.value)
    return [
        DiskSpace(name, path, v.get("free_bytes", 0.0), v.get("min_free_bytes", 0.0))
        for (name, path), v in sorted(found.items())
    ]


def _memory(family: Metric | None) -> dict[str, float]:
    """Resident bytes by process role (``worker-0``, ``postgresql``, ...): the live pids."""
    out: dict[str, float] = {}
    for sample in family.samples if family else []:
        out[sample.labels.get("process", "?")] = sample.value
    return dict(sorted(out.items()))


def _total(family: Metric | None) -> float:
    """A counter's value (summed over its samples: every worker's, every label)."""
    if family is None:
        return 0.0
    return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))


def _histograms(family: Metric | None, labels: tuple[str, ...]) -> dict[tuple[str, ...], Histogram]:
    """A histogram family's children by their label values (``le`` sorted, +Inf last)."""
    if family is None:
        return {}
    buckets: dict[tuple[str, ...], dict[float, float]] = {}
    counts: dict[tuple[str, ...], float] = {}
    sums: dict[tuple[str, ...], float] = {}
    for sample in family.samples:
        key = tuple(sample.labels.get(label, "") for label in labels)
        if sample.name.endswith("_bucket"):
            bound = float(sample.labels["le"])
            per_key = buckets.setdefault(key, {})
            per_key[bound] = per_key.get(bound, 0.0) + sample.value
        elif sample.name.endswith("_count"):
            counts[key] = counts.get(key, 0.0) + sample.value
        elif sample.name.endswith("_sum"):
            sums[key] = sums.get(key, 0.0) + sample.value
    out = {}
    for key, per_key in buckets.items():
        bounds = sorted(per_key)
        out[key] = Histogram(
            le=[None if bound == float("inf") else bound for bound in bounds],
            counts=[per_key[bound] for bound in bounds],
            count=counts.get(key, 0.0),
            sum=sums.get(key, 0.0),
        )
    return out


async def dashboard_page() -> Response[bytes]:
    """The dashboard (no key: the page asks for a read key to fetch its data)."""
    return Response(PAGE, media_type="text/html; charset=utf-8")


async def dashboard_data(lag_probe: LagProbe) -> DashboardSnapshot:
    """Counters and latency histograms over every worker, and the fold's lag."""
    lag = await lag_probe.lag()
    return snapshot(list(metrics.registry().collect()), lag, time.time())


def dashboard_routes() -> list[Any]:
    """The page, its assets and its data."""
    handlers: list[HTTPRouteHandler] = [
        get(
            "/dashboard",
            tags=["ops"],
            summary="Dashboard page (no key)",
            media_type="text/html",
            **documented(),
        )(dashboard_page),
        get(
            "/v1/dashboard",
            tags=["ops"],
            summary="The dashboard's data: counters, latency histograms, fold lag",
            **secured(Role.READ),
        )(dashboard_data),
    ]
    assets = create_static_files_router(
        path="/dashboard/assets", directories=[STATIC], include_in_schema=False
    )
    return [*handlers, assets]
