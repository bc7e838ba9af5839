"""Embedded PostgreSQL and Kafka-protocol broker, for a service that runs with no setup."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from app.settings import Settings

from .postgres import EmbeddedPostgres
from .process import ChildProcess


class EmbeddedService(Protocol):
    """A service we run as a child process: started, watched, stopped."""

    child: ChildProcess | None

    def start(self, timeout: float = ...) -> str: ...

    def stop(self) -> None: ...


@dataclass
class Runtime:
    """The concrete endpoints the service runs against, and the embedded services behind them."""

    database_url: str
    kafka_brokers: str
    postgres: EmbeddedService | None = None
    broker: EmbeddedService | None = None

    def dead_child(self) -> str | None:
        """The name of an embedded child that has exited, if any."""
        dead = self.dead_service()
        return None if dead is None else dead[0]

    def dead_service(self) -> tuple[str, EmbeddedService] | None:
        """An embedded service whose child has exited (described), if any."""
        for service in (self.postgres, self.broker):
            child = service.child if service is not None else None
            if service is not None and child is not None and child.exited() is not None:
                return f"{child.name} (exit code {child.exited()}; see {child.log_path})", service
        return None


def embedded_broker(settings: Settings) -> EmbeddedService:
    """The embedded broker the settings ask for (Apache Kafka on disk by default)."""
    if settings.broker == "memory":
        from .broker import MemoryBroker

        return MemoryBroker(settings.data_dir)
    from .kafka import EmbeddedKafka

    return EmbeddedKafka(settings.data_dir, settings=settings)


@contextmanager
def embedded_runtime(settings: Settings) -> Iterator[Runtime]:
    """Start what the settings leave unconfigured; stop it all on exit, whatever happens."""
    postgres = EmbeddedPostgres(settings.data_dir) if settings.embedded_postgres else None
    broker = embedded_broker(settings) if settings.embedded_broker else None
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
