"""Player events: the shape a game sends, and the record that travels through Kafka."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

# No NUL: PostgreSQL text cannot hold it, and no sane id contains it.
_NO_NUL = r"^[^\x00]*$"
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_NO_NUL)]
PlayerId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_NO_NUL)]
EventType = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=_NO_NUL)]
DeviceTime = Annotated[datetime, msgspec.Meta(tz=True)]

GAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""A game id: it names a lake partition, so it stays path- and URL-safe."""


class IncomingEvent(msgspec.Struct, forbid_unknown_fields=False):
    """One event as a game sends it to ``POST /v1/events``."""

    event_id: EventId
    player_id: PlayerId
    type: EventType
    ts: DeviceTime
    props: dict[str, Any] | None = None


class EventBatch(msgspec.Struct):
    """The body of ``POST /v1/events``; each event is validated on its own."""

    events: list[msgspec.Raw]


class EventRecord(msgspec.Struct, omit_defaults=True):
    """An accepted event as written to the ``events`` topic and read by every agent.

    ``ts`` and ``received_at`` are microseconds since the Unix epoch, UTC.
    """

    game: str
    event_id: str
    player_id: str
    type: str
    ts: int
    received_at: int
    props: dict[str, Any] | None = None

    @property
    def partition_key(self) -> bytes:
        """Kafka key: all events of one player of one game land on one partition."""
        return f"{self.game}/{self.player_id}".encode()


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch for an aware datetime, exactly (no float rounding)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime for microseconds since the epoch."""
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)


def maybe_from_micros(micros: int | None) -> datetime | None:
    """:func:`from_micros`, passing None through."""
    return None if micros is None else from_micros(micros)


def record_from(game: str, event: IncomingEvent, received_at: int) -> EventRecord:
    """The record to produce for an accepted event."""
    return EventRecord(
        game=game,
        event_id=event.event_id,
        player_id=event.player_id,
        type=event.type,
        ts=to_micros(event.ts),
        received_at=received_at,
        props=event.props,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_record_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(EventRecord)


_records_decoder = msgspec.json.Decoder(list[EventRecord] | EventRecord)


def encode_record(record: EventRecord) -> bytes:
    """Wire form of one record (JSON, so any Kafka tool can read the topic)."""
    return _record_encoder.encode(record)


def decode_record(payload: bytes) -> EventRecord:
    """Parse one record; raises ``msgspec.DecodeError`` on anything else."""
    return _record_decoder.decode(payload)


def encode_records(encoded: list[bytes]) -> bytes:
    """One topic message holding several encoded records: a JSON array."""
    return b"[" + b",".join(encoded) + b"]"


def decode_records(payload: bytes) -> list[EventRecord]:
    """The records of one topic message: a JSON array of records, or a single record.

    Raises ``msgspec.DecodeError`` (or ``ValidationError``) if it is neither.
    """
    decoded = _records_decoder.decode(payload)
    return decoded if isinstance(decoded, list) else [decoded]


class BatchError(ValueError):
    """The body as a whole is unusable (not JSON, no ``events`` list): nothing is accepted."""


class Rejection(msgspec.Struct):
    """Why one event of a batch was not accepted."""

    index: int
    error: str


_batch_decoder = msgspec.json.Decoder(EventBatch)
_event_decoder = msgspec.json.Decoder(IncomingEvent)


def parse_batch(
    body: bytes, game: str, received_at: int
) -> tuple[list[EventRecord], list[Rejection]]:
    """Validate each event of a batch on its own: the valid ones become records.

    Raises :class:`BatchError` if the body is not a JSON object with an ``events`` list.
    """
    try:
        batch = _batch_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BatchError(f"body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BatchError(f"body is not valid JSON: {exc}") from None
    records: list[EventRecord] = []
    rejections: list[Rejection] = []
    for index, raw in enumerate(batch.events):
        try:
            event = _event_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            rejections.append(Rejection(index, _event_path(str(exc), index)))
            continue
        records.append(record_from(game, event, received_at))
    return records, rejections


def _event_path(message: str, index: int) -> str:
    # msgspec says "... - at `$.ts`" (or nothing for the event itself): name the place
    # within the batch instead.
    if " - at `$" in message:
        return message.replace(" - at `$", f" - at `$.events[{index}]", 1)
    return f"{message} - at `$.events[{index}]`"
