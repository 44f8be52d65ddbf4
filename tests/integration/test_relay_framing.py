"""Request-body framing toward the origin and what it means for connection reuse."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from burrow.testing.harness import TunnelStack, protocol_origin


class _Origin(asyncio.Protocol):
    """Answers every request head with a tiny response; records which connection served it."""

    served: list[int] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.port = transport.get_extra_info("peername")[1]

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            _Origin.served.append(self.port)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # type: ignore[attr-defined]


async def _post_chunked(stack: TunnelStack) -> int:
    async def body() -> AsyncIterator[bytes]:
        yield b"part one "
        yield b"part two"

    async with (
        aiohttp.ClientSession() as s,
        s.post(stack.url("/"), data=body(), headers={"Host": "app.localhost"}) as r,
    ):
        await r.read()
        return r.status


async def test_unframed_body_never_reuses_the_origin_connection(tmp_path: Path) -> None:
    _Origin.served = []
    unframed = {"disableChunkedEncoding": True}
    async with (
        protocol_origin(_Origin, unframed) as ingress,
        TunnelStack.start(tmp_path, ingress) as stack,
    ):
        assert await _post_chunked(stack) == 200
        assert await _post_chunked(stack) == 200
    assert len(_Origin.served) == 2
    assert _Origin.served[0] != _Origin.served[1]
