"""`net/deadline.Deadline`: the timeout fires for the last deadline set, moved later or
earlier, and not at all once cancelled or closed."""

from __future__ import annotations

import asyncio

from burrow.net.deadline import Deadline


class _Expiries:
    def __init__(self) -> None:
        self.at: list[float] = []

    def __call__(self) -> None:
        self.at.append(asyncio.get_running_loop().time())


async def test_moved_later_fires_only_at_the_new_deadline() -> None:
    fired = _Expiries()
    deadline = Deadline(fired)
    start = asyncio.get_running_loop().time()
    deadline.arm(0.05)
    deadline.arm(0.4)  # the first handle fires early and re-arms for this one
    await asyncio.sleep(0.2)
    assert fired.at == [] and deadline.armed
    await asyncio.sleep(0.5)
    assert len(fired.at) == 1 and fired.at[0] - start >= 0.4
    assert not deadline.armed


async def test_moved_earlier_fires_at_the_earlier_deadline() -> None:
    fired = _Expiries()
    deadline = Deadline(fired)
    start = asyncio.get_running_loop().time()
    deadline.arm(5.0)
    deadline.arm(0.05)
    await asyncio.sleep(0.5)
    assert len(fired.at) == 1 and fired.at[0] - start < 1.0


async def test_cancelled_or_closed_never_fires_and_can_be_armed_again() -> None:
    fired = _Expiries()
    deadline = Deadline(fired)
    deadline.arm(0.05)
    deadline.cancel()
    await asyncio.sleep(0.2)
    assert fired.at == []
    deadline.arm(0.05)
    deadline.close()
    await asyncio.sleep(0.2)
    assert fired.at == []
    deadline.arm(0.05)
    await asyncio.sleep(0.3)
    assert len(fired.at) == 1
