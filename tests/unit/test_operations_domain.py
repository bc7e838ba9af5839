"""Key ids, the audit chain and the CORS policy: pure rules, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from app.domain.access import key_id_of, new_key
from app.domain.audit import GENESIS, AuditEntry, AuditRecord, first_broken, record_hash
from app.domain.cors import CorsError, CorsPolicy, RouteKind, parse_origins, route_kind

pytestmark = pytest.mark.unit


def test_a_key_carries_its_public_id() -> None:
    key = new_key("0123456789ab")
    assert key.startswith("pp_0123456789ab_")
    assert key_id_of(key) == "0123456789ab"
    assert len(key) > 50
    assert key_id_of("pp_oldstylekeywithoutid") is None
    assert key_id_of("something-else") is None


def chain(n: int) -> list[AuditRecord]:
    records = []
    prev = GENESIS
    at = datetime(2026, 12, 7, tzinfo=UTC)
    for seq in range(1, n + 1):
        entry = AuditEntry("g", "key:abc", "POST /v1/admin/keys", f"key:{seq}", "ok", f"r{seq}")
        when = at + timedelta(seconds=seq)
        digest = record_hash(prev, seq, when, entry)
        records.append(
            AuditRecord(
                seq,
                when,
                "g",
                entry.actor,
                entry.action,
                entry.target,
                entry.outcome,
                entry.request_id,
                prev,
                digest,
            )
        )
        prev = digest
    return records


def test_an_intact_chain_holds() -> None:
    assert first_broken(chain(5)) is None
    assert first_broken([]) is None


def test_an_altered_record_is_named() -> None:
    records = chain(5)
    records[2] = replace(records[2], outcome="403")
    broken = first_broken(records)
    assert broken is not None
    assert broken.seq == 3
    assert "altered" in broken.reason


def test_a_removed_record_is_found_at_the_gap() -> None:
    records = chain(5)
    del records[1]
    broken = first_broken(records)
    assert broken is not None
    assert broken.seq == 3
    assert "2..2 are missing" in broken.reason
    broken = first_broken(chain(5)[1:])  # the first one removed
    assert broken is not None
    assert broken.seq == 2


def test_a_rehashed_record_still_breaks_the_next_link() -> None:
    records = chain(4)
    forged = replace(records[1], target="key:forged")
    forged = replace(forged, hash=record_hash(forged.prev_hash, 2, forged.at, forged))
    records[1] = forged
    broken = first_broken(records)
    assert broken is not None
    assert broken.seq == 3


def test_route_kinds() -> None:
    assert route_kind("/v1/events") is RouteKind.INGEST
    assert route_kind("/v1/track") is RouteKind.INGEST
    assert route_kind("/v1/players/p1") is RouteKind.READ
    assert route_kind("/v1/admin/keys") is RouteKind.ADMIN
    assert route_kind("/health") is RouteKind.OTHER


def test_cors_policy() -> None:
    policy = CorsPolicy(
        everywhere=parse_origins(["https://web.example"]),
        per_game={"g1": parse_origins(["https://g1.example"])},
    )
    assert policy.allows("https://web.example", RouteKind.INGEST, "g2")
    assert not policy.allows("https://web.example", RouteKind.READ, "g2")  # ingest only
    assert policy.allows("https://g1.example", RouteKind.READ, "g1")
    assert policy.allows("https://g1.example", RouteKind.READ, None)  # a preflight
    assert not policy.allows("https://g1.example", RouteKind.READ, "g2")
    assert not policy.allows("https://g1.example", RouteKind.ADMIN, "g1")
    assert not policy.allows("https://evil.example", RouteKind.INGEST, "g1")
    assert CorsPolicy(everywhere=frozenset({"*"})).allows(
        "https://x.example", RouteKind.INGEST, "g"
    )
    with pytest.raises(CorsError):
        parse_origins(["*"])  # a game cannot open itself to every origin
    with pytest.raises(CorsError):
        parse_origins(["https://a.example/path"])
