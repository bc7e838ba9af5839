"""Player privacy rules: how an erased player is named once their id is gone."""

from __future__ import annotations

import hashlib


def player_key(game: str, player_id: str) -> str:
    """The name an erasure keeps for a player: SHA-256 of game and id, hex.

    It lets every process recognise the player's later events without keeping the id
    itself. It is a pseudonym, not a secret: whoever can guess an id can test it.
    """
    return hashlib.sha256(f"{game}\x00{player_id}".encode()).hexdigest()


class TombstoneSet:
    """The active tombstones: player keys by game, as one process last read them."""

    __slots__ = ("_by_game", "revision")

    def __init__(self, by_game: dict[str, set[str]] | None = None, revision: int = -1) -> None:
        self._by_game = by_game or {}
        self.revision = revision

    def erased(self, game: str, player_id: str | None) -> bool:
        """True if the player's events must be dropped."""
        keys = self._by_game.get(game)
        if not keys or player_id is None:
            return False
        return player_key(game, player_id) in keys

    def __bool__(self) -> bool:
        return bool(self._by_game)
