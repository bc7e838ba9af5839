"""Segment routes: definitions (admin keys) and members (read keys)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, delete, get, post, put
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_204_NO_CONTENT,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
)

from app.db.segments import StoredWebhook
from app.domain.access import Principal, Role
from app.domain.segments import MAX_WHERE_CHARS, SEGMENT_NAME, SegmentError
from app.domain.webhooks import EVENT_TYPES, WebhookError
from app.segment_catalog import (
    FileSegment,
    SegmentCatalog,
    SegmentInfo,
    SegmentReads,
    UnknownSegment,
)
from app.segment_delivery import WebhookService, body_of, encode_change

from .errors import ApiError
from .model_routes import options_route
from .openapi import secured

SegmentName = Annotated[str, Parameter(pattern=SEGMENT_NAME)]
SegmentNameText = Annotated[str, msgspec.Meta(pattern=SEGMENT_NAME)]
EventType = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
SSE_POLL_S = 0.1
"""How often an open stream looks for new transitions."""


class SegmentBody(msgspec.Struct, forbid_unknown_fields=True):
    """A segment's CEL expression over feature names, e.g. ``spend_total >= 100.0``."""

    where: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_WHERE_CHARS)]
    announce: bool = True
    """Announce the players already in it (``entered``) when it is first evaluated."""


class SegmentDefinitionReply(msgspec.Struct):
    """A segment's definition, and whether it has been evaluated over every profile."""

    name: str
    where: str
    source: str
    announce: bool
    evaluated: bool
    profiles_evaluated: int


class SegmentDefinitionsReply(msgspec.Struct):
    """The game's segments (the features file's and its own), by name."""

    segments: list[SegmentDefinitionReply]


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


def _reply(info: SegmentInfo) -> SegmentDefinitionReply:
    return msgspec.convert(info, SegmentDefinitionReply, from_attributes=True)


def _unknown(name: str) -> ApiError:
    return ApiError(HTTP_404_NOT_FOUND, f"no segment {name!r} in this game")


async def put_segment(
    name: SegmentName,
    data: SegmentBody,
    request: Request[Principal, Any, Any],
    segment_catalog: SegmentCatalog,
) -> SegmentDefinitionReply:
    """Create or replace a segment; every worker and copy judges players on it at once,
    and it is evaluated over the existing profiles (``GET`` shows the progress)."""
    try:
        info = await segment_catalog.put(
            request.user.game, name, data.where, announce=data.announce
        )
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
    request: Request[Principal, Any, Any], segment_catalog: SegmentCatalog
) -> SegmentDefinitionsReply:
    """The game's segments."""
    return SegmentDefinitionsReply(
        segments=[_reply(i) for i in await segment_catalog.list(request.user.game)]
    )


async def get_segment(
    name: SegmentName, request: Request[Principal, Any, Any], segment_catalog: SegmentCatalog
) -> SegmentDefinitionReply:
    """One segment's definition and evaluation progress."""
    try:
        return _reply(await segment_catalog.get(request.user.game, name))
    except UnknownSegment:
        raise _unknown(name) from None


async def delete_segment(
    name: SegmentName, request: Request[Principal, Any, Any], segment_catalog: SegmentCatalog
) -> None:
    """Remove a segment and its memberships (no ``left`` is announced)."""
    try:
        await segment_catalog.delete(request.user.game, name)
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


class WebhookBody(msgspec.Struct, forbid_unknown_fields=True):
    """Where to POST this game's segment transitions, and which ones."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
    events: Annotated[list[EventType], msgspec.Meta(min_length=1, max_length=2)] = msgspec.field(
        default_factory=lambda: list(EVENT_TYPES)
    )
    segments: Annotated[list[SegmentNameText], msgspec.Meta(max_length=1000)] | None = None
    """Only these segments' transitions (none: every segment's)."""


class WebhookReply(msgspec.Struct):
    """A webhook; ``secret`` (``whsec_...``) verifies its Standard Webhooks signatures."""

    id: str
    url: str
    events: list[str]
    segments: list[str] | None
    secret: str | None = None
    """Shown when the webhook is created only."""


class WebhooksReply(msgspec.Struct):
    webhooks: list[WebhookReply]


class FailedDeliveryReply(msgspec.Struct):
    """A transition the webhook did not take within its retries (``delivery``: its body)."""

    webhook_id: str
    attempts: int
    error: str
    failed_at: datetime
    delivery: dict[str, Any]


class FailedDeliveriesReply(msgspec.Struct):
    failed: list[FailedDeliveryReply]


class ResendReply(msgspec.Struct):
    """Failed deliveries sent again: how many were taken, how many still fail."""

    delivered: int
    failed: int


def _hook(hook: StoredWebhook, *, secret: bool = False) -> WebhookReply:
    return WebhookReply(
        id=hook.id,
        url=hook.url,
        events=hook.events,
        segments=hook.segments,
        secret=hook.secret if secret else None,
    )


async def create_webhook(
    data: WebhookBody, request: Request[Principal, Any, Any], webhooks: WebhookService
) -> WebhookReply:
    """A webhook receiving this game's transitions from now on, signed with its secret."""
    try:
        hook = await webhooks.create(request.user.game, data.url, data.events, data.segments)
    except WebhookError as exc:
        field = str(exc).split(":", 1)[0]
        raise ApiError(
            HTTP_422_UNPROCESSABLE_ENTITY, "invalid webhook", {field: str(exc)}
        ) from None
    return _hook(hook, secret=True)


async def list_webhooks(
    request: Request[Principal, Any, Any], webhooks: WebhookService
) -> WebhooksReply:
    """The game's webhooks (without secrets)."""
    return WebhooksReply(webhooks=[_hook(h) for h in await webhooks.of_game(request.user.game)])


async def _known(webhooks: WebhookService, game: str, hook_id: str) -> StoredWebhook:
    hook = await webhooks.get(game, hook_id)
    if hook is None:
        raise ApiError(HTTP_404_NOT_FOUND, f"no webhook {hook_id!r} in this game")
    return hook


async def get_webhook(
    hook_id: str, request: Request[Principal, Any, Any], webhooks: WebhookService
) -> WebhookReply:
    """One webhook (without its secret)."""
    return _hook(await _known(webhooks, request.user.game, hook_id))


async def delete_webhook(
    hook_id: str, request: Request[Principal, Any, Any], webhooks: WebhookService
) -> None:
    """Stop delivering to this webhook; its failed deliveries are forgotten."""
    if not await webhooks.delete(request.user.game, hook_id):
        raise ApiError(HTTP_404_NOT_FOUND, f"no webhook {hook_id!r} in this game")


async def failed_deliveries(
    hook_id: str,
    request: Request[Principal, Any, Any],
    webhooks: WebhookService,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
) -> FailedDeliveriesReply:
    """Deliveries that exhausted their retries, oldest transition first."""
    hook = await _known(webhooks, request.user.game, hook_id)
    rows = await webhooks.failed(hook, limit)
    return FailedDeliveriesReply(
        failed=[
            FailedDeliveryReply(
                webhook_id=hook.id,
                attempts=r.attempts,
                error=r.error,
                failed_at=r.failed_at,
                delivery=body_of(r.change),
            )
            for r in rows
        ]
    )


async def resend_failed(
    hook_id: str, request: Request[Principal, Any, Any], webhooks: WebhookService
) -> ResendReply:
    """Send the failed deliveries again (once each, in order per player)."""
    hook = await _known(webhooks, request.user.game, hook_id)
    delivered, failed = await webhooks.resend(hook)
    return ResendReply(delivered=delivered, failed=failed)


async def segment_changes(
    request: Request[Principal, Any, Any],
    segment_reads: SegmentReads,
    # No lower bound: Litestar leaves a minimum of 0 out of the document, so a negative
    # value is schema-valid there; it means what 0 means (from the first transition).
    after: Annotated[int | None, Parameter(ge=-(2**62), le=2**62)] = None,
    last_event_id: Annotated[str | None, Parameter(header="Last-Event-ID", max_length=64)] = None,
    limit: Annotated[int | None, Parameter(ge=1, le=100_000)] = None,
    idle_ms: Annotated[int | None, Parameter(ge=1, le=3_600_000)] = None,
) -> ServerSentEvent:
    """The game's transitions as server-sent events (``id``: the outbox id, ``event``:
    ``segment.entered`` or ``segment.left``, ``data``: the webhook body), from after
    ``Last-Event-ID`` (or ``after``; neither: from now on). The stream stays open; with
    ``limit`` it ends after that many transitions, with ``idle_ms`` once none came for
    that long."""
    game = request.user.game
    # A Last-Event-ID that is not one of ours (not a number) is ignored, as SSE servers do.
    resumed = last_event_id.strip() if last_event_id is not None else ""
    start = int(resumed) if resumed.isdigit() and len(resumed) <= 18 else after
    if start is not None:
        start = max(0, start)

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        cursor = start if start is not None else await segment_reads.newest_change()
        idle = 0.0
        quiet_since = time.monotonic()
        left = limit
        while True:
            changes = await segment_reads.changes_after(game, cursor, min(500, left or 500))
            for change in changes:
                cursor = change.id
                yield ServerSentEventMessage(
                    data=encode_change(change).decode(),
                    event=f"segment.{change.kind}",
                    id=change.id,
                )
            if left is not None:
                left -= len(changes)
                if left <= 0:
                    return
            if changes:
                idle = 0.0
                quiet_since = time.monotonic()
                continue
            if idle_ms is not None and time.monotonic() - quiet_since >= idle_ms / 1000:
                return
            idle += SSE_POLL_S
            if idle >= 15:  # a comment keeps proxies from closing an idle stream
                idle = 0.0
                yield ServerSentEventMessage(comment="keep-alive")
            await asyncio.sleep(SSE_POLL_S)

    return ServerSentEvent(stream())


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
            "/v1/segments/changes",
            summary="Segment transitions (server-sent events)",
            media_type="text/event-stream",
            **secured(Role.READ, 400, **tags),
        )(segment_changes),
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


def webhook_routes() -> list[HTTPRouteHandler]:
    """A game's webhooks (admin keys)."""
    tags = {"tags": ["segments"]}
    path = "/v1/admin/webhooks/{hook_id:str}"
    return [
        options_route("/v1/admin/webhooks", "GET, OPTIONS, POST"),
        options_route(path, "DELETE, GET, OPTIONS"),
        post(
            "/v1/admin/webhooks",
            status_code=HTTP_201_CREATED,
            summary="Create a webhook",
            **secured(Role.ADMIN, 400, 422, **tags),
        )(create_webhook),
        get("/v1/admin/webhooks", summary="The game's webhooks", **secured(Role.ADMIN, **tags))(
            list_webhooks
        ),
        get(path, summary="A webhook", **secured(Role.ADMIN, 400, 404, **tags))(get_webhook),
        delete(
            path,
            status_code=HTTP_204_NO_CONTENT,
            summary="Remove a webhook",
            **secured(Role.ADMIN, 400, 404, **tags),
        )(delete_webhook),
        get(
            f"{path}/failed",
            summary="A webhook's failed deliveries",
            **secured(Role.ADMIN, 400, 404, **tags),
        )(failed_deliveries),
        post(
            f"{path}/failed/resend",
            status_code=HTTP_200_OK,
            summary="Send a webhook's failed deliveries again",
            **secured(Role.ADMIN, 400, 404, **tags),
        )(resend_failed),
    ]


SEGMENT_BODIES: list[type[msgspec.Struct]] = [SegmentBody, WebhookBody]
"""Request bodies that refuse unknown fields."""
