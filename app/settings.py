"""Typed settings, read once from the environment (``PLAYERPULSE_*``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import msgspec

from app.domain.features import parse_window

PREFIX = "PLAYERPULSE_"
DEFAULT_FEATURES = Path(__file__).parent / "features.example.toml"

LogFormat = Literal["console", "json"]
BrokerKind = Literal["kafka", "memory"]


@dataclass(frozen=True, slots=True)
class Text:
    """How a variable's text becomes its field's value where the type alone does not say
    (``Annotated[T, Text(...)]``): ``parse`` raises ValueError, and the error names
    ``form``."""

    parse: Callable[[str], Any]
    form: str
    kind: str = ""
    """The type as the configuration page names it (``duration``, ``size``)."""


def _seconds(raw: str) -> int:
    return int(raw) if raw.isdigit() and int(raw) > 0 else parse_window(raw)


Duration = Annotated[
    int,
    Text(
        _seconds,
        "a duration: a positive integer followed by s, m, h or d, such as 24h",
        "duration",
    ),
]
"""Seconds, written as a duration (``60s``, ``30m``, ``24h``, ``7d``) or a number."""
UserPath = Annotated[Path, Text(lambda raw: Path(raw).expanduser(), "a path")]
"""A path; ``~`` is the user's home."""
AbsolutePath = Annotated[Path, Text(lambda raw: Path(raw).expanduser().resolve(), "a path")]
"""A path made absolute where it is read (``~`` is the user's home)."""


def _positive_seconds(raw: str) -> float:
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float(parse_window(raw))
    if not seconds > 0:
        raise ValueError(raw)
    return seconds


Seconds = Annotated[
    float, Text(_positive_seconds, "positive seconds or a duration such as 10s", "seconds")
]
"""Seconds, written as a number (``2.5``) or a duration (``10s``, ``5m``)."""


def _bytes(raw: str) -> int:
    from humanfriendly import InvalidSize, parse_size

    try:
        return int(raw) if raw.isdigit() else int(parse_size(raw, binary=True))
    except InvalidSize as exc:
        raise ValueError(raw) from exc


ByteSize = Annotated[int, Text(_bytes, "a size such as 256MiB (or bytes)", "size")]
"""Bytes, written as a number or a size (``256MiB``, ``1GB``)."""


@dataclass(frozen=True, slots=True)
class MinFree:
    """A free-space watermark: bytes, or a percentage of the file system's size."""

    bytes: int = 0
    percent: float = 0.0

    def threshold(self, total: int) -> int:
        """The least free bytes allowed on a file system of ``total`` bytes."""
        return self.bytes if self.percent == 0 else int(total * self.percent / 100)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent else f"{self.bytes} bytes"


def parse_min_free(text: str) -> MinFree:
    """``"5%"``, ``"500MB"``, ``"1GiB"`` or a plain number of bytes; ValueError otherwise."""
    from humanfriendly import InvalidSize, parse_size

    text = text.strip()
    if text.endswith("%"):
        percent = float(text[:-1])
        if not 0 <= percent < 100:
            raise ValueError(f"{text!r}: a percentage from 0 to 100")
        return MinFree(percent=percent)
    try:
        size = parse_size(text)
    except InvalidSize as exc:
        raise ValueError(f"{text!r} is neither a size (500MB, 1GiB) nor a percentage") from exc
    return MinFree(bytes=int(size))


def _min_free(raw: str) -> str:
    parse_min_free(raw)  # raises ValueError
    return raw


MinFreeSpace = Annotated[
    str,
    Text(_min_free, "a size such as 500MB or 1GiB, or a percentage such as 5%", "size or percent"),
]
"""A free-space watermark: a size, or a percentage of the file system."""

ALIASES = {"features": "features_path", "produce_timeout": "produce_timeout_s"}
"""Variables whose field is named otherwise (``PLAYERPULSE_FEATURES``: ``features_path``)."""


def variable(field_name: str) -> str:
    """The environment variable of a :class:`Settings` field."""
    short = {name: alias for alias, name in ALIASES.items()}.get(field_name, field_name)
    return PREFIX + short.upper()


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the process can be told from outside. Field docs name the variable."""

    data_dir: Path = Path("./var")
    """PLAYERPULSE_DATA_DIR: embedded PostgreSQL data, the lake, model files."""
    database_url: str | None = None
    """PLAYERPULSE_DATABASE_URL: a PostgreSQL URL; unset runs an embedded PostgreSQL."""
    kafka_brokers: str | None = None
    """PLAYERPULSE_KAFKA_BROKERS: host:port[,host:port]; unset runs the embedded broker."""
    broker: BrokerKind = "kafka"
    """PLAYERPULSE_BROKER: the embedded broker, when no brokers are configured: ``kafka``
    (Apache Kafka, its log on disk under the data dir) or ``memory`` (Tansu in memory:
    loses everything when it stops; for quick experiments only)."""
    workers: int = 0
    """PLAYERPULSE_WORKERS: worker processes of `serve` (HTTP and fold); 0: one per core."""
    features_path: Path = DEFAULT_FEATURES
    """PLAYERPULSE_FEATURES: the features file (TOML)."""
    log_format: LogFormat = "json"
    """PLAYERPULSE_LOG_FORMAT: console or json; default console on a terminal, else json."""
    log_level: str = "info"
    """PLAYERPULSE_LOG_LEVEL: debug, info, warning or error."""
    events_topic: str = "events"
    """PLAYERPULSE_EVENTS_TOPIC: the Kafka topic events are written to."""
    predictions_topic: str = "predictions"
    """PLAYERPULSE_PREDICTIONS_TOPIC: the Kafka topic predictions are logged to."""
    topic_partitions: int = 8
    """PLAYERPULSE_TOPIC_PARTITIONS: partitions of the events topic when it is created."""
    topic_replication: int = 0
    """PLAYERPULSE_TOPIC_REPLICATION: replication factor; 0 means min(3, brokers)."""
    consumer_group: str = "playerpulse"
    """PLAYERPULSE_CONSUMER_GROUP: Kafka consumer group (and Faust app id)."""
    max_body_bytes: int = 500 * 1024
    """PLAYERPULSE_MAX_BODY_BYTES: largest ingest body, compressed or not (Segment: 500 KB)."""
    max_event_bytes: int = 32 * 1024
    """PLAYERPULSE_MAX_EVENT_BYTES: largest single event (Segment: 32 KB); larger: rejected."""
    max_batch_events: int = 2000
    """PLAYERPULSE_MAX_BATCH_EVENTS: most events in one request; more: 413."""
    rate_limit_events_s: float = 100_000.0
    """PLAYERPULSE_RATE_LIMIT_EVENTS_S: events/s per key and process (0: off); over: 429."""
    max_in_flight_events: int = 200_000
    """PLAYERPULSE_MAX_IN_FLIGHT_EVENTS: events awaiting the broker before 503s."""
    produce_timeout_s: Seconds = 10.0
    """PLAYERPULSE_PRODUCE_TIMEOUT: longest wait for the broker to acknowledge a batch, after
    which ingest answers 503 with Retry-After (PLAYERPULSE_PRODUCE_TIMEOUT_S also works)."""
    disk_min_free: MinFreeSpace = "5%"
    """PLAYERPULSE_DISK_MIN_FREE: below this free space (a size such as 500MB or 1GiB, or a
    percentage of the file system) in any directory the service writes, ingest answers 507
    and the lake archive pauses until space returns."""
    db_timeout_s: Seconds = 5.0
    """PLAYERPULSE_DB_TIMEOUT_S: longest a read waits for PostgreSQL (connect or query)
    before it answers 503."""
    fold_cache_bytes: ByteSize = 256 * 1024 * 1024
    """PLAYERPULSE_FOLD_CACHE_BYTES: memory (estimated) of the fold's cache of player states
    in each worker, a size such as 256MiB; 0 keeps none."""
    fold_batch_max: int = 500
    """PLAYERPULSE_FOLD_BATCH_MAX: most topic messages (each one request's events for one
    partition) the fold commits in one transaction."""
    fold_batch_within_s: float = 0.01
    """PLAYERPULSE_FOLD_BATCH_WITHIN_S: longest the fold waits to fill a micro-batch."""
    lake_flush_s: float = 10.0
    """PLAYERPULSE_LAKE_FLUSH_S: longest an event waits in memory before its Parquet file."""
    lake_flush_events: int = 20_000
    """PLAYERPULSE_LAKE_FLUSH_EVENTS: events that trigger an early Parquet flush."""
    dedup_horizon: Duration = 86400
    """PLAYERPULSE_DEDUP_HORIZON: seconds (received time) an event id is remembered, to
    skip a client's resend; set as a duration such as 60s, 30m, 24h or 7d, or seconds."""
    hop_sample: float = 0.01
    """PLAYERPULSE_HOP_SAMPLE: the fraction (0 to 1) of folded events whose per-hop times
    are written to the lake (``hops``); 0 writes none."""
    lake_url: str | None = None
    """PLAYERPULSE_LAKE_URL: the hot lake root, a directory or s3://...; unset: DATA_DIR/lake."""
    lake_cold_url: str | None = None
    """PLAYERPULSE_LAKE_COLD_URL: where old partitions move (directory or s3://); unset: never."""
    lake_cold_after_days: int = 30
    """PLAYERPULSE_LAKE_COLD_AFTER_DAYS: partitions older than this many days move cold."""
    lake_compact_interval_s: float = 600.0
    """PLAYERPULSE_LAKE_COMPACT_INTERVAL_S: how often `serve` compacts the lake; 0: never."""
    lake_compact_target_rows: int = 1_000_000
    """PLAYERPULSE_LAKE_COMPACT_TARGET_ROWS: most rows per compacted file."""
    lake_retention_days: int | None = None
    """PLAYERPULSE_LAKE_RETENTION_DAYS: partitions dated longer ago are dropped; unset: kept."""
    kafka_home: AbsolutePath | None = None
    """PLAYERPULSE_KAFKA_HOME: where the embedded Kafka's jars and class archive are cached
    (default ``~/.cache/playerpulse/kafka-VERSION``)."""
    kafka_heap_opts: str = "-Xms128m -Xmx768m"
    """PLAYERPULSE_KAFKA_HEAP_OPTS: JVM heap options of the embedded Kafka."""
    kafka_jvm_opts: str = ""
    """PLAYERPULSE_KAFKA_JVM_OPTS: more JVM options for the embedded Kafka."""
    kafka_extra_props: str = ""
    """PLAYERPULSE_KAFKA_EXTRA_PROPS: ``key=value`` lines appended to the embedded Kafka's
    server.properties (later lines win)."""
    revenue_event: str = "purchase"
    """PLAYERPULSE_REVENUE_EVENT: the event type the arpdau report sums."""
    revenue_field: str = "amount"
    """PLAYERPULSE_REVENUE_FIELD: the props field (dotted) holding the amount."""
    model_max_bytes: int = 100 * 1024 * 1024
    """PLAYERPULSE_MODEL_MAX_BYTES: largest ONNX upload."""
    key_cache_s: float = 30.0
    """PLAYERPULSE_KEY_CACHE_S: how long a resolved API key is trusted without a lookup."""
    guard_window_s: float = 60.0
    """PLAYERPULSE_GUARD_WINDOW_S: the traffic window a rollout guard judges a version on."""
    guard_min_requests: int = 100
    """PLAYERPULSE_GUARD_MIN_REQUESTS: fewest predictions of a version in a window (in one
    worker) for the guard to judge it; quieter windows are not judged."""
    cors_origins: str = ""
    """PLAYERPULSE_CORS_ORIGINS: comma-separated browser origins (or ``*``) allowed on the
    ingest routes of every game; read routes need a game's own (PUT /v1/admin/cors)."""
    tls_cert: UserPath | None = None
    """PLAYERPULSE_TLS_CERT: PEM certificate (chain) to serve HTTPS; needs TLS_KEY."""
    tls_key: UserPath | None = None
    """PLAYERPULSE_TLS_KEY: PEM private key of TLS_CERT."""
    segments_topic: str = "segment-changes"
    """PLAYERPULSE_SEGMENTS_TOPIC: the Kafka topic segment transitions are written to
    (keyed by player, one record per transition)."""
    segment_changes_keep: Duration = 7 * 86400
    """PLAYERPULSE_SEGMENT_CHANGES_KEEP: how long the transitions outbox keeps a
    transition once every relay (topic, lake, each webhook) has delivered it (SSE streams
    resume within it); a duration such as 7d."""
    segment_clock_s: float = 1.0
    """PLAYERPULSE_SEGMENT_CLOCK_S: how often each process looks for players whose windows
    moved (time-driven segment exits) and for new segments to evaluate over profiles."""
    webhook_allow_private: bool = False
    """PLAYERPULSE_WEBHOOK_ALLOW_PRIVATE: accept webhook URLs on private, loopback or
    link-local addresses (refused by default: SSRF)."""
    webhook_timeout_s: float = 5.0
    """PLAYERPULSE_WEBHOOK_TIMEOUT_S: longest wait for a webhook receiver's answer."""
    webhook_retries: int = 8
    """PLAYERPULSE_WEBHOOK_RETRIES: attempts after the first before a delivery is kept as
    failed (GET /v1/admin/webhooks/{id}/failed); waits double from WEBHOOK_BACKOFF_S."""
    webhook_backoff_s: float = 0.5
    """PLAYERPULSE_WEBHOOK_BACKOFF_S: the first wait before a webhook delivery is retried."""

    @property
    def cors_everywhere(self) -> frozenset[str]:
        """The origins of PLAYERPULSE_CORS_ORIGINS, parsed."""
        from app.domain.cors import parse_origins

        return parse_origins(self.cors_origins.split(","), allow_any=True)

    @property
    def lake_root(self) -> str:
        """The hot root of the Parquet lake as a directory or ``s3://`` URL."""
        return self.lake_url or str(self.data_dir / "lake")

    @property
    def lake_dir(self) -> Path:
        """The hot root of the Parquet lake as a local path (see :attr:`lake_root`)."""
        if self.lake_url:
            return Path(self.lake_url.removeprefix("file://"))
        return self.data_dir / "lake"

    @property
    def worker_count(self) -> int:
        """How many worker processes `serve` runs: the setting, or one per usable core."""
        if self.workers > 0:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)

    @property
    def embedded_postgres(self) -> bool:
        """True when no database URL is configured."""
        return self.database_url is None

    @property
    def embedded_broker(self) -> bool:
        """True when no Kafka brokers are configured."""
        return self.kafka_brokers is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every ``PLAYERPULSE_*`` variable; unknown ones are ignored."""
        env = os.environ if environ is None else environ
        default_format: LogFormat = "console" if sys.stderr.isatty() else "json"
        values: dict[str, Any] = {"log_format": default_format}
        hints = get_type_hints(cls, include_extras=True)
        for key, raw in env.items():
            if not key.startswith(PREFIX):
                continue
            name = key[len(PREFIX) :].lower()
            name = ALIASES.get(name, name)
            if name not in hints or raw == "":
                continue
            values[name] = _convert(key, raw, hints[name])
        settings = cls(**values)
        for name, url in (
            ("LAKE_URL", settings.lake_url),
            ("LAKE_COLD_URL", settings.lake_cold_url),
        ):
            scheme = url.split("://", 1)[0] if url and "://" in url else "file"
            if scheme not in ("file", "s3"):
                raise SettingsError(
                    f"{PREFIX}{name}={url!r}: a directory, file:// or s3://bucket/prefix"
                )
        if settings.broker not in ("kafka", "memory"):
            raise SettingsError(f"{PREFIX}BROKER must be kafka or memory, not {settings.broker!r}")
        if settings.guard_window_s <= 0 or settings.guard_min_requests < 1:
            raise SettingsError(
                f"{PREFIX}GUARD_WINDOW_S must be positive and {PREFIX}GUARD_MIN_REQUESTS at least 1"
            )
        if settings.lake_retention_days is not None and settings.lake_retention_days < 0:
            raise SettingsError(f"{PREFIX}LAKE_RETENTION_DAYS must be 0 or more (unset: keep)")
        try:
            settings.cors_everywhere  # noqa: B018 - validated once, here
        except ValueError as exc:
            raise SettingsError(f"{PREFIX}CORS_ORIGINS: {exc}") from None
        if (settings.tls_cert is None) != (settings.tls_key is None):
            raise SettingsError(f"{PREFIX}TLS_CERT and {PREFIX}TLS_KEY go together")
        if settings.segment_clock_s <= 0 or settings.webhook_timeout_s <= 0:
            raise SettingsError(
                f"{PREFIX}SEGMENT_CLOCK_S and {PREFIX}WEBHOOK_TIMEOUT_S must be positive"
            )
        if settings.webhook_retries < 0 or settings.webhook_backoff_s < 0:
            raise SettingsError(
                f"{PREFIX}WEBHOOK_RETRIES and {PREFIX}WEBHOOK_BACKOFF_S must be 0 or more"
            )
        if settings.workers < 0:
            raise SettingsError(f"{PREFIX}WORKERS must be 0 (one per core) or more")
        if not 0 <= settings.hop_sample <= 1:
            raise SettingsError(f"{PREFIX}HOP_SAMPLE must be a fraction from 0 to 1")
        if settings.log_format not in ("console", "json"):
            raise SettingsError(
                f"{PREFIX}LOG_FORMAT must be console or json, not {settings.log_format!r}"
            )
        return settings

    def with_endpoints(self, *, database_url: str, kafka_brokers: str) -> Settings:
        """A copy pointing at concrete services (used once embedded ones are running)."""
        return replace(self, database_url=database_url, kafka_brokers=kafka_brokers)


def _convert(key: str, raw: str, hint: Any) -> Any:
    """``raw`` as the field's annotation says: a :class:`Text` parser if it has one, a
    ``Literal`` checked against its values, anything else by msgspec (``int``, ``float``,
    ``str``, ``Path``, each optional)."""
    if get_origin(hint) in (Union, UnionType):  # optional: unset is the default
        (hint,) = (arg for arg in get_args(hint) if arg is not type(None))
    if get_origin(hint) is Annotated:
        text = next(m for m in hint.__metadata__ if isinstance(m, Text))
        try:
            return text.parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{key}={raw!r} is not {text.form}") from exc
    if get_origin(hint) is Literal:
        if raw not in get_args(hint):
            raise SettingsError(f"{key} must be {' or '.join(get_args(hint))}, not {raw!r}")
        return raw
    try:
        return msgspec.convert(raw, hint, strict=False, dec_hook=_decode)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"{key}={raw!r} is not a valid {hint.__name__}") from exc


def _decode(kind: type, raw: Any) -> Any:
    if kind is Path and isinstance(raw, str):
        return Path(raw)
    raise NotImplementedError(kind)


@dataclass(frozen=True, slots=True)
class ObjectStoreSettings:
    """S3 access for an ``s3://`` lake, from the standard ``AWS_*`` variables (as boto3 and
    the AWS CLI read them). Unset keys and region fall to the AWS SDK's own chain
    (``AWS_PROFILE``, ``~/.aws/credentials``, instance roles)."""

    access_key: str | None = None
    """AWS_ACCESS_KEY_ID."""
    secret_key: str | None = field(default=None, repr=False)
    """AWS_SECRET_ACCESS_KEY (never printed)."""
    session_token: str | None = field(default=None, repr=False)
    """AWS_SESSION_TOKEN."""
    region: str | None = None
    """AWS_REGION, else AWS_DEFAULT_REGION."""
    endpoint_url: str | None = None
    """AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL: an S3-compatible server (MinIO,
    SeaweedFS, ...), addressed path-style."""
    profile: str | None = None
    """AWS_PROFILE: a profile of ``~/.aws/credentials`` (when no keys are set)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ObjectStoreSettings:
        """Read the ``AWS_*`` variables."""
        env = os.environ if environ is None else environ

        def first(*names: str) -> str | None:
            return next((env[n] for n in names if env.get(n)), None)

        return cls(
            access_key=first("AWS_ACCESS_KEY_ID"),
            secret_key=first("AWS_SECRET_ACCESS_KEY"),
            session_token=first("AWS_SESSION_TOKEN"),
            region=first("AWS_REGION", "AWS_DEFAULT_REGION"),
            endpoint_url=first("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            profile=first("AWS_PROFILE"),
        )
