from __future__ import annotations

import random

from burrow.net.backoff import Backoff
from burrow.net.ratelimit import KeyedRateLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_bucket_allows_burst_then_refills() -> None:
    clock = Clock()
    lim = KeyedRateLimiter(rate=2.0, burst=3, clock=clock)
    assert [lim.allow("a") for _ in range(4)] == [True, True, True, False]
    assert lim.allow("b")  # other addresses are independent
    assert 0.4 < lim.retry_after("a") <= 0.5
    clock.t += 0.5
    assert lim.allow("a")
    assert not lim.allow("a")


def test_key_table_is_bounded() -> None:
    lim = KeyedRateLimiter(rate=1.0, burst=1, max_keys=100, clock=Clock())
    for i in range(1000):
        lim.allow(f"10.0.{i // 256}.{i % 256}")
    assert len(lim._buckets) == 100


def test_backoff_grows_with_jitter_and_caps() -> None:
    b = Backoff(base=0.5, cap=8.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(10)]
    assert 0.25 <= delays[0] <= 0.5
    assert all(d <= 8.0 for d in delays)
    assert delays[-1] >= 4.0  # capped at 8, jitter keeps it in [4, 8]
    b.reset()
    assert b.next_delay() <= 0.5
