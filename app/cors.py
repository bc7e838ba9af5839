"""The CORS origins every worker holds: the setting's, and each game's from the database
(reloaded on a NOTIFY when a game changes its own)."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.cors import CorsRepository
from app.db.notify import Reload
from app.domain.cors import CorsPolicy, parse_origins

CORS_CHANNEL = "playerpulse_cors"


class CorsOrigins:
    """Holds the current :class:`CorsPolicy`; ``put`` changes a game's origins."""

    def __init__(self, everywhere: frozenset[str], engine: AsyncEngine | None = None) -> None:
        self.engine = engine
        self.policy = CorsPolicy(everywhere=everywhere)
        self.repository = CorsRepository()
        self.changed = Reload(self.load, "CORS origins")
        """A NOTIFY (or a reconnection): reload, off the listener's callback."""

    async def load(self) -> None:
        """Read every game's origins."""
        if self.engine is None:
            return
        async with self.engine.connect() as conn:
            games = await self.repository.all(conn)
        self.policy = replace(
            self.policy, per_game={game: frozenset(o) for game, o in games.items()}
        )

    async def put(self, game: str, origins: list[str]) -> list[str]:
        """Replace ``game``'s origins (validated); every worker reloads within moments."""
        parsed = sorted(parse_origins(origins))
        assert self.engine is not None
        async with self.engine.begin() as conn:
            await self.repository.put(conn, game, parsed)
            await conn.execute(text("SELECT pg_notify(:c, :g)"), {"c": CORS_CHANNEL, "g": game})
        await self.load()
        return parsed
