"""``playerpulse replay`` and ``playerpulse failed-events``: the fold, rebuilt and inspected."""

from __future__ import annotations

import click

from app.cli.common import _features, _run_audited, _settings


@click.command()
def replay() -> None:
    """Rebuild every profile from the lake (stop the service first)."""
    from rich.progress import Progress

    from app.bootstrap import CommandServices
    from app.replay import ServiceRunning, replay_alone

    settings = _settings("warning")
    features = _features(settings)

    async def run(services: CommandServices) -> str:
        with Progress(transient=False) as bar:
            task = bar.add_task("rebuilding profiles", total=None)

            def advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            stats = await replay_alone(
                services.engine,
                features,
                services.location,
                dedup_horizon_s=settings.dedup_horizon,
                progress=advance,
            )
        return (
            f"rebuilt {stats.players} profiles from {stats.events} events in {stats.seconds:.1f}s"
        )

    try:
        click.echo(
            _run_audited(settings, run, what="replay", game=None, target="profiles", pool_size=2)
        )
    except ServiceRunning as exc:
        raise click.ClickException(str(exc)) from None


@click.command("failed-events")
@click.option("--game", default=None, help="Only this game's (default: every game's).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def failed_events(game: str | None, limit: int, fmt: str) -> None:
    """Events the fold could not apply, newest first, with the reason."""
    import msgspec

    from app.bootstrap import CommandServices, run_command

    async def fetch(services: CommandServices) -> list[dict[str, object]]:
        rows = await services.failed_events.recent(game, limit=limit)
        return [
            {
                "id": r.id,
                "game": r.game,
                "player_id": r.player_id,
                "event_id": r.event_id,
                "reason": r.reason,
                "failed_at": r.failed_at.isoformat(),
                "record": r.payload.decode(errors="replace"),
            }
            for r in rows
        ]

    rows = run_command(_settings("warning"), fetch)
    if fmt == "json":
        click.echo(msgspec.json.encode(rows).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "game", "player_id", "event_id", "failed_at", "reason")
    for row in rows:
        table.add_row(
            *(str(row[c]) for c in ("id", "game", "player_id", "event_id", "failed_at", "reason"))
        )
    Console().print(table)
