"""The lake on a real S3 server (SeaweedFS): archive writes, queries, compaction under
running readers, tiering, erasure rewrites and tombstones, the rewrite lock."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app import lake_store
from app.analytics.compaction import compact_lake
from app.analytics.location import LakeLocation, connect_lake, lake_files
from app.analytics.privacy import apply_retention
from app.analytics.query import run_query
from app.db.locks import lake_rewrite_lock
from app.db.reads import FastReads
from app.domain.events import EventRecord, encode_record
from app.domain.features import FeatureSet
from app.domain.predictions import PredictionRecord
from app.privacy import Eraser, PrivacyService
from app.profiles import ProfileService
from app.streams.folding import ProfileFolder
from app.streams.lake import LakeArchiver, write_events, write_predictions
from app.streams.tombstones import TombstoneWatch
from tests.s3 import S3Server

pytestmark = pytest.mark.s3

DAY_US = 86_400 * 1_000_000
T0 = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z


@pytest.fixture
def bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh bucket, with the lake store using the server's credentials."""
    lake_store.configure(s3_server.settings)
    yield s3_server.new_bucket()
    lake_store.configure(None)


def events(game: str, player: str, prefix: str, count: int, day: int = 0) -> list[EventRecord]:
    return [
        EventRecord(game, f"{prefix}{i}", player, "login", T0 + day * DAY_US + i, T0 + i)
        for i in range(count)
    ]


def objects(s3_server: S3Server, prefix: str) -> list[str]:
    fs = s3_server.filesystem()
    selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
    return sorted(i.path for i in fs.get_file_info(selector) if i.type == pafs.FileType.File)


def counts(location: LakeLocation) -> tuple[int, int]:
    """Rows readers see, and distinct (player, event) among them."""
    with connect_lake(location) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (player_id, event_id)) FROM lake_rows"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def test_archive_writes_to_s3_and_queries_read_it(bucket: str, s3_server: S3Server) -> None:
    root = f"s3://{bucket}/lake"
    archiver: LakeArchiver[EventRecord] = LakeArchiver(
        root, flush_s=60, flush_events=10**6, writer=write_events
    )
    acked: list[int] = []
    archiver.add_batch(events("g", "p1", "a", 30) + events("g", "p2", "b", 20, day=1), [])
    archiver.add_batch(events("g", "p1", "a", 5), [lambda: acked.append(1)])  # resent copies
    await archiver.flush()
    assert acked == [1]
    assert archiver.archived == 55
    write_predictions(root, [PredictionRecord("g", "m", 1, T0, 5, {"y": 1}, {}, player_id="p1")])

    keys = objects(s3_server, f"{bucket}/lake/events")
    assert {k.rsplit("/", 2)[1] for k in keys} == {"date=2024-01-01", "date=2024-01-02"}
    location = LakeLocation(root)
    assert counts(location) == (55, 50)
    result = run_query(
        location,
        "SELECT player_id, count(*) FROM events WHERE game = 'g' GROUP BY 1 ORDER BY 1",
    )
    assert result.rows == [("p1", 30), ("p2", 20)]
    day2 = run_query(location, "SELECT count(*) FROM lake_rows WHERE date = '2024-01-02'")
    assert day2.rows == [(20,)]
    assert run_query(location, "SELECT model, player_id FROM predictions").rows == [("m", "p1")]


def test_compaction_under_readers_shows_no_duplicates_or_gaps(
    bucket: str, s3_server: S3Server, database_url: str
) -> None:
    root = f"s3://{bucket}/lake"
    total = 0
    for day in range(3):
        for part in range(8):  # as the archive leaves it: many small files
            write_events(root, events("g", f"p{part % 3}", f"d{day}-{part}-", 40, day))
            total += 40
    write_events(root, events("g", "p0", "d0-0-", 40))  # copies of one file's events
    location = LakeLocation(root, lock_url=database_url)
    assert counts(location) == (total + 40, total)

    # A reader that listed the lake before compaction reads after it: the files it
    # listed stay for the grace period.
    early = connect_lake(location)
    seen: list[tuple[int, int]] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                seen.append(counts(location))
        except BaseException as exc:  # reported below
            failures.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers:
        thread.start()
    during: list[tuple[int, int]] = []
    try:
        stats = compact_lake(
            location, progress=lambda done, _: during.append(counts(location)), threads=1
        )
    finally:
        stop.set()
        for thread in readers:
            thread.join(30)
    assert not failures, failures
    assert stats.partitions == 3
    assert stats.duplicates_removed == 40
    # Every answer, before, during and after each partition's commit: each event once
    # (the 40 copies until their partition is compacted, never a missing event).
    assert during
    assert seen
    for rows, distinct in seen + during:
        assert distinct == total, (rows, distinct)
        assert rows in (total, total + 40)
    assert during[-1] == (total, total)
    row = early.execute("SELECT count(DISTINCT (player_id, event_id)) FROM lake_rows").fetchone()
    assert row == (total,)
    early.close()

    listing = lake_store.list_lake([root])
    assert all(f.name.startswith(lake_store.REWRITE_PREFIX) for f in listing.files)
    assert len(listing.hidden) == 25  # replaced, kept for the grace period
    # Past the grace, settling deletes them; readers see the same.
    later = time.time() + lake_store.DELETE_GRACE_S + 1
    assert lake_store.settle([root], now=later) == 25
    assert not lake_store.list_lake([root]).hidden
    assert counts(location) == (total, total)
    keys = objects(s3_server, f"{bucket}/lake/events")
    assert sum(k.endswith(".parquet") for k in keys) == 3
    assert sum(k.endswith(".done") for k in keys) == 3
    assert not any(k.endswith(".json") for k in keys)


def test_tiering_and_retention_between_s3_roots(bucket: str, s3_server: S3Server) -> None:
    hot, cold = f"s3://{bucket}/hot", f"s3://{bucket}/cold"
    for part in range(3):
        write_events(hot, events("g", "p", f"old{part}-", 10))  # 2024-01-01
        write_events(hot, events("g", "p", f"new{part}-", 10, day=40))
    location = LakeLocation(hot, cold)
    stats = compact_lake(location, cold_after_days=30, today=date(2024, 2, 15))
    assert stats.partitions_moved == 1
    assert stats.files_moved == 1
    assert {(f.root, f.date) for f in lake_files(location.roots)} == {
        (hot, "2024-02-10"),
        (cold, "2024-01-01"),
    }
    assert counts(location) == (60, 60)
    lake_store.settle(location.roots, now=time.time() + lake_store.DELETE_GRACE_S + 1)
    assert not objects(s3_server, f"{bucket}/hot/events/game=g/date=2024-01-01")
    assert counts(location) == (60, 60)

    expired = apply_retention(location, 30, today=date(2024, 2, 15))
    assert [(p.root, p.date) for p in expired] == [(cold, "2024-01-01")]
    assert counts(location) == (30, 30)
    assert not objects(s3_server, f"{bucket}/cold/events/game=g/date=2024-01-01")


async def test_erasure_on_s3_tombstones_then_rewrites(
    bucket: str,
    s3_server: S3Server,
    engine: AsyncEngine,
    reads: FastReads,
    features: FeatureSet,
    database_url: str,
) -> None:
    game, victim = f"g-{uuid.uuid4().hex[:8]}", f"victim-{uuid.uuid4().hex[:8]}"
    hot, cold = f"s3://{bucket}/hot", f"s3://{bucket}/cold"
    location = LakeLocation(hot, cold, lock_url=database_url)
    write_events(hot, events(game, victim, "v", 5) + events(game, "other", "o", 5))
    write_events(cold, events(game, victim, "c", 4, day=1) + events(game, "other", "k", 3, 1))
    write_events(cold, events(game, victim, "only", 2, day=2))  # a file of the victim alone
    write_predictions(hot, [PredictionRecord(game, "m", 1, T0, 5, {}, {}, player_id=victim)])
    # Compacted: the replaced files, still holding the victim, wait out their grace.
    write_events(hot, events(game, "other", "x", 2))
    assert compact_lake(location).partitions == 1
    assert lake_store.list_lake(location.roots).hidden

    tombstones = TombstoneWatch(engine)
    folder = ProfileFolder(engine, features, tombstones=tombstones)
    archiver: LakeArchiver[EventRecord] = LakeArchiver(
        hot, flush_s=60, flush_events=10**6, writer=write_events, tombstones=tombstones
    )
    privacy = PrivacyService(engine, location, ProfileService(reads, features))
    erasure = await privacy.erase(game, victim)
    # Buffered after the erasure: dropped at write time.
    late = events(game, victim, "late", 3) + events(game, "other", "late", 2)
    archiver.add_batch(await folder.fold_batch([encode_record(r) for r in late]), [])
    await archiver.flush()
    assert archiver.erased == 3

    assert await Eraser(engine, location, broker=None).run_pending() >= 1
    done = await privacy.erasure(game, erasure.id)
    assert done is not None
    assert done.status == "done"
    assert done.stores["lake_hot"]["rows_removed"] == 5
    assert done.stores["lake_cold"]["rows_removed"] == 6
    assert done.stores["predictions"]["rows_removed"] == 1
    with connect_lake(location) as conn:
        players = conn.execute("SELECT DISTINCT player_id FROM lake_rows").fetchall()
    assert players == [("other",)]
    # No object holds the victim: replaced files are deleted at once, not after a grace.
    fs = s3_server.filesystem()
    for key in objects(s3_server, bucket):
        if key.endswith(".parquet"):
            with fs.open_input_file(key) as handle:
                assert victim not in pq.read_table(handle).column("player_id").to_pylist()


def test_a_rewrite_waits_for_the_lock_and_errors_keep_secrets(
    bucket: str, s3_server: S3Server, database_url: str
) -> None:
    root = f"s3://{bucket}/lake"
    write_events(root, events("g", "p", "a", 3))
    write_events(root, events("g", "p", "b", 3))
    location = LakeLocation(root, lock_url=database_url)
    with lake_rewrite_lock(database_url, wait=False) as held:
        assert held
        assert compact_lake(location).skipped  # another copy is rewriting
    assert compact_lake(location).partitions == 1

    wrong = s3_server.settings
    lake_store.configure(
        type(wrong)(
            access_key=wrong.access_key,
            secret_key="not-the-secret",
            endpoint_url=wrong.endpoint_url,
            region="us-east-1",
        )
    )
    with pytest.raises(OSError, match="AWS Error") as failure:
        list(lake_files(root))
    assert "not-the-secret" not in str(failure.value)
    assert s3_server.secret_key not in str(failure.value)
