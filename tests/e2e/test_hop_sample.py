"""The per-hop time sample in the lake, queried with DuckDB as the README shows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support import ServeProcess, unique, wait_for
from tests.traffic import purchase

SQL = (
    'SELECT game, type, partition, "offset", ts, device_ts, received_at, appended_at, '
    "folded_at FROM hops ORDER BY received_at"
)


TIMES = ("ts", "device_ts", "received_at", "appended_at", "folded_at")


def _rows(server: ServeProcess) -> list[dict[str, Any]]:
    out = server.cli("analytics", "query", "--format", "json", SQL).stdout
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def test_every_sampled_event_has_its_hops_in_order(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path, {"PLAYERPULSE_HOP_SAMPLE": "1"}).start()
    try:
        game = unique("game")
        ingest = server.key(game, "ingest")
        # The device's clock is 30 s behind: its times are corrected, the originals kept.
        device_now = datetime.now(UTC) - timedelta(seconds=30)
        events = [purchase(f"p{i % 5}") for i in range(40)]
        for event in events:
            event["ts"] = device_now.isoformat()
        sent = datetime.now(UTC)
        with server.client(ingest) as client:
            for part in (events[:20], events[20:]):
                reply = client.post(
                    "/v1/events",
                    json={"events": part},
                    headers={"X-Sent-At": device_now.isoformat()},
                )
                assert reply.status_code == 202, reply.text
        rows = wait_for(lambda: len(_rows(server)) == 40 and _rows(server), timeout=90, interval=1)
        ms = timedelta(milliseconds=1)  # the broker's timestamp has millisecond precision
        for row in rows:
            at = {key: datetime.fromisoformat(row[key]) for key in TIMES}
            assert row["game"] == game, row
            assert row["type"] == "purchase", row
            assert 0 <= row["partition"] < 8, row
            assert row["offset"] >= 0, row
            assert at["received_at"] >= sent, row
            assert at["appended_at"] >= at["received_at"] - ms, row
            assert at["folded_at"] >= at["appended_at"], row
            assert at["device_ts"] == device_now, row
            # Corrected by the skew: the event time lands near the receipt, not 30 s back.
            assert abs((at["ts"] - at["received_at"]).total_seconds()) < 5, row
    finally:
        assert server.stop() == 0, server.log()
