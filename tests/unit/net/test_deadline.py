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
    deadline.arm(1.0)  # the first handle fires early and re-arms for this one
    await asyncio.sleep(0.3)  # (margins wide enough for a busy CI machine)
    assert fired.at == [] and deadline.armed
    await asyncio.sleep(1.2)
    assert len(fired.at) == 1 and fired.at[0] - start >= 1.0
    assert not deadline.armed


async def test_moved_earlier_fires_at_the_earlier_deadline() -> None:
    fired = _Expiries()
    deadline = Deadline(fired)
    start = asyncio.get_running_loop().time()
    deadline.arm(5.0)
    deadline.arm(0.05)
    await asyncio.sleep(0.5)
    assert len(fired.at) == 1 and fired.at[0] - start < 1.0


async def test_cancelled_never_fires_until_armed_again_and_closed_never_again() -> None:
    fired = _Expiries()
    deadline = Deadline(fired)
    deadline.arm(0.05)
    deadline.cancel()
    await asyncio.sleep(0.2)
    assert fired.at == []
    deadline.arm(0.05)
    await asyncio.sleep(0.3)
    assert len(fired.at) == 1
    deadline.arm(0.05)
    deadline.close()
    deadline.arm(0.05)  # a late arm after close (a closed connection's last event) is harmless
    await asyncio.sleep(0.3)
    assert len(fired.at) == 1


async def test_closed_deadline_lets_its_owner_go() -> None:
    # The owner holds the deadline and the deadline its bound method: close() must break that
    # cycle, so a closed connection is freed by reference counting.
    import gc
    import weakref

    class Owner:
        def __init__(self) -> None:
            self.deadline = Deadline(self.expired)

        def expired(self) -> None:
            pass

    owner = Owner()
    owner.deadline.arm(10)
    owner.deadline.close()
    ref = weakref.ref(owner)
    gc.disable()
    try:
        del owner
        assert ref() is None
    finally:
        gc.enable()
