"""Faust's aiokafka transport with one setting Faust does not expose: the fetch wait.

Faust hard-codes ``fetch_max_wait_ms=1500`` for its consumer. Apache Kafka answers a
waiting fetch as soon as data arrives, so the value costs nothing there; the embedded
Tansu broker holds every fetch for the whole wait, which made each event wait ~1.5 s
before the fold saw it. A short wait keeps the fold fresh on any broker.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

FETCH_MAX_WAIT_MS = 30


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class StreamApp(faust.App):
    """A Faust app whose Kafka consumer polls with a short fetch wait."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


__all__ = ["FETCH_MAX_WAIT_MS", "StreamApp"]
