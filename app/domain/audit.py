"""The audit trail: who did what to which game, each record chained to the one before.

A record's hash is SHA-256 over the previous record's hash and the record's own
content, so altering a stored row (or removing one) breaks the chain at that point:
:func:`first_broken` names the first record that does not hold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

GENESIS = "0" * 64
"""The previous hash of the very first record."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What happened, before it is chained: the caller fills it in."""

    game: str | None
    actor: str
    """A key id (``key:ID``) for the API, ``os:USER`` for the command line."""
    action: str
    target: str
    outcome: str
    """``ok``, or what went wrong (an HTTP status, an error's name)."""
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A stored record: its place in the chain, its time, content and hashes."""

    seq: int
    at: datetime
    game: str | None
    actor: str
    action: str
    target: str
    outcome: str
    request_id: str | None
    prev_hash: str
    hash: str


def record_hash(prev_hash: str, seq: int, at: datetime, entry: AuditEntry | AuditRecord) -> str:
    """The hash of a record: its predecessor's hash and its own content, canonically."""
    content = [
        seq,
        at.isoformat(),
        entry.game,
        entry.actor,
        entry.action,
        entry.target,
        entry.outcome,
        entry.request_id,
    ]
    canonical = json.dumps(content, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class BrokenLink:
    """Where the chain does not hold, and why."""

    seq: int
    reason: str


def first_broken(records: Iterable[AuditRecord], prev_hash: str = GENESIS) -> BrokenLink | None:
    """The first record (in ``seq`` order) whose link or content does not hold, or None."""
    expected_seq: int | None = None
    for record in records:
        if expected_seq is not None and record.seq != expected_seq:
            return BrokenLink(record.seq, f"records {expected_seq}..{record.seq - 1} are missing")
        if record.prev_hash != prev_hash:
            return BrokenLink(record.seq, "its previous hash does not match the record before")
        if record_hash(prev_hash, record.seq, record.at, record) != record.hash:
            return BrokenLink(record.seq, "its content does not match its hash (altered)")
        prev_hash = record.hash
        expected_seq = record.seq + 1
    return None
