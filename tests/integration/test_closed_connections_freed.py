"""A closed HTTPS connection (an eyeball's to the edge, the connector's to an origin) is freed
soon, even with the collection thresholds servers run with; a plain eyeball connection, at once.

Why: a closed TLS connection is a reference cycle (uvloop's SSLProtocol and its transport,
our streams and their connection) that holds OpenSSL's buffers, up to ~6 MB after a large
download. Servers raise the collector's thresholds (`runtime.tune_gc`), so such cycles piled
up until the protocols' `connection_lost` started telling `runtime.collect_cycles` to run."""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import Any

import pytest

from burrow import runtime
from burrow.edge import public
from burrow.edge.public import EyeballProtocol
from burrow.edge.public_h2 import H2EyeballConnection
from burrow.origin.connection import OriginConnection
from burrow.testing.frontdoor import curl, edge_stack
from burrow.testing.harness import TunnelStack, origin_tls, protocol_origin


def _track(monkeypatch: pytest.MonkeyPatch, protocol: Any) -> list[weakref.ref[Any]]:
    """Weak references to every `protocol` object made from now on."""
    seen: list[weakref.ref[Any]] = []
    made = protocol.connection_made

    def record(self: Any, transport: asyncio.BaseTransport) -> None:
        seen.append(weakref.ref(self))
        made(self, transport)

    monkeypatch.setattr(protocol, "connection_made", record)
    return seen


async def _freed_soon(ref: weakref.ref[Any]) -> bool:
    """Whether the object is gone within 3 s (the connection closes, then the collector runs)."""
    for _ in range(30):
        await asyncio.sleep(0.1)
        if ref() is None:
            return True
    return False


@pytest.mark.parametrize(
    ("protocol", "flag", "version"),
    [(H2EyeballConnection, "--http2", "2"), (EyeballProtocol, "--http1.1", "1.1")],
    ids=["h2", "http1.1"],
)
async def test_closed_eyeball_connection_is_collected(
    tmp_path: Path,
    rare_collections: None,
    monkeypatch: pytest.MonkeyPatch,
    protocol: Any,
    flag: str,
    version: str,
) -> None:
    seen = _track(monkeypatch, protocol)
    async with edge_stack(tmp_path, https_listen=["127.0.0.1:0"]) as (edge, _seen):
        collector = asyncio.ensure_future(runtime.collect_cycles(interval=0.1))
        try:
            got = await curl(
                edge, "app.localhost", "/download?size=3000000", flag, "-o", "/dev/null"
            )
            assert got[:2] == (version, 200)
            assert len(seen) == 1
            assert await _freed_soon(seen[0]), "the closed connection is still alive"
        finally:
            collector.cancel()


class _ClosingOrigin(asyncio.Protocol):
    """Answers one request with 2 MB, then closes (`Connection: close`)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            body = b"x" * 2_000_000
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            self.transport.write(body)
            self.transport.close()


async def test_closed_tls_origin_connection_is_collected(
    tmp_path: Path, rare_collections: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connector's side of the same cycle: an HTTPS origin connection the origin closed.
    seen = _track(monkeypatch, OriginConnection)
    # Only the connector's closes may count: the edge's eyeball closes too in this process.
    monkeypatch.setattr(public, "connection_closed", lambda: None)
    server_ctx, verify = origin_tls(tmp_path)
    async with (
        protocol_origin(_ClosingOrigin, verify, tls=server_ctx) as ingress,
        TunnelStack.start(tmp_path / "stack", ingress) as stack,
    ):
        collector = asyncio.ensure_future(runtime.collect_cycles(interval=0.1))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", stack.http_port)
            writer.write(b"GET / HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n")
            got = await asyncio.wait_for(reader.read(-1), 30)
            writer.close()
            assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"x" * 1000)
            assert len(seen) == 1
            assert await _freed_soon(seen[0]), "the closed origin connection is still alive"
        finally:
            collector.cancel()


async def test_closed_plain_eyeball_connection_is_freed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plain-TCP eyeball connection holds no cycle at all: it is freed by reference counting
    # the moment it closes, without waiting for a collection (its timeout's handle and
    # callback are dropped on close: net/deadline).
    import gc

    seen = _track(monkeypatch, EyeballProtocol)
    async with edge_stack(tmp_path) as (edge, _seen):
        gc.collect()
        gc.disable()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.http_addresses[0][1])
            writer.write(b"GET /echo HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n")
            assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
            writer.close()
            assert len(seen) == 1
            for _ in range(20):
                await asyncio.sleep(0.05)
                if seen[0]() is None:
                    break
            assert seen[0]() is None, "the closed connection is held by a reference cycle"
        finally:
            gc.enable()
