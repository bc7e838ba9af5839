"""``playerpulse keys``: API keys."""

from __future__ import annotations

from typing import Any

import click

from app.cli.common import _duration, _run_audited, _settings
from app.domain.access import Role


@click.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--game", required=True, help="The game the key belongs to.")
@click.option(
    "--role",
    required=True,
    type=click.Choice([r.value for r in Role]),
    help="ingest: send events; read: profiles and predictions; admin: everything.",
)
@click.option("--name", default=None, help="What the key is for (shown in listings).")
@click.option("--expires", default=None, help="Lifetime, such as 90d; default: none.")
def keys_create(game: str, role: str, name: str | None, expires: str | None) -> None:
    """Print a new API key, alone on one line."""
    from app.bootstrap import CommandServices
    from app.keys import check_game

    try:
        check_game(game)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--game") from None
    expires_in = _duration(expires, "--expires")

    async def create(services: CommandServices) -> Any:
        return await services.keys.issue(game, Role(role), name=name, expires_in_s=expires_in)

    try:
        key, _stored = _run_audited(
            _settings("warning"),
            create,
            what="keys.create",
            game=game,
            target=lambda result: (game, f"key:{result[1].id}"),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    click.echo(key)


def _key_row(key: Any) -> dict[str, Any]:
    def when(value: Any) -> str | None:
        return None if value is None else value.isoformat(timespec="seconds")

    return {
        "id": key.id,
        "game": key.game,
        "role": key.role,
        "name": key.name,
        "created": when(key.created_at),
        "last_used": when(key.last_used_at),
        "expires": when(key.expires_at),
        "revoked": when(key.revoked_at),
        "replaced_by": key.replaced_by,
    }


@keys.command("list")
@click.option("--game", default=None, help="Only this game's keys.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def keys_list(game: str | None, fmt: str) -> None:
    """Every key: id, game, role, name, created, last used, expires, revoked (no secret)."""
    import msgspec

    from app.bootstrap import CommandServices, run_command

    async def fetch(services: CommandServices) -> list[dict[str, Any]]:
        return [_key_row(k) for k in await services.keys.list(game)]

    rows = run_command(_settings("warning"), fetch)
    if fmt == "json":
        click.echo(msgspec.json.encode(rows).decode())
        return
    from rich.console import Console
    from rich.table import Table

    columns = ("id", "game", "role", "name", "created", "last_used", "expires", "revoked")
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    Console(width=200).print(table)


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke KEY_ID now: every server refuses it within a second."""
    from app.bootstrap import CommandServices
    from app.keys import UnknownKey

    async def revoke(services: CommandServices) -> Any:
        return await services.keys.revoke(key_id)

    try:
        key = _run_audited(
            _settings("warning"),
            revoke,
            what="keys.revoke",
            game=None,
            target=lambda k: (k.game, f"key:{k.id}"),
        )
    except UnknownKey:
        raise click.ClickException(f"no key with id {key_id!r}") from None
    click.echo(f"revoked {key.id} ({key.game}, {key.role})")


@keys.command("rotate")
@click.argument("key_id")
@click.option(
    "--overlap", default="24h", show_default=True, help="How long the old key keeps working."
)
def keys_rotate(key_id: str, overlap: str) -> None:
    """Print a new key replacing KEY_ID; the old one is revoked after the overlap."""
    from app.bootstrap import CommandServices
    from app.keys import UnknownKey

    overlap_s = 0.0 if overlap in ("0", "0s") else _duration(overlap, "--overlap")
    assert overlap_s is not None

    async def rotate(services: CommandServices) -> Any:
        return await services.keys.rotate(key_id, overlap_s=overlap_s)

    try:
        key, new, old = _run_audited(
            _settings("warning"),
            rotate,
            what="keys.rotate",
            game=None,
            target=lambda r: (r[2].game, f"key:{r[2].id} -> key:{r[1].id}"),
        )
    except UnknownKey:
        raise click.ClickException(f"no key with id {key_id!r}") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(key)
    click.echo(
        f"{old.id} keeps working until {old.revoked_at.isoformat(timespec='seconds')}; "
        f"the new key's id is {new.id}",
        err=True,
    )
