"""``playerpulse audit``: the audit trail."""

from __future__ import annotations

import sys
from typing import Any

import click

from app.cli.common import _settings


@click.group()
def audit() -> None:
    """The audit trail of admin actions (API and command line), hash-chained."""


@audit.command("list")
@click.option("--game", default=None, help="Only this game's records.")
@click.option("--after", default=0, type=click.IntRange(min=0), help="Records after this seq.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def audit_list(game: str | None, after: int, limit: int, fmt: str) -> None:
    """Audit records, oldest first."""
    from dataclasses import asdict

    import msgspec

    from app.bootstrap import CommandServices, run_command

    async def fetch(services: CommandServices) -> list[dict[str, Any]]:
        records = await services.audit.list(game, after=after, limit=limit)
        return [asdict(r) | {"at": r.at.isoformat()} for r in records]

    rows = run_command(_settings("warning"), fetch)
    if fmt == "json":
        click.echo(msgspec.json.encode(rows).decode())
        return
    from rich.console import Console
    from rich.table import Table

    columns = ("seq", "at", "game", "actor", "action", "target", "outcome")
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    Console(width=200).print(table)


@audit.command("verify")
def audit_verify() -> None:
    """Check the hash chain; exit 1 naming the first record that does not hold."""
    from app.bootstrap import CommandServices, run_command

    async def verify(services: CommandServices) -> Any:
        return await services.audit.verify()

    checked, broken = run_command(_settings("warning"), verify)
    if broken is not None:
        click.echo(f"audit chain broken at record {broken.seq}: {broken.reason}", err=True)
        sys.exit(1)
    click.echo(f"audit chain intact: {checked} records")
