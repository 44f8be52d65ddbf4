"""Exponential backoff with jitter for reconnects."""

from __future__ import annotations

import random


class Backoff:
    """Delays base, 2*base, 4*base ... capped at `cap`, each drawn from [d/2, d] (jitter keeps
    many connectors from reconnecting in lock-step after an edge restart)."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None):
        self.base = base
        self.cap = cap
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * (2**self.attempts))
        self.attempts += 1
        return self._rng.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempts = 0
