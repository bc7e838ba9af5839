"""The lake's storage: local directories or S3, and atomic rewrites on both.

A lake root is a directory (``/srv/lake``, ``file:///srv/lake``) or an object-store URL
(``s3://bucket/prefix``, credentials and endpoint from the ``AWS_*`` variables, see
:class:`app.settings.ObjectStoreSettings`). Files are ``<root>/<kind>/game=G/date=D/*.parquet``.

Writes never overwrite: every file gets a new unique name, so two copies of ``serve``
sharing a lake never clobber each other's files. A new file appears whole (a rename of a
temporary file on disk; a single PUT, or a completed multipart upload, on S3).

A rewrite (compaction, tiering, erasure) replaces files by others. S3 has no rename, and
a reader must see either all the old files or all the new ones, so a rewrite is a
*commit*: the new files are written under names carrying the commit id
(``compact-c<ID>-<n>.parquet``), invisible until ``_commits/<ID>.json`` (one small PUT)
appears in the partition; that record also names the files it replaces, which readers
stop listing from then on. The replaced files are deleted only after
:data:`DELETE_GRACE_S` on object stores (a query that listed them just before the
commit can still read them), at once on local disk (one machine, as before) and at once
for erasures (the erased player's rows must go). Once they are gone the record is
*settled*: ``_commits/<ID>.json`` becomes an empty ``_commits/<ID>.done``, kept as long
as a file of that commit is.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from app.settings import ObjectStoreSettings

COMMITS = "_commits"
REWRITE_PREFIX = "compact-c"
"""Files written by a commit: visible only once the commit record exists."""
DELETE_GRACE_S = 300.0
"""How long files replaced on an object store stay readable (longer than any query)."""


class LakeStoreError(RuntimeError):
    """A lake root cannot be used; the message says which and why (never a secret)."""


def is_url(root: str) -> bool:
    """An object-store URL such as ``s3://bucket/lake`` (not a local path)."""
    return "://" in root and not root.startswith("file://")


def join(root: str, *parts: str) -> str:
    """``root/part/...`` for a local path or a URL."""
    return "/".join([root.rstrip("/"), *parts])


def canonical(root: str) -> str:
    """One spelling per root: an absolute path, or the URL without a trailing slash."""
    if is_url(root):
        return root.rstrip("/")
    return str(Path(root.removeprefix("file://")).resolve())


_settings_lock = threading.Lock()
_object_store: ObjectStoreSettings | None = None


def configure(settings: ObjectStoreSettings | None) -> None:
    """Use these S3 settings from now on (default: read once from the environment)."""
    global _object_store
    with _settings_lock:
        _object_store = settings
    _s3.cache_clear()


def _store_settings() -> ObjectStoreSettings:
    global _object_store
    with _settings_lock:
        if _object_store is None:
            _object_store = ObjectStoreSettings.from_env()
        return _object_store


@functools.lru_cache(maxsize=8)
def _s3(settings: ObjectStoreSettings) -> pafs.S3FileSystem:
    options: dict[str, Any] = {"connect_timeout": 10, "request_timeout": 60}
    if settings.region or settings.endpoint_url:  # else the SDK's chain (profile, ...)
        options["region"] = settings.region or "us-east-1"
    if settings.access_key and settings.secret_key:
        options.update(
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            session_token=settings.session_token,
        )
    if settings.endpoint_url:
        scheme, _, host = settings.endpoint_url.rpartition("://")
        options.update(
            endpoint_override=host.rstrip("/"),
            scheme=scheme or "https",
            force_virtual_addressing=False,  # path-style, as MinIO and SeaweedFS want
        )
    return pafs.S3FileSystem(**options)


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a root and the root's path within it."""
    if is_url(root):
        scheme, _, rest = root.partition("://")
        if scheme != "s3":
            raise LakeStoreError(f"lake root {root!r}: only s3:// URLs are supported")
        path = rest.strip("/")
        if not path:
            raise LakeStoreError(f"lake root {root!r}: name a bucket, s3://bucket/prefix")
        try:
            return _s3(_store_settings()), path
        except Exception as exc:  # pyarrow raises several kinds
            raise LakeStoreError(f"lake root {root!r}: {exc}") from None
    return pafs.LocalFileSystem(), canonical(root)


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One Parquet file of a partition."""

    root: str
    game: str
    date: str
    name: str
    size: int
    kind: str = "events"

    @property
    def path(self) -> str:
        """The file's path or URL."""
        return join(self.root, self.kind, f"game={self.game}", f"date={self.date}", self.name)

    @property
    def fs_path(self) -> str:
        """The file's path on its filesystem (as :func:`filesystem` gives it)."""
        _, base = filesystem(self.root)
        return f"{base}/{self.kind}/game={self.game}/date={self.date}/{self.name}"

    @property
    def key(self) -> str:
        """The file's identity in commit records."""
        return join(
            canonical(self.root), self.kind, f"game={self.game}", f"date={self.date}", self.name
        )

    @property
    def commit_id(self) -> str | None:
        """The commit that wrote the file, if a commit did."""
        if not self.name.startswith(REWRITE_PREFIX):
            return None
        return self.name[len(REWRITE_PREFIX) :].rsplit("-", 1)[0]


class CommitRecord(msgspec.Struct):
    """``_commits/<id>.json``: what one rewrite of a partition added and removed."""

    added: list[str]
    """Names of the files written, in this partition."""
    removed: list[str]
    """Keys (:attr:`StoredFile.key`) of the files replaced, in any root."""
    at: float
    """When committed (seconds since the epoch)."""
    grace_s: float


@dataclass(slots=True)
class _Scan:
    files: list[StoredFile]
    pending: dict[str, str]
    """Commit id -> the fs path of its ``.json`` record."""
    settled: dict[str, str]
    """Commit id -> the fs path of its ``.done`` record."""


def _scan(root: str, kind: str) -> _Scan:
    """Everything under ``root/kind``, one recursive listing."""
    fs, base = filesystem(root)
    top = f"{base}/{kind}"
    scan = _Scan([], {}, {})
    selector = pafs.FileSelector(top, recursive=True, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        parts = info.path[len(top) + 1 :].split("/")
        if len(parts) < 3 or not parts[0].startswith("game=") or not parts[1].startswith("date="):
            continue
        name = parts[-1]
        if len(parts) == 4 and parts[2] == COMMITS:
            if name.endswith(".json"):
                scan.pending[name[:-5]] = info.path
            elif name.endswith(".done"):
                scan.settled[name[:-5]] = info.path
        elif len(parts) == 3 and name.endswith(".parquet") and not name.startswith("."):
            scan.files.append(
                StoredFile(root, parts[0][5:], parts[1][5:], name, info.size or 0, kind)
            )
    return scan


_decode_commit = msgspec.json.Decoder(CommitRecord).decode


def _read_commit(fs: pafs.FileSystem, path: str) -> CommitRecord:
    with fs.open_input_stream(path) as handle:
        return _decode_commit(handle.read())


@dataclass(slots=True)
class LakeListing:
    """The files readers see under some roots, and the commits behind them."""

    files: list[StoredFile]
    pending: dict[str, tuple[str, str, CommitRecord]]
    """Commit id -> (root, record path, record) of commits whose replaced files remain."""
    settled: dict[str, tuple[str, str]]
    """Commit id -> (root, record path) of settled commits."""
    hidden: list[StoredFile]
    """Files on storage that readers do not see (replaced, or not committed yet)."""


def list_lake(roots: Sequence[str], kind: str = "events", *, attempts: int = 3) -> LakeListing:
    """The committed, not replaced, files of ``kind`` under every root (hot first)."""
    for attempt in range(attempts):
        scans = [(root, _scan(root, kind)) for root in roots]
        pending_paths = [(root, cid, path) for root, s in scans for cid, path in s.pending.items()]
        try:
            records = _read_commits(pending_paths)
        except FileNotFoundError:
            if attempt + 1 == attempts:
                raise
            continue  # settled while we listed: list again
        removed = {key for _, _, record in records.values() for key in record.removed}
        known = set(records) | {cid for _, s in scans for cid in s.settled}
        visible, hidden = [], []
        for _, scan in scans:
            for f in scan.files:
                cid = f.commit_id
                if f.key in removed or (cid is not None and cid not in known):
                    hidden.append(f)
                else:
                    visible.append(f)
        settled = {cid: (root, path) for root, s in scans for cid, path in s.settled.items()}
        return LakeListing(visible, records, settled, hidden)
    raise AssertionError("unreachable")


def _read_commits(
    paths: list[tuple[str, str, str]],
) -> dict[str, tuple[str, str, CommitRecord]]:
    if not paths:
        return {}

    def read(item: tuple[str, str, str]) -> tuple[str, tuple[str, str, CommitRecord]]:
        root, cid, path = item
        fs, _ = filesystem(root)
        return cid, (root, path, _read_commit(fs, path))

    if len(paths) == 1:
        return dict([read(paths[0])])
    with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
        return dict(pool.map(read, paths))


def visible_files(roots: Sequence[str], kind: str = "events") -> list[StoredFile]:
    """The files of ``kind`` readers see under the roots."""
    return list_lake(roots, kind).files


def new_commit_id() -> str:
    """A unique, time-ordered commit id."""
    return f"{time.time_ns() // 1000}-{uuid.uuid4().hex[:12]}"


def rewrite_name(commit_id: str, index: int) -> str:
    """The name of the ``index``-th file written by a commit."""
    return f"{REWRITE_PREFIX}{commit_id}-{index}.parquet"


def partition_path(root: str, kind: str, game: str, date: str) -> str:
    """The partition's folder on its filesystem."""
    _, base = filesystem(root)
    return f"{base}/{kind}/game={game}/date={date}"


def write_table(
    root: str, kind: str, game: str, date: str, name: str, table: pa.Table, **options: Any
) -> StoredFile:
    """Write ``table`` as a new Parquet file that appears whole; never overwrites."""
    fs, _ = filesystem(root)
    folder = partition_path(root, kind, game, date)
    final = f"{folder}/{name}"
    options.setdefault("compression", "zstd")
    if is_url(root):  # one PUT (or one completed multipart upload): appears whole
        with fs.open_output_stream(final) as out:
            pq.write_table(table, out, **options)
    else:
        Path(folder).mkdir(parents=True, exist_ok=True)
        temporary = f"{folder}/.{name}.tmp"
        pq.write_table(table, temporary, **options)
        fs.move(temporary, final)
    size = fs.get_file_info(final).size or 0
    return StoredFile(root, game, date, name, size, kind)


def copy_file(source: StoredFile, root: str, name: str) -> StoredFile:
    """Copy a file into the same partition of another root, appearing whole."""
    source_fs, _ = filesystem(source.root)
    fs, _ = filesystem(root)
    folder = partition_path(root, source.kind, source.game, source.date)
    final = f"{folder}/{name}"
    if is_url(root):
        pafs.copy_files(
            source.fs_path, final, source_filesystem=source_fs, destination_filesystem=fs
        )
    else:
        Path(folder).mkdir(parents=True, exist_ok=True)
        temporary = f"{folder}/.{name}.tmp"
        pafs.copy_files(
            source.fs_path, temporary, source_filesystem=source_fs, destination_filesystem=fs
        )
        fs.move(temporary, final)
    return StoredFile(root, source.game, source.date, name, source.size, source.kind)


def grace_for(files: Iterable[StoredFile]) -> float:
    """How long replaced files stay: :data:`DELETE_GRACE_S` on object stores, else 0."""
    return DELETE_GRACE_S if any(is_url(f.root) for f in files) else 0.0


def commit(
    root: str,
    kind: str,
    game: str,
    date: str,
    commit_id: str,
    added: Sequence[StoredFile],
    removed: Sequence[StoredFile],
    *,
    grace_s: float | None = None,
) -> None:
    """Make ``added`` (written under ``commit_id``) visible and ``removed`` invisible, at
    once; delete ``removed`` now if ``grace_s`` is 0, else at a later :func:`settle`."""
    grace = grace_for(removed) if grace_s is None else grace_s
    fs, _ = filesystem(root)
    folder = f"{partition_path(root, kind, game, date)}/{COMMITS}"
    record = CommitRecord([f.name for f in added], [f.key for f in removed], time.time(), grace)
    body = msgspec.json.encode(record)
    path = f"{folder}/{commit_id}.json"
    if is_url(root):
        with fs.open_output_stream(path) as out:
            out.write(body)
    else:
        Path(folder).mkdir(parents=True, exist_ok=True)
        temporary = f"{folder}/.{commit_id}.tmp"
        Path(temporary).write_bytes(body)
        fs.move(temporary, path)
    if grace <= 0:
        _delete(removed)
        _settle_record(fs, root, path)


def _delete(files: Iterable[StoredFile]) -> None:
    for f in files:
        fs, _ = filesystem(f.root)
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(f.fs_path)


def _settle_record(fs: pafs.FileSystem, root: str, json_path: str) -> None:
    done = json_path[: -len(".json")] + ".done"
    with fs.open_output_stream(done) as out:
        out.write(b"")
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(json_path)


def _file_of(key: str, roots: Sequence[str], kind: str) -> StoredFile | None:
    for root in roots:
        prefix = join(canonical(root), kind) + "/"
        if key.startswith(prefix):
            game, date, name = key[len(prefix) :].split("/")
            return StoredFile(root, game[5:], date[5:], name, 0, kind)
    return None


def settle(roots: Sequence[str], kind: str = "events", *, now: float | None = None) -> int:
    """Delete the files replaced by commits older than their grace; forget commits none
    of whose files remain. Returns how many files were deleted. Run it under the lake's
    rewrite lock."""
    now = time.time() if now is None else now
    listing = list_lake(roots, kind)
    gone: set[str] = set()
    for cid, (root, path, record) in listing.pending.items():
        if record.at + record.grace_s > now:
            continue
        doomed = [f for key in record.removed if (f := _file_of(key, roots, kind))]
        _delete(doomed)
        gone.update(f.key for f in doomed)
        fs, _ = filesystem(root)
        _settle_record(fs, root, path)
        listing.settled[cid] = (root, path[: -len(".json")] + ".done")
    live = {f.commit_id for f in [*listing.files, *listing.hidden] if f.key not in gone}
    for cid, (root, path) in listing.settled.items():
        if cid not in live:
            fs, _ = filesystem(root)
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(path)
    return len(gone)
