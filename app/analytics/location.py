"""Where the lake lives: a hot root and an optional cold root, local or object store.

Each root holds the same layout, ``<root>/events/game=GAME/date=YYYY-MM-DD/*.parquet``.
The hot root is where the archive agent writes (``$PLAYERPULSE_DATA_DIR/lake`` by
default, or ``PLAYERPULSE_LAKE_URL``); compaction moves partitions older than
``PLAYERPULSE_LAKE_COLD_AFTER_DAYS`` to the cold root (``PLAYERPULSE_LAKE_COLD_URL``).
Either may be a directory or an ``s3://`` URL. Queries read both roots as one lake.

Files are listed, written and deleted through :mod:`app.lake_store` (pyarrow's
filesystems, with commit records so rewrites appear at once). DuckDB reads the listed
files: local ones with ``read_parquet``, object-store ones as pyarrow datasets handed to
DuckDB (nothing to download at run time, unlike DuckDB's ``httpfs`` extension).
"""

from __future__ import annotations

import datetime
import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from app.lake_layout import EVENT_COLUMNS, EVENTS_SCHEMA, FIRST_RECEIVED, typed_nulls
from app.lake_store import (
    LakeStoreError,
    StoredFile,
    filesystem,
    is_url,
    join,
    list_lake,
    visible_files,
)
from app.settings import Settings

__all__ = ["filesystem", "is_url", "join"]

LakeLocationError = LakeStoreError
LakeFile = StoredFile
"""One Parquet file of a partition (``kind`` events unless said)."""


@dataclass(frozen=True, slots=True)
class LakeLocation:
    """The lake's roots: ``hot`` (written by the archive) and optionally ``cold``."""

    hot: str
    cold: str | None = None
    lock_url: str | None = None
    """The PostgreSQL URL whose advisory lock serialises rewrites across copies (unset:
    a lock file beside a local hot root, and nothing for an object-store one)."""

    @classmethod
    def of(cls, settings: Settings) -> LakeLocation:
        """The location named by the settings."""
        return cls(settings.lake_root, settings.lake_cold_url or None, settings.database_url)

    @property
    def roots(self) -> tuple[str, ...]:
        """Hot first, then cold."""
        return (self.hot,) if self.cold is None else (self.hot, self.cold)

    @property
    def remote(self) -> bool:
        """True if any root is an object-store URL."""
        return any(is_url(root) for root in self.roots)


def lake_files(root: str | Sequence[str], kind: str = "events") -> Iterator[LakeFile]:
    """Every file readers see under the root(s) (committed, not replaced, not temporary)."""
    roots = (root,) if isinstance(root, str) else tuple(root)
    yield from visible_files(roots, kind)


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_names = itertools.count()


def files_source(
    conn: duckdb.DuckDBPyConnection,
    files: Sequence[StoredFile],
    schema: pa.Schema,
    hidden: Sequence[StoredFile] = (),
) -> str | None:
    """SQL selecting the schema's columns plus ``game`` and ``date`` from the files (of
    one kind), or None if there are none.

    Local files are read by DuckDB: by a glob over their root when the root holds no
    file readers must not see (``hidden``, from the same listing), else by name.
    Object-store files become a pyarrow dataset (one per root) registered on ``conn``,
    each file with its size and partition known from the listing, so a query opens no
    file twice and filters on game and date prune files.
    """
    selects = []
    quoted = ", ".join(f'"{name}"' for name in schema.names)
    local: dict[str, list[StoredFile]] = {}
    for f in files:
        if not is_url(f.root):
            local.setdefault(f.root, []).append(f)
    unclean = {f.root for f in hidden}
    for root, group in local.items():
        if root in unclean:
            names = [_local(f.path) for f in group]
        else:
            names = [join(_local(root), group[0].kind, "game=*", "date=*", "*.parquet")]
        listed = ", ".join(_sql_text(name) for name in names)
        selects.append(
            f"SELECT {quoted}, game, date "
            f"FROM read_parquet([{listed}], hive_partitioning = true, "
            "hive_types = {'game': VARCHAR, 'date': DATE}, union_by_name = true)"
        )
    remote: dict[str, list[StoredFile]] = {}
    for f in files:
        if is_url(f.root):
            remote.setdefault(f.root, []).append(f)
    for group in remote.values():
        name = f"lake_files_{next(_names)}"
        conn.register(name, arrow_dataset(group, schema))
        selects.append(f"SELECT {quoted}, game, date FROM {name}")
    if not selects:
        return None
    return " UNION ALL ".join(selects)


def _local(path: str) -> str:
    return str(Path(path.removeprefix("file://")).resolve())


PARTITION_FIELDS = [pa.field("game", pa.string()), pa.field("date", pa.date32())]


_FORMAT = ds.ParquetFileFormat(
    default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=True)
)
_FOOTERS_KEPT = 20_000
_fragments: OrderedDict[tuple[str, int], ds.ParquetFileFragment] = OrderedDict()
_fragments_lock = threading.Lock()


def _fragment(fs: pafs.FileSystem, f: StoredFile) -> ds.ParquetFileFragment:
    day = datetime.date.fromisoformat(f.date)
    where = (pc.field("game") == pa.scalar(f.game)) & (
        pc.field("date") == pa.scalar(day, pa.date32())
    )
    return _FORMAT.make_fragment(
        f.fs_path, filesystem=fs, partition_expression=where, file_size=f.size or None
    )


def arrow_dataset(files: Sequence[StoredFile], schema: pa.Schema) -> ds.Dataset:
    """The files (all under one root) as one pyarrow dataset, with ``game`` and ``date``
    from their partitions; columns missing from older files read as nulls.

    Each file's footer is read once per process, side by side (files are never
    overwritten: a name and size name one content), so a query reads only the column
    chunks it needs, and a filter on a sorted column skips row groups by statistics.
    """
    fs, _ = filesystem(files[0].root)
    keys = [(f.key, f.size) for f in files]
    with _fragments_lock:
        known = {key: _fragments[key] for key in keys if key in _fragments}
    missing = [
        (key, _fragment(fs, f)) for key, f in zip(keys, files, strict=True) if key not in known
    ]
    if missing:
        with ThreadPoolExecutor(max_workers=min(16, len(missing))) as pool:
            list(pool.map(lambda item: item[1].ensure_complete_metadata(), missing))
        with _fragments_lock:
            for key, fragment in missing:
                _fragments[key] = fragment
                known[key] = fragment
            while len(_fragments) > _FOOTERS_KEPT:
                _fragments.popitem(last=False)
    full = pa.schema([*schema, *PARTITION_FIELDS])
    return ds.FileSystemDataset([known[key] for key in keys], full, _FORMAT, fs)


EMPTY_ROWS = (
    f"SELECT {typed_nulls(EVENTS_SCHEMA)}, NULL::VARCHAR AS game, NULL::DATE AS date LIMIT 0"
)


def rows_source(location: LakeLocation, conn: duckdb.DuckDBPyConnection) -> str:
    """SQL for every archived row of every root (copies included), with ``game`` and ``date``."""
    listing = list_lake(location.roots)
    source = files_source(conn, listing.files, EVENTS_SCHEMA, listing.hidden)
    if source is None:
        return EMPTY_ROWS
    return f"SELECT {EVENT_COLUMNS}, game, date FROM ({source})"


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
    conn.execute(f"CREATE VIEW lake_rows AS {rows_source(location, conn)}")
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
