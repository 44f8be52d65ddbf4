"""A connection's timeout whose deadline moves often: one timer handle, re-armed only when due.

Why: eyeball connections re-arm their idle or header timeout on every request. A new
`TimerHandle` per request (a heap insert, then a cancel that leaves the handle in the heap)
cost the edge a few % of its CPU on small requests. Here moving the deadline later only
stores a number; the handle that fires early re-arms itself for the current deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    """Calls `expired` once the loop time passes the deadline last set by `arm`, unless
    `cancel` came after it."""

    __slots__ = ("_expired", "_handle", "_loop", "_when")

    def __init__(self, expired: Callable[[], None]) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None  # the running loop, at first `arm`
        self._expired = expired
        self._handle: asyncio.TimerHandle | None = None
        self._when: float | None = None  # loop time the armed timeout is due

    def arm(self, delay: float) -> None:
        """Expire `delay` seconds from now (replacing any earlier or later deadline)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        when = loop.time() + delay
        self._when = when
        handle = self._handle
        if handle is not None:
            if handle.when() <= when:
                return  # it fires first and re-arms for the new deadline
            handle.cancel()
        self._handle = loop.call_at(when, self._fire)

    def cancel(self) -> None:
        """No timeout until the next `arm` (the handle, if any, stays and fires for nothing)."""
        self._when = None

    def close(self) -> None:
        """For good: cancel, and drop the handle and the callback, so that neither the loop nor
        this object keeps the owner (whose bound method the callback usually is) alive."""
        self._when = None
        self._expired = _nothing
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    @property
    def armed(self) -> bool:
        return self._when is not None

    def _fire(self) -> None:
        self._handle = None
        when = self._when
        loop = self._loop
        if when is None or loop is None:
            return
        if loop.time() < when:
            self._handle = loop.call_at(when, self._fire)
            return
        self._when = None
        self._expired()


def _nothing() -> None:
    """The callback of a closed `Deadline`."""
