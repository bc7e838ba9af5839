"""Logging predictions to Kafka off the request path, a batch per message."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import KW_ONLY, dataclass, field

from app.domain.predictions import PredictionRecord, encode_predictions
from app.log import get_logger

from .producer import BrokerUnavailable, EventProducer

log = get_logger(__name__)


@dataclass(eq=False)
class PredictionLog:
    """Collects prediction records and produces them every ``interval_s`` as one message.

    A prediction's answer never waits for its log: at most ``interval_s`` of logs are
    in memory, and logs the broker refuses are counted and dropped (logged as errors).
    """

    producer: EventProducer
    topic: str
    _: KW_ONLY
    interval_s: float = 0.2
    max_batch: int = 2000
    logged: int = field(default=0, init=False)
    dropped: int = field(default=0, init=False)
    _pending: list[PredictionRecord] = field(default_factory=list, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    def __call__(self, record: PredictionRecord) -> None:
        self._pending.append(record)

    def start(self) -> None:
        """Flush periodically from now on."""
        self._task = asyncio.create_task(self._run(), name="prediction-log")

    async def close(self) -> None:
        """Stop the periodic flush and flush what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def flush(self) -> None:
        """Produce what is pending and wait for the broker."""
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            key = batch[0].game.encode()
            try:
                await self.producer.send(self.topic, [(None, key, encode_predictions(batch))])
                self.logged += len(batch)
            except BrokerUnavailable as exc:
                self.dropped += len(batch)
                log.error("prediction logs dropped", count=len(batch), error=str(exc))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()
