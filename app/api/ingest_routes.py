"""Ingest routes: our own batch API, and Segment's HTTP Tracking API for existing SDKs."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

import msgspec
import zstandard
from litestar import Request, post
from litestar.handlers import HTTPRouteHandler
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_202_ACCEPTED,
    HTTP_400_BAD_REQUEST,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_503_SERVICE_UNAVAILABLE,
    HTTP_507_INSUFFICIENT_STORAGE,
)

from app import metrics
from app.domain.access import Principal, Role
from app.domain.events import (
    BatchError,
    BatchTooLarge,
    EventRecord,
    IngestLimits,
    Rejection,
    parse_batch,
)
from app.domain.segment import parse_segment
from app.domain.tokens import encode_token
from app.ingest import BrokerUnavailable, DiskFull, Ingestor, Overloaded
from app.settings import Settings

from .errors import ApiError
from .openapi import secured


class IngestReply(msgspec.Struct):
    """Events accepted (durable in Kafka) and, per index, those rejected.

    ``token``: pass it as ``after`` to a profile or prediction read of one of these
    players, to read only once this request's events for the player are folded.
    """

    accepted: int
    rejected: list[Rejection]
    token: str


class SegmentReply(msgspec.Struct):
    """Segment's answer (``success``), with what we accepted and rejected, and the
    read-your-writes ``token`` (as for ``POST /v1/events``)."""

    success: bool
    accepted: int
    rejected: list[Rejection]
    token: str


_sent_at = msgspec.json.Decoder(datetime)


def _sent_at_header(request: Request[Any, Any, Any]) -> datetime | None:
    """The ``X-Sent-At`` header as a time with an offset, if sent."""
    sent_header = request.headers.get("x-sent-at")
    sent_at = None
    if sent_header is not None:
        try:
            sent_at = _sent_at.decode(msgspec.json.encode(sent_header))
        except msgspec.ValidationError:
            raise ApiError(
                HTTP_400_BAD_REQUEST, f"X-Sent-At: {sent_header!r} is not an RFC 3339 time"
            ) from None
        if sent_at.tzinfo is None:
            raise ApiError(HTTP_400_BAD_REQUEST, "X-Sent-At: needs a UTC offset")
    return sent_at


Parse = Callable[[bytes, str, int], tuple[list[EventRecord], list[Rejection]]]


async def _parsed(
    request: Request[Principal, Any, Any], max_body: int, parse: Parse
) -> tuple[list[EventRecord], list[Rejection]]:
    """The request's body parsed by ``parse`` (body, game, received at); a batch that
    cannot be read as a whole is refused: too many events 413, anything else 400."""
    body, received_at = await _body(request, max_body)
    try:
        return parse(body, request.user.game, received_at)
    except BatchTooLarge as exc:
        raise ApiError(HTTP_413_REQUEST_ENTITY_TOO_LARGE, str(exc)) from None
    except BatchError as exc:
        raise ApiError(HTTP_400_BAD_REQUEST, str(exc)) from None


def _events_handler(limits: IngestLimits, max_body: int) -> Any:
    async def send_events(request: Request[Principal, Any, Any], ingestor: Ingestor) -> IngestReply:
        """Accept a batch of events; 202 only once the broker has every accepted one.

        An ``X-Sent-At`` header (RFC 3339: when the device sent the batch) corrects each
        event's device time by how far the device clock is off ours; the original is kept.
        """
        sent_at = _sent_at_header(request)
        parse = partial(parse_batch, limits=limits, sent_at=sent_at)
        records, rejections = await _parsed(request, max_body, parse)
        token = await _accept(ingestor, request, records, rejections)
        return IngestReply(accepted=len(records), rejected=rejections, token=token)

    return send_events


def _segment_handler(single: str | None, limits: IngestLimits, max_body: int) -> Any:
    async def handler(request: Request[Principal, Any, Any], ingestor: Ingestor) -> SegmentReply:
        parse = partial(parse_segment, single=single, limits=limits)
        records, rejections = await _parsed(request, max_body, parse)
        if single is not None and rejections:
            raise ApiError(HTTP_400_BAD_REQUEST, rejections[0].error)
        token = await _accept(ingestor, request, records, rejections)
        return SegmentReply(success=True, accepted=len(records), rejected=rejections, token=token)

    handler.__name__ = f"segment_{single or 'batch'}"
    handler.__doc__ = (
        f"Segment-compatible `/v1/{single or 'batch'}`: the write key is the ingest key "
        "(Basic auth user name, or Bearer)."
    )
    return handler


async def _accept(
    ingestor: Ingestor,
    request: Request[Principal, Any, Any],
    records: list[EventRecord],
    rejections: list[Rejection],
) -> str:
    """Produce the accepted records; the read-your-writes token for them."""
    if rejections:  # every update writes the worker's metrics file: not for nothing
        metrics.EVENTS_REJECTED.inc(len(rejections))
    try:
        offsets = await ingestor.accept(str(request.auth), records)
    except Overloaded as exc:
        status = HTTP_429_TOO_MANY_REQUESTS if exc.rate_limited else HTTP_503_SERVICE_UNAVAILABLE
        raise ApiError(
            status,
            f"{exc}; nothing in this batch was accepted",
            headers={"Retry-After": str(exc.retry_after)},
        ) from None
    except DiskFull as exc:
        space = exc.space
        raise ApiError(
            HTTP_507_INSUFFICIENT_STORAGE,
            str(exc),
            {
                "directory": space.path,
                "role": space.name,
                "free_bytes": space.free_bytes,
                "min_free_bytes": space.min_free_bytes,
            },
            headers={"Retry-After": str(exc.retry_after)},
        ) from None
    except BrokerUnavailable as exc:
        raise ApiError(
            HTTP_503_SERVICE_UNAVAILABLE,
            "the event broker is unavailable; nothing in this batch may be assumed accepted",
            str(exc),
            headers={"Retry-After": "5"},
        ) from None
    metrics.EVENTS_ACCEPTED.inc(len(records))
    _observe_hops(records)
    return encode_token(offsets)


def _observe_hops(records: list[EventRecord]) -> None:
    """The ``device_to_received`` hop of each event, and ``received_to_acked`` (now)."""
    if not records:
        return
    hops = metrics.EVENT_HOP_SECONDS
    received = records[0].received_at  # one arrival time per request
    acked = (time.time_ns() // 1000 - received) / 1_000_000
    metrics.observe_times(hops.labels("received_to_acked"), acked, len(records))
    metrics.observe_all(
        hops.labels("device_to_received"), [(r.received_at - r.ts) / 1_000_000 for r in records]
    )


async def _body(request: Request[Any, Any, Any], max_body: int) -> tuple[bytes, int]:
    """The decoded body and the time we received it (microseconds)."""
    body = await request.body()
    received_at = time.time_ns() // 1000
    return _decoded(body, request.headers.get("content-encoding"), max_body), received_at


def _decoded(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body without its Content-Encoding (gzip or zstd), never larger than ``limit``.

    Decompression stops one byte past the limit, so a zip bomb costs us nothing.
    """
    kind = (encoding or "identity").strip().lower()
    if kind == "identity":
        return body
    if kind in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise ApiError(HTTP_400_BAD_REQUEST, f"body is not valid gzip: {exc}") from None
        complete = inflater.eof
    elif kind == "zstd":
        decompressor = zstandard.ZstdDecompressor()
        try:
            with decompressor.stream_reader(body) as reader:
                out = reader.read(limit + 1)
            complete = len(out) > limit
            if not complete:
                # The reader ends a truncated frame silently, as if it were complete. Its
                # output fits the limit, so a second pass may inflate it to ask: frame over?
                frame = decompressor.decompressobj()
                frame.decompress(body)
                complete = frame.eof
        except zstandard.ZstdError as exc:
            raise ApiError(HTTP_400_BAD_REQUEST, f"body is not valid zstd: {exc}") from None
    else:
        raise ApiError(
            HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"Content-Encoding {encoding!r} is not supported; use gzip, zstd or none",
        )
    if len(out) > limit:
        raise ApiError(
            HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"decompressed body exceeds {limit} bytes"
        )
    if not complete:
        raise ApiError(HTTP_400_BAD_REQUEST, f"body is truncated {kind}")
    return out


def ingest_routes(settings: Settings) -> list[HTTPRouteHandler]:
    """Route handlers for ingest, with the limits of the settings (built once)."""
    limits = IngestLimits(
        max_event_bytes=settings.max_event_bytes, max_batch_events=settings.max_batch_events
    )
    most = settings.max_body_bytes
    common = secured(
        Role.INGEST, 400, 413, 415, 429, 503, 507, request_max_body_size=most, tags=["events"]
    )
    routes = [
        post(
            "/v1/events",
            status_code=HTTP_202_ACCEPTED,
            summary="Send a batch of events",
            **common,
        )(_events_handler(limits, most))
    ]
    for single in (None, "track", "identify", "page", "screen"):
        routes.append(
            post(
                f"/v1/{single or 'batch'}",
                status_code=HTTP_200_OK,
                summary=f"Segment-compatible {single or 'batch'}",
                **common,
            )(_segment_handler(single, limits, most))
        )
    return routes
