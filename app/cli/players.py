"""``playerpulse players``: privacy requests."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from app.cli.common import _run_audited, _settings


@click.group()
def players() -> None:
    """Player privacy: erasure and export."""


def _with_privacy(action: Any, audit: tuple[str, str, str], *, profiles: bool = False) -> Any:
    """Run ``action(privacy)`` and record it (action, game, target) in the audit trail;
    with ``profiles``, the service can also read profiles."""
    from app.bootstrap import CommandServices

    async def run(services: CommandServices) -> Any:
        privacy = await services.privacy_with_profiles() if profiles else services.privacy
        return await action(privacy)

    what, game, target = audit
    return _run_audited(_settings("warning"), run, what=what, game=game, target=target, pool_size=2)


def _audited_player(game: str, player_id: str) -> str:
    """How the audit trail names a player: the pseudonym an erasure keeps, never the id
    (the trail is append-only, and an erasure must leave the id nowhere)."""
    from app.domain.privacy import player_key

    return f"player-sha256:{player_key(game, player_id)}"


@players.command("erase")
@click.option("--game", required=True)
@click.argument("player_id")
@click.option("--wait", "wait_s", type=float, default=0.0, help="Seconds to wait for done.")
def players_erase(game: str, player_id: str, wait_s: float) -> None:
    """Erase PLAYER_ID everywhere (carried out by `serve`); print the receipt as JSON."""
    import time

    import msgspec

    from app.privacy import receipt

    async def erase(privacy: Any) -> Any:
        erasure = await privacy.erase(game, player_id)
        deadline = time.monotonic() + wait_s
        while erasure.status != "done" and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            erasure = await privacy.erasure(game, erasure.id)
        return receipt(erasure, player_id)

    erased = _with_privacy(erase, ("players.erase", game, _audited_player(game, player_id)))
    click.echo(msgspec.json.encode(erased).decode())


@players.command("export")
@click.option("--game", required=True)
@click.argument("player_id")
def players_export(game: str, player_id: str) -> None:
    """Print everything held about PLAYER_ID as one JSON document."""

    async def export(privacy: Any) -> None:
        async for piece in privacy.export(game, player_id):
            sys.stdout.buffer.write(piece)
        sys.stdout.buffer.write(b"\n")

    _with_privacy(export, ("players.export", game, _audited_player(game, player_id)), profiles=True)


@players.command("reuse")
@click.option("--game", required=True)
@click.argument("player_id")
def players_reuse(game: str, player_id: str) -> None:
    """Lift the done erasure of PLAYER_ID: its events count again from now on."""
    from app.privacy import ErasurePending, NoErasure

    try:
        lifted = _with_privacy(
            lambda privacy: privacy.allow_reuse(game, player_id),
            ("players.reuse", game, _audited_player(game, player_id)),
        )
    except ErasurePending:
        raise click.ClickException("the player's erasure is still pending") from None
    except NoErasure:
        raise click.ClickException(f"no erasure in force for {player_id!r}") from None
    click.echo(f"lifted {lifted} erasure(s): {player_id} may be used again")
