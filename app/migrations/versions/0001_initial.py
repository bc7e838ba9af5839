"""Initial schema: API keys, profiles, applied event ids, failed events, models.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("game", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("role IN ('ingest', 'read', 'admin')", name="ck_api_keys_role"),
        sa.PrimaryKeyConstraint("key_hash", name="pk_api_keys"),
    )
    op.create_table(
        "profiles",
        sa.Column("game", sa.Text(), nullable=False),
        sa.Column("player_id", sa.Text(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("events_applied", sa.BigInteger(), nullable=False),
        sa.Column("last_event_at", TZ, nullable=True),
        sa.Column("last_received_at", TZ, nullable=True),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("game", "player_id", name="pk_profiles"),
    )
    op.create_table(
        "applied_events",
        sa.Column("game", sa.Text(), nullable=False),
        sa.Column("player_id", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("applied_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("game", "player_id", "event_id", name="pk_applied_events"),
    )
    op.create_index("ix_applied_events_applied_at", "applied_events", ["applied_at"])
    op.create_table(
        "failed_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("game", sa.Text(), nullable=True),
        sa.Column("player_id", sa.Text(), nullable=True),
        sa.Column("event_id", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("failed_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_failed_events"),
    )
    op.create_index("ix_failed_events_game_failed_at", "failed_events", ["game", "failed_at"])
    op.create_table(
        "models",
        sa.Column("game", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("onnx", sa.LargeBinary(), nullable=False),
        sa.Column("manifest", postgresql.JSONB(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("game", "name", "version", name="pk_models"),
    )


def downgrade() -> None:
    op.drop_table("models")
    op.drop_index("ix_failed_events_game_failed_at", table_name="failed_events")
    op.drop_table("failed_events")
    op.drop_index("ix_applied_events_applied_at", table_name="applied_events")
    op.drop_table("applied_events")
    op.drop_table("profiles")
    op.drop_table("api_keys")
