"""Request-body framing toward the origin and what it means for connection reuse."""

from __future__ import annotations

import asyncio

import aiohttp

from burrow.ingress.rules import Ingress
from burrow.testing.harness import TunnelStack


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
    async def body():
        yield b"part one "
        yield b"part two"

    async with (
        aiohttp.ClientSession() as s,
        s.post(stack.url("/"), data=body(), headers={"Host": "app.localhost"}) as r,
    ):
        await r.read()
        return r.status


async def test_unframed_body_never_reuses_the_origin_connection(tmp_path) -> None:
    _Origin.served = []
    server = await asyncio.get_running_loop().create_server(_Origin, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ingress = Ingress.parse(
        [
            {
                "hostname": "app.localhost",
                "service": f"http://127.0.0.1:{port}",
                "originRequest": {"disableChunkedEncoding": True},
            },
            {"service": "http_status:404"},
        ]
    )
    try:
        async with TunnelStack.start(tmp_path, ingress) as stack:
            assert await _post_chunked(stack) == 200
            assert await _post_chunked(stack) == 200
    finally:
        server.close()
    assert len(_Origin.served) == 2
    assert _Origin.served[0] != _Origin.served[1]
