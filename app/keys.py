"""API keys: creating them, and resolving a presented key to its game and role."""

from __future__ import annotations

import re
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.reads import FastReads
from app.db.repositories import ApiKeyRepository
from app.domain.access import Principal, Role, hash_key, new_key
from app.domain.events import NAME_PATTERN

_GAME = re.compile(NAME_PATTERN)


class KeyService:
    """Issues keys and authenticates them, with a short in-process cache."""

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

    async def create(self, game: str, role: Role) -> str:
        """Store a new key for ``game`` and return it (the only time it is seen in clear)."""
        if not _GAME.match(game):
            raise ValueError(
                f"game {game!r}: 1 to 64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        key = new_key()
        async with self.engine.begin() as conn:
            await self.repository.add(conn, hash_key(key), game, role)
        return key

    async def authenticate(self, key: str) -> Principal | None:
        """The principal behind ``key``, or None if no such key exists."""
        digest = hash_key(key)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        if self.reads is None:
            raise RuntimeError("authenticating keys needs the read pool (FastReads)")
        principal = await self.reads.principal(digest)
        if principal is not None:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (principal, now + self.cache_s)
        return principal
