"""Segments: definitions, memberships, due times, the transitions outbox, relay cursors,
webhooks and their failed deliveries.

Revision ID: 0010_segments
Revises: 0009_ops
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0010_segments"
down_revision: str | None = "0009_ops"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "segment_defs",
        sa.Column("game", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("where_expr", sa.Text(), nullable=False),
        sa.Column("announce", sa.Boolean(), nullable=False, server_default="true"),
        sa.Column("backfill_state", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("backfill_game", sa.Text(), nullable=True),
        sa.Column("backfill_after", sa.Text(), nullable=True),
        sa.Column("backfill_done", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "backfill_state IN ('pending', 'done')", name="ck_segment_defs_backfill_state"
        ),
        sa.PrimaryKeyConstraint("game", "name", name="pk_segment_defs"),
    )
    op.create_table(
        "segment_members",
        sa.Column("game", sa.Text(), nullable=False),
        sa.Column("segment", sa.Text(), nullable=False),
        sa.Column("player_id", sa.Text(), nullable=False),
        sa.Column("entered_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("game", "segment", "player_id", name="pk_segment_members"),
    )
    op.create_index("ix_segment_members_game_player_id", "segment_members", ["game", "player_id"])
    op.create_table(
        "segment_due",
        sa.Column("game", sa.Text(), nullable=False),
        sa.Column("player_id", sa.Text(), nullable=False),
        sa.Column("due_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("game", "player_id", name="pk_segment_due"),
    )
    op.create_index("ix_segment_due_due_at", "segment_due", ["due_at"])
    op.create_table(
        "segment_changes",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("game", sa.Text(), nullable=False),
        sa.Column("player_id", sa.Text(), nullable=False),
        sa.Column("segment", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("features", JSONB(), nullable=False),
        sa.CheckConstraint("kind IN ('entered', 'left')", name="ck_segment_changes_kind"),
        sa.PrimaryKeyConstraint("id", name="pk_segment_changes"),
    )
    op.create_index("ix_segment_changes_game_id", "segment_changes", ["game", "id"])
    op.create_index(
        "ix_segment_changes_game_player_id", "segment_changes", ["game", "player_id"]
    )
    op.create_table(
        "segment_cursors",
        sa.Column("consumer", sa.Text(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("consumer", name="pk_segment_cursors"),
    )
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("game", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("events", sa.ARRAY(sa.Text()), nullable=False),
        sa.Column("segments", sa.ARRAY(sa.Text()), nullable=True),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_webhooks"),
    )
    op.create_index("ix_webhooks_game", "webhooks", ["game"])
    op.create_table(
        "webhook_failures",
        sa.Column("webhook_id", sa.Text(), nullable=False),
        sa.Column("change_id", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("failed_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("webhook_id", "change_id", name="pk_webhook_failures"),
    )


def downgrade() -> None:
    for table in (
        "webhook_failures",
        "webhooks",
        "segment_cursors",
        "segment_changes",
        "segment_due",
        "segment_members",
        "segment_defs",
    ):
        op.drop_table(table)
