"""Privacy routes (admin): erase a player, read the receipt, allow an id again, export."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, delete, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.response import Stream
from litestar.status_codes import (
    HTTP_202_ACCEPTED,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
)

from app.domain.access import Principal, Role
from app.privacy import Eraser, ErasurePending, ErasureReceipt, NoErasure, PrivacyService, receipt

from .errors import ApiError
from .openapi import secured

_PLAYER_ID_MAX = 128


class ErasureStarted(msgspec.Struct):
    """An erasure in force for the player: its id and status."""

    erasure_id: str
    player_id: str
    status: str


class ReuseReply(msgspec.Struct):
    """The player id may be used again: the erasures lifted."""

    player_id: str
    erasures_lifted: int


def _check_player(player_id: str) -> None:
    if not 1 <= len(player_id) <= _PLAYER_ID_MAX:
        raise ApiError(400, "invalid player_id", {"player_id": "1..128 characters"})


async def erase_player(
    player_id: str, request: Request[Principal, Any, Any], privacy: PrivacyService, eraser: Eraser
) -> ErasureStarted:
    """Erase the player everywhere; a repeat returns the erasure already in force."""
    _check_player(player_id)
    erasure = await privacy.erase(request.user.game, player_id)
    eraser.wake.set()
    return ErasureStarted(erasure_id=erasure.id, player_id=player_id, status=erasure.status)


async def get_erasure(
    erasure_id: str, request: Request[Principal, Any, Any], privacy: PrivacyService
) -> ErasureReceipt:
    """The receipt: status and what each store reports."""
    erasure = await privacy.erasure(request.user.game, erasure_id)
    if erasure is None:
        raise ApiError(HTTP_404_NOT_FOUND, f"no erasure {erasure_id!r} in this game")
    return receipt(erasure)


async def allow_reuse(
    player_id: str, request: Request[Principal, Any, Any], privacy: PrivacyService
) -> ReuseReply:
    """Lift a done erasure: the player id's events count again from now on."""
    _check_player(player_id)
    try:
        lifted = await privacy.allow_reuse(request.user.game, player_id)
    except ErasurePending:
        raise ApiError(
            HTTP_409_CONFLICT, "the player's erasure is still pending: wait until it is done"
        ) from None
    except NoErasure:
        raise ApiError(
            HTTP_404_NOT_FOUND, f"no erasure in force for player {player_id!r}"
        ) from None
    return ReuseReply(player_id=player_id, erasures_lifted=lifted)


async def export_player(
    player_id: str, request: Request[Principal, Any, Any], privacy: PrivacyService
) -> Stream:
    """Everything held about the player, as one JSON document (streamed)."""
    _check_player(player_id)
    return Stream(
        privacy.export(request.user.game, player_id),
        media_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="player-export.json"'},
    )


def privacy_routes() -> list[HTTPRouteHandler]:
    """The privacy route handlers."""
    tags = {"tags": ["privacy"]}
    return [
        delete(
            "/v1/admin/players/{player_id:str}",
            summary="Erase a player everywhere",
            status_code=HTTP_202_ACCEPTED,
            **secured(Role.ADMIN, 400, **tags),
        )(erase_player),
        get(
            "/v1/admin/erasures/{erasure_id:str}",
            summary="An erasure's receipt",
            **secured(Role.ADMIN, 400, 404, **tags),
        )(get_erasure),
        post(
            "/v1/admin/players/{player_id:str}/reuse",
            summary="Allow an erased player id to be used again",
            status_code=200,
            **secured(Role.ADMIN, 400, 404, 409, **tags),
        )(allow_reuse),
        get(
            "/v1/admin/players/{player_id:str}/export",
            summary="Export everything held about a player",
            media_type="application/json",
            **secured(Role.ADMIN, 400, **tags),
        )(export_player),
    ]
