"""Online/offline consistency: training-set rows equal the live profiles, feature by feature.

Events go through the real service over HTTP (shuffled, some twice, some poison); once
they are folded and archived, `playerpulse analytics training-set` computes each
player's features from the lake as of the player's newest event time, and as of now;
every value must equal the profile API's, as a JSON value.

Event times are within the last 20 minutes or older than two days (tests/reference.py),
and each player's newest event is a recent one, so the 1h and 1d windows hold the same
events whether they end at the newest event or at the moment the API is asked: the one
case where a windowed feature as of an earlier time and the live window may differ is
kept out on purpose (see app/analytics/training.py).
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from app.domain.events import from_micros, to_micros
from tests.reference import FEATURES_ALL, generate
from tests.support import ServeProcess, unique, wait_for


def events_for_the_test() -> tuple[list[dict[str, Any]], set[str]]:
    """Reference events, every player's newest one recent, plus poison events."""
    events = generate(players=40, events=1200, seed=11)
    now = datetime.now(UTC)
    newest: dict[str, datetime] = {}
    for e in events:
        ts = datetime.fromisoformat(e["ts"])
        newest[e["player_id"]] = max(ts, newest.get(e["player_id"], ts))
    for player, ts in sorted(newest.items()):
        if now - ts > timedelta(hours=1):
            events.append(
                {
                    "event_id": f"recent-{player}",
                    "player_id": player,
                    "type": "login",
                    "ts": (now - timedelta(minutes=3)).isoformat(),
                }
            )
    poison = set()
    for n, player in enumerate(sorted(newest)[:8]):
        event_id = f"poison-{n}"
        poison.add(event_id)
        events.append(
            {
                "event_id": event_id,
                "player_id": player,
                "type": "purchase",
                "ts": (now - timedelta(minutes=5)).isoformat(),
                "props": {"amount": ["not a number", True][n % 2], "item": {"sku": "poison"}},
            }
        )
    return events, poison


def same(got: Any, want: Any) -> bool:
    """Equal as JSON values: 44 and 44.0 are the same number; true is not 1."""
    if isinstance(got, bool) or isinstance(want, bool):
        return type(got) is type(want) and got == want
    if isinstance(got, (int, float)) and isinstance(want, (int, float)):
        return got == want
    return type(got) is type(want) and got == want


def test_training_set_rows_equal_the_live_profiles(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path, {"PLAYERPULSE_FEATURES": str(FEATURES_ALL)}).start()
    try:
        game = unique("game")
        ingest, read = server.key(game, "ingest"), server.key(game, "read")
        events, poison = events_for_the_test()
        rng = random.Random(12)
        sent = events + rng.sample(events, 200)  # some twice
        rng.shuffle(sent)
        with server.client(ingest) as client:
            for start in range(0, len(sent), 200):
                batch = sent[start : start + 200]
                response = client.post("/v1/events", json={"events": batch})
                assert response.status_code == 202, response.text
                assert response.json()["accepted"] == len(batch)

        applied: dict[str, int] = {}
        for e in events:
            if e["event_id"] not in poison:
                applied[e["player_id"]] = applied.get(e["player_id"], 0) + 1

        def folded() -> bool:
            with server.client(read) as client:
                for player, count in applied.items():
                    response = client.get(f"/v1/players/{player}")
                    if response.status_code != 200 or response.json()["events_applied"] != count:
                        return False
            return True

        def archived() -> bool:
            sql = f"SELECT count(*) AS n FROM events WHERE game = '{game}'"
            out = server.cli("analytics", "query", sql, "--format", "json").stdout
            return bool(json.loads(out) == [{"n": len(events)}])

        wait_for(folded, timeout=60, interval=0.5)
        wait_for(archived, timeout=60, interval=0.5)

        newest: dict[str, int] = {}
        for e in events:
            ts = to_micros(datetime.fromisoformat(e["ts"]))
            newest[e["player_id"]] = max(ts, newest.get(e["player_id"], ts))
        now_us = time.time_ns() // 1000
        labels = tmp_path / "labels.csv"
        rows = [f"{p},{from_micros(ts).isoformat()},newest" for p, ts in sorted(newest.items())]
        rows += [f"{p},{from_micros(now_us).isoformat()},now" for p in sorted(newest)]
        labels.write_text("player_id,ts,label\n" + "\n".join(rows) + "\n")
        out = tmp_path / "training.parquet"
        result = server.cli(
            "analytics", "training-set", "--game", game, "--labels", str(labels), "--out", str(out)
        )
        assert f"wrote {2 * len(newest)} rows" in result.stderr

        parquet = pq.read_table(out)
        table = parquet.to_pylist()
        for field in parquet.schema:  # list features (top_k, last_k) are JSON columns
            if getattr(field.type, "extension_name", None) == "arrow.json":
                for r in table:
                    r[field.name] = None if r[field.name] is None else json.loads(r[field.name])
        assert len(table) == 2 * len(newest)
        with server.client(read) as client:
            live = {p: client.get(f"/v1/players/{p}").json()["features"] for p in newest}
        differences = []
        for row in table:
            features = live[row["player_id"]]
            assert set(features) <= set(row)
            for name, value in features.items():
                if not same(row[name], value):
                    differences.append((row["player_id"], row["label"], name, row[name], value))
        assert not differences, differences[:10]
        # Not vacuous: the features do differ between players, windows included.
        for name in (
            "purchases",
            "spend",
            "first_sku",
            "sessions_1d",
            "spend_1h",
            "skus_seen",
            "spend_median",
            "level_p90_1d",
            "top_skus",
            "recent_levels",
        ):
            assert len({json.dumps(r[name]) for r in table}) > 2, name
    finally:
        assert server.stop() == 0, server.log()


def test_training_set_command_reports_bad_labels(tmp_path: Path) -> None:
    cli = ServeProcess(tmp_path, {"PLAYERPULSE_FEATURES": str(FEATURES_ALL)})
    labels = tmp_path / "labels.json"
    labels.write_text("[]")
    result = cli.cli(
        "analytics",
        "training-set",
        "--game",
        "g",
        "--labels",
        str(labels),
        "--out",
        str(tmp_path / "o.csv"),
        check=False,
    )
    assert result.returncode == 1
    assert "use a .csv or .parquet file" in result.stderr
    shown = cli.cli(
        "analytics",
        "training-set",
        "--game",
        "g",
        "--labels",
        str(labels),
        "--out",
        "x.csv",
        "--show-sql",
    )
    assert "pp_fsum" in shown.stdout
