"""HTTP routes: decode input, call a service, encode output. No business rules here."""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Request, Response, get
from litestar.params import Parameter
from litestar.status_codes import (
    HTTP_404_NOT_FOUND,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import metrics
from app.domain.access import Principal, Role
from app.profiles import FailedEventService, Profile, ProfileService, ReadYourWrites
from app.segment_catalog import SegmentReads
from app.settings import Settings

from .dashboard import dashboard_routes
from .errors import ApiError
from .ingest_routes import ingest_routes
from .model_routes import model_routes
from .openapi import documented, secured
from .ops_routes import ops_routes
from .privacy_routes import privacy_routes
from .read_your_writes import After, WaitMs, await_token
from .segment_routes import segment_routes, webhook_routes

if TYPE_CHECKING:
    from app.db.failed_events import FailedEvent

# -- response bodies -------------------------------------------------------------------


class FailedEventReply(msgspec.Struct):
    """An event the fold could not apply, and why."""

    id: int
    event_id: str | None
    player_id: str | None
    reason: str
    failed_at: datetime
    record: Any


class FailedEventsReply(msgspec.Struct):
    """A page of failed events, newest first; pass ``next`` as ``before`` for the next."""

    failed: list[FailedEventReply]
    next: int | None


class HealthReply(msgspec.Struct):
    """Ready to accept events."""

    status: str
    version: str
    worker: int
    """The answering worker's process id."""
    generation: int
    """How many rolling upgrades (SIGHUP) the server had when this worker started."""


# -- handlers --------------------------------------------------------------------------


async def health(request: Request[Any, Any, Any]) -> HealthReply:
    """200 once the service accepts events (the server only listens once it does)."""
    from app import __version__

    generation = request.app.state.get("generation", 0)
    return HealthReply(status="ok", version=__version__, worker=os.getpid(), generation=generation)


async def get_profile(
    player_id: str,
    request: Request[Principal, Any, Any],
    profiles: ProfileService,
    read_your_writes: ReadYourWrites,
    segment_reads: SegmentReads,
    after: After = None,
    wait_ms: WaitMs = 1000,
) -> Profile:
    """The player's features as of now (with ``after``: once that ingest request's events
    for the player are folded), and how fresh they are (``freshness``)."""
    await await_token(read_your_writes, request.user.game, player_id, after, wait_ms)
    profile = await profiles.get(request.user.game, player_id)
    if profile is None:
        raise ApiError(HTTP_404_NOT_FOUND, f"player {player_id!r} has no events in this game")
    segments = await segment_reads.of_player(request.user.game, player_id)
    return msgspec.structs.replace(profile, segments=segments) if segments else profile


async def list_failed_events(
    request: Request[Principal, Any, Any],
    failed_events: FailedEventService,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Parameter(ge=1, le=2**63 - 1)] = None,
) -> FailedEventsReply:
    """Events of this game the fold could not apply, with the reason, newest first."""
    rows = await failed_events.recent(request.user.game, limit=limit, before_id=before)
    return FailedEventsReply(
        failed=[_shown(row) for row in rows],
        next=rows[-1].id if len(rows) == limit else None,
    )


def _shown(row: FailedEvent) -> FailedEventReply:
    """A stored failure as the API shows it: its fields, and its payload as ``record``."""
    return msgspec.convert(asdict(row) | {"record": _as_json(row.payload)}, FailedEventReply)


def _as_json(payload: bytes) -> Any:
    """The failed record as JSON if it is JSON, else its text."""
    try:
        return msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return payload.decode(errors="replace")


async def metrics_page() -> Response[bytes]:
    """Prometheus metrics of the service: every worker process's, added up."""
    return Response(generate_latest(metrics.registry()), media_type=CONTENT_TYPE_LATEST)


def build_routes(settings: Settings) -> list[Any]:
    """Route handlers, with limits taken from the settings."""
    return [
        get("/health", tags=["ops"], summary="Readiness (no key)", **documented())(health),
        get(
            "/metrics",
            tags=["ops"],
            summary="Prometheus metrics (no key)",
            media_type=CONTENT_TYPE_LATEST,
            **documented(),
        )(metrics_page),
        *ingest_routes(settings),
        get(
            "/v1/players/{player_id:str}",
            tags=["profiles"],
            summary="Read a player's profile",
            **secured(Role.READ, 400, 404, 504),
        )(get_profile),
        get(
            "/v1/admin/failed-events",
            tags=["events"],
            summary="Events the fold could not apply",
            **secured(Role.ADMIN, 400),
        )(list_failed_events),
        *model_routes(settings),
        *dashboard_routes(),
        *privacy_routes(),
        *ops_routes(),
        *segment_routes(),
        *webhook_routes(),
    ]
