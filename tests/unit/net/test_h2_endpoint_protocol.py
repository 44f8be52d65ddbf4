"""`burrow.net.h2conn.H2Endpoint` (the asyncio adapter over `H2Core`) against the reference `h2`.

Why: the adapter adds per-stream outbound buffers, backpressure (`write` returning False,
`on_writable`), credit returned on `consumed`, and forgetting finished streams. These are the
parts a long-lived tunnel connection depends on: a stream that is never forgotten is a leak, a
window never reopened is a stall. All in memory; the `h2` peer raises on any protocol slip.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame

from burrow.net.h2conn import (
    STREAM_HIGH_WATER,
    STREAM_LOW_WATER,
    ErrorCode,
    H2Endpoint,
    H2Stream,
    Headers,
    _coalesce,
)
from burrow.testing.h2_memory import Peer, Sink, parse_frames
from burrow.wire.h2core import PING, SETTINGS, frame_header

REQUEST: Headers = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":authority", b"example.test"),
    (b":path", b"/"),
]
GET: Headers = [(b":method", b"GET"), *REQUEST[1:]]
OK: Headers = [(b":status", b"200")]


class Handler:
    """Records one stream's inbound side; consumes at once unless `hold` is set."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.heads: list[Headers] = []
        self.body = bytearray()
        self.trailers: Headers | None = None
        self.ended = False
        self.reset: int | None = None
        self.writable = 0
        self.unconsumed = 0

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        self.heads.append(headers)
        self.ended = self.ended or end_stream

    def on_data(self, stream: H2Stream, data: bytes, end_stream: bool) -> None:
        self.body += data
        if self.hold:
            self.unconsumed += len(data)
        else:
            stream.consumed(len(data))
        self.ended = self.ended or end_stream

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None:
        self.trailers = headers
        self.ended = True

    def on_end(self, stream: H2Stream) -> None:
        self.ended = True

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        self.reset = error_code

    def on_writable(self, stream: H2Stream) -> None:
        self.writable += 1


class Server(H2Endpoint):
    """Adopts every request; the test decides how to answer through `self.requests`."""

    def __init__(self, *, hold: bool = False, validate: bool = True) -> None:
        super().__init__(client_side=False, validate_inbound_headers=validate)
        self.hold = hold
        self.requests: dict[int, tuple[H2Stream, Handler, Headers]] = {}
        self.answer: Any = None  # callable(stream, handler, headers, end_stream) or None

    def on_request(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        handler = Handler(self.hold)
        stream = self.adopt_stream(stream_id, handler)
        handler.ended = end_stream
        self.requests[stream_id] = (stream, handler, headers)
        if self.answer is not None:
            self.answer(stream, handler, headers, end_stream)


async def exchange(
    endpoint: H2Endpoint,
    sink: Sink,
    peer: Peer,
    rnd: random.Random | None = None,
    rounds: int = 5000,
) -> None:
    """Shuttle bytes until both sides are quiet (scheduled flushes included)."""
    for _ in range(rounds):
        await asyncio.sleep(0)  # callbacks scheduled with call_soon (flushes) run
        endpoint._flush_now()
        peer.pump()
        ours = sink.take()
        theirs = peer.conn.data_to_send()
        if not ours and not theirs:
            return
        if ours:
            peer.receive(ours)
        pos = 0
        while pos < len(theirs):
            n = len(theirs) if rnd is None else rnd.choice((1, 9, 100, 20_000, 300_000))
            endpoint.data_received(theirs[pos : pos + n])
            pos += n
    raise AssertionError("the two endpoints never went quiet")


async def connect(endpoint: H2Endpoint, peer: Peer) -> Sink:
    sink = Sink()
    endpoint.connection_made(sink)
    await exchange(endpoint, sink, peer)
    return sink


def echo(stream: H2Stream, handler: Handler, headers: Headers, end_stream: bool) -> None:
    stream.send_headers(OK)


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
async def test_h2_client_uploads_and_downloads_through_endpoint(seed: int) -> None:
    rnd = random.Random(seed)
    server, peer = Server(), Peer(client_side=True)
    sink = await connect(server, peer)
    peer.conn.increment_flow_control_window(16 << 20)
    uploads = {sid: rnd.randbytes(rnd.randint(0, 600_000)) for sid in (1, 3, 5)}
    for stream_id, body in uploads.items():
        peer.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        peer.conn.send_headers(stream_id, REQUEST)
        peer.send(stream_id, body)
    await exchange(server, sink, peer, rnd)
    assert peer.conn.max_outbound_frame_size == 1 << 20  # big frames: the `_big` path ran
    downloads = {}
    for stream_id, (stream, handler, headers) in server.requests.items():
        assert headers == REQUEST and handler.ended
        assert bytes(handler.body) == uploads[stream_id]
        downloads[stream_id] = rnd.randbytes(rnd.randint(0, 2_000_000))
        stream.send_headers(OK)
        stream.write(downloads[stream_id])
        stream.end(trailers=[(b"x-done", b"1")] if stream_id == 3 else None)
    await exchange(server, sink, peer, rnd)
    for stream_id, body in downloads.items():
        assert bytes(peer.bodies[stream_id]) == body
    assert {e.stream_id for e in peer.of(h2.events.StreamEnded)} == {1, 3, 5}
    assert len(peer.of(h2.events.TrailersReceived)) == 1
    assert server.streams == {} and server._blocked == {}


async def test_endpoint_client_against_h2_server() -> None:
    client, peer = H2Endpoint(client_side=True), Peer(client_side=False)
    sink = await connect(client, peer)
    handler = Handler()
    stream = client.open_stream(REQUEST, handler)
    stream.write(b"x" * 200_000)
    stream.end(trailers=[(b"x-sum", b"1")])
    await exchange(client, sink, peer)
    assert bytes(peer.bodies[stream.id]) == b"x" * 200_000
    assert peer.of(h2.events.TrailersReceived)
    peer.conn.send_headers(stream.id, [(b":status", b"103")])
    peer.conn.send_headers(stream.id, OK)
    peer.send(stream.id, b"y" * 100_000)
    await exchange(client, sink, peer)
    assert [h[0][1] for h in handler.heads] == [b"103", b"200"]
    assert bytes(handler.body) == b"y" * 100_000 and handler.ended
    assert client.streams == {}


# --- backpressure and flow control ----------------------------------------------------------------


async def test_write_returns_false_above_high_water_and_on_writable_after_window_opens() -> None:
    server, peer = Server(), Peer(client_side=True, auto_ack=False)
    sink = await connect(server, peer)
    peer.conn.send_headers(1, GET, end_stream=True)
    await exchange(server, sink, peer)
    stream, handler, _ = server.requests[1]
    stream.send_headers(OK)
    chunk = bytes(256 << 10)
    results = []
    for _ in range(8):
        results.append(stream.write(chunk))
        if not results[-1]:
            break
    assert results[-1] is False and all(results[:-1])
    assert stream.pending_bytes >= STREAM_HIGH_WATER
    await exchange(server, sink, peer)
    assert peer.flow[1] == 65535  # the peer's window, no more
    assert handler.writable == 0 and stream.producer_paused
    total = len(results) * len(chunk)
    # The peer drains: credit flows back, the stream drains below the low-water mark.
    peer.auto_ack = True
    peer.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    peer.conn.increment_flow_control_window(4 << 20)
    peer.conn.acknowledge_received_data(peer.flow[1], 1)
    await exchange(server, sink, peer)
    assert handler.writable == 1 and not stream.producer_paused
    assert stream.pending_bytes <= STREAM_LOW_WATER
    stream.end()
    await exchange(server, sink, peer)
    assert len(peer.bodies[1]) == total
    assert server.streams == {}


async def test_lowered_initial_window_pauses_and_raised_resumes_pending_data() -> None:
    server, peer = Server(), Peer(client_side=True, auto_ack=False)
    sink = await connect(server, peer)
    peer.conn.send_headers(1, GET, end_stream=True)
    await exchange(server, sink, peer)
    stream, _, _ = server.requests[1]
    stream.send_headers(OK)
    stream.write(bytes(50_000))
    await exchange(server, sink, peer)
    assert peer.flow[1] == 50_000
    peer.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10_000})
    await exchange(server, sink, peer)
    assert stream.send_window == 10_000 - 50_000
    peer.conn.acknowledge_received_data(50_000, 1)  # h2 may or may not send a stream update
    stream.write(bytes(30_000))
    stream.end()
    await exchange(server, sink, peer)
    assert peer.flow[1] <= 50_000 + max(0, stream.send_window + 30_000)
    peer.auto_ack = True
    peer.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    await exchange(server, sink, peer)
    assert len(peer.bodies[1]) == 80_000
    assert peer.of(h2.events.StreamEnded)
    assert server.streams == {}


async def test_credit_only_returned_after_consumed() -> None:
    server, peer = Server(hold=True), Peer(client_side=True)
    sink = await connect(server, peer)
    peer.conn.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20})
    peer.conn.send_headers(1, REQUEST)
    start = peer.conn.local_flow_control_window(1)
    assert start == 4 << 20  # the endpoint's stream window
    peer.send(1, bytes(3 << 20), end=False)
    await exchange(server, sink, peer)
    stream, handler, _ = server.requests[1]
    assert len(handler.body) == 3 << 20
    assert peer.conn.local_flow_control_window(1) == (4 << 20) - (3 << 20)
    for _ in range(3 << 4):
        stream.consumed(64 << 10)
    await exchange(server, sink, peer)
    window = peer.conn.local_flow_control_window(1)
    assert window >= (4 << 20) - (1 << 20)  # owed at most a quarter window
    stream.consumed(0)  # no-op
    server.flush_acknowledgements()
    await exchange(server, sink, peer)
    assert peer.conn.outbound_flow_control_window == 32 << 20


async def test_consumed_after_reset_still_returns_connection_credit() -> None:
    server, peer = Server(hold=True), Peer(client_side=True)
    sink = await connect(server, peer)
    peer.conn.send_headers(1, REQUEST)
    peer.send(1, bytes(100_000), end=False)
    await exchange(server, sink, peer)
    stream, handler, _ = server.requests[1]
    stream.reset()
    await exchange(server, sink, peer)
    assert peer.of(h2.events.StreamReset)[0].error_code == ErrorCode.CANCEL
    stream.consumed(handler.unconsumed)
    server.flush_acknowledgements()
    await exchange(server, sink, peer)
    assert peer.conn.outbound_flow_control_window == 32 << 20
    assert server.streams == {}


# --- stream lifetime ------------------------------------------------------------------------------


async def test_thousand_request_response_pairs_leave_no_streams() -> None:
    rnd = random.Random(11)
    server, peer = Server(), Peer(client_side=True)
    sink = await connect(server, peer)
    styles = ("head-only", "body", "trailers", "request-body", "client-reset", "server-reset")

    def answer(stream: H2Stream, handler: Handler, headers: Headers, end_stream: bool) -> None:
        style = dict(headers)[b"x-style"]
        if style == b"head-only":
            stream.send_headers([(b":status", b"204")], end_stream=True)
        elif style == b"server-reset":
            stream.reset(ErrorCode.INTERNAL_ERROR)
        elif style != b"client-reset":
            stream.send_headers(OK)
            stream.write(b"r" * rnd.randint(1, 3000))
            stream.end(trailers=[(b"x-t", b"1")] if style == b"trailers" else None)

    server.answer = answer
    for i in range(1000):
        stream_id = peer.conn.get_next_available_stream_id()
        style = styles[i % len(styles)]
        has_body = style in ("request-body", "client-reset")
        peer.conn.send_headers(
            stream_id, [*REQUEST, (b"x-style", style.encode())], end_stream=not has_body
        )
        if style == "request-body":
            peer.send(stream_id, b"q" * 1000)
        if i % 50 == 49:
            await exchange(server, sink, peer)
            for sid in list(peer.conn.streams):
                if peer.conn.streams[sid].open and sid % 12 == 9:  # client-reset style
                    peer.conn.reset_stream(sid, ErrorCode.CANCEL)
            await exchange(server, sink, peer)
            assert len(server.streams) <= 50
    await exchange(server, sink, peer)
    assert len(server.requests) == 1000
    assert server.streams == {} and server._blocked == {}
    assert len(peer.of(h2.events.StreamEnded)) == 1000 - 2 * (1000 // 6) - (
        1 if 1000 % 6 > 4 else 0
    )
    assert server._rend == 0 and server._body_left == 0


async def test_endpoint_pair_thousand_exchanges_leave_no_streams() -> None:
    """Both ends are H2Endpoint (the tunnel): nothing kept after each exchange completes."""
    client, server = H2Endpoint(client_side=True), Server()
    csink, ssink = Sink(), Sink()
    client.connection_made(csink)
    server.connection_made(ssink)
    server.answer = lambda stream, handler, headers, end: (
        stream.send_headers(OK),
        stream.write(b"pong"),
        stream.end(),
    )

    async def shuttle() -> None:
        for _ in range(100):
            await asyncio.sleep(0)
            client._flush_now()
            server._flush_now()
            a, b = csink.take(), ssink.take()
            if not a and not b:
                return
            if a:
                server.data_received(a)
            if b:
                client.data_received(b)
        raise AssertionError("no quiescence")

    handlers = []
    for i in range(1000):
        handler = Handler()
        handlers.append(handler)
        stream = client.open_stream(REQUEST, handler)
        stream.write(b"ping")
        stream.end()
        if i % 100 == 99:
            await shuttle()
    await shuttle()
    assert all(h.body == b"pong" and h.ended for h in handlers)
    assert client.streams == {} and server.streams == {}
    assert client._blocked == {} and server._blocked == {}


async def test_stream_error_resets_handler_and_forgets_stream() -> None:
    server, peer = Server(), Peer(client_side=True)
    sink = await connect(server, peer)
    peer.conn.send_headers(1, REQUEST)
    await exchange(server, sink, peer)
    _, handler, _ = server.requests[1]
    # Trailers without END_STREAM: a stream error the h2 oracle cannot produce, built by hand.
    block = peer.conn.encoder.encode([(b"x-t", b"1")])
    frame = HeadersFrame(1, block)
    frame.flags.add("END_HEADERS")
    server.data_received(bytes(frame.serialize()))
    assert handler.reset == ErrorCode.PROTOCOL_ERROR
    assert server.streams == {}
    peer.receive(sink.take())
    assert peer.of(h2.events.StreamReset)[0].error_code == ErrorCode.PROTOCOL_ERROR


async def test_malformed_eyeball_request_never_reaches_on_request() -> None:
    server, peer = Server(), Peer(client_side=True)
    sink = await connect(server, peer)
    block = peer.conn.encoder.encode([*GET, (b"connection", b"close")])
    frame = HeadersFrame(1, block)
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    server.data_received(bytes(frame.serialize()))
    assert server.requests == {} and server.streams == {}
    resets = [f for f in parse_frames(sink.take()) if f.stream_id == 1]
    assert [type(f).__name__ for f in resets] == ["RstStreamFrame"]


async def test_connection_error_writes_goaway_and_aborts() -> None:
    server, peer = Server(), Peer(client_side=True)
    sink = await connect(server, peer)
    server.data_received(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")  # zero WU
    (goaway,) = [f for f in parse_frames(sink.take()) if isinstance(f, GoAwayFrame)]
    assert goaway.error_code == ErrorCode.PROTOCOL_ERROR
    assert sink.aborted


async def test_goaway_refuses_streams_beyond_last_stream_id() -> None:
    client, peer = H2Endpoint(client_side=True), Peer(client_side=False)
    sink = await connect(client, peer)
    first, second = Handler(), Handler()
    s1 = client.open_stream(GET, first, end_stream=True)
    s3 = client.open_stream(GET, second, end_stream=True)
    client._flush_now()
    sink.take()  # the peer never sees the requests
    peer.conn.close_connection(ErrorCode.NO_ERROR, last_stream_id=s1.id)
    client.data_received(peer.conn.data_to_send())
    assert second.reset == ErrorCode.REFUSED_STREAM
    assert first.reset is None and s1.id in client.streams and s3.id not in client.streams
    assert not sink.closed  # graceful


async def test_connection_lost_resets_open_streams() -> None:
    client, peer = H2Endpoint(client_side=True), Peer(client_side=False)
    await connect(client, peer)
    handler = Handler()
    client.open_stream(GET, handler, end_stream=True)
    client.connection_lost(None)
    assert handler.reset == ErrorCode.CANCEL and client.streams == {}


async def test_write_after_headers_with_end_stream_sends_no_data() -> None:
    """A producer racing the end (e.g. an origin body after a HEAD response) must not put DATA
    after END_STREAM on the wire: the peer would reset the stream (STREAM_CLOSED)."""
    server, peer = Server(), Peer(client_side=True)
    sink = await connect(server, peer)
    peer.conn.send_headers(1, REQUEST)  # request body still open: the stream stays known
    await exchange(server, sink, peer)
    stream, _, _ = server.requests[1]
    stream.send_headers([(b":status", b"204")], end_stream=True)
    stream.write(b"late")
    await asyncio.sleep(0)
    server._flush_now()
    frames = [f for f in parse_frames(sink.take()) if f.stream_id == 1]
    assert [type(f) for f in frames] == [HeadersFrame], "DATA after END_STREAM"
    assert not [f for f in frames if isinstance(f, DataFrame)]


async def test_peer_that_never_reads_is_dropped() -> None:
    """Replies (here PING acks) to a peer that does not read pile up in the transport: past a
    bound the connection is dropped instead of growing without limit."""
    server, transport = Server(), Sink()
    server.connection_made(transport)
    preface = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    preface.initiate_connection()
    server.data_received(preface.data_to_send())
    server.pause_writing()  # the transport's buffer is above its high-water mark
    transport.get_write_buffer_size = lambda: 65 << 20  # type: ignore[method-assign]
    server.data_received(frame_header(8, PING, 0, 0) + b"12345678")
    assert transport.aborted


async def test_owned_buffers_are_queued_as_they_are_and_others_copied() -> None:
    """Data an endpoint delivered (possibly its own bytearray) is passed on without a copy;
    a caller's mutable buffer is copied, since the caller may reuse it."""
    server, peer = Server(hold=True), Peer(client_side=True)
    sink = await connect(server, peer)
    request = [(":method", "GET"), (":scheme", "https"), (":authority", "t"), (":path", "/")]
    peer.conn.send_headers(1, request)
    await exchange(server, sink, peer)
    stream = server.requests[1][0]
    owned, mine = bytearray(b"owned"), bytearray(b"mine!")
    stream.write(owned, owned=True)
    stream.write(mine)
    assert stream._pending[0] is owned
    assert stream._pending[1] == b"mine!" and type(stream._pending[1]) is bytes


def test_coalesced_writes_stay_bounded() -> None:
    """Runs of small frames are joined into a few writes, none much larger than 256 KiB."""
    pieces = [b"h" * 9, b"x" * 16384] * 64  # 64 frames of 16 KiB, as to a peer with small frames
    merged = _coalesce(list(pieces))
    assert b"".join(merged) == b"".join(pieces)
    assert 3 <= len(merged) <= 6
    assert max(len(m) for m in merged) < (256 << 10) + 16384 + 9


class _Holder:
    """A handler holding output for the end of a read (`H2Endpoint.defer`)."""

    def __init__(self) -> None:
        self.flushed = 0

    def flush_deferred(self) -> None:
        self.flushed += 1


async def test_defer_waits_for_the_end_of_a_read_and_is_immediate_outside_one() -> None:
    """Output held during a read is written once the read's frames are handled; a handler
    deferring from a callback outside a read (a timer, another connection) is never stalled
    until some later read."""
    endpoint, sink, holder = H2Endpoint(client_side=True), Sink(), _Holder()
    endpoint.connection_made(sink)
    endpoint.defer(holder)
    assert holder.flushed == 1
    during: list[int] = []
    real_receive = endpoint.receive

    def receive(data: bytes) -> None:
        endpoint.defer(holder)
        during.append(holder.flushed)
        real_receive(data)

    endpoint.receive = receive  # type: ignore[method-assign]
    endpoint.data_received(frame_header(0, SETTINGS, 0, 0))
    assert during == [1] and holder.flushed == 2
