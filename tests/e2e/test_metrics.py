"""/metrics after known traffic: counters moved by exactly what was sent, histograms
counted every event and prediction (over every worker)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support import ServeProcess, unique, wait_for
from tests.traffic import purchase, upload_example_model


def _samples(server: ServeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with server.client() as client:
        reply = client.get("/metrics")
    assert reply.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_exactly_the_traffic_sent(serve: ServeProcess) -> None:
    game = unique("game")
    ingest, read, admin = (serve.key(game, role) for role in ("ingest", "read", "admin"))
    with serve.client(admin) as client:
        upload_example_model(client)
    before = _samples(serve)
    players = [f"p{i}" for i in range(10)]
    good = [purchase(player) for player in players for _ in range(3)]  # 30 events
    bad = [{"event_id": "x", "player_id": "p0"}, {"type": "purchase"}]  # 2 rejected
    with serve.client(ingest) as writer:
        reply = writer.post("/v1/events", json={"events": good + bad})
        assert reply.status_code == 202, reply.text
        assert reply.json()["accepted"] == 30
        token = reply.json()["token"]
    with serve.client(read) as reader:
        for player in players:  # 10 predictions, each after its events are folded
            answer = reader.get(f"/v1/players/{player}/predictions/offers", params={"after": token})
            assert answer.status_code == 200, answer.text

    def folded() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        now = _samples(serve)
        moved = _value(now, "playerpulse_events_folded_total") - _value(
            before, "playerpulse_events_folded_total"
        )
        return now if moved >= 30 else None

    after = wait_for(folded, timeout=60, interval=0.5)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("playerpulse_events_accepted_total") == 30
    assert delta("playerpulse_events_rejected_total") == 2
    assert delta("playerpulse_events_folded_total") == 30
    assert delta("playerpulse_events_duplicate_total") == 0
    hop = "playerpulse_event_hop_seconds_count"
    for name in ("device_to_received", "received_to_acked", "appended_to_folded"):
        assert delta(hop, hop=name) == 30, name
    for name in ("received_to_folded", "device_to_folded"):
        assert delta(hop, hop=name) == 30, name
    predictions = "playerpulse_prediction_hop_seconds_count"
    for name in ("profile", "model", "total"):
        assert delta(predictions, hop=name) == 10, name
    by_version = "playerpulse_model_prediction_seconds_count"
    assert delta(by_version, model="offers", version="1") == 10
