"""The fold's state cache: bounded in (estimated) bytes, least recently folded out first,
and its estimate close to what the states really take (measured with tracemalloc)."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import pytest

from app.domain.dedup import SeenIds, event_hash
from app.domain.events import EventRecord
from app.domain.features import load_features
from app.domain.fold import ProfileState
from app.settings import DEFAULT_FEATURES
from app.streams.folding import ProfileFolder, _cached_size, _Outcome, profile_write

pytestmark = pytest.mark.unit

NOW_US = time.time_ns() // 1000


def folder(cache_bytes: int) -> ProfileFolder:
    return ProfileFolder(None, load_features(DEFAULT_FEATURES), cache_bytes=cache_bytes)  # type: ignore[arg-type]


def player_outcome(folder: ProfileFolder, players: range, events: int = 5) -> _Outcome:
    """An outcome as a committed batch leaves it: folded states, their id sets and sizes."""
    outcome = _Outcome()
    kinds: list[tuple[str, dict[str, Any]]] = [
        ("purchase", {"amount": 2.5}),
        ("session_start", {}),
        ("level_complete", {"level": 3}),
    ]
    for number in players:
        key = ("g", f"player-{number}")
        state, seen = ProfileState(), SeenIds()
        for i in range(events):
            kind, props = kinds[i % len(kinds)]
            record = EventRecord("g", f"{number}-{i}", key[1], kind, NOW_US - i, NOW_US, props)
            folder._fold(state, record)
            seen.add(event_hash("g", key[1], record.event_id), NOW_US // 1_000_000, 60)
        outcome.states[key] = state
        outcome.versions[key] = 1
        outcome.seen[key] = seen
        outcome.sizes[key] = _cached_size(profile_write(key, state, seen.encode()))
    return outcome


def test_the_cache_stays_within_its_bytes_and_drops_the_least_recent_first() -> None:
    cache = folder(cache_bytes=200_000)
    for start in range(0, 2000, 100):
        cache._remember(player_outcome(cache, range(start, start + 100)))
        assert 0 < cache.cached_bytes <= 200_000
    assert 0 < cache.cached_players < 2000
    kept = list(cache._cache)
    assert kept[-1] == ("g", "player-1999")  # the latest stay
    assert ("g", "player-0") not in cache._cache
    assert sum(cache._sizes.values()) == cache.cached_bytes
    assert set(cache._sizes) == set(cache._cache) == set(cache._versions)


def test_a_cache_of_zero_bytes_keeps_nothing() -> None:
    cache = folder(cache_bytes=0)
    cache._remember(player_outcome(cache, range(10)))
    assert cache.cached_players == 0
    assert cache.cached_bytes == 0


def test_the_estimate_is_close_to_the_memory_taken() -> None:
    cache = folder(cache_bytes=10**12)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        outcome = player_outcome(cache, range(2000), events=8)
        cache._remember(outcome)
        del outcome
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    taken = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert taken * 0.7 <= cache.cached_bytes <= taken * 1.5, (cache.cached_bytes, taken)
