"""Token buckets keyed by source address, with a bounded key table.

Used to rate-limit TLS handshakes and registrations per source address: cloudflared retries a
failed handshake against a static edge hundreds of times per second.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable


class KeyedRateLimiter:
    """`allow(key)` spends one token from `key`'s bucket (rate per second, burst capacity)."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def allow(self, key: str) -> bool:
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            # Forget the least recently seen address; a fresh bucket is full, which only
            # ever errs on the side of serving a legitimate client.
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self, key: str) -> float:
        """Seconds until `key` has a token again."""
        tokens, last = self._buckets.get(key, (self.burst, self._clock()))
        missing = 1.0 - (tokens + (self._clock() - last) * self.rate)
        return max(0.0, missing / self.rate) if self.rate > 0 else float("inf")
