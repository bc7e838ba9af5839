"""Read-your-writes: an ingest reply's token, passed as ``after``, to the real server."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.support import ServeProcess, unique
from tests.traffic import purchase, upload_example_model


def test_every_read_after_its_token_reflects_its_write(serve: ServeProcess) -> None:
    game = unique("game")
    ingest, read, admin = (serve.key(game, role) for role in ("ingest", "read", "admin"))
    with serve.client(admin) as client:
        upload_example_model(client)
    players = [f"p{i}" for i in range(20)]
    sent = dict.fromkeys(players, 0)
    latest: dict[str, datetime] = {}  # the latest event time sent, by player
    with serve.client(ingest) as writer, serve.client(read) as reader:
        for i in range(200):
            player = players[i % len(players)]
            # Other players' events in the same request: the token covers them too.
            events = [purchase(player), purchase(players[(i + 7) % len(players)])]
            posted = datetime.now(UTC)
            reply = writer.post("/v1/events", json={"events": events})
            assert reply.status_code == 202, reply.text
            for event in events:
                owner, ts = str(event["player_id"]), datetime.fromisoformat(str(event["ts"]))
                sent[owner] += 1
                latest[owner] = max(ts, latest.get(owner, ts))
            token = reply.json()["token"]
            profile = reader.get(f"/v1/players/{player}", params={"after": token})
            assert profile.status_code == 200, profile.text
            assert profile.json()["events_applied"] >= sent[player]
            assert profile.json()["features"]["purchases_7d"] == sent[player], (i, token)
            # Fresh as the write: folded after it was posted, up to its event time.
            freshness = profile.json()["freshness"]
            assert datetime.fromisoformat(freshness["folded_at"]) >= posted, (freshness, posted)
            assert datetime.fromisoformat(freshness["event_watermark"]) == latest[player]
            if i % 20 == 0:
                prediction = reader.get(
                    f"/v1/players/{player}/predictions/offers", params={"after": token}
                )
                assert prediction.status_code == 200, prediction.text
                assert prediction.json()["player_id"] == player
                assert prediction.json()["freshness"]["folded_at"] >= freshness["folded_at"]
                watermark = prediction.json()["freshness"]["event_watermark"]
                assert datetime.fromisoformat(watermark) == latest[player]

        # A token never made here, or too long a wait: named, not guessed at.
        bad = reader.get(f"/v1/players/{players[0]}", params={"after": "x.1"})
        assert bad.status_code == 400
        assert "'after' is not a token" in bad.json()["error"]
        too_long = reader.get(
            f"/v1/players/{players[0]}", params={"after": token, "wait_ms": 10_001}
        )
        assert too_long.status_code == 400, too_long.text
        assert "wait_ms" in too_long.text
        # A token ahead of anything the broker holds: 504 after the wait, saying why.
        ahead = ",".join(f"{p}.999999999" for p in range(8)).replace(",", "_")
        late = reader.get(f"/v1/players/{players[0]}", params={"after": ahead, "wait_ms": 200})
        assert late.status_code == 504, late.text
        assert "not folded within wait_ms=200" in late.json()["error"]
