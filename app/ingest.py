"""Accepting events: rate limits per key, a bound on events in flight, then Kafka.

An event is accepted (2xx) only once the broker has acknowledged it. When the broker is
slow or gone, or this process already has too much in flight, the request is refused
with Retry-After in bounded time; nothing is ever answered 2xx and then lost.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from app import metrics
from app.disk import DiskFull, DiskWatch
from app.domain.events import EventRecord
from app.streams.producer import BrokerUnavailable, EventProducer


class Overloaded(RuntimeError):
    """Refused for now; ``retry_after`` says in how many seconds to try again."""

    def __init__(self, message: str, retry_after: int, *, rate_limited: bool) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket of events per second for each key (this process's share)."""

    def __init__(self, per_second: float, burst_s: float = 2.0) -> None:
        self.per_second = per_second
        self.capacity = per_second * burst_s
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, events: int) -> float:
        """Take ``events`` tokens; return 0, or the seconds to wait if there are too few."""
        if self.per_second <= 0:
            return 0.0
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.capacity, now)
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.at) * self.per_second)
        bucket.at = now
        if bucket.tokens >= events:
            bucket.tokens -= events
            return 0.0
        return (events - bucket.tokens) / self.per_second


class Ingestor:
    """Produces accepted events, within the limits."""

    def __init__(
        self,
        producer: EventProducer,
        topic: str,
        *,
        rate_per_key: float,
        max_in_flight: int,
        disk: DiskWatch | None = None,
    ) -> None:
        self.producer = producer
        self.disk = disk
        """When set, events are refused (:class:`DiskFull`) while the disk is low."""
        self.topic = topic
        self.limiter = RateLimiter(rate_per_key)
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def accept(self, key: str, records: Sequence[EventRecord]) -> dict[int, int]:
        """Make ``records`` durable in Kafka, or raise Overloaded / BrokerUnavailable /
        DiskFull.

        Returns, per partition, the offset of the last message holding some of them.
        """
        if not records:
            return {}
        if self.disk is not None:
            self.disk.refuse_writes()
        wait = self.limiter.take(key, len(records))
        if wait:
            metrics.EVENTS_THROTTLED.inc(len(records))
            raise Overloaded(
                f"rate limit of {self.limiter.per_second:g} events/s for this key exceeded",
                retry_after=max(1, round(wait + 0.5)),
                rate_limited=True,
            )
        if self.in_flight + len(records) > self.max_in_flight:
            metrics.EVENTS_THROTTLED.inc(len(records))
            raise Overloaded(
                f"{self.in_flight} events are waiting for the broker already; try again soon",
                retry_after=1,
                rate_limited=False,
            )
        self.in_flight += len(records)
        try:
            return await self.producer.send_events(self.topic, records)
        finally:
            self.in_flight -= len(records)


__all__ = ["BrokerUnavailable", "DiskFull", "Ingestor", "Overloaded", "RateLimiter"]
