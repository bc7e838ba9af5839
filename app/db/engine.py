"""The async engine (SQLAlchemy over asyncpg) and schema migrations."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError
from alembic.util import CommandError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _parsed(url: str) -> URL:
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"PLAYERPULSE_DATABASE_URL must be a PostgreSQL URL, not {url!r}")
    return parsed


def async_url(url: str) -> str:
    """The SQLAlchemy URL for asyncpg, from any ``postgres://`` or ``postgresql://`` URL.

    This module is the one place a database URL is rewritten: :func:`libpq_url` gives the
    plain form asyncpg's own pools and listeners take.
    """
    return _parsed(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """The plain ``postgresql://`` URL (for asyncpg directly), from any PostgreSQL URL."""
    return _parsed(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """A pooled engine for the service."""
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        connect_args={"server_settings": {"application_name": "playerpulse"}},
    )


def alembic_config(url: str) -> Config:
    """Alembic configuration for our migrations against ``url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", async_url(url).replace("%", "%%"))
    return config


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer release than this one."""


async def _stored_revisions(url: str) -> list[str]:
    """The Alembic revisions the database is at (none before the first migration)."""
    import asyncpg

    conn = await asyncpg.connect(libpq_url(url))
    try:
        if await conn.fetchval("SELECT to_regclass('alembic_version')") is None:
            return []
        return [row[0] for row in await conn.fetch("SELECT version_num FROM alembic_version")]
    finally:
        await conn.close()


def migrate(url: str) -> None:
    """Bring the schema to the newest revision (blocking; safe with several processes).

    A database at a revision this release does not know was migrated by a newer release:
    it is refused (nothing is changed) rather than run with a schema the code does not
    match.
    """
    config = alembic_config(url)
    known = ScriptDirectory.from_config(config)
    for revision in asyncio.run(_stored_revisions(url)):
        try:
            found = known.get_revision(revision)
        except (ResolutionError, CommandError):
            found = None
        if found is None:
            raise SchemaTooNewError(
                f"the database is at schema revision {revision!r}, which this playerpulse "
                f"(newest revision {known.get_current_head()!r}) does not know: a newer "
                "release migrated it. Run that release (or a newer one), or restore a backup "
                "made before the upgrade; this one changes nothing."
            )
    command.upgrade(config, "head")


async def migrate_async(url: str) -> None:
    """:func:`migrate` off the event loop (Alembic's env runs its own loop in that thread)."""
    await asyncio.to_thread(migrate, url)
