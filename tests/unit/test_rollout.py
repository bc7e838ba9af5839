"""Rollouts: which version answers which player; sticky, in proportion, never the shadow."""

from __future__ import annotations

import math
import zlib
from collections import Counter

import pytest

from app.domain.rollout import Rollout, RolloutError

pytestmark = pytest.mark.unit

KEY = "game-1/churn"
PLAYERS = [f"player-{i}" for i in range(20_000)]


def shares(rollout: Rollout, key: str = KEY) -> Counter[int]:
    return Counter(rollout.choose(key, p) for p in PLAYERS)


def tolerance(n: int, p: float) -> float:
    """Five standard deviations of a binomial count: what a uniform hash stays within.

    The buckets come from CRC-32 of fixed strings, so each test is deterministic; the bound
    says the hash spreads players as a fair die would (a miss at 5 sigma has odds of about
    1 in 1.7 million), so the test does not just pin today's numbers.
    """
    return 5 * math.sqrt(n * p * (1 - p))


def test_the_same_player_always_gets_the_same_version() -> None:
    rollout = Rollout({1: 50, 2: 30, 3: 20})
    first = {p: rollout.choose(KEY, p) for p in PLAYERS[:2000]}
    assert {p: rollout.choose(KEY, p) for p in PLAYERS[:2000]} == first
    # A rollout rebuilt from the same split (another process, after a restart) agrees.
    rebuilt = Rollout({3: 20, 1: 50, 2: 30})
    assert {p: rebuilt.choose(KEY, p) for p in PLAYERS[:2000]} == first
    assert set(first.values()) == {1, 2, 3}


@pytest.mark.parametrize(
    "split", [{1: 90, 2: 10}, {1: 50, 2: 50}, {1: 50, 2: 30, 3: 20}, {4: 1, 7: 99}]
)
def test_the_split_proportions_hold_over_many_players(split: dict[int, int]) -> None:
    counted = shares(Rollout(split))
    assert sum(counted.values()) == len(PLAYERS)
    assert set(counted) == set(split)
    for version, percent in split.items():
        expected = len(PLAYERS) * percent / 100
        slack = tolerance(len(PLAYERS), percent / 100)
        assert abs(counted[version] - expected) <= slack, (version, counted, slack)


def test_the_versions_take_consecutive_buckets_in_version_order() -> None:
    """Bucket = CRC-32("key\\x1fplayer") mod 100; lower versions take the lower buckets."""
    rollout = Rollout({7: 25, 3: 60, 9: 15})  # buckets: v3 [0, 60), v7 [60, 85), v9 [85, 100)
    for player in PLAYERS[:3000]:
        bucket = zlib.crc32(f"{KEY}\x1f{player}".encode()) % 100
        expected = 3 if bucket < 60 else 7 if bucket < 85 else 9
        assert rollout.choose(KEY, player) == expected, (player, bucket)


def test_growing_the_new_version_only_moves_players_towards_it() -> None:
    """From 90/10 to 50/50: everyone already on v2 stays there (no flapping mid-ramp)."""
    before = Rollout({1: 90, 2: 10})
    after = Rollout({1: 50, 2: 50})
    moved = Counter((before.choose(KEY, p), after.choose(KEY, p)) for p in PLAYERS)
    assert moved[(2, 1)] == 0
    assert moved[(1, 2)] > 0  # the ramp did move players
    assert min(moved[(1, 1)], moved[(2, 2)]) > 0


def test_each_model_splits_players_independently() -> None:
    """The model's key is hashed in: being on the new arm of one model says nothing
    about another (about half of the players agree between two 50/50 splits)."""
    rollout = Rollout({1: 50, 2: 50})
    agree = sum(rollout.choose("g/a", p) == rollout.choose("g/b", p) for p in PLAYERS)
    assert abs(agree - len(PLAYERS) / 2) <= tolerance(len(PLAYERS), 0.5)


@pytest.mark.parametrize(("split", "serving"), [({1: 100, 2: 0}, 1), ({1: 0, 2: 100}, 2)])
def test_a_version_at_zero_percent_never_answers(split: dict[int, int], serving: int) -> None:
    rollout = Rollout(split)
    assert set(shares(rollout)) == {serving}
    assert rollout.main == serving
    assert rollout.versions == {1, 2}  # still part of the rollout (it is kept loaded)


def test_only_serves_one_version_to_everyone() -> None:
    rollout = Rollout.only(4)
    assert rollout.split == {4: 100}
    assert rollout.shadow is None
    assert set(shares(rollout)) == {4}


def test_the_shadow_never_answers_but_is_one_of_the_versions() -> None:
    rollout = Rollout({1: 80, 2: 20}, shadow=3)
    assert set(shares(rollout)) == {1, 2}
    assert rollout.versions == {1, 2, 3}
    assert Rollout.only(1, shadow=2).versions == {1, 2}
    assert set(shares(Rollout.only(1, shadow=2))) == {1}


def test_without_a_player_the_main_version_answers() -> None:
    assert Rollout({1: 30, 2: 70}).choose(KEY, None) == 2
    assert Rollout({1: 70, 2: 30}).choose(KEY, None) == 1
    # Equal shares: the newest is the main version.
    assert Rollout({1: 50, 2: 50}).choose(KEY, None) == 2
    assert Rollout({5: 50, 2: 50}, shadow=9).choose(KEY, None) == 5


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({}, "at least one version"),
        ({1: 60, 2: 30}, "add up to 100, not 90"),
        ({1: 60, 2: 50}, "add up to 100, not 110"),
        ({1: 110, 2: -10}, "between 0 and 100"),
        ({1: 0}, "add up to 100, not 0"),
    ],
)
def test_an_impossible_split_is_refused_with_the_reason(
    split: dict[int, int], message: str
) -> None:
    with pytest.raises(RolloutError, match=message):
        Rollout(split)


def test_rollouts_compare_by_split_and_shadow() -> None:
    assert Rollout({2: 10, 1: 90}, 3) == Rollout({1: 90, 2: 10}, 3)
    assert Rollout({1: 90, 2: 10}, 3) != Rollout({1: 90, 2: 10})
