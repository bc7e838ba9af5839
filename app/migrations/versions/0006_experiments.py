"""Experiments: model outcomes, training feature statistics, rollout guards and removals.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("models", sa.Column("training_stats", postgresql.JSONB(), nullable=True))
    op.add_column("model_rollouts", sa.Column("guard", postgresql.JSONB(), nullable=True))
    op.create_table(
        "model_outcomes",
        sa.Column("game", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("within_s", sa.Integer(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("game", "name", name="pk_model_outcomes"),
    )
    op.create_table(
        "model_guard_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("game", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("p99_ms", sa.Float(), nullable=False),
        sa.Column("split_before", postgresql.JSONB(), nullable=False),
        sa.Column("split_after", postgresql.JSONB(), nullable=False),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_guard_events"),
    )
    op.create_index(
        "ix_model_guard_events_game_name_id", "model_guard_events", ["game", "name", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_model_guard_events_game_name_id", table_name="model_guard_events")
    op.drop_table("model_guard_events")
    op.drop_table("model_outcomes")
    op.drop_column("model_rollouts", "guard")
    op.drop_column("models", "training_stats")
