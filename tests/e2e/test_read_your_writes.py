"""Read-your-writes: an ingest reply's token, passed as ``after``, to the real server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

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


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A server with two worker processes: reads coalesce in each, the fold may run in
    the other."""
    process = ServeProcess(tmp_path_factory.mktemp("serve"), {"PLAYERPULSE_WORKERS": "2"}).start()
    assert len(process.workers()) == 2
    yield process
    assert process.stop() == 0, process.log()


def test_concurrent_reads_after_their_tokens_never_see_older_state(
    two_workers: ServeProcess,
) -> None:
    """200 POST/GET pairs from 8 clients at once, so that reads share queries and model
    runs: each read with ``after`` reflects its own write, profile and prediction."""
    serve = two_workers
    game = unique("game")
    ingest, read, admin = (serve.key(game, role) for role in ("ingest", "read", "admin"))
    with serve.client(admin) as client:
        upload_example_model(client)

    def pairs(client_no: int) -> int:
        players = [f"c{client_no}-p{i}" for i in range(3)]
        sent = dict.fromkeys(players, 0)
        spent = dict.fromkeys(players, 0.0)
        with serve.client(ingest) as writer, serve.client(read) as reader:
            for i in range(25):
                player = players[i % len(players)]
                amount = float(i + 1)
                event = purchase(player, amount)
                reply = writer.post("/v1/events", json={"events": [event]})
                assert reply.status_code == 202, reply.text
                sent[player] += 1
                spent[player] += amount
                token = reply.json()["token"]
                if i % 2:
                    got = reader.get(f"/v1/players/{player}", params={"after": token})
                    assert got.status_code == 200, got.text
                    features = got.json()["features"]
                    assert features["purchases_7d"] == sent[player], (player, i)
                    assert features["spend_total"] == spent[player], (player, i)
                    watermark = got.json()["freshness"]["event_watermark"]
                else:
                    got = reader.get(
                        f"/v1/players/{player}/predictions/offers", params={"after": token}
                    )
                    assert got.status_code == 200, got.text
                    assert got.json()["player_id"] == player
                    watermark = got.json()["freshness"]["event_watermark"]
                assert datetime.fromisoformat(watermark) == datetime.fromisoformat(
                    str(event["ts"])
                ), (player, i)
        return 25

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(pairs, range(8))) == 200


def test_a_profile_changes_on_every_worker_once_another_worker_folded_it(
    two_workers: ServeProcess,
) -> None:
    """Nothing is cached: once an event is folded (by whichever worker owns the player's
    partition), every read after that, on either worker, shows it."""
    serve = two_workers
    game = unique("game")
    ingest, read = serve.key(game, "ingest"), serve.key(game, "read")
    sent: dict[str, int] = {}
    with serve.client(ingest) as writer:
        for n in range(1, 11):
            player = f"w{n % 3}"
            posted = time.monotonic()
            reply = writer.post("/v1/events", json={"events": [purchase(player)]})
            assert reply.status_code == 202, reply.text
            with serve.client(read) as reader:
                folded = reader.get(
                    f"/v1/players/{player}", params={"after": reply.json()["token"]}
                )
            assert folded.status_code == 200, folded.text
            sent[player] = count = sent.get(player, 0) + 1
            assert folded.json()["features"]["purchases_7d"] == count
            assert time.monotonic() - posted < 5.0  # the freshness bound of these tests
            # New connections: the kernel spreads them over both workers' listeners.
            for _ in range(8):
                with serve.client(read) as reader:
                    again = reader.get(f"/v1/players/{player}")
                assert again.status_code == 200, again.text
                assert again.json()["features"]["purchases_7d"] == count, (player, n)
