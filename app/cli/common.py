"""What the commands share: settings and the features file (with clear errors),
durations, audited actions, progress bars."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from app.domain.features import FeatureSet
from app.log import configure_logging
from app.settings import Settings, SettingsError


def _settings(log_level: str | None = None) -> Settings:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_format, log_level or settings.log_level)
    return settings


def _features(settings: Settings) -> FeatureSet:
    """The features file, or a clear error naming what is wrong with it."""
    from app.domain.features import FeatureFileError, load_features

    try:
        return load_features(settings.features_path)
    except FeatureFileError as exc:
        raise click.ClickException(str(exc)) from None


def _duration(text: str | None, option: str) -> float | None:
    """Seconds of a duration such as 90d, 24h or 30m (None stays None)."""
    from app.domain.features import parse_window

    if text is None:
        return None
    try:
        return float(parse_window(text))
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: a positive integer followed by s, m, h or d, such as 90d",
            param_hint=option,
        ) from None


def _run_audited(
    settings: Settings,
    action: Any,
    *,
    what: str,
    game: str | None,
    target: str | Any,
    pool_size: int = 1,
) -> Any:
    """Run ``action(services)`` and record it in the audit trail (outcome ok, or the
    error); ``target`` may be a function of the result (the new key's id, say)."""
    from app.audit import os_actor
    from app.bootstrap import CommandServices, run_command
    from app.domain.audit import AuditEntry

    async def run(services: CommandServices) -> Any:
        try:
            result = await action(services)
        except Exception as exc:
            shown = target if isinstance(target, str) else ""
            await services.audit.record(
                AuditEntry(game, os_actor(), what, shown, f"error: {type(exc).__name__}")
            )
            raise
        entry_game, shown = game, target
        if not isinstance(target, str):
            entry_game, shown = target(result)
        await services.audit.record(AuditEntry(entry_game, os_actor(), what, shown, "ok"))
        return result

    return run_command(settings, run, pool_size=pool_size)


def _with_brokers(settings: Settings) -> Settings:
    """The settings, with the embedded broker's address if one runs on the data dir."""
    if settings.kafka_brokers is not None:
        return settings
    from dataclasses import replace

    from app.backup import running_embedded_broker

    brokers = running_embedded_broker(settings.data_dir)
    return settings if brokers is None else replace(settings, kafka_brokers=brokers)


def _record_done(settings: Settings, what: str, target: str) -> None:
    """Record an action the command line completed outside the services (a backup)."""
    from app.audit import os_actor
    from app.bootstrap import run_command
    from app.domain.audit import AuditEntry

    entry = AuditEntry(None, os_actor(), what, target, "ok")

    async def record(services: Any) -> None:
        await services.audit.record(entry)

    run_command(settings, record)


_FORMATS = click.Choice(["table", "csv", "json"])


_DAY = click.DateTime(formats=["%Y-%m-%d"])


INPUT_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
"""A file the command reads (it must exist)."""


OUTPUT_FILE = click.Path(dir_okay=False, path_type=Path)
"""A file the command writes."""


@contextmanager
def _progress(description: str) -> Iterator[Any]:
    """A progress bar on stderr; yields ``advance(done, total)``."""
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


@contextmanager
def _lake_errors() -> Iterator[None]:
    import duckdb

    from app.analytics.location import LakeLocationError

    try:
        yield
    except (LakeLocationError, duckdb.Error, OSError) as exc:
        raise click.ClickException(str(exc)) from None
