"""Where the lake lives: a hot root and an optional cold root, local or object store.

Each root holds the same layout, ``<root>/events/game=GAME/date=YYYY-MM-DD/*.parquet``.
The hot root is where the archive agent writes (``$PLAYERPULSE_DATA_DIR/lake`` by
default, or ``PLAYERPULSE_LAKE_URL``); compaction moves partitions older than
``PLAYERPULSE_LAKE_COLD_AFTER_DAYS`` to the cold root (``PLAYERPULSE_LAKE_COLD_URL``),
another directory or an ``s3://`` URL. Queries read both roots as one lake.

Files are listed, copied and deleted with pyarrow's filesystems (local disk or S3);
DuckDB reads them, through its ``httpfs`` extension for object-store URLs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import duckdb
import pyarrow.fs as pafs

from app.lake_layout import EVENT_COLUMNS, EVENTS_SCHEMA, FIRST_RECEIVED, typed_nulls
from app.settings import Settings


class LakeLocationError(RuntimeError):
    """A lake root cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class LakeFile:
    """One Parquet file of a partition."""

    root: str
    game: str
    date: str
    name: str
    size: int

    @property
    def path(self) -> str:
        """The file's path or URL."""
        return join(self.root, "events", f"game={self.game}", f"date={self.date}", self.name)


@dataclass(frozen=True, slots=True)
class LakeLocation:
    """The lake's roots: ``hot`` (written by the archive) and optionally ``cold``."""

    hot: str
    cold: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> LakeLocation:
        """The location named by the settings."""
        return cls(settings.lake_url or str(settings.lake_dir), settings.lake_cold_url or None)

    @property
    def roots(self) -> tuple[str, ...]:
        """Hot first, then cold."""
        return (self.hot,) if self.cold is None else (self.hot, self.cold)

    @property
    def remote(self) -> bool:
        """True if any root is an object-store URL."""
        return any(is_url(root) for root in self.roots)


def is_url(root: str) -> bool:
    """An object-store URL such as ``s3://bucket/lake`` (not a local path)."""
    return "://" in root and not root.startswith("file://")


def join(root: str, *parts: str) -> str:
    """``root/part/...`` for a local path or a URL."""
    return "/".join([root.rstrip("/"), *parts])


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a root and the root's path within it."""
    if is_url(root):
        try:
            fs, path = pafs.FileSystem.from_uri(root)
        except Exception as exc:  # pyarrow raises several kinds for a bad URL
            raise LakeLocationError(f"lake root {root!r}: {exc}") from exc
        return fs, path.rstrip("/")
    local = root.removeprefix("file://")
    return pafs.LocalFileSystem(), str(Path(local).resolve())


class PartitionEntry(NamedTuple):
    """A Parquet file found in the partition layout: its partition, name, path and size."""

    game: str
    date: str
    name: str
    path: str
    """The file's path on its filesystem (as :func:`filesystem` gives it)."""
    size: int


def partition_entries(root: str, kind: str) -> Iterator[PartitionEntry]:
    """Every Parquet file under ``root/kind/game=*/date=*/`` (not temporary ones)."""
    fs, base = filesystem(root)
    top = f"{base}/{kind}"
    selector = pafs.FileSelector(top, recursive=True, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        parts = info.path[len(top) + 1 :].split("/")
        if (
            len(parts) != 3
            or not parts[0].startswith("game=")
            or not parts[1].startswith("date=")
            or not parts[2].endswith(".parquet")
            or parts[2].startswith(".")
        ):
            continue
        yield PartitionEntry(parts[0][5:], parts[1][5:], parts[2], info.path, info.size or 0)


def lake_files(root: str) -> Iterator[LakeFile]:
    """Every Parquet file under ``root/events`` in the partition layout (not temporary ones)."""
    for entry in partition_entries(root, "events"):
        yield LakeFile(root, entry.game, entry.date, entry.name, entry.size)


def has_files(root: str) -> bool:
    """True if the root holds at least one event file."""
    return next(lake_files(root), None) is not None


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def files_pattern(root: str) -> str:
    """The glob DuckDB reads a root's event files with."""
    base = root.removeprefix("file://")
    if not is_url(root):
        base = str(Path(base).resolve())
    return join(base, "events", "game=*", "date=*", "*.parquet")


EMPTY_ROWS = (
    f"SELECT {typed_nulls(EVENTS_SCHEMA)}, NULL::VARCHAR AS game, NULL::DATE AS date LIMIT 0"
)


def rows_source(location: LakeLocation) -> str:
    """SQL for every archived row of every root (copies included), with ``game`` and ``date``."""
    patterns = [files_pattern(root) for root in location.roots if has_files(root)]
    if not patterns:
        return EMPTY_ROWS
    listed = ", ".join(_sql_text(p) for p in patterns)
    return (
        f"SELECT {EVENT_COLUMNS}, game, date "
        f"FROM read_parquet([{listed}], hive_partitioning = true, "
        "hive_types = {'game': VARCHAR, 'date': DATE}, union_by_name = true)"
    )


def connect_lake(
    location: LakeLocation, *, threads: int | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB over every root of the lake, with three views.

    - ``lake_rows``: every archived row, copies included, plus ``game`` and ``date`` (the
      partition's UTC date of ``ts``). Cheapest to scan; right for questions that copies
      of an event cannot change (who was active when).
    - ``events``: each ``event_id`` of a game once, the first received (the contract's
      view, as ``playerpulse analytics query`` defines it).
    - ``distinct_events``: each ``(game, player_id, event_id)`` once, the first received:
      exactly the events the live fold counts.
    """
    conn = duckdb.connect(":memory:")
    conn.execute("SET TimeZone = 'UTC'")
    if threads is not None:
        conn.execute(f"SET threads = {int(threads)}")
    if location.remote:
        enable_object_store(conn)
    conn.execute(f"CREATE VIEW lake_rows AS {rows_source(location)}")
    conn.execute(
        """
        CREATE VIEW events AS
        SELECT * EXCLUDE (copy, date) FROM (
            SELECT *, row_number() OVER (
                PARTITION BY game, event_id ORDER BY received_at, player_id) AS copy
            FROM lake_rows
        ) WHERE copy = 1
        """
    )
    conn.execute(
        f"""
        CREATE VIEW distinct_events AS
        SELECT * EXCLUDE (copy) FROM (
            SELECT *, row_number() OVER (
                PARTITION BY game, player_id, event_id {FIRST_RECEIVED}) AS copy
            FROM lake_rows
        ) WHERE copy = 1
        """
    )
    return conn


def enable_object_store(conn: duckdb.DuckDBPyConnection) -> None:
    """Load DuckDB's httpfs and give it S3 credentials from the usual AWS_* variables."""
    try:
        conn.execute("LOAD httpfs")
    except duckdb.Error:
        try:
            conn.execute("INSTALL httpfs")
            conn.execute("LOAD httpfs")
        except duckdb.Error as exc:
            raise LakeLocationError(
                "an object-store lake needs DuckDB's httpfs extension, which could not be "
                f"loaded or installed: {exc}"
            ) from None
    options = {"TYPE": "s3"}
    env = os.environ
    for option, names in (
        ("KEY_ID", ("AWS_ACCESS_KEY_ID",)),
        ("SECRET", ("AWS_SECRET_ACCESS_KEY",)),
        ("SESSION_TOKEN", ("AWS_SESSION_TOKEN",)),
        ("REGION", ("AWS_REGION", "AWS_DEFAULT_REGION")),
    ):
        value = next((env[n] for n in names if env.get(n)), None)
        if value:
            options[option] = _sql_text(value)
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["ENDPOINT"] = _sql_text(endpoint.split("://", 1)[-1].rstrip("/"))
        options["URL_STYLE"] = "'path'"
        options["USE_SSL"] = "false" if endpoint.startswith("http://") else "true"
    body = ", ".join(f"{k} {v}" for k, v in options.items())
    conn.execute(f"CREATE OR REPLACE SECRET playerpulse_lake ({body})")
