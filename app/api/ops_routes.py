"""Operations routes (admin): the game's API keys, its audit trail, its CORS origins.

An admin key sees and changes only its own game's keys and records.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, cast

import msgspec
from litestar import Litestar, Request, delete, get, post, put
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_404_NOT_FOUND

from app.audit import AuditTrail
from app.cors import CorsOrigins
from app.db.api_keys import StoredKey
from app.domain.access import Principal, Role
from app.domain.cors import ORIGIN_PATTERN, CorsError
from app.domain.features import parse_window
from app.keys import KeyService, UnknownKey

from .errors import ApiError
from .model_routes import options_route
from .openapi import secured
from .ops import AUDIT_TARGET

Duration = Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]{0,5}[smhd]$")]
Origin = Annotated[str, msgspec.Meta(pattern=ORIGIN_PATTERN)]


class NewKeyBody(msgspec.Struct, forbid_unknown_fields=True):
    """A key to create in the caller's game."""

    role: Role
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    expires: Duration | None = None
    """Lifetime such as 90d; none: never expires."""


class RotateBody(msgspec.Struct, forbid_unknown_fields=True):
    """How long the old key keeps working once its replacement exists (0: not at all)."""

    overlap: Annotated[str, msgspec.Meta(pattern=r"^(0|0s|[1-9][0-9]{0,5}[smhd])$")] = "24h"


class CorsBody(msgspec.Struct, forbid_unknown_fields=True):
    """The browser origins allowed on this game's ingest and read routes."""

    origins: Annotated[list[Origin], msgspec.Meta(max_length=100)]


class KeyInfo(msgspec.Struct):
    """A key as listed: never its secret."""

    id: str
    game: str
    role: str
    name: str | None
    created: datetime
    last_used: datetime | None
    expires: datetime | None
    revoked: datetime | None
    replaced_by: str | None


class NewKeyReply(msgspec.Struct):
    """A new key: ``key`` is the only time its secret is shown."""

    key: str
    info: KeyInfo


class RotateReply(msgspec.Struct):
    """The new key, and the old one (revoked at the end of the overlap)."""

    key: str
    info: KeyInfo
    old: KeyInfo


class KeysReply(msgspec.Struct):
    """The game's keys, oldest first."""

    keys: list[KeyInfo]


class AuditRecordReply(msgspec.Struct):
    """One audit record, with its place in the chain."""

    seq: int
    at: datetime
    game: str | None
    actor: str
    action: str
    target: str
    outcome: str
    request_id: str | None
    prev_hash: str
    hash: str


class AuditReply(msgspec.Struct):
    """A page of the game's audit records; pass ``next`` as ``after`` for the next."""

    records: list[AuditRecordReply]
    next: int | None


class CorsReply(msgspec.Struct):
    """The game's own allowed origins (PLAYERPULSE_CORS_ORIGINS adds to them for ingest)."""

    origins: list[str]


def _info(key: StoredKey) -> KeyInfo:
    return KeyInfo(
        id=key.id,
        game=key.game,
        role=key.role,
        name=key.name,
        created=key.created_at,
        last_used=key.last_used_at,
        expires=key.expires_at,
        revoked=key.revoked_at,
        replaced_by=key.replaced_by,
    )


def _seconds(text: str, field: str, *, zero: bool = False) -> float:
    if zero and text in ("0", "0s"):
        return 0.0
    try:
        return float(parse_window(text))
    except ValueError:
        raise ApiError(
            400, f"invalid {field}", {field: "a duration such as 90d, 24h or 30m"}
        ) from None


def _target(request: Request[Any, Any, Any], target: str) -> None:
    cast(dict[str, Any], request.scope)[AUDIT_TARGET] = target


async def list_keys(request: Request[Principal, Any, Any], keys: KeyService) -> KeysReply:
    """The game's keys: id, role, name, created, last used, expires, revoked."""
    return KeysReply(keys=[_info(k) for k in await keys.list(request.user.game)])


async def create_key(
    data: NewKeyBody, request: Request[Principal, Any, Any], keys: KeyService
) -> NewKeyReply:
    """A new key of this game (its secret is shown only here)."""
    expires = None if data.expires is None else _seconds(data.expires, "expires")
    try:
        key, stored = await keys.issue(
            request.user.game, data.role, name=data.name, expires_in_s=expires
        )
    except ValueError as exc:
        field = "expires" if str(exc).startswith("expires") else "name"
        raise ApiError(400, "invalid key", {field: str(exc)}) from None
    _target(request, f"key:{stored.id}")
    return NewKeyReply(key=key, info=_info(stored))


async def revoke_key(
    key_id: str, request: Request[Principal, Any, Any], keys: KeyService
) -> KeyInfo:
    """Revoke a key of this game now: every server refuses it within a second."""
    try:
        revoked = await keys.revoke(key_id, game=request.user.game)
    except UnknownKey:
        raise ApiError(HTTP_404_NOT_FOUND, f"no key {key_id!r} in this game") from None
    _target(request, f"key:{key_id}")
    return _info(revoked)


async def rotate_key(
    key_id: str, data: RotateBody, request: Request[Principal, Any, Any], keys: KeyService
) -> RotateReply:
    """A new key replacing this one; the old one works for ``overlap`` more (``{}``: 24h)."""
    overlap = _seconds(data.overlap, "overlap", zero=True)
    try:
        key, new, old = await keys.rotate(key_id, overlap_s=overlap, game=request.user.game)
    except UnknownKey:
        raise ApiError(HTTP_404_NOT_FOUND, f"no key {key_id!r} in this game") from None
    except ValueError as exc:
        raise ApiError(409, str(exc)) from None
    _target(request, f"key:{key_id} -> key:{new.id}")
    return RotateReply(key=key, info=_info(new), old=_info(old))


async def list_audit(
    request: Request[Principal, Any, Any],
    audit: AuditTrail,
    after: Annotated[int, Parameter(ge=0, le=2**53)] = 0,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
) -> AuditReply:
    """This game's audit records after ``after`` (a seq), oldest first."""
    records = await audit.list(request.user.game, after=after, limit=limit)
    return AuditReply(
        records=[msgspec.convert(r, AuditRecordReply, from_attributes=True) for r in records],
        next=records[-1].seq if len(records) == limit else None,
    )


async def get_cors(request: Request[Principal, Any, Any], cors: CorsOrigins) -> CorsReply:
    """This game's own allowed browser origins."""
    return CorsReply(origins=sorted(cors.policy.per_game.get(request.user.game, frozenset())))


async def put_cors(
    data: CorsBody, request: Request[Principal, Any, Any], cors: CorsOrigins
) -> CorsReply:
    """Replace this game's allowed browser origins (ingest and read routes)."""
    try:
        origins = await cors.put(request.user.game, data.origins)
    except CorsError as exc:
        raise ApiError(400, "invalid origin", {"origins": str(exc)}) from None
    _target(request, "cors:" + ",".join(origins))
    return CorsReply(origins=origins)


def ops_routes() -> list[HTTPRouteHandler]:
    """Keys, audit and CORS routes (admin keys)."""
    keys = {"tags": ["operations"]}
    path = "/v1/admin/keys/{key_id:str}"
    return [
        options_route("/v1/admin/keys", "GET, OPTIONS, POST"),
        options_route("/v1/admin/cors", "GET, OPTIONS, PUT"),
        get("/v1/admin/keys", summary="List the game's keys", **secured(Role.ADMIN, **keys))(
            list_keys
        ),
        post(
            "/v1/admin/keys",
            status_code=HTTP_201_CREATED,
            summary="Create a key",
            **secured(Role.ADMIN, 400, **keys),
        )(create_key),
        delete(
            path,
            status_code=HTTP_200_OK,
            summary="Revoke a key",
            **secured(Role.ADMIN, 400, 404, **keys),
        )(revoke_key),
        post(
            f"{path}/rotate",
            status_code=HTTP_201_CREATED,
            summary="Rotate a key (the old one works for the overlap)",
            **secured(Role.ADMIN, 400, 404, 409, **keys),
        )(rotate_key),
        get(
            "/v1/admin/audit",
            summary="The game's audit trail",
            **secured(Role.ADMIN, 400, **keys),
        )(list_audit),
        get("/v1/admin/cors", summary="The game's CORS origins", **secured(Role.ADMIN, **keys))(
            get_cors
        ),
        put(
            "/v1/admin/cors",
            summary="Set the game's CORS origins",
            **secured(Role.ADMIN, 400, **keys),
        )(put_cors),
    ]


OPS_BODIES: list[type[msgspec.Struct]] = [NewKeyBody, RotateBody, CorsBody]
"""Request bodies that refuse unknown fields."""


def document_ops(app: Litestar) -> None:
    """What Litestar leaves out of the document: the pattern of each CORS origin (it drops
    the constraints of a list's items)."""
    components = app.openapi_schema.components
    schemas: Any = (components.schemas if components else None) or {}
    body = schemas.get("CorsBody")
    if body is not None and body.properties and "origins" in body.properties:
        items = body.properties["origins"].items
        if items is not None:
            items.pattern = ORIGIN_PATTERN
