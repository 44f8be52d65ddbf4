"""`burrow.wire.h2core.H2Core` against the reference `h2` package and hand-built frames.

Why: the engine replaced `h2` on every data path (eyeball, tunnel, origin), so `h2` is the oracle
here: it raises on any frame that breaks RFC 9113 (flow-control windows, stream states, HPACK),
and it speaks the full protocol (Huffman, dynamic table, padding, CONTINUATION) that our own
encoder never produces. Malformed input is built by hand (hyperframe or raw bytes) to check each
protocol error ends in the right GOAWAY or RST_STREAM code. Everything runs in memory.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from burrow.testing.h2_memory import Peer, parse_frames
from burrow.wire.h2core import (
    CONTINUATION,
    DATA,
    DEFAULT_FRAME,
    DEFAULT_WINDOW,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    FLAG_PADDED,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    PING,
    PREFACE,
    PRIORITY,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    CoreStream,
    ErrorCode,
    H2ConnectionError,
    H2Core,
    Setting,
    frame_header,
)

Headers = list[tuple[bytes, bytes]]

REQUEST: Headers = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":authority", b"example.test"),
    (b":path", b"/upload"),
]
GET: Headers = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"example.test"),
    (b":path", b"/"),
]
OK: Headers = [(b":status", b"200"), (b"content-type", b"application/octet-stream")]


# --- harness ------------------------------------------------------------------------------------


class Core(H2Core):
    """An owner that records every hook and sends queued bodies within the peer's windows."""

    def __init__(self, *, client_side: bool, auto_ack: bool = True, **options: Any) -> None:
        settings: dict[str, Any] = {
            "initial_window": DEFAULT_WINDOW,
            "connection_window": DEFAULT_WINDOW,
            "max_frame_size": DEFAULT_FRAME,
            "max_header_list_size": 1 << 16,
        }
        settings.update(options)
        super().__init__(client_side=client_side, **settings)
        self.auto_ack = auto_ack
        self.requests: dict[int, Headers] = {}
        self.heads: dict[int, list[Headers]] = defaultdict(list)
        self.trailers: dict[int, Headers] = {}
        self.bodies: dict[int, bytearray] = defaultdict(bytearray)
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.goaways: list[tuple[int, int, bytes]] = []
        self.ping_acks: list[bytes] = []
        self.windows_opened = 0
        # stream id -> [body still to send, end after it, trailers]
        self.outbound: dict[int, list[Any]] = {}
        self.on_request: Callable[[Core, CoreStream, Headers, bool], None] | None = None
        self.initiate()

    # hooks
    def h2_request(self, stream: CoreStream, headers: Headers, end_stream: bool) -> None:
        self.requests[stream.id] = headers
        if end_stream:
            self.ended.add(stream.id)
        if self.on_request is not None:
            self.on_request(self, stream, headers, end_stream)

    def h2_headers(self, stream: CoreStream, headers: Headers, end_stream: bool) -> None:
        self.heads[stream.id].append(headers)
        if end_stream:
            self.ended.add(stream.id)
            self._maybe_forget(stream)

    def h2_trailers(self, stream: CoreStream, headers: Headers) -> None:
        self.trailers[stream.id] = headers
        self.ended.add(stream.id)
        self._maybe_forget(stream)

    def h2_data(self, stream: CoreStream, data: bytes, end_stream: bool) -> None:
        self.bodies[stream.id] += data
        if self.auto_ack and data:
            self.acknowledge(stream, len(data))
        if end_stream:
            self.ended.add(stream.id)
            self._maybe_forget(stream)

    def h2_stream_reset(self, stream: CoreStream, code: int) -> None:
        self.resets[stream.id] = code
        self.streams.pop(stream.id, None)
        self.outbound.pop(stream.id, None)

    def h2_window_opened(self, stream: CoreStream | None) -> None:
        self.windows_opened += 1

    def h2_goaway(self, last_stream_id: int, code: int, debug: bytes) -> None:
        self.goaways.append((last_stream_id, code, debug))

    def h2_ping_ack(self, data: bytes) -> None:
        self.ping_acks.append(data)

    # owner side
    def _maybe_forget(self, stream: CoreStream) -> None:
        if stream.local_ended and stream.remote_ended:
            self.streams.pop(stream.id, None)

    def request(
        self,
        headers: Headers,
        body: bytes = b"",
        *,
        end: bool = True,
        trailers: Headers | None = None,
    ) -> int:
        stream = self.open_stream()
        only_head = end and not body and trailers is None
        self.send_headers(stream.id, headers, end_stream=only_head)
        if only_head:
            stream.local_ended = True
        else:
            self.outbound[stream.id] = [memoryview(body), end, trailers]
        return int(stream.id)

    def respond(
        self,
        stream_id: int,
        headers: Headers = OK,
        body: bytes = b"",
        *,
        end: bool = True,
        trailers: Headers | None = None,
    ) -> None:
        stream = self.streams[stream_id]
        only_head = end and not body and trailers is None
        self.send_headers(stream_id, headers, end_stream=only_head)
        if only_head:
            stream.local_ended = True
            self._maybe_forget(stream)
        else:
            self.outbound[stream_id] = [memoryview(body), end, trailers]

    def pump(self) -> None:
        """Send queued bodies: never more than min(stream window, connection window, frame)."""
        for stream_id, entry in list(self.outbound.items()):
            stream = self.streams.get(stream_id)
            if stream is None:
                del self.outbound[stream_id]
                continue
            data, end, trailers = entry
            while data:
                n = min(len(data), stream.send_window, self.send_window, self.peer_max_frame)
                if n <= 0:
                    break
                last = n == len(data) and end and trailers is None
                self.send_data(stream, bytes(data[:n]), last)
                data = data[n:]
                if last:
                    stream.local_ended = True
            entry[0] = data
            if data:
                continue
            del self.outbound[stream_id]
            if end and not stream.local_ended:
                if trailers is not None:
                    self.send_headers(stream_id, trailers, end_stream=True)
                else:
                    self.send_data(stream, b"", True)
                stream.local_ended = True
            self._maybe_forget(stream)


def take(core: H2Core) -> bytes:
    return b"".join(bytes(piece) for piece in core.take_output())


def feed(core: H2Core, data: bytes, rnd: random.Random | None = None) -> None:
    """Deliver bytes as one read, or cut at random boundaries (1 byte up to several frames)."""
    if rnd is None:
        core.receive(data)
        return
    pos = 0
    while pos < len(data):
        n = rnd.choice((1, 2, 8, 9, 10, 100, 4096, 16393, 70_000, 300_000))
        core.receive(data[pos : pos + n])
        pos += n


def exchange(core: Core, peer: Peer, rnd: random.Random | None = None, rounds: int = 2000) -> None:
    """Shuttle bytes both ways until neither side has anything to send."""
    for _ in range(rounds):
        core.pump()
        peer.pump()
        ours = take(core)
        theirs = peer.conn.data_to_send()
        if not ours and not theirs:
            return
        if ours:
            peer.receive(ours)
        if theirs:
            feed(core, theirs, rnd)
    raise AssertionError("the two endpoints never went quiet")


def pair(
    *, core_client: bool, core: dict[str, Any] | None = None, peer: dict[str, Any] | None = None
) -> tuple[Core, Peer]:
    c = Core(client_side=core_client, **(core or {}))
    p = Peer(client_side=not core_client, **(peer or {}))
    exchange(c, p)
    return c, p


def raw(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return frame_header(len(payload), ftype, flags, stream_id) + payload


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def setting(key: int, value: int) -> bytes:
    return key.to_bytes(2, "big") + value.to_bytes(4, "big")


class RawClient:
    """Hand-built client frames; HPACK state kept with the reference encoder (which uses
    Huffman coding and the dynamic table)."""

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()

    @staticmethod
    def preface(settings: dict[int, int] | None = None) -> bytes:
        return PREFACE + SettingsFrame(0, settings or {}).serialize()

    def block(self, headers: Headers) -> bytes:
        return bytes(self.encoder.encode(headers))

    def headers(
        self,
        stream_id: int,
        headers: Headers,
        *,
        end_stream: bool = True,
        pad: int | None = None,
        priority: bool = False,
    ) -> bytes:
        frame = HeadersFrame(stream_id, self.block(headers))
        frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        if pad is not None:
            frame.flags.add("PADDED")
            frame.pad_length = pad
        if priority:
            frame.flags.add("PRIORITY")
            frame.depends_on, frame.stream_weight, frame.exclusive = 0, 15, False
        return bytes(frame.serialize())


def server(**options: Any) -> tuple[Core, RawClient]:
    """A server core that has read a client preface and SETTINGS, its output discarded."""
    core = Core(client_side=False, **options)
    core.receive(RawClient.preface())
    take(core)
    return core, RawClient()


def client(**options: Any) -> Core:
    core = Core(client_side=True, **options)
    core.receive(SettingsFrame(0, {}).serialize())
    take(core)
    return core


def expect_connection_error(core: H2Core, data: bytes, code: int) -> list[Frame]:
    with pytest.raises(H2ConnectionError) as info:
        core.receive(data)
    assert info.value.code == code
    frames = parse_frames(take(core))
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert len(goaways) == 1 and goaways[0].error_code == code
    assert core.goaway_sent
    return frames


def rsts(data: bytes) -> dict[int, int]:
    return {f.stream_id: f.error_code for f in parse_frames(data) if isinstance(f, RstStreamFrame)}


def event_headers(event: Any) -> Headers:
    return [(bytes(n), bytes(v)) for n, v in event.headers]


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_h2_client_against_core_server_random_cuts(seed: int) -> None:
    """Several concurrent uploads and downloads with reads cut at random byte boundaries."""
    rnd = random.Random(seed)
    core, peer = pair(core_client=False)
    uploads: dict[int, bytes] = {}
    for _ in range(4):
        stream_id = peer.conn.get_next_available_stream_id()
        body = rnd.randbytes(rnd.randint(0, 150_000))
        uploads[stream_id] = body
        peer.conn.send_headers(stream_id, [*REQUEST, (b"x-n", str(stream_id).encode())])
        peer.send(stream_id, body)
    exchange(core, peer, rnd)
    assert set(core.requests) == set(uploads)
    for stream_id, body in uploads.items():
        assert core.requests[stream_id] == [*REQUEST, (b"x-n", str(stream_id).encode())]
        assert bytes(core.bodies[stream_id]) == body
        assert stream_id in core.ended
    downloads = {sid: rnd.randbytes(rnd.randint(0, 200_000)) for sid in uploads}
    for stream_id, body in downloads.items():
        core.respond(stream_id, OK, body)
    exchange(core, peer, rnd)
    for stream_id, body in downloads.items():
        assert bytes(peer.bodies[stream_id]) == body
    ended = {e.stream_id for e in peer.of(h2.events.StreamEnded)}
    assert ended == set(downloads)
    assert core.streams == {}
    assert not core.resets and not peer.of(h2.events.StreamReset)


@pytest.mark.parametrize("seed", [4, 5])
def test_core_client_against_h2_server_random_cuts(seed: int) -> None:
    rnd = random.Random(seed)
    core, peer = pair(core_client=True)
    uploads: dict[int, bytes] = {}
    for _ in range(3):
        body = rnd.randbytes(rnd.randint(1, 100_000))
        uploads[core.request(REQUEST, body)] = body
    exchange(core, peer, rnd)
    received = {e.stream_id: event_headers(e) for e in peer.of(h2.events.RequestReceived)}
    assert received == dict.fromkeys(uploads, REQUEST)
    assert {k: bytes(v) for k, v in peer.bodies.items()} == uploads
    downloads = {sid: rnd.randbytes(rnd.randint(0, 150_000)) for sid in uploads}
    for stream_id, body in downloads.items():
        peer.conn.send_headers(stream_id, OK)
        peer.send(stream_id, body)
    exchange(core, peer, rnd)
    for stream_id, body in downloads.items():
        assert core.heads[stream_id] == [OK]
        assert bytes(core.bodies[stream_id]) == body
        assert stream_id in core.ended
    assert core.streams == {}


def test_large_data_frames_stream_to_the_owner_as_views_of_the_received_bytes() -> None:
    """A large DATA frame arriving over several reads is not buffered: each read's part goes to
    the owner at once, a large part as a view of the bytes received (no copy), a small one as
    bytes; END_STREAM comes with the last part only. Flow control counts the whole frame."""
    options = {
        "max_frame_size": 1 << 20,
        "initial_window": 4 << 20,
        "connection_window": 8 << 20,
    }
    core, peer = pair(core_client=False, core=options)
    assert peer.conn.max_outbound_frame_size == 1 << 20
    body = random.Random(7).randbytes(3 * (1 << 20) + 4321)
    peer.conn.send_headers(1, REQUEST)
    peer.send(1, body[: 1 << 20], end=False)
    peer.pump()
    wire = peer.conn.data_to_send()
    headers_len = 9 + int.from_bytes(wire[:3], "big")
    pieces: list[Any] = []
    record = core.h2_data

    def spy(stream: CoreStream, data: Any, end_stream: bool) -> None:
        pieces.append((data, end_stream))
        record(stream, data, end_stream)

    core.h2_data = spy  # type: ignore[method-assign]
    # The first big frame cut in three reads: header+some, middle, rest.
    window = core.recv_window
    core.receive(wire[: headers_len + 100])
    assert core.recv_window == window - (1 << 20)  # the whole frame, at its header
    assert [(type(d), len(d), e) for d, e in pieces] == [(bytes, 91, False)]
    middle = wire[headers_len + 100 : headers_len + 500_000]
    core.receive(middle)
    view, end = pieces[-1]
    assert type(view) is memoryview and view.obj is middle and not end  # no copy
    assert core._rend == 0 and len(core._rbuf) <= 16 << 10  # nothing buffered
    core.receive(wire[headers_len + 500_000 :])
    assert core._body_left == 0
    assert bytes(core.bodies[1]) == body[: 1 << 20]
    assert 1 not in core.ended
    # The rest with random cuts, some frames padded (those are received whole).
    peer.send(1, body[1 << 20 :], pad=200)
    exchange(core, peer, random.Random(8))
    assert bytes(core.bodies[1]) == body
    assert 1 in core.ended
    assert [e for _, e in pieces].count(True) == 1 and pieces[-1][1]
    # A big download too (the h2 peer accepts 16 KiB frames only: core splits).
    core.respond(1, OK, body)
    exchange(core, peer, random.Random(9))
    assert bytes(peer.bodies[1]) == body


def test_big_frame_followed_by_more_frames_in_the_same_read() -> None:
    core, raw_client = server(
        max_frame_size=1 << 20, initial_window=1 << 20, connection_window=1 << 20
    )
    payload = bytes(range(256)) * 400  # 100 KiB
    wire = (
        raw_client.headers(1, REQUEST, end_stream=False)
        + raw(DATA, 0, 1, payload)
        + raw(DATA, FLAG_END_STREAM, 1, b"tail")
        + raw(PING, 0, 0, b"12345678")
    )
    core.receive(wire[:200])
    core.receive(wire[200:-30])  # completes the big frame and carries part of the next ones
    core.receive(wire[-30:])
    assert bytes(core.bodies[1]) == payload + b"tail"
    assert 1 in core.ended
    pings = [f for f in parse_frames(take(core)) if isinstance(f, PingFrame)]
    assert pings and pings[0].opaque_data == b"12345678" and "ACK" in pings[0].flags


BIG = {"max_frame_size": 1 << 20, "initial_window": 1 << 20, "connection_window": 1 << 20}


def test_streamed_frame_whose_stream_is_reset_midway_returns_the_rest_of_its_credit() -> None:
    """The owner resets the stream while a large frame's body is arriving: the rest of the
    body is dropped, and its bytes still count against (and return to) the connection window."""
    core, raw_client = server(auto_ack=False, **BIG)
    body = bytes(range(256)) * 1000  # 256,000 bytes
    wire = raw_client.headers(1, REQUEST, end_stream=False) + raw(DATA, FLAG_END_STREAM, 1, body)
    cut = len(wire) - 200_000
    core.receive(wire[:cut])
    got = len(core.bodies[1])
    assert 0 < got < len(body)
    stream = core.streams[1]
    stream.closed = True  # what an owner's reset does (H2Stream.reset)
    core.send_rst(1, ErrorCode.CANCEL)
    core.acknowledge(None, got)  # the owner drained what it had
    core.receive(wire[cut:])
    assert len(core.bodies[1]) == got and 1 not in core.ended
    assert core.recv_window + core.recv_unacked == 1 << 20  # every byte credited back
    # The connection goes on.
    core.receive(raw_client.headers(3, GET))
    assert 3 in core.requests


def test_streamed_frame_on_a_closed_stream_is_refused_at_its_header() -> None:
    core, raw_client = server(**BIG)
    core.receive(raw_client.headers(1, REQUEST, end_stream=True))
    take(core)
    wire = raw(DATA, 0, 1, bytes(100_000))
    core.receive(wire[:50_000])
    assert rsts(take(core)) == {1: ErrorCode.STREAM_CLOSED}
    core.receive(wire[50_000:] + raw(PING, 0, 0, b"87654321"))
    assert not core.bodies.get(1)
    assert core.recv_window + core.recv_unacked == 1 << 20
    pings = [f for f in parse_frames(take(core)) if isinstance(f, PingFrame)]
    assert pings and pings[0].opaque_data == b"87654321"


def test_streamed_frame_beyond_content_length_is_a_stream_error_before_any_data() -> None:
    core, raw_client = server(**BIG)
    headers = [*REQUEST, (b"content-length", b"50000")]
    core.receive(raw_client.headers(1, headers, end_stream=False))
    core.receive(raw(DATA, FLAG_END_STREAM, 1, bytes(60_000))[:30_000])
    assert rsts(take(core)) == {1: ErrorCode.PROTOCOL_ERROR}
    assert not core.bodies.get(1)


def test_streamed_frame_over_the_connection_window_is_a_connection_error_at_its_header() -> None:
    core, raw_client = server(**{**BIG, "connection_window": DEFAULT_WINDOW})
    core.receive(raw_client.headers(1, REQUEST, end_stream=False))
    take(core)
    expect_connection_error(
        core, raw(DATA, 0, 1, bytes(70_000))[:100], ErrorCode.FLOW_CONTROL_ERROR
    )


def test_streamed_frame_while_continuation_is_expected_is_a_connection_error() -> None:
    core, raw_client = server(**BIG)
    block = raw_client.headers(1, REQUEST, end_stream=False)
    headers_only = raw(HEADERS, 0, 1, block[9:])  # END_HEADERS missing
    core.receive(headers_only)
    expect_connection_error(core, raw(DATA, 0, 1, bytes(40_000)), ErrorCode.PROTOCOL_ERROR)


def test_split_frame_headers_and_preface_are_reassembled() -> None:
    """Reads that end inside a frame header, or inside the preface, lose nothing."""
    core = Core(client_side=False, **BIG)
    wire = RawClient.preface() + RawClient().headers(1, REQUEST, end_stream=False)
    wire += raw(DATA, 0, 1, b"a" * 20_000) + raw(DATA, FLAG_END_STREAM, 1, b"b" * 5)
    for i in range(0, len(wire), 7):
        core.receive(wire[i : i + 7])
    assert bytes(core.bodies[1]) == b"a" * 20_000 + b"bbbbb" and 1 in core.ended
    assert core._rend == 0 and len(core._rbuf) == 16 << 10


def test_padded_data_and_headers_from_the_peer() -> None:
    core, raw_client = server()
    wire = raw_client.headers(1, REQUEST, end_stream=False, pad=17, priority=True)
    data = DataFrame(1, b"hello")
    data.flags.add("PADDED")
    data.pad_length = 40
    last = DataFrame(1, b"", flags=["END_STREAM", "PADDED"])
    last.pad_length = 0
    wire += bytes(data.serialize()) + bytes(last.serialize())
    for i in range(len(wire)):  # one byte per read
        core.receive(wire[i : i + 1])
    assert core.requests[1] == REQUEST
    assert bytes(core.bodies[1]) == b"hello"
    assert 1 in core.ended
    # Padding is flow-controlled: the whole frame counted, the padding credited back at once.
    stream_flow = 5 + 41 + 1
    assert core.recv_window + core.recv_unacked == DEFAULT_WINDOW
    assert core.recv_unacked == stream_flow


def test_padded_data_from_h2_is_credited_back() -> None:
    core, peer = pair(core_client=False)
    peer.conn.send_headers(1, REQUEST)
    peer.send(1, b"x" * 200_000, pad=255)
    exchange(core, peer, random.Random(3))
    assert bytes(core.bodies[1]) == b"x" * 200_000
    assert 1 in core.ended


def test_header_blocks_larger_than_the_frame_size_both_ways() -> None:
    """h2 splits a 40 KB header block into HEADERS + CONTINUATION; so does the engine."""
    core, peer = pair(core_client=False)
    big = b"v" * 40_000
    peer.conn.send_headers(1, [*GET, (b"x-big", big)], end_stream=True)
    wire = peer.conn.data_to_send()
    kinds = [type(f).__name__ for f in parse_frames(wire)]
    assert kinds.count("ContinuationFrame") >= 2
    feed(core, wire, random.Random(1))
    assert core.requests[1] == [*GET, (b"x-big", big)]
    core.respond(1, [(b":status", b"200"), (b"x-big", big), (b"x-other", b"1")], b"body")
    core.pump()
    out = take(core)
    frames = parse_frames(out)
    kinds = [type(f).__name__ for f in frames]
    assert kinds == ["HeadersFrame", "ContinuationFrame", "ContinuationFrame", "DataFrame"]
    assert "END_HEADERS" not in frames[0].flags and "END_HEADERS" not in frames[1].flags
    assert "END_HEADERS" in frames[2].flags
    assert all(len(f.serialize()) - 9 <= DEFAULT_FRAME for f in frames)
    peer.receive(out)
    exchange(core, peer)
    (response,) = peer.of(h2.events.ResponseReceived) or peer.of(h2.events.RequestReceived)
    assert dict(event_headers(response))[b"x-big"] == big
    assert bytes(peer.bodies[1]) == b"body"


def test_core_client_sends_continuation_with_end_stream_on_headers() -> None:
    core, peer = pair(core_client=True)
    big = b"q" * 50_000
    stream_id = core.request([*GET, (b"x-big", big)])
    exchange(core, peer)
    (request,) = peer.of(h2.events.RequestReceived)
    assert dict(event_headers(request))[b"x-big"] == big
    assert request.stream_ended is not None  # END_STREAM travelled on the HEADERS frame
    peer.conn.send_headers(stream_id, [(b":status", b"204"), (b"x-big", big)], end_stream=True)
    exchange(core, peer)
    assert dict(core.heads[stream_id][0])[b"x-big"] == big
    assert stream_id in core.ended


def test_hpack_dynamic_table_and_huffman_from_h2() -> None:
    """h2's encoder indexes fields and Huffman-codes them: the general decoder path."""
    core, peer = pair(core_client=False)
    extra: Headers = [(b"x-custom", b"some fairly long value" * 3), (b"cookie", b"a=b")]
    sizes = []
    for _ in range(4):
        stream_id = peer.conn.get_next_available_stream_id()
        peer.conn.send_headers(stream_id, GET + extra, end_stream=True)
        wire = peer.conn.data_to_send()
        sizes.append(len(wire))
        feed(core, wire)
        assert core.requests[stream_id] == GET + extra
    assert sizes[1] < sizes[0] // 2  # the later blocks reference the dynamic table


def test_peer_header_table_size_change_is_acknowledged_by_the_encoder() -> None:
    core, peer = pair(core_client=False)
    peer.conn.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    peer.conn.send_headers(1, GET, end_stream=True)
    exchange(core, peer)
    core.respond(1, OK, b"")
    out = take(core)
    (headers,) = [f for f in parse_frames(out) if isinstance(f, HeadersFrame)]
    assert headers.data[0] & 0xE0 == 0x20  # dynamic table size update first (RFC 7541 4.2)
    peer.receive(out)
    assert peer.of(h2.events.ResponseReceived) or peer.of(h2.events.StreamEnded)


def test_trailers_both_ways() -> None:
    core, peer = pair(core_client=False)
    peer.conn.send_headers(1, REQUEST)
    peer.send(1, b"request body", trailers=[(b"x-checksum", b"abc")])
    exchange(core, peer)
    assert bytes(core.bodies[1]) == b"request body"
    assert core.trailers[1] == [(b"x-checksum", b"abc")]
    assert 1 in core.ended
    core.respond(1, OK, b"response body", trailers=[(b"grpc-status", b"0")])
    exchange(core, peer)
    (trailers,) = peer.of(h2.events.TrailersReceived)
    assert event_headers(trailers) == [(b"grpc-status", b"0")]
    assert bytes(peer.bodies[1]) == b"response body"
    assert core.streams == {}


def test_core_client_receives_trailers_and_informational_responses() -> None:
    core, peer = pair(core_client=True)
    stream_id = core.request(REQUEST, b"x")
    exchange(core, peer)
    peer.conn.send_headers(stream_id, [(b":status", b"100")])
    peer.conn.send_headers(stream_id, [(b":status", b"103"), (b"link", b"</a>; rel=preload")])
    peer.conn.send_headers(stream_id, OK)
    peer.send(stream_id, b"data", trailers=[(b"x-t", b"1")])
    exchange(core, peer)
    assert [h[0] for h in core.heads[stream_id]] == [
        (b":status", b"100"),
        (b":status", b"103"),
        (b":status", b"200"),
    ]
    assert bytes(core.bodies[stream_id]) == b"data"
    assert core.trailers[stream_id] == [(b"x-t", b"1")]
    assert core.streams == {}


def test_core_server_sends_informational_response() -> None:
    core, peer = pair(core_client=False)
    peer.conn.send_headers(1, [*REQUEST, (b"expect", b"100-continue")])
    exchange(core, peer)
    core.send_headers(1, [(b":status", b"100")])
    exchange(core, peer)
    (info,) = peer.of(h2.events.InformationalResponseReceived)
    assert event_headers(info) == [(b":status", b"100")]
    peer.send(1, b"body")
    exchange(core, peer)
    core.respond(1, OK, b"done")
    exchange(core, peer)
    assert bytes(peer.bodies[1]) == b"done"
    assert event_headers(peer.of(h2.events.ResponseReceived)[0])[0] == (b":status", b"200")


def test_informational_response_with_end_stream_is_a_stream_error() -> None:
    core = client()
    stream_id = core.request(GET)
    take(core)
    block = hpack.Encoder().encode([(b":status", b"100")])
    core.receive(raw(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, stream_id, block))
    assert rsts(take(core)) == {stream_id: ErrorCode.PROTOCOL_ERROR}
    assert core.resets == {stream_id: ErrorCode.PROTOCOL_ERROR}


def test_rst_stream_from_h2_reaches_the_owner_and_others_continue() -> None:
    core, peer = pair(core_client=False)
    peer.conn.send_headers(1, REQUEST)
    peer.conn.send_headers(3, REQUEST)
    exchange(core, peer)
    peer.conn.reset_stream(1, ErrorCode.CANCEL)
    exchange(core, peer)
    assert core.resets == {1: ErrorCode.CANCEL}
    peer.send(3, b"still here")
    exchange(core, peer)
    core.respond(3, OK, b"ok")
    exchange(core, peer)
    assert bytes(core.bodies[3]) == b"still here"
    assert bytes(peer.bodies[3]) == b"ok"


def test_rst_stream_from_core_reaches_h2() -> None:
    core, peer = pair(core_client=True)
    stream_id = core.request(REQUEST, b"partial", end=False)
    exchange(core, peer)
    core.send_rst(stream_id, ErrorCode.CANCEL)
    exchange(core, peer)
    (reset,) = peer.of(h2.events.StreamReset)
    assert reset.stream_id == stream_id and reset.error_code == ErrorCode.CANCEL


def test_ping_both_ways() -> None:
    core, peer = pair(core_client=False)
    peer.conn.ping(b"abcdefgh")
    exchange(core, peer)
    (ack,) = peer.of(h2.events.PingAckReceived)
    assert ack.ping_data == b"abcdefgh"
    core.send_ping(b"12345678")
    exchange(core, peer)
    assert core.ping_acks == [b"12345678"]


def test_goaway_both_ways() -> None:
    core, peer = pair(core_client=False)
    peer.conn.send_headers(1, GET, end_stream=True)
    peer.conn.send_headers(3, GET, end_stream=True)
    exchange(core, peer)
    core.send_goaway(ErrorCode.NO_ERROR, b"bye")
    exchange(core, peer)
    (terminated,) = peer.of(h2.events.ConnectionTerminated)
    assert terminated.last_stream_id == 3 and terminated.error_code == ErrorCode.NO_ERROR
    assert terminated.additional_data == b"bye"
    # Graceful: the open streams may still complete (h2 itself closes on any GOAWAY, so the
    # frames are checked with hyperframe).
    core.respond(1, OK, b"one")
    core.respond(3, OK, b"three")
    core.pump()
    frames = parse_frames(take(core))
    assert [(type(f).__name__, f.stream_id) for f in frames] == [
        ("HeadersFrame", 1),
        ("HeadersFrame", 3),
        ("DataFrame", 1),
        ("DataFrame", 3),
    ]
    assert core.streams == {}
    # The other direction.
    core2, peer2 = pair(core_client=True)
    core2.request(GET)
    exchange(core2, peer2)
    peer2.conn.close_connection(ErrorCode.ENHANCE_YOUR_CALM, b"calm")
    exchange(core2, peer2)
    assert core2.goaways == [(1, ErrorCode.ENHANCE_YOUR_CALM, b"calm")]
    assert core2.goaway_received


def test_new_streams_after_our_goaway_are_ignored() -> None:
    core, raw_client = server()
    core.receive(raw_client.headers(1, GET, end_stream=False))
    core.send_goaway()
    take(core)
    core.receive(raw_client.headers(3, GET) + raw(DATA, FLAG_END_STREAM, 1, b"x"))
    assert set(core.requests) == {1}
    assert bytes(core.bodies[1]) == b"x"
    assert not rsts(take(core))


def test_unknown_frame_types_and_priority_are_ignored() -> None:
    core, raw_client = server()
    core.receive(raw(0x42, 0xFF, 0, b"whatever") + raw(PRIORITY, 0, 7, b"\0\0\0\0\x10"))
    core.receive(raw_client.headers(1, GET))
    assert core.requests[1] == GET
    assert not rsts(take(core))


def test_priority_with_wrong_length_is_a_stream_error() -> None:
    core, raw_client = server()
    core.receive(raw_client.headers(1, GET, end_stream=False))
    core.receive(raw(PRIORITY, 0, 1, b"\0\0\0\0"))
    assert rsts(take(core)) == {1: ErrorCode.FRAME_SIZE_ERROR}
    assert core.resets == {1: ErrorCode.FRAME_SIZE_ERROR}


# --- flow control -------------------------------------------------------------------------------


def test_engine_never_exceeds_the_peer_stream_window_and_resumes() -> None:
    core, peer = pair(core_client=False, peer={})
    peer.auto_ack = False
    peer.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    peer.conn.send_headers(1, GET, end_stream=True)
    exchange(core, peer)
    body = bytes(5000)
    core.respond(1, OK, body)
    exchange(core, peer)
    assert peer.flow[1] == 1000  # exactly the window: h2 would raise beyond it
    assert core.streams[1].send_window == 0
    for expected in (2000, 3000, 4000, 5000):
        peer.conn.acknowledge_received_data(1000, 1)
        exchange(core, peer)
        assert peer.flow[1] == expected
    assert bytes(peer.bodies[1]) == body
    assert peer.of(h2.events.StreamEnded)


def test_engine_never_exceeds_the_peer_connection_window() -> None:
    core, peer = pair(core_client=False)
    peer.auto_ack = False
    peer.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    for stream_id in (1, 3, 5):
        peer.conn.send_headers(stream_id, GET, end_stream=True)
    exchange(core, peer)
    for stream_id in (1, 3, 5):
        core.respond(stream_id, OK, bytes(40_000))
    exchange(core, peer)
    assert sum(peer.flow.values()) == DEFAULT_WINDOW
    assert core.send_window == 0
    assert peer.conn.remote_flow_control_window(1) == 0
    peer.conn.increment_flow_control_window(30_000)
    exchange(core, peer)
    assert sum(peer.flow.values()) == DEFAULT_WINDOW + 30_000
    peer.auto_ack = True
    for stream_id, flow in list(peer.flow.items()):
        peer.conn.acknowledge_received_data(flow, stream_id)
    exchange(core, peer)
    assert all(bytes(peer.bodies[sid]) == bytes(40_000) for sid in (1, 3, 5))


def test_peer_lowers_then_raises_initial_window_mid_stream() -> None:
    core, peer = pair(core_client=False)
    peer.auto_ack = False
    peer.conn.send_headers(1, GET, end_stream=True)
    exchange(core, peer)
    core.respond(1, OK, bytes(100_000))
    exchange(core, peer)
    assert peer.flow[1] == DEFAULT_WINDOW
    # Lowering below what is in flight makes the stream window negative (RFC 9113 6.9.2).
    peer.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10_000})
    exchange(core, peer)
    assert core.streams[1].send_window == 10_000 - DEFAULT_WINDOW
    peer.conn.increment_flow_control_window(200_000)  # connection window is not the limit
    peer.conn.acknowledge_received_data(DEFAULT_WINDOW - 5_000, 1)
    exchange(core, peer)
    sent = peer.flow[1]
    # h2 only sends a stream WINDOW_UPDATE when its view allows; whatever it sent, the engine
    # stays within: h2 raises FlowControlError otherwise. Now raising the setting resumes.
    peer.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    exchange(core, peer)
    assert peer.flow[1] > sent
    assert bytes(peer.bodies[1]) == bytes(100_000)
    assert peer.of(h2.events.StreamEnded)


def test_core_and_peer_agree_on_windows() -> None:
    core, peer = pair(core_client=True)
    peer.auto_ack = False
    stream_id = core.request(REQUEST, bytes(30_000), end=False)
    exchange(core, peer)
    stream = core.streams[stream_id]
    assert min(stream.send_window, core.send_window) == peer.conn.remote_flow_control_window(
        stream_id
    )
    assert stream.send_window == DEFAULT_WINDOW - 30_000
    peer.conn.acknowledge_received_data(30_000, stream_id)
    exchange(core, peer)
    assert stream.send_window == peer.conn.remote_flow_control_window(stream_id)


def test_received_credit_returned_only_after_acknowledge() -> None:
    core, peer = pair(core_client=False, core={"auto_ack": False})
    peer.conn.send_headers(1, REQUEST)
    peer.send(1, bytes(DEFAULT_WINDOW), end=False)
    exchange(core, peer)
    assert len(core.bodies[1]) == DEFAULT_WINDOW
    assert peer.conn.local_flow_control_window(1) == 0
    peer.send(1, b"more", end=False)
    exchange(core, peer)
    assert len(core.bodies[1]) == DEFAULT_WINDOW  # nothing without credit
    stream = core.streams[1]
    for _ in range(DEFAULT_WINDOW // 1000):
        core.acknowledge(stream, 1000)
        exchange(core, peer)
    # Batched: the peer may be owed less than a quarter window on each level.
    assert len(core.bodies[1]) == DEFAULT_WINDOW + 4
    assert peer.conn.local_flow_control_window(1) >= DEFAULT_WINDOW - DEFAULT_WINDOW // 4 - 4
    core.acknowledge(stream, DEFAULT_WINDOW % 1000 + 4)
    core.flush_acknowledgements()
    exchange(core, peer)
    assert peer.conn.outbound_flow_control_window == DEFAULT_WINDOW
    assert core.recv_window == DEFAULT_WINDOW and core.recv_unacked == 0


def test_connection_window_increase_is_announced() -> None:
    core, peer = pair(core_client=False, core={"connection_window": 1 << 20})
    assert peer.conn.outbound_flow_control_window == 1 << 20
    assert core.recv_window == 1 << 20


def test_data_beyond_stream_window_is_a_stream_error_and_others_continue() -> None:
    core, peer = pair(core_client=False, core={"initial_window": 1000})
    peer.conn.send_headers(1, REQUEST)
    exchange(core, peer)
    feed(core, raw(DATA, 0, 1, bytes(1500)))
    peer.conn.send_headers(3, REQUEST)
    peer.send(3, bytes(900))
    exchange(core, peer)
    assert core.resets == {1: ErrorCode.FLOW_CONTROL_ERROR}
    resets = {e.stream_id: e.error_code for e in peer.of(h2.events.StreamReset)}
    assert resets == {1: ErrorCode.FLOW_CONTROL_ERROR}
    assert len(core.bodies[3]) == 900 and 3 in core.ended


def test_data_beyond_connection_window_is_a_connection_error() -> None:
    core, raw_client = server(initial_window=1 << 20, auto_ack=False)
    core.receive(raw_client.headers(1, REQUEST, end_stream=False))
    core.receive(raw(DATA, 0, 1, bytes(DEFAULT_FRAME)) * 3)
    expect_connection_error(
        core, raw(DATA, 0, 1, bytes(DEFAULT_FRAME)), ErrorCode.FLOW_CONTROL_ERROR
    )


def test_window_update_overflow() -> None:
    core, raw_client = server()
    core.receive(raw_client.headers(1, GET, end_stream=False))
    core.receive(raw(WINDOW_UPDATE, 0, 1, u32(MAX_WINDOW)))
    assert rsts(take(core)) == {1: ErrorCode.FLOW_CONTROL_ERROR}
    expect_connection_error(
        core, raw(WINDOW_UPDATE, 0, 0, u32(MAX_WINDOW)), ErrorCode.FLOW_CONTROL_ERROR
    )


def test_initial_window_change_overflowing_a_stream_is_a_connection_error() -> None:
    core, raw_client = server()
    core.receive(raw_client.headers(1, GET, end_stream=False))
    core.receive(raw(WINDOW_UPDATE, 0, 1, u32(MAX_WINDOW - DEFAULT_WINDOW)))
    expect_connection_error(
        core,
        raw(SETTINGS, 0, 0, setting(Setting.INITIAL_WINDOW_SIZE, DEFAULT_WINDOW + 1)),
        ErrorCode.FLOW_CONTROL_ERROR,
    )


def test_raising_our_initial_window_lets_the_peer_send_more() -> None:
    core, peer = pair(core_client=False, core={"connection_window": 1 << 20, "auto_ack": False})
    peer.conn.send_headers(1, REQUEST)
    exchange(core, peer)
    core.update_settings({Setting.INITIAL_WINDOW_SIZE: 200_000})
    exchange(core, peer)
    assert peer.conn.local_flow_control_window(1) == 200_000
    peer.send(1, bytes(150_000))
    exchange(core, peer)
    assert not core.resets
    assert len(core.bodies[1]) == 150_000


# --- connection errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + b"\0" * 20,
        b"PRX",  # a wrong prefix is refused before the whole preface arrived
    ],
)
def test_bad_preface(data: bytes) -> None:
    core = Core(client_side=False)
    take(core)
    expect_connection_error(core, data, ErrorCode.PROTOCOL_ERROR)


def test_preface_one_byte_at_a_time() -> None:
    core = Core(client_side=False)
    wire = RawClient.preface() + RawClient().headers(1, GET)
    for i in range(len(wire)):
        core.receive(wire[i : i + 1])
    assert core.requests[1] == GET


def test_frame_larger_than_max_frame_size() -> None:
    core, _ = server()
    # Refused as soon as the header announces it, before the payload arrives.
    expect_connection_error(
        core, frame_header(DEFAULT_FRAME + 1, DATA, 0, 1), ErrorCode.FRAME_SIZE_ERROR
    )


def test_frame_at_max_frame_size_is_accepted() -> None:
    core, raw_client = server()
    core.receive(raw_client.headers(1, REQUEST, end_stream=False))
    core.receive(raw(DATA, 0, 1, bytes(DEFAULT_FRAME)))
    assert len(core.bodies[1]) == DEFAULT_FRAME


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (raw(DATA, 0, 1, b"x"), ErrorCode.PROTOCOL_ERROR),
        (raw(DATA, 0, 0, b"x"), ErrorCode.PROTOCOL_ERROR),
        (raw(RST_STREAM, 0, 1, u32(ErrorCode.CANCEL)), ErrorCode.PROTOCOL_ERROR),
        (raw(RST_STREAM, 0, 0, u32(ErrorCode.CANCEL)), ErrorCode.PROTOCOL_ERROR),
        (raw(RST_STREAM, 0, 0, b"\0\0\0"), ErrorCode.PROTOCOL_ERROR),
        (raw(WINDOW_UPDATE, 0, 1, u32(10)), ErrorCode.PROTOCOL_ERROR),
        (raw(WINDOW_UPDATE, 0, 0, u32(0)), ErrorCode.PROTOCOL_ERROR),
        (raw(WINDOW_UPDATE, 0, 0, b"\0\0\1"), ErrorCode.FRAME_SIZE_ERROR),
        (raw(PING, 0, 0, b"1234567"), ErrorCode.FRAME_SIZE_ERROR),
        (raw(PING, 0, 0, b"123456789"), ErrorCode.FRAME_SIZE_ERROR),
        (raw(PING, 0, 1, b"12345678"), ErrorCode.PROTOCOL_ERROR),
        (raw(SETTINGS, 0, 0, b"\0\1\0\0\0"), ErrorCode.FRAME_SIZE_ERROR),
        (raw(SETTINGS, 1, 0, setting(Setting.ENABLE_PUSH, 0)), ErrorCode.FRAME_SIZE_ERROR),
        (raw(SETTINGS, 0, 1, b""), ErrorCode.PROTOCOL_ERROR),
        (raw(GOAWAY, 0, 1, u32(0) + u32(0)), ErrorCode.PROTOCOL_ERROR),
        (raw(GOAWAY, 0, 0, u32(0)), ErrorCode.FRAME_SIZE_ERROR),
        (raw(PRIORITY, 0, 0, b"\0\0\0\0\x10"), ErrorCode.PROTOCOL_ERROR),
        (raw(CONTINUATION, FLAG_END_HEADERS, 1, b"\x82"), ErrorCode.PROTOCOL_ERROR),
        (raw(PUSH_PROMISE, FLAG_END_HEADERS, 1, u32(2) + b"\x82"), ErrorCode.PROTOCOL_ERROR),
        (raw(HEADERS, FLAG_END_HEADERS, 0, b"\x82"), ErrorCode.PROTOCOL_ERROR),
        (raw(HEADERS, FLAG_END_HEADERS, 2, b"\x82\x86\x84"), ErrorCode.PROTOCOL_ERROR),
    ],
    ids=[
        "data-idle",
        "data-stream0",
        "rst-idle",
        "rst-stream0",
        "rst-stream0-short",
        "window-update-idle",
        "window-update-zero",
        "window-update-short",
        "ping-short",
        "ping-long",
        "ping-on-stream",
        "settings-length",
        "settings-ack-with-body",
        "settings-on-stream",
        "goaway-on-stream",
        "goaway-short",
        "priority-stream0",
        "continuation-unexpected",
        "push-promise",
        "headers-stream0",
        "headers-even-stream-from-client",
    ],
)
def test_connection_errors_on_server(frame: bytes, code: int) -> None:
    core, _ = server()
    expect_connection_error(core, frame, code)


def test_rst_stream_with_wrong_length_on_open_stream() -> None:
    core, raw_client = server()
    core.receive(raw_client.headers(1, GET, end_stream=False))
    expect_connection_error(core, raw(RST_STREAM, 0, 1, b"\0\0\0\0\0"), ErrorCode.FRAME_SIZE_ERROR)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (setting(Setting.INITIAL_WINDOW_SIZE, MAX_WINDOW + 1), ErrorCode.FLOW_CONTROL_ERROR),
        (setting(Setting.MAX_FRAME_SIZE, DEFAULT_FRAME - 1), ErrorCode.PROTOCOL_ERROR),
        (setting(Setting.MAX_FRAME_SIZE, 1 << 24), ErrorCode.PROTOCOL_ERROR),
        (setting(Setting.ENABLE_PUSH, 2), ErrorCode.PROTOCOL_ERROR),
        (setting(Setting.ENABLE_CONNECT_PROTOCOL, 2), ErrorCode.PROTOCOL_ERROR),
    ],
    ids=["window-too-large", "frame-too-small", "frame-too-large", "push-2", "connect-2"],
)
def test_bad_settings_values(payload: bytes, code: int) -> None:
    core, _ = server()
    expect_connection_error(core, raw(SETTINGS, 0, 0, payload), code)


def test_settings_edge_values_are_accepted() -> None:
    core, _ = server()
    core.receive(
        raw(
            SETTINGS,
            0,
            0,
            setting(Setting.INITIAL_WINDOW_SIZE, MAX_WINDOW)
            + setting(Setting.MAX_FRAME_SIZE, (1 << 24) - 1)
            + setting(Setting.ENABLE_PUSH, 1)  # a client may say 1 to a server
            + setting(0x99, 12345),  # unknown settings are ignored
        )
    )
    frames = parse_frames(take(core))
    assert [type(f) for f in frames] == [SettingsFrame] and "ACK" in frames[0].flags
    assert core.peer_initial_window == MAX_WINDOW and core.peer_max_frame == (1 << 24) - 1


def test_server_enabling_push_is_refused_by_a_client() -> None:
    core = Core(client_side=True)
    take(core)
    expect_connection_error(
        core, raw(SETTINGS, 0, 0, setting(Setting.ENABLE_PUSH, 1)), ErrorCode.PROTOCOL_ERROR
    )


def test_push_promise_to_a_client() -> None:
    core = client()
    stream_id = core.request(GET)
    take(core)
    block = hpack.Encoder().encode(GET)
    expect_connection_error(
        core,
        raw(PUSH_PROMISE, FLAG_END_HEADERS, stream_id, u32(2) + block),
        ErrorCode.PROTOCOL_ERROR,
    )


def test_client_side_idle_stream_errors() -> None:
    core = client()
    stream_id = core.request(GET)
    take(core)
    # Even (server-initiated) stream without PUSH_PROMISE, and our own stream never opened.
    block = hpack.Encoder().encode([(b":status", b"200")])
    expect_connection_error(
        core, raw(HEADERS, FLAG_END_HEADERS, 2, block), ErrorCode.PROTOCOL_ERROR
    )
    core = client()
    core.request(GET)
    take(core)
    expect_connection_error(core, raw(DATA, 0, stream_id + 2, b"x"), ErrorCode.PROTOCOL_ERROR)


def test_continuation_flood_is_enhance_your_calm() -> None:
    core, raw_client = server(max_header_list_size=2000)
    block = raw_client.block(GET)
    core.receive(raw(HEADERS, FLAG_END_STREAM, 1, block))
    chunk = bytes(1000)
    with pytest.raises(H2ConnectionError) as info:
        for _ in range(100):
            core.receive(raw(CONTINUATION, 0, 1, chunk))
    assert info.value.code == ErrorCode.ENHANCE_YOUR_CALM
    goaways = [f for f in parse_frames(take(core)) if isinstance(f, GoAwayFrame)]
    assert [g.error_code for g in goaways] == [ErrorCode.ENHANCE_YOUR_CALM]
    assert not core.requests


@pytest.mark.parametrize(
    "interloper",
    [
        raw(PING, 0, 0, b"12345678"),
        raw(DATA, 0, 1, b"x"),
        raw(CONTINUATION, FLAG_END_HEADERS, 3, b""),
        raw(HEADERS, FLAG_END_HEADERS, 3, b"\x82"),
        raw(0x42, 0, 0, b""),
    ],
    ids=["ping", "data", "continuation-other-stream", "headers", "unknown-type"],
)
def test_interleaved_frame_during_a_header_block(interloper: bytes) -> None:
    core, raw_client = server()
    core.receive(raw(HEADERS, FLAG_END_STREAM, 1, raw_client.block(GET)))
    expect_connection_error(core, interloper, ErrorCode.PROTOCOL_ERROR)


def test_continuation_split_at_every_offset_is_accepted() -> None:
    headers = [*GET, (b"x-a", b"1" * 300), (b"x-b", b"2" * 300)]
    for cut in (0, 1, 50, 400, 700):
        core, raw_client = server()
        block = raw_client.block(headers)
        wire = raw(HEADERS, FLAG_END_STREAM, 1, block[:cut])
        wire += raw(CONTINUATION, 0, 1, block[cut : cut + 100])
        wire += raw(CONTINUATION, FLAG_END_HEADERS, 1, block[cut + 100 :])
        core.receive(wire)
        assert core.requests[1] == headers and 1 in core.ended


@pytest.mark.parametrize(
    "block",
    [
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # integer overflow
        b"\xbf\x80",  # indexed field far beyond the dynamic table
        b"\x80",  # index 0
        b"\x00\x85\xff\xff",  # truncated Huffman name
        b"\x3f\xe1\xff\x03",  # table size update above the allowed maximum
        b"\x40\x05ab",  # literal shorter than its length
    ],
    ids=["int-overflow", "bad-index", "index-zero", "huffman", "table-size", "short-literal"],
)
def test_hpack_garbage_is_compression_error(block: bytes) -> None:
    core, _ = server()
    expect_connection_error(
        core,
        raw(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, block),
        ErrorCode.COMPRESSION_ERROR,
    )


def test_oversized_header_list_is_refused() -> None:
    core, raw_client = server(max_header_list_size=1000)
    with pytest.raises(H2ConnectionError) as info:
        core.receive(raw_client.headers(1, [*GET, (b"x-big", b"v" * 2000)]))
    assert info.value.code == ErrorCode.COMPRESSION_ERROR
    assert not core.requests


@pytest.mark.parametrize(
    "frame",
    [
        raw(DATA, FLAG_PADDED, 1, b"\x05abcd"),  # padding as long as the rest
        raw(DATA, FLAG_PADDED, 1, b""),
        raw(HEADERS, FLAG_PADDED | FLAG_END_HEADERS, 3, b"\x09\x82\x86"),
    ],
    ids=["data-pad-too-long", "data-pad-missing", "headers-pad-too-long"],
)
def test_bad_padding(frame: bytes) -> None:
    core, raw_client = server()
    core.receive(raw_client.headers(1, REQUEST, end_stream=False))
    expect_connection_error(core, frame, ErrorCode.PROTOCOL_ERROR)


# --- stream errors ------------------------------------------------------------------------------


def test_stream_errors_keep_the_connection_serving() -> None:
    core, raw_client = server()
    core.receive(raw_client.headers(1, REQUEST, end_stream=False))
    core.receive(raw_client.headers(3, REQUEST, end_stream=False))
    core.receive(raw_client.headers(5, REQUEST, end_stream=False))
    core.receive(raw(WINDOW_UPDATE, 0, 1, u32(0)))  # zero increment on a stream
    core.receive(raw(HEADERS, FLAG_END_HEADERS, 3, raw_client.block([(b"x-t", b"1")])))
    out = take(core)
    assert rsts(out) == {1: ErrorCode.PROTOCOL_ERROR, 3: ErrorCode.PROTOCOL_ERROR}
    assert core.resets == {1: ErrorCode.PROTOCOL_ERROR, 3: ErrorCode.PROTOCOL_ERROR}
    core.receive(raw(DATA, FLAG_END_STREAM, 5, b"fine") + raw_client.headers(7, GET))
    assert bytes(core.bodies[5]) == b"fine" and 5 in core.ended
    assert core.requests[7] == GET
    core.respond(7, OK, b"served")
    core.pump()
    assert [type(f).__name__ for f in parse_frames(take(core))] == ["HeadersFrame", "DataFrame"]


def test_data_after_end_stream_is_stream_closed() -> None:
    core, raw_client = server()
    core.receive(raw_client.headers(1, GET, end_stream=True))
    core.receive(raw(DATA, 0, 1, b"late"))
    assert rsts(take(core)) == {1: ErrorCode.STREAM_CLOSED}
    assert not core.bodies[1]
    # Connection-level credit for the discarded bytes is not lost.
    assert core.recv_window + core.recv_unacked == DEFAULT_WINDOW


def test_data_after_our_reset_is_ignored() -> None:
    core, raw_client = server()
    core.receive(raw_client.headers(1, REQUEST, end_stream=False))
    core.send_rst(1, ErrorCode.CANCEL)
    core.streams[1].closed = True
    take(core)
    core.receive(raw(DATA, 0, 1, b"in flight") + raw(WINDOW_UPDATE, 0, 1, u32(5)))
    assert not rsts(take(core))
    assert not core.bodies[1]


def test_data_before_response_headers_is_a_stream_error() -> None:
    core = client()
    stream_id = core.request(GET)
    take(core)
    core.receive(raw(DATA, 0, stream_id, b"x"))
    assert rsts(take(core)) == {stream_id: ErrorCode.PROTOCOL_ERROR}


def test_max_concurrent_streams_refuses_beyond_the_limit() -> None:
    core, raw_client = server(max_concurrent_streams=2)
    core.receive(raw_client.headers(1, REQUEST, end_stream=False))
    core.receive(raw_client.headers(3, REQUEST, end_stream=False))
    core.receive(raw_client.headers(5, REQUEST, end_stream=False))
    assert rsts(take(core)) == {5: ErrorCode.REFUSED_STREAM}
    assert set(core.requests) == {1, 3}
    core.receive(raw(DATA, FLAG_END_STREAM, 5, b"ignored"))  # refused: not an error
    assert not rsts(take(core)) and not core.bodies[5]
    # Once a stream finishes there is room again.
    core.receive(raw(DATA, FLAG_END_STREAM, 1, b""))
    core.respond(1, OK)
    core.receive(raw_client.headers(7, GET))
    assert 7 in core.requests
    # A lower limit applies at once.
    core.update_settings({Setting.MAX_CONCURRENT_STREAMS: 1})
    take(core)
    core.receive(raw_client.headers(9, GET))
    assert rsts(take(core)) == {9: ErrorCode.REFUSED_STREAM}


def test_max_concurrent_streams_against_h2() -> None:
    """h2 honours our advertised limit; the engine's number reaches it intact."""
    _core, peer = pair(core_client=False, core={"max_concurrent_streams": 3})
    assert peer.conn.remote_settings.max_concurrent_streams == 3


# --- header validation (eyeball side) -----------------------------------------------------------

MALFORMED_REQUESTS: dict[str, Headers] = {
    "uppercase-name": [*GET, (b"X-Upper", b"1")],
    "connection": [*GET, (b"connection", b"keep-alive")],
    "keep-alive": [*GET, (b"keep-alive", b"timeout=5")],
    "transfer-encoding": [*GET, (b"transfer-encoding", b"chunked")],
    "upgrade": [*GET, (b"upgrade", b"websocket")],
    "te-gzip": [*GET, (b"te", b"gzip")],
    "no-method": [(b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")],
    "no-path": [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a")],
    "empty-path": [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"")],
    "no-scheme": [(b":method", b"GET"), (b":authority", b"a"), (b":path", b"/")],
    "unknown-pseudo": [*GET, (b":foo", b"bar")],
    "status-in-request": [(b":status", b"200"), *GET],
    "duplicate-pseudo": [*GET, (b":path", b"/again")],
    "pseudo-after-regular": [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b"x-a", b"1"),
        (b":path", b"/"),
    ],
    "cr-in-value": [*GET, (b"x-a", b"a\rb")],
    "lf-in-value": [*GET, (b"x-a", b"a\nb")],
    "nul-in-value": [*GET, (b"x-a", b"a\0b")],
    "leading-space": [*GET, (b"x-a", b" a")],
    "space-in-name": [*GET, (b"x a", b"1")],
    "colon-in-name": [*GET, (b"x:a", b"1")],
    "empty-name": [*GET, (b"", b"1")],
    "connect-with-path": [(b":method", b"CONNECT"), (b":authority", b"a:443"), (b":path", b"/")],
    "protocol-without-setting": [*GET, (b":protocol", b"websocket")],
    "host-differs-from-authority": [*GET, (b"host", b"other.example")],
    "content-length-not-a-number": [*GET, (b"content-length", b"5x")],
    "content-length-duplicates-differ": [
        *GET,
        (b"content-length", b"5"),
        (b"content-length", b"6"),
    ],
    "content-length-without-body": [*GET, (b"content-length", b"5")],
}


@pytest.mark.parametrize("name", sorted(MALFORMED_REQUESTS))
def test_malformed_request_is_reset_and_never_reaches_the_owner(name: str) -> None:
    core, raw_client = server()
    core.receive(raw_client.headers(1, MALFORMED_REQUESTS[name]))
    assert rsts(take(core)) == {1: ErrorCode.PROTOCOL_ERROR}
    assert not core.requests and not core.streams
    # The connection (and its HPACK state) keeps serving.
    core.receive(raw_client.headers(3, [*GET, (b"x-after", b"1")]))
    assert core.requests == {3: [*GET, (b"x-after", b"1")]}


@pytest.mark.parametrize("name", sorted(MALFORMED_REQUESTS))
def test_malformed_request_passes_without_validation(name: str) -> None:
    core, raw_client = server(validate_headers=False)
    core.receive(raw_client.headers(1, MALFORMED_REQUESTS[name]))
    assert core.requests == {1: MALFORMED_REQUESTS[name]}
    assert not rsts(take(core))


@pytest.mark.parametrize(
    "headers",
    [
        [*GET, (b"te", b"trailers"), (b"x-ok", b"v a l u e"), (b"cookie", b"a=1")],
        [(b":method", b"CONNECT"), (b":authority", b"host:443")],
        [(b":method", b"OPTIONS"), (b":scheme", b"https"), (b":path", b"*")],
    ],
    ids=["te-trailers", "connect", "options-star"],
)
def test_valid_requests_pass_validation(headers: Headers) -> None:
    core, raw_client = server()
    core.receive(raw_client.headers(1, headers))
    assert core.requests == {1: headers}


def test_extended_connect_needs_the_setting() -> None:
    headers: Headers = [
        (b":method", b"CONNECT"),
        (b":protocol", b"websocket"),
        (b":scheme", b"https"),
        (b":authority", b"a"),
        (b":path", b"/chat"),
    ]
    core, raw_client = server(enable_connect_protocol=True)
    core.receive(raw_client.headers(1, headers))
    assert core.requests == {1: headers}
    core, raw_client = server()
    core.receive(raw_client.headers(1, headers))
    assert rsts(take(core)) == {1: ErrorCode.PROTOCOL_ERROR}


def test_invalid_trailers_are_a_stream_error() -> None:
    core, raw_client = server()
    core.receive(raw_client.headers(1, REQUEST, end_stream=False))
    core.receive(raw_client.headers(1, [(b":path", b"/")], end_stream=True))
    assert rsts(take(core)) == {1: ErrorCode.PROTOCOL_ERROR}
    assert 1 not in core.trailers
    core, raw_client = server(validate_headers=False)
    core.receive(raw_client.headers(1, REQUEST, end_stream=False))
    core.receive(raw_client.headers(1, [(b"X-Trailer", b"1")], end_stream=True))
    assert core.trailers == {1: [(b"X-Trailer", b"1")]}


@pytest.mark.parametrize(
    "headers",
    [
        [(b":status", b"200"), (b":path", b"/")],
        [(b"x-a", b"1")],
        [(b":status", b"2000")],
        [(b":status", b"abc")],
        [(b":status", b"200"), (b"Upper", b"1")],
        [(b":status", b"200"), (b"connection", b"close")],
    ],
    ids=["path-in-response", "no-status", "long-status", "text-status", "uppercase", "conn"],
)
def test_malformed_response_is_a_stream_error(headers: Headers) -> None:
    core = client()
    stream_id = core.request(GET)
    take(core)
    block = hpack.Encoder().encode(headers)
    core.receive(raw(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, stream_id, block))
    assert rsts(take(core)) == {stream_id: ErrorCode.PROTOCOL_ERROR}
    assert not core.heads


def test_response_headers_not_validated_when_disabled() -> None:
    core = client(validate_headers=False)
    stream_id = core.request(GET)
    take(core)
    headers: Headers = [(b":status", b"200"), (b"Upper", b"1")]
    core.receive(raw(HEADERS, FLAG_END_HEADERS, stream_id, hpack.Encoder().encode(headers)))
    assert core.heads[stream_id] == [headers]


def test_content_length_matching_body_and_trailers() -> None:
    core, raw_client = server()
    core.receive(raw_client.headers(1, [*REQUEST, (b"content-length", b"10")], end_stream=False))
    core.receive(raw(DATA, 0, 1, b"01234") + raw(DATA, FLAG_END_STREAM, 1, b"56789"))
    assert not rsts(take(core))
    assert bytes(core.bodies[1]) == b"0123456789"
    # A body cut short by trailers is malformed too.
    core.receive(raw_client.headers(3, [*REQUEST, (b"content-length", b"10")], end_stream=False))
    core.receive(raw(DATA, 0, 3, b"01234"))
    core.receive(raw_client.headers(3, [(b"x-trailer", b"1")]))
    assert rsts(take(core)) == {3: ErrorCode.PROTOCOL_ERROR}


def test_content_length_mismatch_is_a_stream_error() -> None:
    core, raw_client = server()
    core.receive(raw_client.headers(1, [*REQUEST, (b"content-length", b"5")], end_stream=False))
    core.receive(raw(DATA, FLAG_END_STREAM, 1, b"0123456789"))
    assert rsts(take(core)) == {1: ErrorCode.PROTOCOL_ERROR}
    assert 1 not in core.ended


def test_reserved_bit_of_stream_id_is_ignored() -> None:
    core, raw_client = server()
    frame = bytearray(raw_client.headers(1, GET))
    frame[5] |= 0x80
    core.receive(bytes(frame))
    assert core.requests == {1: GET}


def test_settings_ack_and_settings_hook() -> None:
    core, _raw_client = server()
    calls: list[int] = []
    core.h2_settings_changed = lambda: calls.append(1)  # type: ignore[method-assign]
    core.receive(raw(SETTINGS, 0, 0, setting(Setting.MAX_FRAME_SIZE, 20_000)))
    frames = parse_frames(take(core))
    assert len(frames) == 1 and "ACK" in frames[0].flags
    assert calls == [1] and core.peer_max_frame == 20_000
    core.receive(raw(SETTINGS, 1, 0))  # an ACK of ours: no reply
    assert take(core) == b""


def test_window_update_frames_reach_the_owner() -> None:
    core, raw_client = server()
    core.receive(raw_client.headers(1, GET, end_stream=False))
    before = core.windows_opened
    core.receive(raw(WINDOW_UPDATE, 0, 1, u32(100)) + raw(WINDOW_UPDATE, 0, 0, u32(100)))
    assert core.windows_opened == before + 2
    assert core.streams[1].send_window == DEFAULT_WINDOW + 100
    assert core.send_window == DEFAULT_WINDOW + 100
    frames = parse_frames(take(core))
    assert not [f for f in frames if isinstance(f, WindowUpdateFrame | RstStreamFrame)]


@pytest.mark.parametrize("seed", [1, 2])
def test_mutated_traffic_only_ever_raises_h2_connection_error(seed: int) -> None:
    """Random byte flips, cuts and insertions in valid h2 traffic: the engine either copes or
    fails with H2ConnectionError and a GOAWAY; no other exception escapes `receive`."""
    rnd = random.Random(seed)
    peer = Peer(client_side=True)
    peer.conn.send_headers(1, [*REQUEST, (b"x-a", b"hello")])
    peer.send(1, b"x" * 5000, pad=10)
    peer.pump()
    peer.conn.ping(b"12345678")
    peer.conn.send_headers(3, REQUEST)
    peer.conn.send_data(3, b"abc")
    peer.conn.send_headers(3, [(b"x-t", b"1")], end_stream=True)
    base = peer.conn.data_to_send()
    failures = 0
    for _ in range(300):
        data = bytearray(base)
        for _ in range(rnd.randint(1, 4)):
            pos = rnd.randrange(len(PREFACE), len(data))
            op = rnd.random()
            if op < 0.6:
                data[pos] = rnd.getrandbits(8)
            elif op < 0.8:
                del data[pos : pos + rnd.randint(1, 20)]
            else:
                data[pos:pos] = rnd.randbytes(rnd.randint(1, 20))
        core = Core(client_side=False)
        take(core)
        step = rnd.choice((1, 7, 100, len(data)))
        try:
            for pos in range(0, len(data), step):
                core.receive(bytes(data[pos : pos + step]))
        except H2ConnectionError as err:
            failures += 1
            goaways = [f for f in parse_frames(take(core)) if isinstance(f, GoAwayFrame)]
            assert [g.error_code for g in goaways] == [err.code]
    assert 0 < failures < 300
