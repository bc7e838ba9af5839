"""Real PostgreSQL and a real Kafka-protocol broker for integration tests.

Embedded ones by default (started and stopped here); ``PLAYERPULSE_TEST_DATABASE_URL``
and ``PLAYERPULSE_TEST_KAFKA_BROKERS`` point the tests at others (CI: Apache Kafka).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_engine, migrate
from app.db.reads import FastReads
from app.domain.features import FeatureSet, load_features
from app.embedded.kafka import EmbeddedKafka
from app.embedded.postgres import EmbeddedPostgres
from app.settings import DEFAULT_FEATURES
from tests.support import EXTERNAL_BROKERS, EXTERNAL_DATABASE, unique


@pytest.fixture(scope="session")
def broker_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Kafka-protocol broker for the session."""
    if EXTERNAL_BROKERS:
        yield EXTERNAL_BROKERS
        return
    broker = EmbeddedKafka(tmp_path_factory.mktemp("broker"))
    try:
        yield broker.start()
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, migrated database for the session."""
    postgres = None
    if EXTERNAL_DATABASE:
        server_url = EXTERNAL_DATABASE
    else:
        postgres = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
        server_url = postgres.start()
    name = unique("test").replace("-", "_")
    try:
        asyncio.run(_create_database(server_url, name))
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        migrate(url)
        yield url
    finally:
        if postgres is not None:
            postgres.stop()


async def _create_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the test database, with every table emptied first."""
    engine = create_engine(database_url, pool_size=4)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            "TRUNCATE api_keys, profiles, failed_events, models, fold_progress"
        )
    yield engine
    await engine.dispose()


@pytest.fixture
async def reads(database_url: str) -> AsyncIterator[FastReads]:
    """The read pool profiles and keys are looked up through."""
    pool = await FastReads.open(database_url, size=2)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def features() -> FeatureSet:
    """The shipped example features."""
    return load_features(Path(DEFAULT_FEATURES))
