"""Live tunnel connections per tunnel, and the choice of a connection for a new stream."""

from __future__ import annotations

import uuid
from typing import Protocol


class LiveConnection(Protocol):
    tunnel_id: uuid.UUID
    conn_index: int
    in_flight: int

    @property
    def accepting(self) -> bool:
        """Registered, not unregistered, not draining, transport open."""


class Registry:
    """In-memory registry of this edge node's registered tunnel connections."""

    def __init__(self) -> None:
        self._by_tunnel: dict[uuid.UUID, list[LiveConnection]] = {}
        self._turn = 0

    def add(self, conn: LiveConnection) -> None:
        conns = self._by_tunnel.setdefault(conn.tunnel_id, [])
        if conn not in conns:
            conns.append(conn)

    def remove(self, conn: LiveConnection) -> None:
        conns = self._by_tunnel.get(conn.tunnel_id)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._by_tunnel[conn.tunnel_id]

    def connections(self, tunnel_id: uuid.UUID) -> list[LiveConnection]:
        return list(self._by_tunnel.get(tunnel_id, ()))

    def all(self) -> list[LiveConnection]:
        return [c for conns in self._by_tunnel.values() for c in conns]

    def pick(self, tunnel_id: uuid.UUID) -> LiveConnection | None:
        """The accepting connection with the fewest streams in flight. Ties go round-robin, so
        sequential requests (never more than one in flight) still spread over every connection
        and every replica."""
        conns = self._by_tunnel.get(tunnel_id)
        if not conns:
            return None
        n = len(conns)
        self._turn = start = (self._turn + 1) % n
        best: LiveConnection | None = None
        for i in range(n):
            conn = conns[(start + i) % n]
            if conn.accepting and (best is None or conn.in_flight < best.in_flight):
                best = conn
                if conn.in_flight == 0:
                    break
        return best

    def tunnel_count(self) -> int:
        return len(self._by_tunnel)
