"""Player privacy: the erasure ledger (tombstones and receipts).

Revision ID: 0005p
Revises: 0004
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005p"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.execute("CREATE SEQUENCE player_erasures_revision")
    op.create_table(
        "player_erasures",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("game", sa.Text(), nullable=False),
        sa.Column("player_key", sa.Text(), nullable=False),
        sa.Column("player_id", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("stores", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column("broker_ends", postgresql.JSONB(), nullable=True),
        sa.Column("requested_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("completed_at", TZ, nullable=True),
        sa.Column("lifted_at", TZ, nullable=True),
        sa.Column(
            "revision",
            sa.BigInteger(),
            server_default=sa.text("nextval('player_erasures_revision')"),
            nullable=False,
        ),
        sa.CheckConstraint("status IN ('pending', 'done')", name="ck_player_erasures_status"),
        sa.PrimaryKeyConstraint("id", name="pk_player_erasures"),
    )
    op.create_index("ix_player_erasures_game_player_key", "player_erasures", ["game", "player_key"])
    op.create_index("ix_player_erasures_revision", "player_erasures", ["revision"])
    op.create_index(
        "ix_player_erasures_pending",
        "player_erasures",
        ["requested_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_table("player_erasures")
    op.execute("DROP SEQUENCE player_erasures_revision")
