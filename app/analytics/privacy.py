"""The lake's side of privacy: rewrite files without a player; drop old partitions.

An erased player's rows are removed from the files themselves (hot and cold, events
and logged predictions), not filtered at read time: each file holding the player is
read, written again without the player's rows (its statistics and dictionaries then
come from the rows left) under a dot-name, and renamed over the original (one PUT on
object stores); a file left empty is deleted. Both run under the lake's rewrite lock,
so they never interleave with a compaction that read the same files.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.log import get_logger
from app.settings import Settings

from .compaction import ROW_GROUP_ROWS, compaction_tick, lake_lock
from .location import (
    LakeLocation,
    connect_lake,
    enable_object_store,
    filesystem,
    is_url,
    partition_entries,
)

log = get_logger(__name__)

KINDS = ("events", "predictions")


@dataclass(frozen=True, slots=True)
class PartitionFile:
    """One Parquet file of a partition, under any root and kind."""

    root: str
    kind: str
    game: str
    date: str
    path: str
    """The file's path on its filesystem (as :func:`filesystem` gives it)."""
    size: int


def partition_files(root: str, kind: str, game: str | None = None) -> list[PartitionFile]:
    """The Parquet files of ``root/kind/game=*/date=*/`` (of one game if named)."""
    return [
        PartitionFile(root, kind, entry.game, entry.date, entry.path, entry.size)
        for entry in partition_entries(root, kind)
        if game is None or entry.game == game
    ]


def _roots(location: LakeLocation, kind: str) -> tuple[str, ...]:
    # Logged predictions are never tiered: they live in the hot root only.
    return location.roots if kind == "events" else (location.hot,)


def _holding(files: list[PartitionFile], player_id: str) -> list[PartitionFile]:
    """The files with at least one row of the player (DuckDB prunes by row-group stats)."""
    if not files:
        return []
    conn = duckdb.connect(":memory:")
    try:
        if any(is_url(f.root) for f in files):
            enable_object_store(conn)
        by_name = {_duckdb_path(f): f for f in files}
        rows = conn.execute(
            "SELECT DISTINCT filename FROM read_parquet(?, filename = true, union_by_name = true) "
            "WHERE player_id = ?",
            [list(by_name), player_id],
        ).fetchall()
    finally:
        conn.close()
    return [by_name[name] for (name,) in rows if name in by_name]


def _duckdb_path(f: PartitionFile) -> str:
    if is_url(f.root):
        scheme = f.root.split("://", 1)[0]
        return f"{scheme}://{f.path}"
    return f.path


def _rewrite_without(f: PartitionFile, player_id: str) -> int:
    """Rewrite one file without the player's rows; return how many were removed."""
    fs, _ = filesystem(f.root)
    with fs.open_input_file(f.path) as handle:
        table = pq.read_table(handle)
    keep = pc.fill_null(pc.not_equal(table.column("player_id"), pa.scalar(player_id)), True)
    kept = table.filter(keep)
    removed = int(table.num_rows - kept.num_rows)
    if removed == 0:
        return 0
    if kept.num_rows == 0:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(f.path)
        return removed
    options = {"compression": "zstd", "row_group_size": ROW_GROUP_ROWS}
    if is_url(f.root):  # one PUT: the object is replaced whole
        with fs.open_output_stream(f.path) as out:
            pq.write_table(kept, out, **options)
    else:
        folder, name = f.path.rsplit("/", 1)
        temporary = f"{folder}/.{name}.erase.tmp"
        with fs.open_output_stream(temporary) as out:
            pq.write_table(kept, out, **options)
        fs.move(temporary, f.path)
    return removed


def erase_player(location: LakeLocation, game: str, player_id: str) -> dict[str, int]:
    """Remove the player's rows from every lake file; rows removed by store.

    Stores: ``lake_hot`` and ``lake_cold`` (events), ``predictions`` (logged predictions).
    """
    removed = {"lake_hot": 0, "lake_cold": 0, "predictions": 0}
    with lake_lock(location.hot, wait=True):
        for kind in KINDS:
            for root in _roots(location, kind):
                files = partition_files(root, kind, game)
                for f in _holding(files, player_id):
                    count = _rewrite_without(f, player_id)
                    if kind == "predictions":
                        removed["predictions"] += count
                    elif root == location.hot:
                        removed["lake_hot"] += count
                    else:
                        removed["lake_cold"] += count
    return removed


@dataclass(frozen=True, slots=True)
class ExpiredPartition:
    """A partition older than the retention."""

    root: str
    kind: str
    game: str
    date: str
    files: int
    bytes: int


def expired_partitions(
    location: LakeLocation, days: int, today: date | None = None
) -> list[ExpiredPartition]:
    """Partitions (hot and cold events, predictions, hop samples) dated more than ``days``
    ago."""
    cutoff = (today or datetime.now(UTC).date()) - timedelta(days=days)
    grouped: dict[tuple[str, str, str, str], list[PartitionFile]] = {}
    for kind in (*KINDS, "hops"):  # the hop sample holds no player: never erased, only aged
        for root in _roots(location, kind):
            for f in partition_files(root, kind):
                try:
                    day = date.fromisoformat(f.date)
                except ValueError:
                    continue
                if day < cutoff:
                    grouped.setdefault((root, kind, f.game, f.date), []).append(f)
    return [
        ExpiredPartition(root, kind, game, day, len(files), sum(f.size for f in files))
        for (root, kind, game, day), files in sorted(grouped.items())
    ]


def apply_retention(
    location: LakeLocation, days: int, *, today: date | None = None, dry_run: bool = False
) -> list[ExpiredPartition]:
    """Delete every partition older than ``days`` (unless ``dry_run``); return them."""
    if days < 0:
        raise ValueError("retention days must be 0 or more")
    with lake_lock(location.hot, wait=True):
        expired = expired_partitions(location, days, today)
        if dry_run:
            return expired
        for part in expired:
            fs, base = filesystem(part.root)
            folder = f"{base}/{part.kind}/game={part.game}/date={part.date}"
            if is_url(part.root):
                fs.delete_dir(folder)
            else:
                shutil.rmtree(Path(folder), ignore_errors=True)
    if expired:
        log.info("lake retention dropped partitions", partitions=len(expired), days=days)
    return expired


async def housekeeping_tick(settings: Settings) -> None:
    """One compaction run, then retention if set: the ``serve`` timer; never raises."""
    await compaction_tick(settings)
    if settings.lake_retention_days is not None:
        try:
            await asyncio.to_thread(
                apply_retention, LakeLocation.of(settings), settings.lake_retention_days
            )
        except Exception:
            log.exception("lake retention failed; will try again")


def _rows(cursor: Any, json_columns: tuple[str, ...]) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    out = []
    for row in cursor.fetchall():
        item = dict(zip(names, row, strict=True))
        for name in json_columns:
            if item.get(name) is not None:
                item[name] = msgspec.json.decode(item[name])
        out.append(item)
    return out


def lake_events(location: LakeLocation, game: str, player_id: str) -> list[dict[str, Any]]:
    """The player's archived events, each once (as the fold counts them), by time."""
    with connect_lake(location) as conn:
        cursor = conn.execute(
            "SELECT event_id, type, ts, props, received_at, device_ts FROM distinct_events "
            "WHERE game = ? AND player_id = ? ORDER BY ts, event_id",
            [game, player_id],
        )
        return _rows(cursor, ("props",))


def lake_predictions(location: LakeLocation, game: str, player_id: str) -> list[dict[str, Any]]:
    """The player's logged predictions, by time."""
    files = [f.path for f in partition_files(location.hot, "predictions", game)]
    if not files:
        return []
    conn = duckdb.connect(":memory:")
    try:
        conn.execute("SET TimeZone = 'UTC'")
        cursor = conn.execute(
            "SELECT model, version, shadow, ts, latency_us, outputs, features "
            "FROM read_parquet(?, union_by_name = true) WHERE player_id = ? ORDER BY ts",
            [files, player_id],
        )
        return _rows(cursor, ("outputs", "features"))
    finally:
        conn.close()
