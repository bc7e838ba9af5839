"""Two copies of `playerpulse serve` sharing one lake on a real S3 server (SeaweedFS): hot
and cold roots in one bucket, ingest through both, compaction while they archive, an
erasure, and a report, each read back exactly."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tests.reference import generate
from tests.s3 import S3Server
from tests.support import EXTERNAL_BROKERS, EXTERNAL_DATABASE, ServeProcess, unique, wait_for
from tests.traffic import Sender, batches, lake_counts

pytestmark = pytest.mark.s3


@pytest.fixture
def shared_services(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """One Kafka and one PostgreSQL outside both copies: CI's, or started here."""
    from app.embedded.kafka import EmbeddedKafka
    from app.embedded.postgres import EmbeddedPostgres

    kafka = None if EXTERNAL_BROKERS else EmbeddedKafka(tmp_path / "kafka")
    postgres = None if EXTERNAL_DATABASE else EmbeddedPostgres(tmp_path / "pg")
    try:
        brokers = EXTERNAL_BROKERS or kafka.start()  # type: ignore[union-attr]
        database = EXTERNAL_DATABASE or postgres.start()  # type: ignore[union-attr]
        yield brokers, database
    finally:
        if kafka is not None:
            kafka.stop()
        if postgres is not None:
            postgres.stop()


def _players_in(s3_server: S3Server, bucket: str, player: str) -> list[str]:
    """Objects of the bucket with a row of ``player``, committed or not (the hop sample
    has no player column)."""
    fs = s3_server.filesystem()
    found = []
    for info in fs.get_file_info(pafs.FileSelector(bucket, recursive=True)):
        if info.type == pafs.FileType.File and info.path.endswith(".parquet"):
            with fs.open_input_file(info.path) as handle:
                table = pq.read_table(handle)
            if "player_id" in table.column_names and player in table["player_id"].to_pylist():
                found.append(info.path)
    return found


def test_two_copies_share_one_s3_lake(
    tmp_path: Path, s3_server: S3Server, shared_services: tuple[str, str]
) -> None:
    brokers, database = shared_services
    bucket = s3_server.new_bucket()
    env = {
        **s3_server.env,
        "PLAYERPULSE_KAFKA_BROKERS": brokers,
        "PLAYERPULSE_DATABASE_URL": database,
        "PLAYERPULSE_LAKE_URL": f"s3://{bucket}/hot",
        "PLAYERPULSE_LAKE_COLD_URL": f"s3://{bucket}/cold",
        "PLAYERPULSE_LAKE_COLD_AFTER_DAYS": "30",
        "PLAYERPULSE_LAKE_COMPACT_INTERVAL_S": "0",  # compacted by the command below
        "PLAYERPULSE_EVENTS_TOPIC": unique("events"),
        "PLAYERPULSE_CONSUMER_GROUP": unique("group"),
        "PLAYERPULSE_WORKERS": "1",
    }
    a, b = ServeProcess(tmp_path / "a", env), ServeProcess(tmp_path / "b", env)
    with ThreadPoolExecutor(2) as pool:  # both start at once
        list(pool.map(ServeProcess.start, (a, b)))
    try:
        game = unique("game")
        ingest, admin = a.key(game, "ingest"), a.key(game, "admin")
        events = generate(players=20, events=1000, seed=5)
        requests = batches(events, 50, seed=6)
        sender = Sender([a.url, b.url], ingest, requests, threads=2).start()
        wait_for(lambda: sender.accepted >= len(requests) // 3, timeout=120, interval=0.05)
        # Something archived first (a Parquet file appears within the lake flush), so
        # that the compaction has partitions to work on while the copies archive more.
        wait_for(lambda: lake_counts(a, game)[0] > 0, timeout=60, interval=0.5)
        # Compaction (and tiering) while both copies archive into the same partitions.
        first = json.loads(a.cli("lake", "compact", "--format", "json").stdout)
        assert first["partitions"] > 0
        sender.join(timeout=300)
        distinct = len({e["event_id"] for e in events})
        wait_for(lambda: lake_counts(b, game) == (distinct, distinct), timeout=120, interval=1)
        second = json.loads(b.cli("lake", "compact", "--format", "json").stdout)
        assert second["skipped"] is None
        assert second["partitions_moved"] + first["partitions_moved"] > 0  # to the cold root
        assert lake_counts(a, game) == (distinct, distinct)

        victim = "p0"
        with a.client(admin) as client:
            erasure = client.delete(f"/v1/admin/players/{victim}").json()["erasure_id"]

            def erased() -> bool:
                reply = client.get(f"/v1/admin/erasures/{erasure}").json()
                return bool(reply["status"] == "done")

            wait_for(erased, timeout=120, interval=0.5)
        kept = [e for e in events if e["player_id"] != victim]
        remaining = len({e["event_id"] for e in kept})
        assert lake_counts(b, game) == (remaining, remaining)
        assert _players_in(s3_server, bucket, victim) == []

        dau = json.loads(
            b.cli("analytics", "report", "dau", "--game", game, "--format", "json").stdout
        )
        want: dict[str, set[str]] = defaultdict(set)
        for e in kept:
            want[datetime.fromisoformat(e["ts"]).date().isoformat()].add(e["player_id"])
        got = {row["day"]: row["players"] for row in dau if row["players"]}
        assert got == {day: len(players) for day, players in want.items()}
    finally:
        for copy in (a, b):
            assert copy.stop() == 0, copy.log()
