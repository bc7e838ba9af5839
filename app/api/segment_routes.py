"""Segment routes: definitions (admin keys) and members (read keys)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, delete, get, put
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter
from litestar.status_codes import (
    HTTP_204_NO_CONTENT,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
)

from app.domain.access import Principal, Role
from app.domain.segments import MAX_WHERE_CHARS, SEGMENT_NAME, SegmentError
from app.segment_catalog import (
    FileSegment,
    SegmentCatalog,
    SegmentInfo,
    SegmentReads,
    UnknownSegment,
)

from .errors import ApiError
from .model_routes import options_route
from .openapi import secured

SegmentName = Annotated[str, Parameter(pattern=SEGMENT_NAME)]


class SegmentBody(msgspec.Struct, forbid_unknown_fields=True):
    """A segment's CEL expression over feature names, e.g. ``spend_total >= 100.0``."""

    where: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_WHERE_CHARS)]
    announce: bool = True
    """Announce the players already in it (``entered``) when it is first evaluated."""


class SegmentReply(msgspec.Struct):
    """A segment's definition, and whether it has been evaluated over every profile."""

    name: str
    where: str
    source: str
    announce: bool
    evaluated: bool
    profiles_evaluated: int


class SegmentsReply(msgspec.Struct):
    """The game's segments (the features file's and its own), by name."""

    segments: list[SegmentReply]


class SegmentSizeReply(msgspec.Struct):
    """A segment's definition and member count."""

    name: str
    where: str
    players: int


class MemberReply(msgspec.Struct):
    """A member of a segment, and since when."""

    player_id: str
    since: datetime


class MembersReply(msgspec.Struct):
    """A page of members by player id; pass ``next`` as ``after`` for the next page."""

    players: list[MemberReply]
    next: str | None


def _reply(info: SegmentInfo) -> SegmentReply:
    return msgspec.convert(info, SegmentReply, from_attributes=True)


def _unknown(name: str) -> ApiError:
    return ApiError(HTTP_404_NOT_FOUND, f"no segment {name!r} in this game")


async def put_segment(
    name: SegmentName,
    data: SegmentBody,
    request: Request[Principal, Any, Any],
    segments: SegmentCatalog,
) -> SegmentReply:
    """Create or replace a segment; every worker and copy judges players on it at once,
    and it is evaluated over the existing profiles (``GET`` shows the progress)."""
    try:
        info = await segments.put(request.user.game, name, data.where, announce=data.announce)
    except SegmentError as exc:
        raise ApiError(
            HTTP_422_UNPROCESSABLE_ENTITY, "invalid segment", {"where": str(exc)}
        ) from None
    except FileSegment:
        raise ApiError(
            HTTP_409_CONFLICT, f"segment {name!r} is declared in the features file"
        ) from None
    return _reply(info)


async def list_segments(
    request: Request[Principal, Any, Any], segments: SegmentCatalog
) -> SegmentsReply:
    """The game's segments."""
    return SegmentsReply(segments=[_reply(i) for i in await segments.list(request.user.game)])


async def get_segment(
    name: SegmentName, request: Request[Principal, Any, Any], segments: SegmentCatalog
) -> SegmentReply:
    """One segment's definition and evaluation progress."""
    try:
        return _reply(await segments.get(request.user.game, name))
    except UnknownSegment:
        raise _unknown(name) from None


async def delete_segment(
    name: SegmentName, request: Request[Principal, Any, Any], segments: SegmentCatalog
) -> None:
    """Remove a segment and its memberships (no ``left`` is announced)."""
    try:
        await segments.delete(request.user.game, name)
    except UnknownSegment:
        raise _unknown(name) from None
    except FileSegment:
        raise ApiError(
            HTTP_409_CONFLICT, f"segment {name!r} is declared in the features file"
        ) from None


async def segment_size(
    name: SegmentName, request: Request[Principal, Any, Any], segment_reads: SegmentReads
) -> SegmentSizeReply:
    """A segment's definition and how many players are in it now."""
    try:
        info, size = await segment_reads.size(request.user.game, name)
    except UnknownSegment:
        raise _unknown(name) from None
    return SegmentSizeReply(name=info.name, where=info.where, players=size)


async def segment_members(
    name: SegmentName,
    request: Request[Principal, Any, Any],
    segment_reads: SegmentReads,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Parameter(min_length=1, max_length=128)] = None,
) -> MembersReply:
    """A page of the segment's members, by player id."""
    try:
        rows = await segment_reads.members(request.user.game, name, after, limit)
    except UnknownSegment:
        raise _unknown(name) from None
    return MembersReply(
        players=[MemberReply(player_id=p, since=t) for p, t in rows],
        next=rows[-1][0] if len(rows) == limit else None,
    )


def segment_routes() -> list[HTTPRouteHandler]:
    """Definitions (admin keys) and members (read keys)."""
    tags = {"tags": ["segments"]}
    path = "/v1/admin/segments/{name:str}"
    return [
        options_route(path, "DELETE, GET, OPTIONS, PUT"),
        put(
            path,
            summary="Create or replace a segment",
            **secured(Role.ADMIN, 400, 409, 422, **tags),
        )(put_segment),
        get(path, summary="A segment's definition", **secured(Role.ADMIN, 400, 404, **tags))(
            get_segment
        ),
        delete(
            path,
            status_code=HTTP_204_NO_CONTENT,
            summary="Remove a segment",
            **secured(Role.ADMIN, 400, 404, 409, **tags),
        )(delete_segment),
        get("/v1/admin/segments", summary="The game's segments", **secured(Role.ADMIN, **tags))(
            list_segments
        ),
        get(
            "/v1/segments/{name:str}",
            summary="A segment's size",
            **secured(Role.READ, 400, 404, **tags),
        )(segment_size),
        get(
            "/v1/segments/{name:str}/players",
            summary="A segment's members",
            **secured(Role.READ, 400, 404, **tags),
        )(segment_members),
    ]


SEGMENT_BODIES: list[type[msgspec.Struct]] = [SegmentBody]
"""Request bodies that refuse unknown fields."""
