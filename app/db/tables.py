"""SQLAlchemy table definitions; Alembic migrations are written against these."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Sequence,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

TZ = DateTime(timezone=True)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_hash", Text, primary_key=True),
    Column("game", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("created_at", TZ, nullable=False, server_default=func.now()),
    # The public id (``pp_<id>_<secret>``), safe to log; unique (migration 0009_ops).
    Column("id", Text, nullable=False, unique=True),
    Column("name", Text),
    Column("expires_at", TZ),
    # In the future for a rotated key: it keeps working until then (the overlap).
    Column("revoked_at", TZ),
    Column("last_used_at", TZ),
    Column("replaced_by", Text),
    CheckConstraint("role IN ('ingest', 'read', 'admin')", name="role"),
)

# Append-only; each record's hash covers its content and the previous record's hash
# (app/domain/audit.py), so an altered or removed row breaks the chain.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", TZ, nullable=False),
    Column("game", Text),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("request_id", Text),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
)

# Browser origins a game allows on top of PLAYERPULSE_CORS_ORIGINS (PUT /v1/admin/cors).
game_cors = Table(
    "game_cors",
    metadata,
    Column("game", Text, primary_key=True),
    Column("origins", ARRAY(Text), nullable=False),
    Column("updated_at", TZ, nullable=False, server_default=func.now()),
)

# Stored with fillfactor 70 (migration 0008): updates stay in their page (HOT) and the
# page's dead row versions are pruned as it goes, instead of growing the table.
profiles = Table(
    "profiles",
    metadata,
    Column("game", Text, primary_key=True),
    Column("player_id", Text, primary_key=True),
    Column("state", LargeBinary, nullable=False),
    Column("events_applied", BigInteger, nullable=False),
    Column("last_event_at", TZ),
    Column("last_received_at", TZ),
    Column("updated_at", TZ, nullable=False),
    # Bumped on every write, so a process holding a state in memory can tell it is current.
    Column("version", BigInteger, nullable=False, server_default="0"),
    # Hashes of the event ids the profile absorbed within the dedup horizon, by received
    # time (app/domain/dedup.py): written with the state, so a client resend is skipped.
    Column("seen_ids", LargeBinary),
)

failed_events = Table(
    "failed_events",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("game", Text),
    Column("player_id", Text),
    Column("event_id", Text),
    Column("reason", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("failed_at", TZ, nullable=False, server_default=func.now()),
    Index(None, "game", "failed_at"),
)

models = Table(
    "models",
    metadata,
    Column("game", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("onnx", LargeBinary, nullable=False),
    Column("manifest", JSONB, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("created_at", TZ, nullable=False, server_default=func.now()),
    # Per feature, the training set's bins: what live features are compared with (drift).
    Column("training_stats", JSONB(none_as_null=True)),
)

# The fingerprint of each feature the stored profiles were built with: when the features
# file changes a feature (or adds one), profiles are rebuilt from the lake.
feature_defs = Table(
    "feature_defs",
    metadata,
    Column("name", Text, primary_key=True),
    Column("fingerprint", Text, nullable=False),
    Column("updated_at", TZ, nullable=False, server_default=func.now()),
)

# Every change of which versions serve a model, newest last: the newest row is the
# current rollout, the one before it is what a rollback returns to.
model_rollouts = Table(
    "model_rollouts",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("game", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("split", JSONB, nullable=False),
    Column("shadow", Integer),
    Column("guard", JSONB(none_as_null=True)),
    Column("created_at", TZ, nullable=False, server_default=func.now()),
    Index(None, "game", "name", "id"),
)

# What counts as a model's outcome (experiment reports): one row per model.
model_outcomes = Table(
    "model_outcomes",
    metadata,
    Column("game", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("event", Text, nullable=False),
    Column("within_s", Integer, nullable=False),
    Column("value", Text, nullable=False),
    Column("updated_at", TZ, nullable=False, server_default=func.now()),
)

# Versions a guard took out of a split, and why.
model_guard_events = Table(
    "model_guard_events",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("game", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("requests", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("p99_ms", Float, nullable=False),
    Column("split_before", JSONB, nullable=False),
    Column("split_after", JSONB, nullable=False),
    Column("created_at", TZ, nullable=False, server_default=func.now()),
    Index(None, "game", "name", "id"),
)

# How far the fold has committed each partition of the events topic (the offset of the
# last message whose events are all folded), for read-your-writes: a read that waits
# for a request's events waits for its partition to reach the request's offset.
fold_progress = Table(
    "fold_progress",
    metadata,
    Column("topic", Text, primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("committed_offset", BigInteger, nullable=False),
    Column("updated_at", TZ, nullable=False, server_default=func.now()),
    # The broker time (ms) of the message at that offset: a message at or below the
    # offset is a redelivery only if it is no newer (a recreated topic restarts at 0).
    Column("appended_ms", BigInteger),
)

# The erasure ledger: one row per erasure request, and the tombstone that keeps it in
# force. The player is named by ``player_key`` (a hash of game and id); the id itself is
# kept only while the erasure is pending (its stores are searched by it), then cleared.
erasure_revision = Sequence("player_erasures_revision", metadata=metadata)

player_erasures = Table(
    "player_erasures",
    metadata,
    Column("id", Text, primary_key=True),
    Column("game", Text, nullable=False),
    Column("player_key", Text, nullable=False),
    Column("player_id", Text),
    Column("status", Text, nullable=False),
    Column("stores", JSONB, nullable=False, server_default="{}"),
    Column("broker_ends", JSONB),
    Column("requested_at", TZ, nullable=False, server_default=func.now()),
    Column("completed_at", TZ),
    Column("lifted_at", TZ),
    # Bumped on every change of the ledger: a process compares the newest with its own.
    Column("revision", BigInteger, erasure_revision, nullable=False),
    CheckConstraint("status IN ('pending', 'done')", name="status"),
    Index(None, "game", "player_key"),
    Index(None, "revision"),
)

# Segments a game defined through the admin API; the features file's are recorded with
# game "" (every game has them). A new or changed one is evaluated over the existing
# profiles by whichever process takes it first (``backfill_after``: where it got to).
segment_defs = Table(
    "segment_defs",
    metadata,
    Column("game", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("where_expr", Text, nullable=False),
    Column("announce", Boolean, nullable=False, server_default="true"),
    Column("backfill_state", Text, nullable=False, server_default="pending"),
    Column("backfill_game", Text),
    Column("backfill_after", Text),
    Column("backfill_done", BigInteger, nullable=False, server_default="0"),
    Column("created_at", TZ, nullable=False, server_default=func.now()),
    Column("updated_at", TZ, nullable=False, server_default=func.now()),
    CheckConstraint("backfill_state IN ('pending', 'done')", name="backfill_state"),
)

# Who is in which segment now; written by the fold with the profile.
segment_members = Table(
    "segment_members",
    metadata,
    Column("game", Text, primary_key=True),
    Column("segment", Text, primary_key=True),
    Column("player_id", Text, primary_key=True),
    Column("entered_at", TZ, nullable=False),
    Index(None, "game", "player_id"),
)

# When a player's windowed features next change with no event (a time-driven exit may
# happen then): written with the profile, found by the segment clock by ``due_at``.
segment_due = Table(
    "segment_due",
    metadata,
    Column("game", Text, primary_key=True),
    Column("player_id", Text, primary_key=True),
    Column("due_at", TZ, nullable=False),
    Index(None, "due_at"),
)

# The outbox: every transition, in commit order of its id; delivered from here to the
# Kafka topic, webhooks, SSE streams and the lake, each from its own cursor.
segment_changes = Table(
    "segment_changes",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("game", Text, nullable=False),
    Column("player_id", Text, nullable=False),
    Column("segment", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("at", TZ, nullable=False),
    Column("features", JSONB, nullable=False),
    Index(None, "game", "id"),
    Index(None, "game", "player_id"),
    CheckConstraint("kind IN ('entered', 'left')", name="kind"),
)

# How far each relay of the outbox (the Kafka topic, the lake, each webhook) got.
segment_cursors = Table(
    "segment_cursors",
    metadata,
    Column("consumer", Text, primary_key=True),
    Column("last_id", BigInteger, nullable=False),
    Column("updated_at", TZ, nullable=False, server_default=func.now()),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", Text, primary_key=True),
    Column("game", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("secret", Text, nullable=False),
    Column("events", ARRAY(Text), nullable=False),
    Column("segments", ARRAY(Text)),
    Column("created_at", TZ, nullable=False, server_default=func.now()),
    Index(None, "game"),
)

# Deliveries that exhausted their retries: kept, listed, and sent again on request.
webhook_failures = Table(
    "webhook_failures",
    metadata,
    Column("webhook_id", Text, primary_key=True),
    Column("change_id", BigInteger, primary_key=True),
    Column("attempts", Integer, nullable=False),
    Column("error", Text, nullable=False),
    Column("failed_at", TZ, nullable=False, server_default=func.now()),
)
