"""Key lifecycle and the audit chain against a real PostgreSQL: revocation reaches every
process over LISTEN/NOTIFY within a second, expiry and rotation overlaps end on time,
a game's keys stay its own, and an altered audit row is named by ``verify``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit import AuditTrail, last_copied_seq, write_audit_file
from app.db.api_keys import KEY_CHANNEL
from app.db.notify import ChangeListener
from app.db.reads import FastReads
from app.domain.access import Role, key_id_of
from app.domain.audit import AuditEntry
from app.keys import KeyService, UnknownKey

pytestmark = pytest.mark.integration


class Worker:
    """What one serving process holds: a key cache fed by the change listener."""

    def __init__(self, engine: AsyncEngine, reads: FastReads, url: str) -> None:
        self.keys = KeyService(engine, cache_s=30, reads=reads)
        self.listener = ChangeListener(url, KEY_CHANNEL, self.keys.forget)


@pytest.fixture
async def workers(engine: AsyncEngine, database_url: str) -> AsyncIterator[list[Worker]]:
    pools = [await FastReads.open(database_url, size=1) for _ in range(2)]
    made = [Worker(engine, pool, database_url) for pool in pools]
    for worker in made:
        await worker.listener.start()
        assert worker.listener.listening.is_set()
    yield made
    for worker, pool in zip(made, pools, strict=True):
        await worker.listener.stop()
        await pool.close()


async def until(check: object, timeout: float) -> float:
    """Seconds until the coroutine function ``check`` returns True (fail after timeout)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await check():  # type: ignore[operator]
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {timeout}s")


async def test_a_revoked_key_is_refused_by_every_process_within_a_second(
    engine: AsyncEngine, workers: list[Worker]
) -> None:
    admin = KeyService(engine, cache_s=0)  # the command line, say
    key = await admin.create("game-a", Role.INGEST, name="build 1.4")
    key_id = key_id_of(key)
    assert key_id is not None
    for worker in workers:  # cached for 30 s in each
        principal = await worker.keys.authenticate(key)
        assert principal is not None
        assert principal.key_id == key_id
    revoked = await admin.revoke(key_id)
    assert revoked.revoked_at is not None
    for worker in workers:

        async def refused(w: Worker = worker) -> bool:
            return await w.keys.authenticate(key) is None

        assert await until(refused, timeout=1.0) < 1.0
    listed = {k.id: k for k in await admin.list("game-a")}
    assert listed[key_id].revoked_at is not None
    assert listed[key_id].name == "build 1.4"


async def test_an_expired_key_is_refused(engine: AsyncEngine, workers: list[Worker]) -> None:
    admin = KeyService(engine, cache_s=0)
    key = await admin.create("game-a", Role.READ, expires_in_s=1.0)
    assert await workers[0].keys.authenticate(key) is not None

    async def refused() -> bool:
        return all([await w.keys.authenticate(key) is None for w in workers])

    await until(refused, timeout=3.0)
    (stored,) = [k for k in await admin.list("game-a") if k.id == key_id_of(key)]
    assert stored.expires_at is not None
    assert stored.revoked_at is None


async def test_a_rotated_key_works_for_the_overlap_and_not_after(
    engine: AsyncEngine, workers: list[Worker]
) -> None:
    admin = KeyService(engine, cache_s=0)
    old = await admin.create("game-a", Role.INGEST, name="web")
    old_id = key_id_of(old)
    assert old_id is not None
    for worker in workers:
        assert await worker.keys.authenticate(old) is not None
    new, new_info, old_info = await admin.rotate(old_id, overlap_s=1.5)
    assert new_info.name == "web"
    assert new_info.role == "ingest"
    assert old_info.replaced_by == new_info.id
    for worker in workers:  # both work during the overlap
        assert await worker.keys.authenticate(old) is not None
        assert await worker.keys.authenticate(new) is not None

    async def old_refused() -> bool:
        return all([await w.keys.authenticate(old) is None for w in workers])

    waited = await until(old_refused, timeout=4.0)
    assert waited > 0.5  # not before the overlap ended
    for worker in workers:
        assert await worker.keys.authenticate(new) is not None
    with pytest.raises(ValueError, match="revoked"):
        await admin.rotate(old_id, overlap_s=0)


async def test_a_game_sees_and_touches_only_its_own_keys(engine: AsyncEngine) -> None:
    admin = KeyService(engine, cache_s=0)
    mine = key_id_of(await admin.create("game-a", Role.ADMIN))
    theirs = key_id_of(await admin.create("game-b", Role.INGEST))
    assert mine is not None
    assert theirs is not None
    assert [k.id for k in await admin.list("game-a")] == [mine]
    with pytest.raises(UnknownKey):
        await admin.get(theirs, game="game-a")
    with pytest.raises(UnknownKey):
        await admin.revoke(theirs, game="game-a")
    with pytest.raises(UnknownKey):
        await admin.rotate(theirs, overlap_s=0, game="game-a")
    assert (await admin.get(theirs)).revoked_at is None


async def test_audit_verify_names_the_altered_record(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.exec_driver_sql("TRUNCATE audit_log")
    trail = AuditTrail(engine)
    for i in range(5):
        await trail.record(
            AuditEntry("game-a", "key:abc", "DELETE /v1/admin/keys/{id}", f"k{i}", "ok")
        )
    await trail.record(AuditEntry("game-b", "os:ops", "keys.create", "key:x", "ok"))
    assert await trail.verify() == (6, None)
    assert [r.game for r in await trail.list("game-b")] == ["game-b"]
    async with engine.begin() as conn:
        await conn.exec_driver_sql("UPDATE audit_log SET outcome = 'ok!' WHERE seq = 4")
    checked, broken = await trail.verify()
    assert broken is not None
    assert broken.seq == 4
    assert checked == 3


async def test_the_audit_trail_is_copied_to_the_lake(engine: AsyncEngine, tmp_path: Path) -> None:
    async with engine.begin() as conn:
        await conn.exec_driver_sql("TRUNCATE audit_log")
    trail = AuditTrail(engine)
    for i in range(3):
        await trail.record(AuditEntry("game-a", "os:ops", "keys.revoke", f"key:{i}", "ok"))
    assert last_copied_seq(tmp_path) == 0
    written = write_audit_file(tmp_path, await trail.list(after=last_copied_seq(tmp_path)))
    assert written.name == "audit-000000000001-000000000003.parquet"
    assert last_copied_seq(tmp_path) == 3
    await trail.record(AuditEntry("game-a", "os:ops", "keys.create", "key:9", "ok"))
    write_audit_file(tmp_path, await trail.list(after=last_copied_seq(tmp_path)))
    table = pq.read_table(tmp_path / "audit").sort_by("seq")
    assert table.column("target").to_pylist() == ["key:0", "key:1", "key:2", "key:9"]
    stored = await trail.list()
    assert table.column("hash").to_pylist() == [r.hash for r in stored]
