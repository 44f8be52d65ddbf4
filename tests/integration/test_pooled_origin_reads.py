"""The connector reads its origins into pooled 1 MiB buffers and passes large reads on as
views (net/recvbuf): reads are larger than uvloop's own (256,000 bytes), nothing is copied,
and no byte already passed on is overwritten, even while the tunnel holds views unsent."""

from __future__ import annotations

import asyncio
import mmap
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest

from burrow.net import recvbuf
from burrow.testing.harness import (
    CountingPool,
    TunnelStack,
    origin_tls,
    protocol_origin,
    read_stalling,
)

SO_RCVBUFFORCE = 33  # Linux; not exported by the socket module

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
try:
    import uvloop

    LOOPS["uvloop"] = uvloop.new_event_loop
except ImportError:  # the `fast` extra is optional
    pass


class _Sink(recvbuf.PooledReads):
    def __init__(self) -> None:
        self.pieces: list[bytes | memoryview] = []
        self.transport: Any = None
        self.done = asyncio.get_running_loop().create_future()
        self.total = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.pause_reading()  # let the sender fill the socket buffers first

    def data_received(self, data: bytes | memoryview) -> None:
        self.pieces.append(data)
        self.total += len(data)
        if self.total >= 2 * recvbuf.BUF_SIZE and not self.done.done():
            self.done.set_result(None)


async def _large_reads() -> list[bytes | memoryview]:
    payload = os.urandom(2 * recvbuf.BUF_SIZE)
    sent = asyncio.get_running_loop().create_future()

    class _Sender(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            transport.write(payload)
            self._check()

        def _check(self) -> None:
            if self.transport.get_write_buffer_size() == 0:
                sent.set_result(None)
            else:
                asyncio.get_running_loop().call_later(0.01, self._check)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Sender, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sock = socket.socket()
    try:  # room for the whole payload; as root beyond net.core.rmem_max (SO_RCVBUFFORCE)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < 8 << 20:
        sock.close()
        pytest.skip("net.core.rmem_max keeps the receive buffer below 2 MiB of payload")
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    transport, sink = await loop.create_connection(_Sink, sock=sock)
    try:
        await asyncio.wait_for(sent, 10)  # all of it is in the kernel's buffers now
        transport.resume_reading()
        await asyncio.wait_for(sink.done, 10)
        assert b"".join(bytes(p) for p in sink.pieces) == payload
        return sink.pieces
    finally:
        transport.close()
        server.close()


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_reads_fill_a_whole_pooled_buffer_and_are_lent_as_views(loop_name: str) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        pieces = runner.run(_large_reads())
    first = pieces[0]
    assert type(first) is memoryview and len(first) == recvbuf.BUF_SIZE
    assert type(first.obj) is mmap.mmap


class _Origin(asyncio.Protocol):
    """Answers one GET with BODY, written at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY))
            self.transport.write(BODY)


BODY = os.urandom(16 << 20)


async def test_views_held_by_a_stalled_tunnel_stream_are_never_overwritten(
    tmp_path: Any, every_read_lent: CountingPool
) -> None:
    # Every read is lent (none copied out), and the eyeball stalls again and again: the
    # connector's stream queues views behind the flow-control window while the origin is read
    # into further buffers. A buffer reused while lent would corrupt the body.
    async with protocol_origin(_Origin) as ingress, TunnelStack.start(tmp_path, ingress) as stack:
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.http_port, limit=64 << 10)
        writer.write(b"GET /big HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n")
        got = await read_stalling(reader)
        got += await asyncio.wait_for(reader.read(-1), 30)
        writer.close()
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    assert len(body) == len(BODY)
    assert body == BODY
    assert every_read_lent.lent >= len(BODY)  # the origin's response was read through the pool


async def _fetch_through_tls_origin(tmp_path: Any) -> bytes:
    server_ctx, verify = origin_tls(tmp_path)
    async with (
        protocol_origin(_Origin, verify, tls=server_ctx) as ingress,
        TunnelStack.start(tmp_path / "stack", ingress) as stack,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.http_port)
        writer.write(b"GET /big HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n")
        got = await asyncio.wait_for(reader.read(-1), 30)
        writer.close()
    return got


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_tls_origin_is_read_through_the_pool_intact(loop_name: str, tmp_path: Any) -> None:
    # The TLS layer (uvloop's or asyncio's) decrypts straight into the pooled buffer.
    pool = CountingPool()
    recvbuf.POOL, saved = pool, recvbuf.POOL
    try:
        with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
            got = runner.run(_fetch_through_tls_origin(tmp_path))
    finally:
        recvbuf.POOL = saved
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    assert body == BODY
    assert pool.filled_bytes >= len(BODY)
