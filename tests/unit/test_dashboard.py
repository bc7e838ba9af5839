"""The dashboard's snapshot, from metric families collected off a registry of our own."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from app import metrics
from app.api.dashboard import snapshot

pytestmark = pytest.mark.unit


def test_snapshot_sums_counters_and_keeps_cumulative_buckets_per_label() -> None:
    registry = CollectorRegistry()
    accepted = Counter("playerpulse_events_accepted", "", registry=registry)
    hops = Histogram(
        "playerpulse_event_hop_seconds", "", ["hop"], buckets=(0.01, 0.1), registry=registry
    )
    models = Histogram(
        "playerpulse_model_prediction_seconds",
        "",
        ["model", "version"],
        buckets=(0.001,),
        registry=registry,
    )
    accepted.inc(7)
    for value in (0.005, 0.05, 0.05, 3.0):
        hops.labels("received_to_acked").observe(value)
    metrics.observe_times(hops.labels("device_to_received"), 0.02, 5)
    models.labels("offers", "2").observe(0.0005)
    models.labels("offers", "1").observe(0.002)

    out = snapshot(list(registry.collect()), {1: 4, 0: 2}, now=123.0)

    assert out.time == 123.0
    assert out.counters["events_accepted"] == 7
    assert out.counters["events_folded"] == 0  # not registered here: zero, not missing
    acked = out.event_hops["received_to_acked"]
    assert acked.le == [0.01, 0.1, None]
    assert acked.counts == [1, 3, 4]
    assert acked.count == 4
    assert acked.sum == pytest.approx(3.105)
    device = out.event_hops["device_to_received"]
    assert device.counts == [0, 5, 5]
    assert device.sum == pytest.approx(0.1)
    assert [(m.model, m.version, m.seconds.counts) for m in out.models] == [
        ("offers", "1", [0, 1]),
        ("offers", "2", [1, 1]),
    ]
    assert out.lag == {"0": 2, "1": 4}
    assert out.prediction_hops == {}


def test_observe_all_matches_observe_one_by_one() -> None:
    values = [0.0, 0.01, 0.0100001, 0.5, -1.0, 7.0]
    one, bulk = (
        Histogram("h", "", buckets=(0.01, 0.1, 1.0), registry=CollectorRegistry()) for _ in range(2)
    )
    for value in values:
        one.observe(value)
    metrics.observe_all(bulk, values)

    def samples(histogram: Histogram) -> list[tuple[str, dict[str, str], float]]:
        return [(s.name, s.labels, s.value) for f in histogram.collect() for s in f.samples]

    assert samples(bulk)[:-1] == samples(one)[:-1]  # the last sample is _created
