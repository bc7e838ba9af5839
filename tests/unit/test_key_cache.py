"""The API key cache: a lookup per key at most every ``cache_s``, unknown keys never cached."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import cast

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app import keys
from app.db.reads import FastReads
from app.domain.access import Principal, Role, hash_key
from app.keys import KeyService

pytestmark = pytest.mark.unit

ALICE = Principal(game="game-1", role=Role.READ)
BOB = Principal(game="game-2", role=Role.ADMIN)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


class FakeReads(FastReads):
    """The key table as a dict of hashes; counts lookups."""

    def __init__(self, principals: dict[str, Principal]) -> None:
        super().__init__(cast(asyncpg.Pool, None))
        self.by_hash = {hash_key(k): p for k, p in principals.items()}
        self.lookups: list[str] = []

    async def principal(self, key_hash: str) -> Principal | None:
        self.lookups.append(key_hash)
        return self.by_hash.get(key_hash)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(keys, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


def service(reads: FastReads | None, cache_s: float = 30.0) -> KeyService:
    # authenticate never touches the engine: only create() does.
    return KeyService(cast(AsyncEngine, None), cache_s=cache_s, reads=reads)


async def test_a_known_key_is_looked_up_once_within_cache_s(clock: FakeClock) -> None:
    reads = FakeReads({"pp_alice": ALICE})
    keys_ = service(reads, cache_s=30)
    assert await keys_.authenticate("pp_alice") == ALICE
    clock.now += 29.999
    assert await keys_.authenticate("pp_alice") == ALICE
    assert reads.lookups == [hash_key("pp_alice")]  # only the digest is ever looked up


async def test_the_cached_principal_expires_after_cache_s(clock: FakeClock) -> None:
    reads = FakeReads({"pp_alice": ALICE})
    keys_ = service(reads, cache_s=30)
    assert await keys_.authenticate("pp_alice") == ALICE
    clock.now += 30  # expired at exactly cache_s
    assert await keys_.authenticate("pp_alice") == ALICE
    assert len(reads.lookups) == 2
    clock.now += 29  # the second lookup started a fresh period
    assert await keys_.authenticate("pp_alice") == ALICE
    assert len(reads.lookups) == 2


async def test_a_deleted_key_stops_working_once_its_entry_expires(clock: FakeClock) -> None:
    reads = FakeReads({"pp_alice": ALICE})
    keys_ = service(reads, cache_s=30)
    assert await keys_.authenticate("pp_alice") == ALICE
    reads.by_hash.clear()
    clock.now += 10
    assert await keys_.authenticate("pp_alice") == ALICE  # the bounded staleness
    clock.now += 20
    assert await keys_.authenticate("pp_alice") is None


async def test_unknown_keys_are_never_cached(clock: FakeClock) -> None:
    reads = FakeReads({})
    keys_ = service(reads)
    assert await keys_.authenticate("pp_nobody") is None
    assert await keys_.authenticate("pp_nobody") is None
    assert len(reads.lookups) == 2
    # A key created meanwhile works at once, not after cache_s.
    reads.by_hash[hash_key("pp_nobody")] = BOB
    assert await keys_.authenticate("pp_nobody") == BOB


async def test_each_key_has_its_own_entry(clock: FakeClock) -> None:
    reads = FakeReads({"pp_alice": ALICE, "pp_bob": BOB})
    keys_ = service(reads)
    assert await keys_.authenticate("pp_alice") == ALICE
    assert await keys_.authenticate("pp_bob") == BOB
    assert await keys_.authenticate("pp_alice") == ALICE
    assert await keys_.authenticate("pp_bob") == BOB
    assert reads.lookups == [hash_key("pp_alice"), hash_key("pp_bob")]


async def test_zero_cache_s_looks_up_every_time(clock: FakeClock) -> None:
    reads = FakeReads({"pp_alice": ALICE})
    keys_ = service(reads, cache_s=0)
    for _ in range(3):
        assert await keys_.authenticate("pp_alice") == ALICE
    assert len(reads.lookups) == 3


async def test_the_cache_is_bounded(clock: FakeClock) -> None:
    """Past 10,000 entries the cache starts over (every entry is re-read once)."""
    many = {f"pp_{i}": ALICE for i in range(10_002)}
    reads = FakeReads(many)
    keys_ = service(reads)
    for key in list(many)[:10_001]:
        await keys_.authenticate(key)
    assert len(keys_._cache) == 10_001
    assert len(reads.lookups) == 10_001
    await keys_.authenticate("pp_10001")  # the 10,002nd key: the cache starts over
    assert len(keys_._cache) == 1
    await keys_.authenticate("pp_0")
    assert len(reads.lookups) == 10_003


async def test_without_the_read_pool_authentication_is_refused(clock: FakeClock) -> None:
    with pytest.raises(RuntimeError, match="FastReads"):
        await service(None).authenticate("pp_alice")


async def test_a_notice_evicts_the_key_at_once(clock: FakeClock) -> None:
    reads = FakeReads({"pp_alice": ALICE})
    keys_ = service(reads, cache_s=30)
    assert await keys_.authenticate("pp_alice") == ALICE
    reads.by_hash.clear()  # revoked in the database...
    keys_.forget(hash_key("pp_alice"))  # ...and announced (LISTEN/NOTIFY)
    assert await keys_.authenticate("pp_alice") is None
    reads.by_hash[hash_key("pp_alice")] = ALICE
    assert await keys_.authenticate("pp_alice") == ALICE
    keys_.forget(None)  # a reconnection: every entry goes
    assert keys_._cache == {}


async def test_a_cached_key_stops_at_its_expiry_without_a_lookup(clock: FakeClock) -> None:
    soon = datetime.now(UTC).timestamp() + 0.5
    expiring = Principal(game="game-1", role=Role.INGEST, key_id="abc", valid_until=soon)
    reads = FakeReads({"pp_expiring": expiring})
    keys_ = service(reads, cache_s=30)
    assert await keys_.authenticate("pp_expiring") == expiring
    await asyncio.sleep(0.6)
    assert await keys_.authenticate("pp_expiring") is None
    assert len(reads.lookups) == 1  # refused from the cache: the entry knows its end
