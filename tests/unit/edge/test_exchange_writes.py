"""The HTTP/1.1 exchange holds response bytes for the end of the tunnel read that carried them
(`H2Endpoint.defer`), and writes at once when nothing is being read: a response byte must
never wait for a later read that may not come."""

from __future__ import annotations

from typing import Any

from burrow.edge.exchange import Exchange


class _Eyeball:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writelines(self, pieces: list[Any]) -> None:
        self.writes.append(b"".join(pieces))


class _Conn:
    """`defer` as H2Endpoint does it: held during a read, at once outside one."""

    def __init__(self) -> None:
        self.receiving = False
        self.deferred: list[Any] = []

    def defer(self, obj: Any) -> None:
        if self.receiving:
            self.deferred.append(obj)
        else:
            obj.flush_deferred()

    def end_read(self) -> None:
        for obj in self.deferred:
            obj.flush_deferred()
        self.deferred.clear()


def _exchange() -> tuple[Exchange, _Eyeball, _Conn]:
    exchange = Exchange.__new__(Exchange)  # only the write path is exercised
    eyeball, conn = _Eyeball(), _Conn()
    exchange.eyeball = eyeball  # type: ignore[assignment]
    exchange.conn = conn  # type: ignore[assignment]
    exchange._held = []
    return exchange, eyeball, conn


def test_pieces_of_one_read_leave_together() -> None:
    exchange, eyeball, conn = _exchange()
    conn.receiving = True
    exchange._write(b"HTTP/1.1 200 OK\r\n\r\n")
    exchange._write(memoryview(b"first piece "))
    exchange._write(b"second piece")
    assert eyeball.writes == []
    conn.end_read()
    assert eyeball.writes == [b"HTTP/1.1 200 OK\r\n\r\nfirst piece second piece"]


def test_a_write_outside_a_read_is_not_held() -> None:
    exchange, eyeball, _conn = _exchange()
    exchange._write(b"late bytes")
    assert eyeball.writes == [b"late bytes"]
    assert exchange._held == []
