"""The fold's lag per partition of the events topic: messages not yet acknowledged.

Lag of a partition = its high watermark (the offset the next message will get) minus
the consumer group's committed offset (the first message not yet acknowledged, that is
not yet folded *and* archived). Read from the broker with a consumer that never
subscribes, so it takes no part in the group; answers are kept for a second, so a
dashboard polled by many browsers costs the broker one round of requests a second.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import confluent_kafka

_CACHE_S = 1.0


class LagProbe:
    """Reads committed offsets and high watermarks of one group on one topic."""

    def __init__(self, brokers: str, group: str, topic: str) -> None:
        self.topic = topic
        self._config = {
            "bootstrap.servers": brokers,
            "group.id": group,
            "enable.auto.commit": False,
            "logger": logging.getLogger("librdkafka.lag"),
        }
        self._consumer: confluent_kafka.Consumer | None = None
        self._lock = threading.Lock()  # one read at a time: the consumer is not shared
        self._cached: tuple[float, dict[int, int]] | None = None

    async def lag(self) -> dict[int, int]:
        """Messages not yet acknowledged, per partition (a partition with no commit yet
        counts from its first offset)."""
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < _CACHE_S:
            return cached[1]
        lag = await asyncio.to_thread(self._read)
        self._cached = (time.monotonic(), lag)
        return lag

    def _read(self) -> dict[int, int]:
        with self._lock:
            if self._consumer is None:
                self._consumer = confluent_kafka.Consumer(self._config)
            consumer = self._consumer
            partitions = consumer.list_topics(self.topic, timeout=5).topics[self.topic].partitions
            wanted = [confluent_kafka.TopicPartition(self.topic, p) for p in sorted(partitions)]
            committed = consumer.committed(wanted, timeout=5)
            lag = {}
            for position in committed:
                low, high = consumer.get_watermark_offsets(position, timeout=5, cached=False)
                start = position.offset if position.offset >= 0 else low
                lag[position.partition] = max(0, high - start)
            return lag

    def close(self) -> None:
        """Close the consumer (it never joined the group: nothing to leave)."""
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
