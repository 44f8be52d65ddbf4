"""A graceful GOAWAY (NO_ERROR) stops new streams but lets open ones finish (RFC 9113 6.8):
the edge drains tunnel connections this way on shutdown. Plain h2 would end the connection on
both sides at once."""

from __future__ import annotations

import asyncio

from burrow.net.h2conn import H2Endpoint, H2Stream, Headers
from burrow.testing.h2_memory import Pipe


class Collect:
    def __init__(self) -> None:
        self.status: bytes | None = None
        self.body = b""
        self.done = asyncio.Event()

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        self.status = dict(headers)[b":status"]

    def on_data(self, stream: H2Stream, data: bytes, end_stream: bool) -> None:
        stream.consumed(len(data))
        self.body += data
        if end_stream:
            self.done.set()

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None:
        self.done.set()

    def on_end(self, stream: H2Stream) -> None:
        self.done.set()

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        self.done.set()

    def on_writable(self, stream: H2Stream) -> None:
        pass


class Server(H2Endpoint):
    def __init__(self) -> None:
        super().__init__(client_side=False)
        self.stream: H2Stream | None = None
        self.goaway = asyncio.Event()

    def on_request(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        self.stream = self.adopt_stream(stream_id, None)

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        self.goaway.set()


async def test_open_stream_finishes_after_graceful_goaway() -> None:
    client, server = H2Endpoint(client_side=True), Server()
    ct, st = Pipe(), Pipe()
    ct.peer, st.peer = server, client
    client.connection_made(ct)
    server.connection_made(st)
    got = Collect()
    client.open_stream(
        [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"), (b":path", b"/")],
        got,
        end_stream=True,
    )
    for _ in range(5):
        await asyncio.sleep(0)
    assert server.stream is not None
    server.stream.send_headers([(b":status", b"200")])
    server.stream.write(b"first ")
    client.goaway()  # the edge shuts down
    await asyncio.wait_for(server.goaway.wait(), 1)
    server.stream.write(b"and the rest")  # still allowed on the open stream
    server.stream.end()
    await asyncio.wait_for(got.done.wait(), 1)
    assert got.status == b"200"
    assert got.body == b"first and the rest"
    assert not client.closed and not server.closed
