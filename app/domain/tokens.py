"""Read-your-writes tokens: where a request's events sit in the events topic.

A token lists, per partition, the offset of the last message holding some of the
request's events: ``"3.1200_5.877"``. A player's events all go to one partition (the
hash of ``game/player``), so a read for that player waits until the fold has committed
that partition up to that offset, and then reflects every event of the request for the
player. Tokens are opaque to clients; they are only valid for the topic that made them.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"^\d{1,5}\.\d{1,19}(_\d{1,5}\.\d{1,19}){0,4095}$", re.ASCII)


class BadToken(ValueError):
    """A token this service did not make."""


def encode_token(offsets: dict[int, int]) -> str:
    """The token for these (partition, offset) pairs ('' when there are none)."""
    return "_".join(f"{partition}.{offset}" for partition, offset in sorted(offsets.items()))


def decode_token(token: str) -> dict[int, int]:
    """Inverse of :func:`encode_token`; raises :class:`BadToken` naming the problem."""
    if token == "":
        return {}
    if not _TOKEN.match(token):
        raise BadToken(
            f"'after' is not a token from an ingest reply: {token[:60]!r} "
            "(expected PARTITION.OFFSET pairs joined by '_')"
        )
    offsets: dict[int, int] = {}
    for pair in token.split("_"):
        partition, _, offset = pair.partition(".")
        offsets[int(partition)] = max(int(offset), offsets.get(int(partition), -1))
    return offsets
