"""A large response crosses the tunnel without being copied into per-frame buffers and reaches
the eyeball with one write per tunnel read.

Why: the engine hands a large DATA frame's body on piece by piece, as views of each read
(`H2Core.receive`); a frame usually spans two reads, so writing each piece on its own would
double the eyeball's syscalls. The exchange holds the pieces of one read and writes them
together (`H2Endpoint.defer`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from burrow.edge.public import EyeballProtocol
from burrow.edge.tunnel_conn import EdgeTunnelConnection
from burrow.testing.harness import TunnelStack, protocol_origin
from burrow.testing.origins import pattern_bytes

SIZE = 12 << 20
BODY = pattern_bytes(SIZE)


class _Origin(asyncio.Protocol):
    """Answers one GET with SIZE pattern bytes, written in 256 KiB pieces."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE)
            for i in range(0, SIZE, 256 << 10):
                self.transport.write(BODY[i : i + (256 << 10)])


async def _get(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /big HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(-1), 30)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    return body


async def test_large_response_is_intact_with_one_eyeball_write_per_tunnel_read(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = {"reads": 0, "writes": 0}
    read, write, writelines = (
        EdgeTunnelConnection.data_received,
        EyeballProtocol.write,
        EyeballProtocol.writelines,
    )

    def counted_read(self: Any, data: bytes) -> None:
        counts["reads"] += 1
        read(self, data)

    def counted_write(self: Any, data: Any) -> None:
        counts["writes"] += 1
        write(self, data)

    def counted_writelines(self: Any, pieces: Any) -> None:
        counts["writes"] += 1
        writelines(self, pieces)

    monkeypatch.setattr(EdgeTunnelConnection, "data_received", counted_read)
    monkeypatch.setattr(EyeballProtocol, "write", counted_write)
    monkeypatch.setattr(EyeballProtocol, "writelines", counted_writelines)
    async with protocol_origin(_Origin) as ingress, TunnelStack.start(tmp_path, ingress) as stack:
        counts["reads"] = counts["writes"] = 0
        body = await _get(stack.http_port)
    assert len(body) == SIZE and body == BODY
    assert counts["reads"] >= 12  # 12 MiB cannot come in fewer reads of at most 256 KiB
    assert counts["writes"] <= counts["reads"], counts
