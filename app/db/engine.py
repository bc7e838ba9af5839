"""The async engine (SQLAlchemy over asyncpg) and schema migrations."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
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


def migrate(url: str) -> None:
    """Bring the schema to the newest revision (blocking; safe with several processes)."""
    command.upgrade(alembic_config(url), "head")


async def migrate_async(url: str) -> None:
    """:func:`migrate` off the event loop (Alembic's env runs its own loop in that thread)."""
    await asyncio.to_thread(migrate, url)
