"""The lake's side of privacy: rewrite files without a player; drop old partitions.

An erased player's rows are removed from the files themselves (hot and cold, events
and logged predictions), not filtered at read time: each file holding the player is
read, written again without the player's rows (its statistics and dictionaries then
come from the rows left) under a new name, and committed in place of the original
(:mod:`app.lake_store`), which is deleted at once (no grace period: the rows must go);
a file left empty is only removed. Both run under the lake's rewrite lock, so they
never interleave with a compaction that read the same files.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.lake_layout import PREDICTIONS_SCHEMA
from app.lake_store import (
    StoredFile,
    commit,
    filesystem,
    is_url,
    list_lake,
    new_commit_id,
    rewrite_name,
    visible_files,
    write_table,
)
from app.log import get_logger
from app.settings import Settings

from .compaction import ROW_GROUP_ROWS, compaction_tick, lake_lock
from .location import LakeLocation, connect_lake, files_source

log = get_logger(__name__)

KINDS = ("events", "predictions", "segment_changes")

PartitionFile = StoredFile
"""One Parquet file of a partition, under any root and kind."""


def partition_files(
    roots: str | tuple[str, ...], kind: str, game: str | None = None
) -> list[StoredFile]:
    """The Parquet files readers see under ``root/kind/game=*/date=*/`` (of one game if
    named); commits in any of ``roots`` count."""
    listed = (roots,) if isinstance(roots, str) else roots
    return [f for f in visible_files(listed, kind) if game is None or f.game == game]


def _roots(location: LakeLocation, kind: str) -> tuple[str, ...]:
    # Logged predictions are never tiered: they live in the hot root only.
    return location.roots if kind == "events" else (location.hot,)


def _holds(f: StoredFile, player_id: str) -> bool:
    """Whether the file has a row of the player (row groups skipped by their statistics)."""
    fs, _ = filesystem(f.root)
    with fs.open_input_file(f.fs_path) as handle:
        reader = pq.ParquetFile(handle)
        meta = reader.metadata
        column = meta.schema.names.index("player_id")
        for group in range(meta.num_row_groups):
            stats = meta.row_group(group).column(column).statistics
            if (
                stats is not None
                and stats.has_min_max
                and not (stats.min <= player_id <= stats.max)
            ):
                continue
            players = reader.read_row_group(group, columns=["player_id"]).column(0)
            if pc.any(pc.equal(players, player_id)).as_py():
                return True
    return False


def _holding(files: list[StoredFile], player_id: str) -> list[StoredFile]:
    """The files with at least one row of the player."""
    if len(files) < 4 or not any(is_url(f.root) for f in files):
        return [f for f in files if _holds(f, player_id)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(lambda f: _holds(f, player_id), files))
    return [f for f, held in zip(files, found, strict=True) if held]


def _rewrite_without(f: StoredFile, player_id: str) -> int:
    """Replace one file by a copy without the player's rows; return how many went."""
    fs, _ = filesystem(f.root)
    with fs.open_input_file(f.fs_path) as handle:
        table = pq.read_table(handle)
    keep = pc.fill_null(pc.not_equal(table.column("player_id"), pa.scalar(player_id)), True)
    kept = table.filter(keep)
    removed = int(table.num_rows - kept.num_rows)
    if removed == 0:
        return 0
    commit_id = new_commit_id()
    added = []
    if kept.num_rows:
        name = rewrite_name(commit_id, 0)
        added.append(
            write_table(f.root, f.kind, f.game, f.date, name, kept, row_group_size=ROW_GROUP_ROWS)
        )
    commit(f.root, f.kind, f.game, f.date, commit_id, added, [f], grace_s=0)
    return removed


def erase_player(location: LakeLocation, game: str, player_id: str) -> dict[str, int]:
    """Remove the player's rows from every lake file; rows removed by store.

    Stores: ``lake_hot`` and ``lake_cold`` (events), ``predictions`` (logged predictions),
    ``segments`` (segment transitions).
    """
    removed = {"lake_hot": 0, "lake_cold": 0, "predictions": 0, "segments": 0}
    with lake_lock(location, wait=True):
        for kind in KINDS:
            roots = _roots(location, kind)
            for root in roots:
                files = [f for f in partition_files(roots, kind, game) if f.root == root]
                for f in _holding(files, player_id):
                    count = _rewrite_without(f, player_id)
                    if kind == "predictions":
                        removed["predictions"] += count
                    elif kind == "segment_changes":
                        removed["segments"] += count
                    elif root == location.hot:
                        removed["lake_hot"] += count
                    else:
                        removed["lake_cold"] += count
            # Files replaced by a rewrite but kept for readers' grace period hold copies
            # of rows that live on elsewhere: the player's go now, grace or not.
            hidden = [f for f in list_lake(roots, kind).hidden if f.game == game]
            for f in _holding(hidden, player_id):
                fs, _ = filesystem(f.root)
                with contextlib.suppress(FileNotFoundError):
                    fs.delete_file(f.fs_path)
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
            for f in partition_files(_roots(location, kind), kind):
                if f.root != root:
                    continue
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
    with lake_lock(location, wait=True):
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
    files = partition_files(location.hot, "predictions", game)
    if not files:
        return []
    conn = duckdb.connect(":memory:")
    try:
        conn.execute("SET TimeZone = 'UTC'")
        source = files_source(conn, files, PREDICTIONS_SCHEMA)
        cursor = conn.execute(
            "SELECT model, version, shadow, ts, latency_us, outputs, features "
            f"FROM ({source}) WHERE player_id = ? ORDER BY ts",
            [player_id],
        )
        return _rows(cursor, ("outputs", "features"))
    finally:
        conn.close()
