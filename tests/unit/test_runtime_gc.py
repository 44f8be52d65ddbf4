"""`collect_cycles` frees cyclic garbage soon after a connection closes, even with the high
collection thresholds `tune_gc` sets for servers.

Why: a closed TLS connection is a reference cycle (uvloop's SSLProtocol and its transport,
our streams and their connection) holding OpenSSL's buffers; with full collections every few
million allocations, an edge serving large HTTP/2 downloads grew ~5 MB per 100 MB."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from burrow import runtime


class _Connection:
    """Stands in for a closed connection: a cycle that holds a large buffer."""

    def __init__(self) -> None:
        self.buffer = bytearray(1 << 20)
        self.me = self


def _garbage() -> weakref.ref[_Connection]:
    return weakref.ref(_Connection())


async def test_cycles_are_collected_after_a_connection_closes(rare_collections: None) -> None:
    collector = asyncio.ensure_future(runtime.collect_cycles(interval=0.05))
    try:
        conn = _garbage()
        await asyncio.sleep(0.2)
        assert conn() is not None  # no connection closed: no collection, no cost
        runtime.connection_closed()
        await asyncio.sleep(0.2)
        assert conn() is None
        assert runtime._closed_connections == 0
    finally:
        collector.cancel()


async def test_servers_run_the_collector(
    rare_collections: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve_until_signal` (edge serve, tunnel run) runs it alongside the server."""
    monkeypatch.setattr(runtime, "GC_INTERVAL", 0.05)
    seen: list[bool] = []

    async def main() -> None:
        conn = _garbage()
        runtime.connection_closed()
        await asyncio.sleep(0.3)
        seen.append(conn() is None)

    async def stop() -> None:
        pass

    try:
        await runtime.serve_until_signal(stop, main())
    finally:
        gc.unfreeze()
    assert seen == [True]
