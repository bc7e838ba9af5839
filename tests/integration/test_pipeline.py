"""The whole stream path in-process: producer -> broker -> Faust agents -> PostgreSQL and lake."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

from faust.contrib.asgi import faust_app_running

from app.analytics.query import run_query
from app.bootstrap import open_services
from app.domain.events import EventRecord
from app.settings import Settings
from tests.support import unique


async def wait_until(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"not reached in {timeout}s; last: {last!r}")


async def test_events_reach_profiles_and_the_lake(
    broker_address: str, database_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        kafka_brokers=broker_address,
        events_topic=unique("events"),
        consumer_group=unique("group"),
        lake_flush_s=0.5,
    )
    services = await open_services(settings)
    game = unique("game")
    rng = random.Random(11)
    now = int(time.time() * 1_000_000)
    records = [
        EventRecord(
            game=game,
            event_id=f"e{i}",
            player_id=f"p{i % 50}",
            type="purchase",
            ts=now - rng.randint(0, 86_400_000_000),
            received_at=now,
            props={"amount": i % 7},
        )
        for i in range(2000)
    ]
    expected: dict[str, int] = {}
    for r in records:
        expected[r.player_id] = expected.get(r.player_id, 0) + r.props["amount"]  # type: ignore[index]
    sent = records + rng.sample(records, 300)
    rng.shuffle(sent)
    try:
        async with faust_app_running(services.stream_app, stop_timeout=30):
            for start in range(0, len(sent), 250):
                chunk = sent[start : start + 250]
                await services.producer.send_events(settings.events_topic, chunk)
            assert services.producer.delivered == len(sent)

            async def all_folded() -> bool:
                totals = {}
                for player in expected:
                    profile = await services.profiles.get(game, player)
                    if profile is None:
                        return False
                    totals[player] = profile.features["spend_total"]
                return totals == expected

            await wait_until(all_folded)
            await wait_until(lambda: _async(services.archiver.archived >= len(sent)))
            await services.flush()
    finally:
        await services.close()

    result = run_query(
        settings.lake_dir,
        f"SELECT count(*), count(DISTINCT event_id), sum(CAST(props->>'amount' AS INT)) "
        f"FROM events WHERE game = '{game}'",
    )
    assert result.rows == [(2000, 2000, sum(expected.values()))]
    files = list((settings.lake_dir / "events" / f"game={game}").glob("date=*/*.parquet"))
    assert files, "no Parquet file was written"


async def _async(value: Any) -> Any:
    return value
