"""Migration 0008 against a real PostgreSQL: ids carried over as hashes, and back."""

from __future__ import annotations

import asyncio
import importlib
import time

import asyncpg
from alembic import command
from sqlalchemy.engine import make_url

from app.db.engine import alembic_config
from app.domain.dedup import SeenIds, event_hash
from tests.support import unique

MIGRATION = importlib.import_module("app.migrations.versions.0008_dedup")
WRITE_PLAYERS = MIGRATION.WRITE_PLAYERS
MANY, IDS_EACH = 2_500, 5


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
            # More players than one range of the carry-over
            "INSERT INTO profiles (game, player_id, state, events_applied, updated_at) "
            f"SELECT 'h', 'q' || n, '\\x00', {IDS_EACH}, now() "
            f"FROM generate_series(1, {MANY}) AS n",
            "INSERT INTO applied_events (game, player_id, event_id, applied_at) "
            "SELECT 'h', 'q' || n, 'e' || k, now() "
            f"FROM generate_series(1, {MANY}) AS n, generate_series(1, {IDS_EACH}) AS k",
        )
    )
    assert MANY > WRITE_PLAYERS
    command.upgrade(config, "head")
    many = asyncio.run(_run(url, "SELECT player_id, seen_ids FROM profiles WHERE game = 'h'"))
    assert len(many) == MANY
    for row in many:
        held = SeenIds.decode(row["seen_ids"])
        assert len(held) == IDS_EACH, row["player_id"]
        assert all(held.holds(event_hash("h", row["player_id"], f"e{k}")) for k in (1, IDS_EACH))
    rows = asyncio.run(_run(url, "SELECT player_id, seen_ids FROM profiles WHERE game = 'g'"))
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
