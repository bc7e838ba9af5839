"""Embedded PostgreSQL and Kafka-protocol broker, for a service that runs with no setup."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from app.settings import Settings

from .broker import EmbeddedBroker
from .postgres import EmbeddedPostgres


@dataclass
class Runtime:
    """The concrete endpoints the service runs against, and the embedded services behind them."""

    database_url: str
    kafka_brokers: str
    postgres: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None

    def dead_child(self) -> str | None:
        """The name of an embedded child that has exited, if any."""
        for service in (self.postgres, self.broker):
            child = service.child if service is not None else None
            if child is not None and child.exited() is not None:
                return f"{child.name} (exit code {child.exited()}; see {child.log_path})"
        return None


@contextmanager
def embedded_runtime(settings: Settings) -> Iterator[Runtime]:
    """Start what the settings leave unconfigured; stop it all on exit, whatever happens."""
    postgres = EmbeddedPostgres(settings.data_dir) if settings.embedded_postgres else None
    broker = EmbeddedBroker(settings.data_dir) if settings.embedded_broker else None
    try:
        database_url = postgres.start() if postgres is not None else settings.database_url
        kafka_brokers = broker.start() if broker is not None else settings.kafka_brokers
        assert database_url is not None and kafka_brokers is not None
        yield Runtime(database_url, kafka_brokers, postgres, broker)
    finally:
        if broker is not None:
            broker.stop()
        if postgres is not None:
            postgres.stop()
