"""``playerpulse lake``: compaction, tiering and retention of the lake."""

from __future__ import annotations

import sys
from typing import Any

import click

from app.cli.common import _lake_errors, _progress, _settings


@click.group()
def lake() -> None:
    """The Parquet lake: compaction, tiering and retention."""


@lake.command("compact")
@click.option(
    "--target-rows",
    type=click.IntRange(2),
    default=None,
    help="Rows per compacted file [setting lake_compact_target_rows, 1000000].",
)
@click.option(
    "--cold-after-days",
    type=click.IntRange(0),
    default=None,
    help="Move partitions older than this to the cold root [setting lake_cold_after_days].",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def compact(target_rows: int | None, cold_after_days: int | None, fmt: str) -> None:
    """Merge small files per partition (one copy of each event, zstd) and tier old ones."""
    import dataclasses

    import msgspec

    from app.analytics.compaction import compact_from_settings

    settings = _settings("warning")
    overrides: dict[str, Any] = {}
    if target_rows is not None:
        overrides["target_rows"] = target_rows
    if cold_after_days is not None:
        overrides["cold_after_days"] = cold_after_days
    with _lake_errors(), _progress("compacting partitions") as advance:
        stats = compact_from_settings(settings, progress=advance, **overrides)
    if fmt == "json":
        click.echo(msgspec.json.encode(dataclasses.asdict(stats)).decode())
    else:
        click.echo(stats.describe())
    if stats.skipped:
        sys.exit(75)  # EX_TEMPFAIL: try again later


@lake.command("retention")
@click.option(
    "--days",
    type=click.IntRange(0),
    default=None,
    help="Drop partitions dated more than this many days ago [PLAYERPULSE_LAKE_RETENTION_DAYS].",
)
@click.option("--dry-run", is_flag=True, help="Only report what would be dropped.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def retention(days: int | None, dry_run: bool, fmt: str) -> None:
    """Report the partitions (hot and cold) older than the retention, and drop them."""
    import dataclasses

    import msgspec

    from app.analytics.location import LakeLocation
    from app.analytics.privacy import apply_retention

    settings = _settings("warning")
    keep = days if days is not None else settings.lake_retention_days
    if keep is None:
        raise click.UsageError(
            "no retention: set PLAYERPULSE_LAKE_RETENTION_DAYS or pass --days "
            "(unset, the lake keeps everything)"
        )
    with _lake_errors():
        expired = apply_retention(LakeLocation.of(settings), keep, dry_run=dry_run)
    verb = "would drop" if dry_run else "dropped"
    if fmt == "json":
        rows = [dataclasses.asdict(part) for part in expired]
        click.echo(msgspec.json.encode({"dry_run": dry_run, "days": keep, "partitions": rows}))
        return
    for part in expired:
        click.echo(
            f"{verb} {part.kind} game={part.game} date={part.date} ({part.files} files, "
            f"{part.bytes} bytes) in {part.root}"
        )
    click.echo(f"{verb} {len(expired)} partitions older than {keep} days")
