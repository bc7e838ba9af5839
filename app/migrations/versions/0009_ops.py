"""Operations: key ids, names, expiry and revocation; the hash-chained audit log; CORS
origins per game.

Keys made before ids existed get the first 12 characters of their hash as id (they
carry no id of their own, so they are found by hash when presented).

Revision ID: 0009_ops
Revises: 0008
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_ops"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("id", sa.Text(), nullable=True))
    op.execute("UPDATE api_keys SET id = substr(key_hash, 1, 12)")
    op.alter_column("api_keys", "id", nullable=False)
    op.create_unique_constraint("uq_api_keys_id", "api_keys", ["id"])
    op.add_column("api_keys", sa.Column("name", sa.Text(), nullable=True))
    op.add_column("api_keys", sa.Column("expires_at", TZ, nullable=True))
    op.add_column("api_keys", sa.Column("revoked_at", TZ, nullable=True))
    op.add_column("api_keys", sa.Column("last_used_at", TZ, nullable=True))
    op.add_column("api_keys", sa.Column("replaced_by", sa.Text(), nullable=True))
    op.create_index("ix_api_keys_game", "api_keys", ["game"])
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("game", sa.Text(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("prev_hash", sa.Text(), nullable=False),
        sa.Column("hash", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_game_seq", "audit_log", ["game", "seq"])
    op.create_table(
        "game_cors",
        sa.Column("game", sa.Text(), nullable=False),
        sa.Column("origins", sa.ARRAY(sa.Text()), nullable=False),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("game", name="pk_game_cors"),
    )


def downgrade() -> None:
    op.drop_table("game_cors")
    op.drop_index("ix_audit_log_game_seq", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_api_keys_game", table_name="api_keys")
    for column in ("replaced_by", "last_used_at", "revoked_at", "expires_at", "name"):
        op.drop_column("api_keys", column)
    op.drop_constraint("uq_api_keys_id", "api_keys", type_="unique")
    op.drop_column("api_keys", "id")
