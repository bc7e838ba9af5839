"""Player events: the shape a game sends, and the record that travels through Kafka."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import msgspec

T = TypeVar("T")

# No NUL in ids either (PostgreSQL text cannot hold it): checked after decoding, where a
# substring test costs far less than a regular expression per field.
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
PlayerId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
EventType = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
DeviceTime = Annotated[datetime, msgspec.Meta(tz=True)]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""A game id or a model name: each names a lake partition or a URL segment, so it stays
path- and URL-safe. The one definition of both rules."""


class IncomingEvent(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    """One event as a game sends it to ``POST /v1/events``.

    ``gc=False`` here and on :class:`EventRecord`: they hold only strings, numbers and
    JSON values, so they cannot be part of a reference cycle. Untracked, the thousands
    made per second (and those held in the archive buffer) no longer trigger the
    garbage collector's collections nor lengthen its full ones (under load those took
    a fifth of a worker's time).
    """

    event_id: EventId
    player_id: PlayerId
    type: EventType
    ts: DeviceTime
    props: dict[str, Any] | None = None


class EventBatch(msgspec.Struct):
    """The body of ``POST /v1/events``; each event is validated on its own."""

    events: list[msgspec.Raw]


class ValidBatch(msgspec.Struct):
    """A body whose events are all valid: decoded in one pass (the common case)."""

    events: list[IncomingEvent]


def nul_field(*values: tuple[str, str]) -> str | None:
    """The name of the first (name, value) whose value holds a NUL character, if any."""
    for name, value in values:
        if "\x00" in value:
            return name
    return None


class EventRecord(msgspec.Struct, omit_defaults=True, gc=False):
    """An accepted event as written to the ``events`` topic and read by every agent.

    ``ts`` and ``received_at`` are microseconds since the Unix epoch, UTC. When the
    device clock was corrected (the request said when it was sent), ``ts`` is the
    corrected time and ``device_ts`` the time the device wrote.
    """

    game: str
    event_id: str
    player_id: str
    type: str
    ts: int
    received_at: int
    props: dict[str, Any] | None = None
    device_ts: int | None = None

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
    return _EPOCH + timedelta(microseconds=micros)  # exact, in C: half the cost of fromtimestamp


def maybe_from_micros(micros: int | None) -> datetime | None:
    """:func:`from_micros`, passing None through."""
    return None if micros is None else from_micros(micros)


def record_from(game: str, event: IncomingEvent, received_at: int, skew_us: int = 0) -> EventRecord:
    """The record to produce for an accepted event, its time corrected by ``skew_us``."""
    device_ts = to_micros(event.ts)
    return EventRecord(
        game=game,
        event_id=event.event_id,
        player_id=event.player_id,
        type=event.type,
        ts=device_ts + skew_us,
        received_at=received_at,
        props=event.props,
        device_ts=device_ts if skew_us else None,
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


def encode_many(records: Sequence[EventRecord]) -> bytes:
    """The same bytes as ``encode_records([encode_record(r) for r in records])``, at once."""
    return _record_encoder.encode(records)


def decode_records(payload: bytes) -> list[EventRecord]:
    """The records of one topic message: a JSON array of records, or a single record.

    Raises ``msgspec.DecodeError`` (or ``ValidationError``) if it is neither.
    """
    decoded = _records_decoder.decode(payload)
    return decoded if isinstance(decoded, list) else [decoded]


class BatchError(ValueError):
    """The body as a whole is unusable (not JSON, no ``events`` list): nothing is accepted."""


class BatchTooLarge(BatchError):
    """The batch holds more events than allowed: nothing is accepted."""


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """What one request may carry (Segment's limits by default)."""

    max_event_bytes: int = 32 * 1024
    max_batch_events: int = 2000


def clock_skew_us(sent_at: datetime | None, received_at: int) -> int:
    """How far the device clock is behind ours, from when the device says it sent the batch.

    Zero without a ``sent_at``. Adding it to each event's device time puts the event on
    our clock, as Segment does.
    """
    return 0 if sent_at is None else received_at - to_micros(sent_at)


class Rejection(msgspec.Struct):
    """Why one event of a batch was not accepted."""

    index: int
    error: str


_NUL_ESCAPE = b"\\u0000"
_batch_decoder = msgspec.json.Decoder(EventBatch)
_valid_decoder = msgspec.json.Decoder(ValidBatch)
_event_decoder = msgspec.json.Decoder(IncomingEvent)


def parse_batch(
    body: bytes,
    game: str,
    received_at: int,
    *,
    limits: IngestLimits = IngestLimits(),
    sent_at: datetime | None = None,
) -> tuple[list[EventRecord], list[Rejection]]:
    """Validate each event of a batch on its own: the valid ones become records.

    Raises :class:`BatchError` if the body is not a JSON object with an ``events`` list,
    :class:`BatchTooLarge` if it holds more events than ``limits`` allow.
    """
    skew = clock_skew_us(sent_at, received_at)
    fast = _valid_events(body, limits)
    if fast is not None:
        records = [record_from(game, event, received_at, skew) for event in fast]
        # A decoded string can only hold a NUL written as the escape \u0000 (JSON allows
        # no raw control characters): without one in the body, no field has a NUL.
        if _NUL_ESCAPE not in body or not any(_has_nul(r) for r in records):
            return records, []
    batch = decode_body(_batch_decoder, body)
    check_count(len(batch.events), limits, "events", "events")

    def convert(event: IncomingEvent, place: str) -> EventRecord | str:
        record = record_from(game, event, received_at, skew)
        if _has_nul(record):
            field = nul_field(("event_id", record.event_id), ("player_id", record.player_id))
            return f"NUL character - at `{place}.{field or 'type'}`"
        return record

    return parse_each(
        batch.events, _event_decoder, convert, limits=limits, where="events", noun="event"
    )


def decode_body(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """A request body as a whole, or :class:`BatchError` saying why it is unusable."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BatchError(f"body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BatchError(f"body is not valid JSON: {exc}") from None


def check_count(count: int, limits: IngestLimits, where: str, noun: str) -> None:
    """:class:`BatchTooLarge` if a batch holds more items than ``limits`` allow."""
    if count > limits.max_batch_events:
        raise BatchTooLarge(f"{where}: {count} {noun}; at most {limits.max_batch_events} per batch")


def parse_each(
    raws: Sequence[bytes | msgspec.Raw],
    decoder: msgspec.json.Decoder[T],
    convert: Callable[[T, str], EventRecord | str],
    *,
    limits: IngestLimits,
    where: str,
    noun: str,
) -> tuple[list[EventRecord], list[Rejection]]:
    """The loop every ingest format shares: each item is measured, decoded and converted
    on its own, so one bad item is rejected (with its place, ``$.WHERE[i]``, or ``$`` for
    a lone item when ``where`` is empty) and the others are accepted.

    ``convert`` gets the decoded item and its place and returns the record, or why the
    item is refused.
    """
    records: list[EventRecord] = []
    rejections: list[Rejection] = []
    for index, raw in enumerate(raws):
        place = f"$.{where}[{index}]" if where else "$"
        if len(raw) > limits.max_event_bytes:
            size = f"{noun} of {len(raw)} bytes; at most {limits.max_event_bytes}"
            rejections.append(Rejection(index, f"{size} - at `{place}`"))
            continue
        try:
            item = decoder.decode(raw)
        except msgspec.ValidationError as exc:
            rejections.append(Rejection(index, _located(str(exc), place)))
            continue
        except msgspec.DecodeError as exc:
            raise BatchError(f"body is not valid JSON: {exc}") from None
        outcome = convert(item, place)
        if isinstance(outcome, str):
            rejections.append(Rejection(index, outcome))
        else:
            records.append(outcome)
    return records, rejections


def _valid_events(body: bytes, limits: IngestLimits) -> list[IncomingEvent] | None:
    """All the events, if every one is valid and within the limits; else None."""
    try:
        events = _valid_decoder.decode(body).events
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    if len(events) > limits.max_batch_events or len(body) > limits.max_event_bytes:
        # The slow path tells which limit, and measures each event on its own.
        return None
    return events


def _has_nul(record: EventRecord) -> bool:
    return "\x00" in record.event_id or "\x00" in record.player_id or "\x00" in record.type


def _located(message: str, place: str) -> str:
    # msgspec says "... - at `$.ts`" (or nothing for the item itself): name the place
    # within the body instead.
    if " - at `$" in message:
        return message.replace(" - at `$", f" - at `{place}", 1)
    return f"{message} - at `{place}`"
