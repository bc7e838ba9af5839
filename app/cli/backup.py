"""``playerpulse backup``: backups that restore."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from app.cli.common import _record_done, _settings, _with_brokers

_BACKUP = click.Path(exists=True, file_okay=False, path_type=Path)
"""A backup directory to read."""


@click.group()
def backup() -> None:
    """Backups: the database snapshot, the features file, the lake, with checksums."""


def _backup_error(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@backup.command("create")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def backup_create(directory: Path) -> None:
    """Back up into DIRECTORY (the server may run; a later backup into the same
    directory copies only the lake files it does not hold yet)."""
    from app.backup import BackupError, create_backup
    from app.bootstrap import command_database

    settings = _settings("warning")
    try:
        with command_database(settings) as url:
            summary = create_backup(_with_brokers(settings), url, directory)
    except BackupError as exc:
        raise _backup_error(exc) from None

    _record_done(settings, "backup.create", str(directory.resolve()))
    rows = ", ".join(f"{t} {n}" for t, n in summary.tables.items() if n)
    click.echo(
        f"backup in {directory}: {summary.files} files, {summary.bytes} bytes "
        f"({summary.copied} lake files copied now); rows: {rows}"
    )


@backup.command("verify")
@click.argument("directory", type=_BACKUP)
def backup_verify(directory: Path) -> None:
    """Check every checksum, restore into a scratch PostgreSQL and compare row counts."""
    from app.backup import BackupError, verify_backup

    _settings("warning")
    try:
        summary = verify_backup(directory)
    except BackupError as exc:
        click.echo(f"backup {directory} is damaged: {exc}", err=True)
        sys.exit(1)
    rows = sum(summary.tables.values())
    click.echo(
        f"backup {directory} verified: {summary.files} files match their checksums, "
        f"{len(summary.tables)} tables restore with their {rows} rows"
    )


@backup.command("restore")
@click.argument("directory", type=_BACKUP)
def backup_restore(directory: Path) -> None:
    """Restore DIRECTORY into an empty data dir (or empty database), server stopped."""
    from app.backup import BackupError, restore_backup

    settings = _settings("warning")
    try:
        summary, notes = restore_backup(settings, directory)
    except BackupError as exc:
        raise _backup_error(exc) from None

    _record_done(settings, "backup.restore", str(directory.resolve()))
    click.echo(
        f"restored {directory} into {settings.data_dir}: {sum(summary.tables.values())} rows, "
        f"{summary.copied} lake files"
    )
    for note in notes:
        click.echo(note)
