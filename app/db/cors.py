"""Browser origins allowed per game."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import (
    game_cors,
)


class CorsRepository:
    """The browser origins each game allows."""

    async def put(self, conn: AsyncConnection, game: str, origins: list[str]) -> None:
        """Replace the game's allowed origins."""
        statement = pg_insert(game_cors).values(game=game, origins=origins)
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[game_cors.c.game],
                set_={"origins": statement.excluded.origins, "updated_at": func.now()},
            )
        )

    async def all(self, conn: AsyncConnection) -> dict[str, list[str]]:
        """Every game's allowed origins."""
        rows = await conn.execute(select(game_cors.c.game, game_cors.c.origins))
        return {row[0]: list(row[1]) for row in rows}
