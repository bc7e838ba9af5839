"""The per-player set of event id hashes: remembers within the horizon, bounded beyond."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.dedup import BUCKETS, HASH_BYTES, SeenIds, bucket_width_s, event_hash

START_S = 1_790_000_000


def digest(n: int) -> bytes:
    return n.to_bytes(HASH_BYTES, "little")


# Steps: (seconds the clock moves on, ids received at the new time: each a number and
# how many seconds before now it was received).
steps = st.lists(
    st.tuples(
        st.integers(0, 400),
        st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 30)), max_size=8),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    steps=steps,
    horizon_s=st.sampled_from([1, 7, 60, 300, 86400]),
    kept=st.sampled_from(["object", "encoded", "stored"]),
)
def test_remembers_within_the_horizon_and_only_a_bucket_past_it(
    steps: list[tuple[int, list[tuple[int, int]]]], horizon_s: int, kept: str
) -> None:
    width = bucket_width_s(horizon_s)
    seen = SeenIds()
    received: dict[bytes, int] = {}
    now = START_S
    for advance, ids in steps:
        now += advance
        for number, age in ids:
            at = now - age
            h = digest(number)
            if not seen.holds(h):
                seen.add(h, at, width)
                received[h] = at
        seen.prune(now, horizon_s, width)
        if kept == "stored":  # encoded with the profile, decoded next time
            seen = SeenIds.decode(seen.encode())
        elif kept == "encoded":  # encoded, and the same set used next time (the fold's cache)
            encoded = seen.encode()
            assert (seen.added, SeenIds.decode(encoded).starts) == ({}, seen.starts)
        held = {h for h in received if seen.holds(h)}
        for h, at in received.items():
            if at >= now - horizon_s:
                assert h in held, "forgotten within the horizon"
            if at < now - horizon_s - width:
                assert h not in held, "kept longer than a bucket past the horizon"
        for h in held:
            assert received[h] >= now - horizon_s - width
        # Bounded: 8 bytes an id kept, at most 17 for the set and 6 a bucket (gaps and counts
        # under 2**16), and no more buckets than the horizon and one bucket past it span.
        blob = seen.encode()
        assert len(seen) == len(held)
        buckets = len(set(SeenIds.decode(blob).starts))
        assert buckets <= horizon_s // width + 2
        assert len(blob) <= (17 + 6 * buckets + HASH_BYTES * len(held) if held else 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=8, max_size=8), st.integers(0, 10**6)), max_size=50))
def test_encoding_round_trips(items: list[tuple[bytes, int]]) -> None:
    seen = SeenIds()
    for h, offset in items:
        seen.add(h, START_S + offset, 3600)
    again = SeenIds.decode(seen.encode())
    assert len(again) == len(items)
    assert all(again.holds(h) for h, _ in items)
    assert again.encode() == seen.encode()
    assert again.starts == sorted(again.starts)


def test_a_hash_straddling_two_stored_ones_is_not_held() -> None:
    seen = SeenIds()
    seen.add(bytes([1, 2, 3, 4, 5, 6, 7, 8]), START_S, 60)
    seen.add(bytes([9, 10, 11, 12, 13, 14, 15, 16]), START_S, 60)
    straddling = bytes([5, 6, 7, 8, 9, 10, 11, 12])
    assert not seen.holds(straddling)
    assert not SeenIds.decode(seen.encode()).holds(straddling)
    assert seen.holds(bytes([9, 10, 11, 12, 13, 14, 15, 16]))


def test_the_hash_names_game_player_and_id() -> None:
    one = event_hash("g", "p", "e-1")
    assert len(one) == HASH_BYTES
    assert one == event_hash("g", "p", "e-1")
    assert (
        len(
            {
                one,
                event_hash("g", "p", "e-2"),
                event_hash("g", "q", "e-1"),
                event_hash("h", "p", "e-1"),
            }
        )
        == 4
    )


def test_a_corrupt_blob_is_refused() -> None:
    seen = SeenIds()
    seen.add(digest(1), START_S, 60)
    with pytest.raises(ValueError, match="corrupt"):
        SeenIds.decode(seen.encode()[:-1])


def test_a_bucket_is_an_eighth_of_the_horizon() -> None:
    assert bucket_width_s(86400) == 86400 // BUCKETS
    assert bucket_width_s(3) == 1
    assert SeenIds.decode(None).encode() == b""


def test_a_bucket_costs_two_bytes_besides_its_hashes_when_its_numbers_are_small() -> None:
    # What a busy player's set looks like with a 60 s horizon: a bucket every 7 s, one id each.
    seen = SeenIds()
    for n in range(9):
        seen.add(digest(n), START_S + 7 * n, 7)
    blob = seen.encode()
    # array, first start (uint32), 8 gaps and 9 counts (one byte each, with their array
    # headers), then the hashes as one bin (2-byte header)
    assert len(blob) == 1 + 5 + (1 + 8) + (1 + 9) + 2 + 9 * HASH_BYTES
    again = SeenIds.decode(blob)
    assert again.starts == [START_S - START_S % 7 + 7 * n for n in range(9)]
    assert again.counts == [1] * 9


def test_a_set_stored_in_the_first_encoding_is_read_and_written_anew() -> None:
    starts, counts = [START_S, START_S + 60], [2, 1]
    hashes = digest(1) + digest(2) + digest(3)
    first = struct.pack("<H4I", 2, starts[0], counts[0], starts[1], counts[1]) + hashes
    seen = SeenIds.decode(first)
    assert (seen.starts, seen.counts, len(seen)) == (starts, counts, 3)
    assert all(seen.holds(digest(n)) for n in (1, 2, 3))
    assert not seen.holds(digest(4))
    again = SeenIds.decode(seen.encode())
    assert seen.encode() != first
    assert (again.starts, again.counts, again.hashes) == (starts, counts, hashes)
    with pytest.raises(ValueError, match="corrupt"):
        SeenIds.decode(first[:-1])
