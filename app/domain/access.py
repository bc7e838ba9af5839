"""API keys: roles and what each may do. Every key belongs to exactly one game.

A key reads ``pp_<id>_<secret>``: the id (12 characters, safe to log and to show) names
the key in listings, revocations and audit records; only the whole key's hash is stored.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from enum import StrEnum

KEY_PREFIX = "pp_"
KEY_ID_LENGTH = 12


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
    key_id: str = ""
    """The key's public id ("" for keys made before ids existed were given one)."""
    valid_until: float | None = field(default=None, compare=False)
    """Epoch seconds at which the key stops working (expiry or a scheduled revocation)."""

    def may(self, needed: Role) -> bool:
        """Admin may do everything of its game; the others only their own role."""
        return self.role is Role.ADMIN or self.role is needed

    def valid_at(self, now: float) -> bool:
        """False once the key expired or its revocation took effect."""
        return self.valid_until is None or now < self.valid_until


def new_key_id() -> str:
    """A fresh public key id: 12 lowercase hexadecimal characters."""
    return secrets.token_hex(KEY_ID_LENGTH // 2)


def new_key(key_id: str | None = None) -> str:
    """A fresh random API key (256 bits of secret entropy) with its public id."""
    return f"{KEY_PREFIX}{key_id or new_key_id()}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    """The public id a key carries, or None for a key that has no id in it."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, sep, _secret = key[len(KEY_PREFIX) :].partition("_")
    if not sep or len(key_id) != KEY_ID_LENGTH:
        return None
    return key_id


def hash_key(key: str) -> str:
    """What is stored for a key. Keys are random, so a fast hash is enough."""
    return hashlib.sha256(key.encode()).hexdigest()
