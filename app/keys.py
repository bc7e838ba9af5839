"""API keys: creating, listing, revoking, rotating them, and resolving a presented key to
its game and role.

Every worker caches resolved keys for ``cache_s``; a revocation or rotation announces the
key on a NOTIFY channel and every worker (of every copy) forgets its entry at once (see
``forget``), so a revoked key is refused within moments. An expiry, or the end of a
rotation's overlap, needs no notice: the cached entry knows until when it holds.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.api_keys import ApiKeyRepository, StoredKey
from app.db.reads import FastReads
from app.domain.access import Principal, Role, hash_key, new_key, new_key_id
from app.domain.events import NAME_PATTERN
from app.log import get_logger

log = get_logger(__name__)

_GAME = re.compile(NAME_PATTERN)
_NAME_MAX = 200
TOUCH_EVERY_S = 60.0
"""How often (at most, per key and process) a key's ``last_used_at`` is written."""


class UnknownKey(LookupError):
    """No key with this id (in this game)."""


def check_game(game: str) -> None:
    """Refuse a game name keys cannot belong to (ValueError saying why)."""
    if not _GAME.match(game):
        raise ValueError(
            f"game {game!r}: 1 to 64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )


def _now() -> datetime:
    return datetime.now(UTC)


class KeyService:
    """Issues and manages keys and authenticates them, with a short in-process cache."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        cache_s: float,
        repository: ApiKeyRepository | None = None,
        reads: FastReads | None = None,
    ) -> None:
        self.engine = engine
        self.cache_s = cache_s
        self.repository = repository or ApiKeyRepository()
        self.reads = reads
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._touched: dict[str, float] = {}
        self._touching: set[asyncio.Task[None]] = set()

    async def create(
        self,
        game: str,
        role: Role,
        *,
        name: str | None = None,
        expires_in_s: float | None = None,
    ) -> str:
        """Store a new key for ``game`` and return it (the only time it is seen in clear)."""
        key, _stored = await self.issue(game, role, name=name, expires_in_s=expires_in_s)
        return key

    async def issue(
        self,
        game: str,
        role: Role,
        *,
        name: str | None = None,
        expires_in_s: float | None = None,
    ) -> tuple[str, StoredKey]:
        """A new key and its stored record."""
        check_game(game)
        if name is not None and not 1 <= len(name) <= _NAME_MAX:
            raise ValueError(f"name: 1 to {_NAME_MAX} characters")
        if expires_in_s is not None and expires_in_s <= 0:
            raise ValueError("expires: a positive duration such as 90d")
        expires_at = None if expires_in_s is None else _now() + timedelta(seconds=expires_in_s)
        key_id = new_key_id()
        key = new_key(key_id)
        async with self.engine.begin() as conn:
            await self.repository.add(
                conn,
                key_id=key_id,
                key_hash=hash_key(key),
                game=game,
                role=role,
                name=name,
                expires_at=expires_at,
            )
            stored = await self.repository.get(conn, key_id)
        assert stored is not None
        return key, stored

    async def list(self, game: str | None = None) -> list[StoredKey]:
        """Every key (of ``game``), oldest first; never a secret."""
        async with self.engine.connect() as conn:
            return await self.repository.list(conn, game)

    async def get(self, key_id: str, game: str | None = None) -> StoredKey:
        """One key by id (of ``game`` only, if given)."""
        async with self.engine.connect() as conn:
            key = await self.repository.get(conn, key_id)
        if key is None or (game is not None and key.game != game):
            raise UnknownKey(key_id)
        return key

    async def revoke(self, key_id: str, game: str | None = None) -> StoredKey:
        """Revoke a key now: every worker refuses it within moments."""
        async with self.engine.begin() as conn:
            key = await self.repository.get(conn, key_id, lock=True)
            if key is None or (game is not None and key.game != game):
                raise UnknownKey(key_id)
            await self.repository.revoke(conn, key, _now())
            revoked = await self.repository.get(conn, key_id)
        assert revoked is not None
        return revoked

    async def rotate(
        self, key_id: str, *, overlap_s: float, game: str | None = None
    ) -> tuple[str, StoredKey, StoredKey]:
        """A new key of the same game, role, name and lifetime; the old one keeps working
        for ``overlap_s`` more, then is revoked. Returns (new key, new record, old record)."""
        if overlap_s < 0:
            raise ValueError("overlap: a duration such as 24h, or 0")
        old = await self.get(key_id, game)
        if old.revoked_at is not None and old.revoked_at <= _now():
            raise ValueError(f"key {key_id} is revoked: create a new one instead")
        lifetime = None
        if old.expires_at is not None:
            lifetime = (old.expires_at - old.created_at).total_seconds()
        key, new = await self.issue(old.game, Role(old.role), name=old.name, expires_in_s=lifetime)
        async with self.engine.begin() as conn:
            await self.repository.revoke(conn, old, _now() + timedelta(seconds=overlap_s))
            await self.repository.replaced(conn, old.id, new.id)
            rotated = await self.repository.get(conn, old.id)
        assert rotated is not None
        return key, new, rotated

    def forget(self, key_hash: str | None) -> None:
        """A key changed (``key_hash``), or notices may have been missed (None)."""
        if key_hash is None:
            self._cache.clear()
        else:
            self._cache.pop(key_hash, None)

    async def authenticate(self, key: str) -> Principal | None:
        """The principal behind ``key``; None if no such key, or expired, or revoked."""
        digest = hash_key(key)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            principal = cached[0]
        else:
            if self.reads is None:
                raise RuntimeError("authenticating keys needs the read pool (FastReads)")
            found = await self.reads.principal(digest)
            if found is None:
                return None
            principal = found
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (principal, now + self.cache_s)
        if not principal.valid_at(_now().timestamp()):
            return None
        self._touch(digest, now)
        return principal

    def _touch(self, digest: str, now: float) -> None:
        """Record the key's use, off the request path, at most every TOUCH_EVERY_S."""
        if self.engine is None or self._touched.get(digest, -TOUCH_EVERY_S) > now - TOUCH_EVERY_S:
            return
        if len(self._touched) > 10_000:
            self._touched.clear()
        self._touched[digest] = now
        task = asyncio.get_running_loop().create_task(self._write_touch(digest))
        self._touching.add(task)
        task.add_done_callback(self._touching.discard)

    async def _write_touch(self, digest: str) -> None:
        try:
            async with self.engine.begin() as conn:
                await self.repository.touch(conn, digest)
        except Exception as exc:  # a lost "last used" must never fail a request
            log.warning("could not record a key's last use", error=str(exc))
