"""Resident memory of the service's processes, published to ``/metrics`` by each worker.

Every worker reports its own RSS; worker 0 also reports the supervisor's and the embedded
children's (PostgreSQL's postmaster, the broker's JVM), found among the supervisor's
children, so one scrape shows the memory of every process of ``serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import psutil

from app import metrics
from app.log import get_logger
from app.streams.folding import ProfileFolder

log = get_logger(__name__)

PUBLISH_INTERVAL_S = 5.0


def role_of(process: psutil.Process) -> str | None:
    """``worker-N``, ``postgresql`` or ``broker`` for a child of the supervisor, else None."""
    with contextlib.suppress(psutil.Error):
        cmdline = process.cmdline()
        name = process.name()
        if "app.worker" in cmdline:
            index = process.environ().get("PLAYERPULSE_WORKER_INDEX", "?")
            return f"worker-{index}"
        if name == "postgres" and process.ppid() == os.getppid():
            return "postgresql"
        if "kafka.Kafka" in cmdline or any("tansu" in part for part in cmdline[:1]):
            return "broker"
    return None


def resident_by_process(worker_index: int) -> dict[str, int]:
    """role -> RSS bytes: this worker, and for worker 0 the others of ``serve``."""
    me = psutil.Process()
    found = {f"worker-{worker_index}": me.memory_info().rss}
    if worker_index != 0:
        return found
    with contextlib.suppress(psutil.Error):
        parent = me.parent()
        if parent is not None and "serve" in parent.cmdline():
            found["supervisor"] = parent.memory_info().rss
            for child in parent.children():
                role = role_of(child)
                if role in ("postgresql", "broker"):
                    with contextlib.suppress(psutil.Error):
                        found[role] = child.memory_info().rss
    return found


def publish(worker_index: int, folder: ProfileFolder | None = None) -> None:
    """Set the ``playerpulse_process_resident_bytes`` gauges (and the fold cache's) now."""
    for role, rss in resident_by_process(worker_index).items():
        metrics.RESIDENT_BYTES.labels(role).set(rss)
    if folder is not None:
        worker = str(worker_index)
        metrics.FOLD_CACHE_BYTES.labels(worker).set(folder.cached_bytes)
        metrics.FOLD_CACHE_PLAYERS.labels(worker).set(folder.cached_players)


async def publish_forever(
    worker_index: int,
    interval_s: float = PUBLISH_INTERVAL_S,
    *,
    folder: ProfileFolder | None = None,
) -> None:
    """:func:`publish` every ``interval_s`` until cancelled."""
    while True:
        try:
            await asyncio.to_thread(publish, worker_index, folder)
        except Exception:
            log.exception("resident memory not published")
        await asyncio.sleep(interval_s)
