"""Faust's aiokafka transport with one setting Faust does not expose: the fetch wait.

Faust hard-codes ``fetch_max_wait_ms=1500`` for its consumer. Apache Kafka answers a
waiting fetch as soon as data arrives, so there a long wait would cost no freshness and
save CPU when idle (at 30 ms each consumer asks about 33 times a second even when nothing
arrives); the embedded Tansu broker holds every fetch for the whole wait, which made each
event wait ~1.5 s before the fold saw it. The wait is 30 ms on both for now: a 500 ms wait
on Apache Kafka was tried and measured (idle CPU down), but the SIGKILL durability tests
failed while it was in, and it stays out until that is understood.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

FETCH_MAX_WAIT_MS = 30
"""Apache Kafka (embedded or not)."""
FETCH_MAX_WAIT_MS_HOLDING = 30
"""A broker that holds a fetch for the whole wait (Tansu, ``PLAYERPULSE_BROKER=memory``)."""


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # read when the consumer starts
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", FETCH_MAX_WAIT_MS)
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class StreamApp(faust.App):
    """A Faust app whose Kafka consumer waits ``fetch_max_wait_ms`` for data per fetch."""

    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


__all__ = ["FETCH_MAX_WAIT_MS", "FETCH_MAX_WAIT_MS_HOLDING", "StreamApp"]
