"""Player privacy: the erasure ledger (tombstones and receipts).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
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
    # One round trip for the fold: take the tombstone lock shared, then read the revision.
    # A VOLATILE function takes a fresh snapshot per statement, so the revision read is
    # the one after any erasure that held the lock exclusively has committed.
    op.execute(
        """
        CREATE FUNCTION playerpulse_tombstone_revision() RETURNS bigint
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock_shared(hashtext('playerpulse:tombstones'));
            RETURN (SELECT coalesce(max(revision), 0) FROM player_erasures);
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION playerpulse_tombstone_revision()")
    op.drop_table("player_erasures")
    op.execute("DROP SEQUENCE player_erasures_revision")
