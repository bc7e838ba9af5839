"""Upgrade by replacing the executable: an older schema is migrated, a newer one refused."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from app.db.engine import SchemaTooNewError, alembic_config, migrate
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


@pytest.fixture
def fresh_database(database_url: str) -> str:
    name = unique("schema").replace("-", "_")
    asyncio.run(_run(database_url, f'CREATE DATABASE "{name}"'))
    return make_url(database_url).set(database=name).render_as_string(hide_password=False)


def _revision(url: str) -> str:
    rows = asyncio.run(_run(url, "SELECT version_num FROM alembic_version"))
    return str(rows[0][0])


def test_an_older_schema_is_migrated_to_this_builds_head(fresh_database: str) -> None:
    config = alembic_config(fresh_database)
    head = ScriptDirectory.from_config(config).get_current_head()
    command.upgrade(config, "0001")  # the data dir of the first release
    migrate(fresh_database)
    assert _revision(fresh_database) == head
    migrate(fresh_database)  # and again: nothing to do
    assert _revision(fresh_database) == head


def test_a_schema_from_a_newer_build_is_refused_and_left_alone(fresh_database: str) -> None:
    migrate(fresh_database)
    asyncio.run(_run(fresh_database, "UPDATE alembic_version SET version_num = '0099_future'"))
    with pytest.raises(SchemaTooNewError) as refused:
        migrate(fresh_database)
    message = str(refused.value)
    assert "'0099_future'" in message
    assert "a newer release migrated it" in message
    assert _revision(fresh_database) == "0099_future"
