"""The per-key token bucket of ingest, on a fake clock (no sleeping)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app import ingest
from app.ingest import RateLimiter

pytestmark = pytest.mark.unit


class FakeClock:
    """``time.monotonic`` for the ingest module, moved on by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    # Only app.ingest sees the fake clock (the event loop keeps the real one).
    monkeypatch.setattr(ingest, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


def test_a_new_key_may_burst_its_whole_capacity_at_once(clock: FakeClock) -> None:
    limiter = RateLimiter(per_second=10, burst_s=2.0)
    assert limiter.capacity == 20
    assert limiter.take("k", 20) == 0.0
    # Empty now: one more event waits for one token, a tenth of a second at 10/s.
    assert limiter.take("k", 1) == pytest.approx(0.1)


def test_the_wait_is_the_time_to_refill_the_missing_tokens(clock: FakeClock) -> None:
    limiter = RateLimiter(per_second=10, burst_s=2.0)
    assert limiter.take("k", 15) == 0.0  # 5 left
    assert limiter.take("k", 8) == pytest.approx(0.3)  # 3 missing at 10/s
    assert limiter.take("k", 20) == pytest.approx(1.5)  # 15 missing


def test_a_refused_take_costs_no_tokens(clock: FakeClock) -> None:
    limiter = RateLimiter(per_second=10, burst_s=2.0)
    assert limiter.take("k", 15) == 0.0
    assert limiter.take("k", 6) == pytest.approx(0.1)
    assert limiter.take("k", 6) == pytest.approx(0.1)  # still 5 tokens, still one short
    assert limiter.take("k", 5) == 0.0


def test_tokens_refill_with_time_up_to_the_capacity(clock: FakeClock) -> None:
    limiter = RateLimiter(per_second=10, burst_s=2.0)
    assert limiter.take("k", 20) == 0.0
    clock.advance(0.5)  # 5 tokens back
    assert limiter.take("k", 6) == pytest.approx(0.1)
    assert limiter.take("k", 5) == 0.0
    clock.advance(3600)  # an hour idle refills only to the capacity, not beyond
    assert limiter.take("k", 20) == 0.0
    assert limiter.take("k", 1) == pytest.approx(0.1)


def test_waiting_as_long_as_told_is_enough(clock: FakeClock) -> None:
    limiter = RateLimiter(per_second=4, burst_s=1.0)
    assert limiter.take("k", 4) == 0.0
    wait = limiter.take("k", 3)
    assert wait == pytest.approx(0.75)
    clock.advance(wait)
    assert limiter.take("k", 3) == 0.0


def test_keys_have_buckets_of_their_own(clock: FakeClock) -> None:
    limiter = RateLimiter(per_second=10, burst_s=1.0)
    assert limiter.take("busy", 10) == 0.0
    assert limiter.take("busy", 1) > 0
    assert limiter.take("quiet", 10) == 0.0  # untouched by the other key
    assert limiter.take("quiet", 2) == pytest.approx(0.2)
    clock.advance(0.1)
    assert limiter.take("busy", 1) == 0.0
    assert limiter.take("quiet", 2) == pytest.approx(0.1)


def test_zero_per_second_turns_the_limit_off(clock: FakeClock) -> None:
    limiter = RateLimiter(per_second=0)
    for _ in range(100):
        assert limiter.take("k", 1_000_000) == 0.0
    assert RateLimiter(per_second=-1).take("k", 10**9) == 0.0
