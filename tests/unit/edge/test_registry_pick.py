"""Registry.pick: least in-flight, round-robin among ties, never a non-accepting connection."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from burrow.edge.registry import Registry

TUNNEL = uuid.uuid4()


@dataclass(eq=False)
class FakeConn:
    conn_index: int
    in_flight: int = 0
    accepting: bool = True
    tunnel_id: uuid.UUID = TUNNEL


def test_least_in_flight_wins() -> None:
    reg = Registry()
    conns = [FakeConn(0, 3), FakeConn(1, 1), FakeConn(2, 2)]
    for c in conns:
        reg.add(c)
    for _ in range(5):
        assert reg.pick(TUNNEL) is conns[1]


def test_ties_rotate_so_sequential_requests_spread() -> None:
    reg = Registry()
    conns = [FakeConn(i) for i in range(4)]
    for c in conns:
        reg.add(c)
    picked = [reg.pick(TUNNEL) for _ in range(8)]
    assert {id(c) for c in picked} == {id(c) for c in conns}
    assert all(picked.count(c) == 2 for c in conns)


def test_draining_or_unregistered_connections_get_no_streams() -> None:
    reg = Registry()
    a, b = FakeConn(0, 0, accepting=False), FakeConn(1, 50)
    reg.add(a)
    reg.add(b)
    assert all(reg.pick(TUNNEL) is b for _ in range(4))
    b.accepting = False
    assert reg.pick(TUNNEL) is None
    reg.remove(a)
    reg.remove(b)
    assert reg.pick(TUNNEL) is None and reg.tunnel_count() == 0
