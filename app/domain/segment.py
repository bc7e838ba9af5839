"""Segment's HTTP Tracking API messages, mapped onto our events.

``messageId`` is the event id, ``userId`` (else ``anonymousId``) the player, the event
name of a ``track`` (else the message type: ``identify``, ``page``...) the type,
``timestamp`` the device time, and ``properties`` (or an identify's ``traits``) the
props. The batch's ``sentAt`` corrects the device clock, as Segment does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from .events import (
    EventId,
    EventRecord,
    IngestLimits,
    PlayerId,
    Rejection,
    check_count,
    clock_skew_us,
    decode_body,
    nul_field,
    parse_each,
    to_micros,
)

SegmentType = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class SegmentMessage(msgspec.Struct, rename="camel", gc=False):
    """One Segment message; unknown fields (context, integrations...) are ignored.

    ``gc=False``: it holds only JSON values (no reference cycle), so the garbage collector
    need not track it (see :class:`app.domain.events.IncomingEvent`).
    """

    type: SegmentType
    message_id: EventId
    user_id: PlayerId | int | None = None
    anonymous_id: PlayerId | None = None
    event: SegmentType | None = None
    name: str | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    timestamp: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    sent_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None


class SegmentBatch(msgspec.Struct, rename="camel"):
    """The body of ``/v1/batch``."""

    batch: list[msgspec.Raw]
    sent_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None


_message = msgspec.json.Decoder(SegmentMessage)
_batch = msgspec.json.Decoder(SegmentBatch)


def parse_segment(
    body: bytes,
    game: str,
    received_at: int,
    *,
    single: str | None = None,
    limits: IngestLimits = IngestLimits(),  # noqa: B008 - immutable
) -> tuple[list[EventRecord], list[Rejection]]:
    """Records and rejections of a ``/v1/batch`` body, or of one message (``single`` type).

    Raises :class:`BatchError` for a body that is not a batch (or message) at all.
    """
    if single is None:
        batch = decode_body(_batch, body)
        raws, sent_at, where = batch.batch, batch.sent_at, "batch"
    else:
        raws, sent_at, where = [msgspec.Raw(body)], None, ""
    check_count(len(raws), limits, "batch", "messages")

    def convert(message: SegmentMessage, place: str) -> EventRecord | str:
        if single is not None and message.type != single:
            return f"type is {message.type!r}; this route takes {single!r}"
        record = _record(game, message, received_at, sent_at or message.sent_at)
        return f"{record} - at `{place}`" if isinstance(record, str) else record

    return parse_each(raws, _message, convert, limits=limits, where=where, noun="message")


def _record(
    game: str, message: SegmentMessage, received_at: int, sent_at: datetime | None
) -> EventRecord | str:
    player = message.user_id if message.user_id not in (None, "") else message.anonymous_id
    if player is None or player == "":
        return "userId or anonymousId is required"
    kind = message.event if message.type == "track" else message.type
    if not kind:
        return "event is required for a track message"
    nul = nul_field(("messageId", message.message_id), ("userId", str(player)), ("event", kind))
    if nul is not None:
        return f"{nul} holds a NUL character"
    skew = clock_skew_us(sent_at, received_at)
    device_ts = to_micros(message.timestamp) if message.timestamp is not None else None
    ts = device_ts + skew if device_ts is not None else received_at
    props = message.properties if message.properties is not None else message.traits
    if message.type in ("page", "screen") and message.name is not None:
        props = {**(props or {}), "name": message.name}
    return EventRecord(
        game=game,
        event_id=message.message_id,
        player_id=str(player),
        type=kind,
        ts=ts,
        received_at=received_at,
        props=props,
        device_ts=device_ts if skew and device_ts is not None else None,
    )
