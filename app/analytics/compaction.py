"""Lake housekeeping: compact small files, remove duplicate copies, move old partitions cold.

The archive agent writes one small file per partition per flush (every few seconds).
Compaction rewrites each partition's small files into files of up to ``target_rows``
rows, zstd, sorted by (player_id, ts) with row groups DuckDB can scan in parallel,
keeping one copy of each event: per ``(player_id, event_id)``, the first received (the
copy the live fold counted). Copies are keyed by player as well as id because the fold
counts them so: deduplicating on ``event_id`` alone could drop an event a profile counts.

After a run, each partition it touched holds only compacted files and no two rows with
the same ``(player_id, event_id)``: a batch of small files is rewritten together with
every other file of the partition that shares a key with it. Answers to queries do not
change: every view already counts an event once. Each rewrite is a commit
(:mod:`app.lake_store`): the new files and the record naming the files they replace
appear before anything is deleted, and readers list the committed files only, so a
reader sees every event exactly once at every moment. On object stores the replaced
files stay for a grace period (running queries keep reading them); on local disk
they are deleted at once, and a query that listed one just before fails and can be
run again.

Tiering: partitions whose date is more than ``cold_after_days`` days before today (UTC)
are compacted, then moved to the cold root (another directory or an ``s3://`` URL);
queries read both roots. A late event for a cold date lands in the hot root, and the
next run moves it over and compacts the cold partition.

One rewrite at a time: with a database (``serve``, and commands given
``PLAYERPULSE_DATABASE_URL``) a PostgreSQL advisory lock serialises compaction, tiering,
erasure and retention across every copy sharing the lake; without one, a lock file
beside a local hot root does it between processes of one machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from app.lake_layout import EVENT_COLUMNS, EVENTS_SCHEMA, FIRST_RECEIVED
from app.lake_store import (
    COMMITS,
    commit,
    copy_file,
    new_commit_id,
    partition_path,
    rewrite_name,
    settle,
    write_table,
)
from app.log import get_logger
from app.settings import Settings

from .location import LakeFile, LakeLocation, filesystem, is_url, join, lake_files

log = get_logger(__name__)

ARCHIVE_PREFIX = "part-"
"""Files written by the archive agent; a partition holding one is always compacted."""
COMPACT_PREFIX = "compact-"
ROW_GROUP_ROWS = 128 * 1024
"""Rows per row group: DuckDB scans row groups in parallel."""
DEFAULT_TARGET_ROWS = 1_000_000


@dataclass(slots=True)
class CompactionStats:
    """What a compaction run did."""

    partitions: int = 0
    """Partitions rewritten."""
    files_removed: int = 0
    files_written: int = 0
    rows_read: int = 0
    rows_written: int = 0
    duplicates_removed: int = 0
    partitions_moved: int = 0
    """Partitions moved (in whole or in part) to the cold root."""
    files_moved: int = 0
    seconds: float = 0.0
    skipped: str | None = None
    """Why nothing was done (another run holds the lock), if so."""
    touched: list[str] = field(default_factory=list)
    """``game/date`` of each partition rewritten or moved."""

    def describe(self) -> str:
        """One line for people."""
        if self.skipped:
            return f"compaction skipped: {self.skipped}"
        return (
            f"compacted {self.partitions} partitions: {self.files_removed} files -> "
            f"{self.files_written}, {self.rows_read} rows -> {self.rows_written} "
            f"({self.duplicates_removed} duplicates removed); moved {self.files_moved} files "
            f"of {self.partitions_moved} partitions to the cold tier; {self.seconds:.1f}s"
        )


def compact_lake(
    location: LakeLocation | Path | str,
    *,
    target_rows: int = DEFAULT_TARGET_ROWS,
    cold_after_days: int | None = None,
    today: date | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CompactionStats:
    """Compact every partition that needs it; then tier old partitions if a cold root is set.

    ``location`` is a :class:`LakeLocation` or a hot root (directory or URL) alone.
    ``threads`` limits DuckDB (1 inside ``serve``, next to the fold). ``progress`` is
    called with (partitions done, partitions to look at).
    """
    if not isinstance(location, LakeLocation):
        location = LakeLocation(str(location))
    if target_rows < 2:
        raise ValueError("target_rows must be at least 2")
    started = time.monotonic()
    stats = CompactionStats()
    with _exclusive(location) as held:
        if not held:
            stats.skipped = "another compaction of this lake is running"
            return stats
        settle(location.roots)  # files replaced longer ago than the grace go now
        conn = duckdb.connect(":memory:")
        try:
            conn.execute("SET TimeZone = 'UTC'")
            if threads is not None:
                conn.execute(f"SET threads = {int(threads)}")
            compactor = _Compactor(conn, target_rows, stats)
            hot = _partitions(location, location.hot)
            for done, files in enumerate(hot.values(), start=1):
                compactor.partition(files)
                if progress is not None:
                    progress(done, len(hot))
            if location.cold is not None and cold_after_days is not None:
                cutoff = (today or datetime.now(UTC).date()) - timedelta(days=cold_after_days)
                _tier(compactor, location, location.cold, cutoff)
        finally:
            conn.close()
    stats.seconds = time.monotonic() - started
    return stats


def _tier(compactor: _Compactor, location: LakeLocation, cold: str, cutoff: date) -> None:
    """Move every hot partition dated before ``cutoff`` to the cold root, then compact
    each cold partition that received files (merging them into what it held)."""
    stats = compactor.stats
    old = {
        key: files
        for key, files in _partitions(location, location.hot).items()
        if (dated := _date(key[1])) is not None and dated < cutoff
    }
    for (game, day), files in old.items():
        _move(files, cold, stats)
        stats.partitions_moved += 1
        stats.touched.append(f"{game}/{day}")
    if old and not is_url(location.hot):
        settle(location.roots)  # forget the moved partitions' commits, then their folders
        for game, day in old:
            folder = Path(partition_path(location.hot, "events", game, day))
            for empty in (folder / COMMITS, folder):
                with contextlib.suppress(OSError):
                    empty.rmdir()
    in_cold = _partitions(location, cold)
    for key, files in old.items():
        if key in in_cold:
            compactor.partition(in_cold[key], include=tuple(f.name for f in files))


def compact_from_settings(settings: Settings, **overrides: Any) -> CompactionStats:
    """:func:`compact_lake` with the lake location and options the settings name."""
    cold_after_days = settings.lake_cold_after_days
    options: dict[str, Any] = {
        "target_rows": settings.lake_compact_target_rows,
        # Negative: never tier. Tiering also needs a cold root (lake_cold_url).
        "cold_after_days": None if cold_after_days < 0 else cold_after_days,
    }
    options.update(overrides)
    return compact_lake(LakeLocation.of(settings), **options)


async def compaction_tick(settings: Settings) -> CompactionStats | None:
    """One compaction run off the event loop, for a timer in ``serve``; never raises."""
    try:
        stats = await asyncio.to_thread(compact_from_settings, settings, threads=1)
    except Exception:
        log.exception("lake compaction failed; will try again")
        return None
    if stats.partitions or stats.files_moved:
        log.info(
            "lake compacted",
            partitions=stats.partitions,
            files_removed=stats.files_removed,
            files_written=stats.files_written,
            duplicates_removed=stats.duplicates_removed,
            files_moved=stats.files_moved,
            seconds=round(stats.seconds, 3),
        )
    return stats


class _Compactor:
    def __init__(self, conn: duckdb.DuckDBPyConnection, target_rows: int, stats: CompactionStats):
        self.conn = conn
        self.target_rows = target_rows
        self.small_rows = max(1, target_rows // 2)
        self.stats = stats

    def partition(self, files: list[LakeFile], include: tuple[str, ...] = ()) -> None:
        """Compact one partition's small files (and the files named in ``include``).

        Nothing is done to a partition that holds only compacted files, at most one of
        them small, unless ``include`` names files to merge into it (files just moved in).
        """
        if not files:
            return
        if (
            len(files) == 1
            and files[0].name.startswith(COMPACT_PREFIX)
            and files[0].name not in include
        ):
            return  # the common case for old partitions: no footer to read
        fs, _ = filesystem(files[0].root)
        rows = _row_counts(fs, files)
        small = [f for f in files if rows[f.name] < self.small_rows or f.name in include]
        small.sort(key=lambda f: f.name)
        if not (
            len(small) >= 2
            or any(f.name.startswith(ARCHIVE_PREFIX) for f in small)
            or (include and len(files) > len(include))
        ):
            return
        current = {f.name: f for f in files}
        rewritten = False
        for batch in self._batches(small, rows):
            batch = [f for f in batch if f.name in current]  # not rewritten by a batch before
            if not batch:
                continue
            written = self._rewrite(fs, batch, current, rows)
            if written is None:
                continue
            for f in written:
                current[f.name] = f
            rewritten = True
        if rewritten:
            self.stats.partitions += 1
            self.stats.touched.append(f"{files[0].game}/{files[0].date}")

    def _batches(self, small: list[LakeFile], rows: dict[str, int]) -> Iterator[list[LakeFile]]:
        batch: list[LakeFile] = []
        total = 0
        for f in small:
            if batch and total + rows[f.name] > self.target_rows:
                yield batch
                batch, total = [], 0
            batch.append(f)
            total += rows[f.name]
        if batch:
            yield batch

    def _rewrite(
        self,
        fs: pafs.FileSystem,
        batch: list[LakeFile],
        current: dict[str, LakeFile],
        rows: dict[str, int],
    ) -> list[LakeFile] | None:
        table = _read(fs, batch)
        batch, table, grew = self._with_sharing(fs, batch, table, current)
        if len(batch) == 1 and batch[0].name.startswith(COMPACT_PREFIX) and not grew:
            return None  # already compacted, and no copy of its events elsewhere
        kept = self._first_copies(table)
        written: list[LakeFile] = []
        like = batch[0]
        commit_id = new_commit_id()
        for start in range(0, max(kept.num_rows, 1), self.target_rows):
            piece = kept.slice(start, self.target_rows)
            if piece.num_rows == 0:
                break
            name = rewrite_name(commit_id, len(written))
            written.append(
                write_table(
                    like.root,
                    "events",
                    like.game,
                    like.date,
                    name,
                    piece,
                    row_group_size=ROW_GROUP_ROWS,
                )
            )
            rows[name] = piece.num_rows
        commit(like.root, "events", like.game, like.date, commit_id, written, batch)
        for f in batch:
            current.pop(f.name, None)
        stats = self.stats
        stats.files_removed += len(batch)
        stats.files_written += len(written)
        stats.rows_read += table.num_rows
        stats.rows_written += kept.num_rows
        stats.duplicates_removed += table.num_rows - kept.num_rows
        return written

    def _with_sharing(
        self,
        fs: pafs.FileSystem,
        batch: list[LakeFile],
        table: pa.Table,
        current: dict[str, LakeFile],
    ) -> tuple[list[LakeFile], pa.Table, bool]:
        """The batch grown by every other file holding a copy of one of its events (so the
        first-received copy is chosen among all copies in the partition), its rows, and
        whether it grew."""
        conn = self.conn
        grew = False
        while others := [f for f in current.values() if f not in batch]:
            conn.register("batch_rows", table)
            conn.register("other_keys", _read_keys(fs, others))
            try:
                sharing = conn.execute(
                    "SELECT DISTINCT o.file FROM other_keys o "
                    "JOIN batch_rows b USING (player_id, event_id)"
                ).fetchall()
            finally:
                conn.unregister("batch_rows")
                conn.unregister("other_keys")
            if not sharing:
                break
            extra = [others[int(index)] for (index,) in sharing]
            batch = batch + extra
            table = pa.concat_tables([table, _read(fs, extra)])
            grew = True
        return batch, table, grew

    def _first_copies(self, table: pa.Table) -> pa.Table:
        """Each ``(player_id, event_id)`` of ``table`` once, the first received, sorted."""
        self.conn.register("batch_rows", table)
        try:
            kept = self.conn.sql(
                f"""
                SELECT {EVENT_COLUMNS} FROM (
                    SELECT *, row_number() OVER (
                        PARTITION BY player_id, event_id {FIRST_RECEIVED}) AS copy
                    FROM batch_rows
                ) WHERE copy = 1
                ORDER BY player_id, ts, event_id
                """
            ).to_arrow_table()
        finally:
            self.conn.unregister("batch_rows")
        return kept.cast(EVENTS_SCHEMA)


def _partitions(location: LakeLocation, root: str) -> dict[tuple[str, str], list[LakeFile]]:
    """The files readers see under ``root``, by partition (commits in any root count)."""
    found: dict[tuple[str, str], list[LakeFile]] = defaultdict(list)
    for f in lake_files(location.roots):
        if f.root == root:
            found[(f.game, f.date)].append(f)
    return dict(sorted(found.items()))


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _fs_path(f: LakeFile) -> str:
    return f.fs_path


def _num_rows(fs: pafs.FileSystem, f: LakeFile) -> int:
    with fs.open_input_file(_fs_path(f)) as handle:
        return int(pq.read_metadata(handle).num_rows)


def _row_counts(fs: pafs.FileSystem, files: list[LakeFile]) -> dict[str, int]:
    """Rows of each file, from the footers (read side by side on object stores)."""
    if len(files) < 4 or not is_url(files[0].root):
        return {f.name: _num_rows(fs, f) for f in files}
    with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
        counts = pool.map(lambda f: _num_rows(fs, f), files)
        return {f.name: n for f, n in zip(files, counts, strict=True)}


def _read(fs: pafs.FileSystem, files: list[LakeFile]) -> pa.Table:
    tables = []
    for f in files:
        with fs.open_input_file(_fs_path(f)) as handle:
            table = pq.read_table(handle)
        columns = [
            table.column(name).cast(kind)
            if name in table.column_names
            else pa.nulls(table.num_rows, kind)
            for name, kind in zip(EVENTS_SCHEMA.names, EVENTS_SCHEMA.types, strict=True)
        ]
        tables.append(pa.table(columns, schema=EVENTS_SCHEMA))
    return pa.concat_tables(tables)


def _read_keys(fs: pafs.FileSystem, files: list[LakeFile]) -> pa.Table:
    tables = []
    for index, f in enumerate(files):
        with fs.open_input_file(_fs_path(f)) as handle:
            keys = pq.read_table(handle, columns=["player_id", "event_id"])
        tables.append(keys.append_column("file", pa.array([index] * keys.num_rows, pa.int32())))
    return pa.concat_tables(tables)


def _move(files: list[LakeFile], cold_root: str, stats: CompactionStats) -> None:
    """Copy a partition's files to the cold root and commit them there, the commit
    replacing the hot files (deleted at once on disk, after the grace on object stores)."""
    first = files[0]
    commit_id = new_commit_id()
    copied = [copy_file(f, cold_root, rewrite_name(commit_id, i)) for i, f in enumerate(files)]
    commit(cold_root, "events", first.game, first.date, commit_id, copied, files)
    stats.files_moved += len(files)
    log.debug("partition moved to the cold tier", root=join(cold_root), files=len(files))


@contextlib.contextmanager
def _exclusive(location: LakeLocation, *, wait: bool = False) -> Iterator[bool]:
    """Hold the lake's rewrite lock; yields False if another run has it.

    With ``wait``, waits for it instead (erasure and retention rewrite files too: they
    must not interleave with a compaction that read those files before). The lock is
    PostgreSQL's when the location names a database (every copy sharing the lake), else
    a lock file beside a local hot root; an object-store lake without a database has
    none (run one compaction at a time yourself).
    """
    if location.lock_url:
        from app.db.locks import lake_rewrite_lock

        with lake_rewrite_lock(location.lock_url, wait=wait) as held:
            yield held
        return
    if is_url(location.hot):
        yield True
        return
    _, base = filesystem(location.hot)
    Path(base).mkdir(parents=True, exist_ok=True)
    with open(Path(base) / ".compaction.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


lake_lock = _exclusive
"""The lake's rewrite lock, for the other rewriters of files (erasure, retention)."""
