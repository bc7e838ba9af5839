"""Profiles that are always right, over the real server: shuffled and repeated events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.reference import FEATURES_ALL, generate
from tests.support import ServeProcess, unique, wait_for
from tests.traffic import batches, post_all, profiles_match

pytestmark = pytest.mark.kafka  # rerun against a separate Apache Kafka


def test_thousands_of_shuffled_repeated_events_match_the_reference(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path, {"PLAYERPULSE_FEATURES": str(FEATURES_ALL)}).start()
    try:
        game = unique("game")
        ingest, read = server.key(game, "ingest"), server.key(game, "read")
        events = generate(players=150, events=4000, seed=1)
        post_all(server.url, ingest, batches(events, 100, seed=2))
        wait_for(lambda: profiles_match(server, read, events), timeout=90, interval=1)
        with server.client() as client:
            text = client.get("/metrics").text
        # A sample is "NAME{LABELS} VALUE"; label values may hold spaces.
        values = {
            name: float(value)
            for name, value in (
                line.rsplit(" ", 1)
                for line in text.splitlines()
                if line.startswith("playerpulse_") and " " in line
            )
        }
        old = datetime.now(UTC) - timedelta(days=1)
        late = sum(1 for e in events if datetime.fromisoformat(e["ts"]) < old)
        # Summed over every worker: each distinct event applied once, every resend a duplicate.
        assert values["playerpulse_events_folded_total"] == len(events)
        assert values["playerpulse_events_duplicate_total"] >= len(events) // 3
        assert values["playerpulse_late_events_total"] == late
    finally:
        assert server.stop() == 0, server.log()
