"""Bounded dedup: id hashes with the profile (``profiles.seen_ids``), no ``applied_events``.

``fold_progress`` also keeps the broker time of the message at its offset, so that the
fold can tell a redelivery (at or below the offset, no newer) from a recreated topic.

The ids applied in the last day (the default horizon) are carried over as hashes, so a
resend of an event applied just before the upgrade is still recognised. The downgrade
recreates ``applied_events`` empty: hashes cannot be turned back into ids, so the older
version starts with nothing remembered (a resend of an earlier event would count again).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from collections.abc import Sequence
from itertools import groupby
from operator import itemgetter

import sqlalchemy as sa
from alembic import op

from app.domain.dedup import SeenIds, bucket_width_s, event_hash

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
CARRIED_S = 86400
WRITE_PLAYERS = 1_000


def upgrade() -> None:
    op.add_column("profiles", sa.Column("seen_ids", sa.LargeBinary(), nullable=True))
    op.add_column("fold_progress", sa.Column("appended_ms", sa.BigInteger(), nullable=True))
    # Room in each page for the next version of its rows: a profile update then stays in
    # its page (a HOT update) and the page's dead versions are pruned as it goes, so the
    # table does not grow with every update until a vacuum (new pages: existing ones
    # keep theirs until rewritten).
    op.execute("ALTER TABLE profiles SET (fillfactor = 70)")
    _carry_over()
    op.drop_index("ix_applied_events_applied_at", table_name="applied_events")
    op.drop_table("applied_events")


def _carry_over() -> None:
    """Each player's ids of the last day, hashed into its ``seen_ids``.

    ``WRITE_PLAYERS`` profiles at a time, in key order, each range's ids read by the
    primary key: memory holds one range's ids, whatever the size of ``applied_events`` (a
    busy service can hold hundreds of millions of rows there). No server-side cursor: an
    open one would keep ``applied_events`` in use when the table is dropped.
    """
    conn = op.get_bind()
    width = bucket_width_s(CARRIED_S)
    after: tuple[str, str] = ("", "")
    while keys := conn.execute(_PROFILES, {"g": after[0], "p": after[1], "n": WRITE_PLAYERS}).all():
        last = (keys[-1][0], keys[-1][1])
        rows = conn.execute(
            _IDS, {"g": after[0], "p": after[1], "lg": last[0], "lp": last[1], "age": CARRIED_S}
        )
        pending: list[dict[str, object]] = []
        for (game, player), ids in groupby(rows, key=itemgetter(0, 1)):
            seen = SeenIds()
            for _, _, event_id, at in ids:
                seen.add(event_hash(game, player, event_id), int(at), width)
            pending.append({"s": seen.encode(), "g": game, "p": player})
        _write(conn, pending)
        after = last


_PROFILES = sa.text(
    "SELECT game, player_id FROM profiles WHERE (game, player_id) > (:g, :p) "
    "ORDER BY game, player_id LIMIT :n"
)
_IDS = sa.text(
    "SELECT a.game, a.player_id, a.event_id, CAST(extract(epoch FROM a.applied_at) AS bigint) "
    "FROM applied_events a JOIN profiles p USING (game, player_id) "
    "WHERE (a.game, a.player_id) > (:g, :p) AND (a.game, a.player_id) <= (:lg, :lp) "
    "AND a.applied_at > now() - make_interval(secs => :age) "
    "ORDER BY a.game, a.player_id"
)


def _write(conn: sa.Connection, pending: list[dict[str, object]]) -> None:
    if pending:
        conn.execute(
            sa.text("UPDATE profiles SET seen_ids = :s WHERE game = :g AND player_id = :p"),
            pending,
        )


def downgrade() -> None:
    op.create_table(
        "applied_events",
        sa.Column("game", sa.Text(), nullable=False),
        sa.Column("player_id", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("applied_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("game", "player_id", "event_id", name="pk_applied_events"),
    )
    op.create_index("ix_applied_events_applied_at", "applied_events", ["applied_at"])
    op.execute("ALTER TABLE profiles RESET (fillfactor)")
    op.drop_column("fold_progress", "appended_ms")
    op.drop_column("profiles", "seen_ids")
