"""API keys: roles and what each may do. Every key belongs to exactly one game."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

KEY_PREFIX = "pp_"


class Role(StrEnum):
    """What a key may do: send events, read profiles and predictions, or everything."""

    INGEST = "ingest"
    READ = "read"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind a valid key."""

    game: str
    role: Role

    def may(self, needed: Role) -> bool:
        """Admin may do everything of its game; the others only their own role."""
        return self.role is Role.ADMIN or self.role is needed


def new_key() -> str:
    """A fresh random API key (256 bits of entropy)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """What is stored for a key. Keys are random, so a fast hash is enough."""
    return hashlib.sha256(key.encode()).hexdigest()
