"""Migration 0008 against a real PostgreSQL: ids carried over as hashes, and back."""

from __future__ import annotations

import asyncio
import time

import asyncpg
from alembic import command
from sqlalchemy.engine import make_url

from app.db.engine import alembic_config
from app.domain.dedup import SeenIds, event_hash
from tests.support import unique


async def _run(url: str, *statements: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        rows: list[asyncpg.Record] = []
        for statement in statements:
            rows = await conn.fetch(statement)
        return rows
    finally:
        await conn.close()


def test_upgrade_carries_the_last_day_of_ids_over_and_downgrade_restores_the_table(
    database_url: str,
) -> None:
    name = unique("mig").replace("-", "_")
    asyncio.run(_run(database_url, f'CREATE DATABASE "{name}"'))
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    config = alembic_config(url)
    command.upgrade(config, "0007")
    asyncio.run(
        _run(
            url,
            "INSERT INTO profiles (game, player_id, state, events_applied, updated_at) "
            "VALUES ('g', 'p', '\\x00', 3, now())",
            "INSERT INTO applied_events (game, player_id, event_id, applied_at) VALUES "
            "('g', 'p', 'new-1', now()), ('g', 'p', 'new-2', now() - interval '2 hours'), "
            "('g', 'p', 'old', now() - interval '3 days'), "
            "('g', 'gone', 'x', now())",  # no profile (erased meanwhile): not carried
        )
    )
    command.upgrade(config, "head")
    rows = asyncio.run(_run(url, "SELECT player_id, seen_ids FROM profiles"))
    assert [r["player_id"] for r in rows] == ["p"]
    seen = SeenIds.decode(rows[0]["seen_ids"])
    assert len(seen) == 2
    assert seen.holds(event_hash("g", "p", "new-1"))
    assert seen.holds(event_hash("g", "p", "new-2"))
    assert not seen.holds(event_hash("g", "p", "old"))
    assert min(seen.starts) <= time.time() - 2 * 3600
    tables = "SELECT count(*) AS n FROM pg_tables WHERE tablename = 'applied_events'"
    assert asyncio.run(_run(url, tables))[0]["n"] == 0

    command.downgrade(config, "0007")
    assert asyncio.run(_run(url, tables))[0]["n"] == 1
    columns = (
        "SELECT count(*) AS n FROM information_schema.columns "
        "WHERE table_name = 'profiles' AND column_name = 'seen_ids'"
    )
    assert asyncio.run(_run(url, columns))[0]["n"] == 0
    asyncio.run(
        _run(url, "INSERT INTO applied_events (game, player_id, event_id) VALUES ('g', 'p', 'e')")
    )
    command.upgrade(config, "head")  # and up again
    assert asyncio.run(_run(url, tables))[0]["n"] == 0
