"""Disk watermarks: the free space of every directory the service writes, checked on a timer.

Below ``PLAYERPULSE_DISK_MIN_FREE`` in any of them, ingest answers 507 (nothing accepted
that the broker or PostgreSQL might fail to keep) and the lake archive pauses with its
buffer held; reads, predictions, admin and the dashboard go on. When space returns, the
next check lifts both: no restart. A request only reads the cached state (no ``statvfs``
per request): the timer refreshes it every ``interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from app.log import get_logger
from app.settings import MinFree, Settings, parse_min_free

log = get_logger(__name__)

CHECK_INTERVAL_S = 1.0
"""How often the free space is read (a ``statvfs`` per watched directory)."""


@dataclass(frozen=True, slots=True)
class DirectorySpace:
    """One watched directory at the last check."""

    name: str
    path: str
    free_bytes: int
    total_bytes: int
    min_free_bytes: int

    @property
    def low(self) -> bool:
        """Below its watermark."""
        return self.free_bytes < self.min_free_bytes


class DiskFull(RuntimeError):
    """Writes are refused for now: a watched directory is short of space."""

    def __init__(self, space: DirectorySpace, retry_after: int) -> None:
        super().__init__(
            f"the disk of {space.path} ({space.name}) has {space.free_bytes} bytes free, "
            f"below the {space.min_free_bytes} bytes PLAYERPULSE_DISK_MIN_FREE keeps; "
            "nothing in this batch was accepted"
        )
        self.space = space
        self.retry_after = retry_after


def watched_directories(settings: Settings) -> dict[str, Path]:
    """Every local directory the service writes, by role: the embedded broker's log and
    PostgreSQL's data when they are embedded (a worker of ``serve`` is handed their URLs,
    so there: when they exist under the data dir)."""
    data = settings.data_dir.resolve()
    dirs = {"data": data}
    broker_log = data / "kafka"
    if (settings.embedded_broker and settings.broker == "kafka") or broker_log.is_dir():
        dirs["broker log"] = broker_log
    pgdata = data / "postgres"
    if settings.embedded_postgres or pgdata.is_dir():
        dirs["postgresql"] = pgdata
    lake = settings.lake_url
    if lake is None or not lake.startswith("s3://"):
        dirs["lake"] = settings.lake_dir.resolve()
    return dirs


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (a directory not made yet is on that disk)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


class DiskWatch:
    """The cached free space of the watched directories, refreshed by :meth:`run`."""

    def __init__(
        self,
        directories: dict[str, Path],
        min_free: MinFree,
        *,
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self.directories = directories
        self.min_free = min_free
        self.interval_s = interval_s
        self.spaces: list[DirectorySpace] = []
        self.low: DirectorySpace | None = None
        """The lowest directory below its watermark at the last check, or None."""
        self.check()

    @classmethod
    def of(cls, settings: Settings) -> DiskWatch:
        """The watch the settings describe."""
        return cls(watched_directories(settings), parse_min_free(settings.disk_min_free))

    def check(self) -> None:
        """Read the free space of every directory now (a ``statvfs`` each)."""
        from app import metrics

        spaces = []
        for name, path in self.directories.items():
            try:
                stat = os.statvfs(_existing(path))
            except OSError as exc:
                log.warning("free space not readable", directory=str(path), error=str(exc))
                continue
            total = stat.f_blocks * stat.f_frsize
            free = stat.f_bavail * stat.f_frsize
            spaces.append(
                DirectorySpace(name, str(path), free, total, self.min_free.threshold(total))
            )
        lowest = min((s for s in spaces if s.low), key=lambda s: s.free_bytes, default=None)
        if (lowest is None) != (self.low is None):
            if lowest is not None:
                log.error(
                    "disk space low: ingest answers 507 and the lake archive pauses",
                    directory=lowest.path,
                    free_bytes=lowest.free_bytes,
                    min_free_bytes=lowest.min_free_bytes,
                )
            else:
                log.warning("disk space back above the watermark: ingest resumes")
        self.spaces, self.low = spaces, lowest
        for space in spaces:
            metrics.DISK_FREE_BYTES.labels(space.name, space.path).set(space.free_bytes)
            metrics.DISK_MIN_FREE_BYTES.labels(space.name, space.path).set(space.min_free_bytes)
        metrics.DISK_WRITES_REFUSED.set(0 if lowest is None else 1)

    def refuse_writes(self) -> None:
        """Raise :class:`DiskFull` while a watched directory is below its watermark."""
        if self.low is not None:
            raise DiskFull(self.low, retry_after=max(1, round(self.interval_s * 5)))

    @property
    def writable(self) -> bool:
        """No watched directory is below its watermark (the archive may write)."""
        return self.low is None

    async def run(self) -> None:
        """Refresh the state every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # never let the watch die: the last state stays
                log.exception("disk check failed")


def out_of_space(exc: BaseException) -> bool:
    """True if ``exc`` (or what it was raised from) says a disk is full: ENOSPC, EDQUOT,
    or PostgreSQL's disk_full (SQLSTATE 53100)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        with contextlib.suppress(Exception):
            if getattr(current, "sqlstate", None) == "53100":
                return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False
