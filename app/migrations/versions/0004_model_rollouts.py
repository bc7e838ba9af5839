"""Model rollouts: which versions serve what share of players, a shadow, and history.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "model_rollouts",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("game", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("split", postgresql.JSONB(), nullable=False),
        sa.Column("shadow", sa.Integer(), nullable=True),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_rollouts"),
    )
    op.create_index("ix_model_rollouts_game_name_id", "model_rollouts", ["game", "name", "id"])
    # Existing models: the newest version serves everything, as before rollouts existed.
    op.execute(
        """
        INSERT INTO model_rollouts (game, name, split)
        SELECT game, name, jsonb_build_object(max(version)::text, 100)
        FROM models GROUP BY game, name
        """
    )


def downgrade() -> None:
    op.drop_index("ix_model_rollouts_game_name_id", table_name="model_rollouts")
    op.drop_table("model_rollouts")
