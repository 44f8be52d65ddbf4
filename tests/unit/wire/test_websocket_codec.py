"""The sans-IO WebSocket codec: framing, masking across feed boundaries, control frames, and
the protocol errors a server must refuse. The `websockets` package's own frame code is the
oracle for what a correct peer produces."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from burrow.wire import websocket as ws


def _oracle(opcode: Opcode, payload: bytes, *, mask: bool, fin: bool = True) -> bytes:
    """A frame as the `websockets` library serialises it (mask=True: a client's frame)."""
    return Frame(opcode, payload, fin=fin).serialize(mask=mask)


def test_accept_key_rfc6455_example() -> None:
    assert ws.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_header_lengths_match_the_oracle(size: int) -> None:
    payload = os.urandom(size)
    assert ws.encode_frame(ws.OP_BINARY, payload) == _oracle(Opcode.BINARY, payload, mask=False)


def test_masked_frame_round_trip_and_oracle_decoding() -> None:
    payload = os.urandom(70_000)
    mask = os.urandom(4)
    frame = ws.encode_frame(ws.OP_BINARY, payload, mask)
    dec = ws.FrameDecoder(server=True)
    assert b"".join(x for x in dec.feed(frame) if isinstance(x, bytes)) == payload
    # and a frame masked by the websockets library decodes the same
    dec2 = ws.FrameDecoder(server=True)
    got = dec2.feed(_oracle(Opcode.BINARY, payload, mask=True))
    assert b"".join(x for x in got if isinstance(x, bytes)) == payload


@settings(max_examples=100, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=0, max_size=3000), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=40),
    fragmented=st.booleans(),
    masked=st.booleans(),
    views=st.booleans(),
)
def test_any_split_of_a_stream_gives_the_same_bytes(
    payloads: list[bytes], cuts: list[int], fragmented: bool, masked: bool, views: bool
) -> None:
    """Masked (a client's frames, as the connector reads them) or not (the edge's, as the
    access client reads them), fed as bytes or as views (the connector feeds views of h2 DATA
    payloads)."""
    stream = b""
    for i, p in enumerate(payloads):
        if fragmented:
            op = Opcode.BINARY if i == 0 else Opcode.CONT
            stream += _oracle(op, p, mask=masked, fin=i == len(payloads) - 1)
        else:
            stream += _oracle(Opcode.BINARY, p, mask=masked)
        if i == 0:
            stream += _oracle(Opcode.PING, b"hi", mask=masked)  # control frames interleave
    fed: bytes | memoryview = memoryview(bytearray(stream)) if views else stream
    dec = ws.FrameDecoder(server=masked)
    data = b""
    controls = []
    pos = 0
    i = 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        i += 1
        for item in dec.feed(fed[pos : pos + n]):
            if isinstance(item, ws.Control):
                controls.append(item)
            else:
                data += item
        pos += n
    assert data == b"".join(payloads)
    assert controls == [ws.Control(ws.OP_PING, b"hi")]


def test_close_frame_stops_decoding() -> None:
    dec = ws.FrameDecoder(server=False)
    items = dec.feed(
        ws.encode_frame(ws.OP_BINARY, b"last")
        + ws.encode_close(ws.CLOSE_GOING_AWAY, "bye")
        + ws.encode_frame(ws.OP_BINARY, b"after")
    )
    assert items[0] == b"last"
    assert isinstance(items[1], ws.Control) and items[1].close_code() == ws.CLOSE_GOING_AWAY
    assert len(items) == 2 and dec.closed
    assert dec.feed(ws.encode_frame(ws.OP_BINARY, b"more")) == []


@pytest.mark.parametrize(
    ("frame", "server", "message"),
    [
        (ws.encode_frame(ws.OP_BINARY, b"x"), True, "must be masked"),
        (ws.encode_frame(ws.OP_BINARY, b"x", b"abcd"), False, "must not be masked"),
        (bytes([0xC2, 0x80]) + b"abcd", True, "reserved bits"),  # RSV1 (compression) not agreed
        (ws.frame_header(ws.OP_PING, 126, b"abcd") + b"a" * 126, True, "control frames"),
        (bytes([0x09, 0x80]) + b"abcd", True, "control frames"),  # ping without FIN
        (ws.frame_header(ws.OP_CONT, 1, b"abcd") + b"x", True, "continuation frame outside"),
        (ws.frame_header(0x3, 1, b"abcd") + b"x", True, "unknown opcode"),
        (ws.frame_header(ws.OP_CLOSE, 1, b"abcd") + b"x", True, "one-byte payload"),
        (bytes([0x82, 0xFF]) + b"\x80" + b"\x00" * 7 + b"abcd", True, "most significant bit"),
    ],
)
def test_protocol_errors(frame: bytes, server: bool, message: str) -> None:
    with pytest.raises(ws.WebSocketError, match=message) as err:
        ws.FrameDecoder(server=server).feed(frame)
    assert err.value.close_code == ws.CLOSE_PROTOCOL_ERROR


def test_new_message_inside_fragmented_one_is_refused() -> None:
    dec = ws.FrameDecoder(server=True)
    dec.feed(ws.frame_header(ws.OP_BINARY, 1, b"abcd", fin=False) + ws.apply_mask(b"x", b"abcd"))
    with pytest.raises(ws.WebSocketError, match="inside a fragmented message"):
        dec.feed(ws.encode_frame(ws.OP_BINARY, b"y", b"abcd"))


def test_large_frame_is_delivered_incrementally() -> None:
    """A frame announcing 1 GB is not buffered: payload comes out as it arrives."""
    dec = ws.FrameDecoder(server=True)
    mask = b"\x01\x02\x03\x04"
    chunk = b"z" * 10_000
    out = dec.feed(ws.frame_header(ws.OP_BINARY, 1 << 30, mask) + ws.apply_mask(chunk, mask))
    assert out == [chunk]
    assert dec.feed(ws.apply_mask(chunk, mask)) == [chunk]  # 10_000 % 4 == 0: same phase


def test_unmasked_payload_is_handed_out_as_views_of_what_was_fed() -> None:
    """The access client's decoder passes payload on without copying it: each item is a view
    of the bytes fed, and a frame header split across two feeds still parses."""
    first, second = os.urandom(300_000), os.urandom(1000)
    stream = ws.encode_frame(ws.OP_BINARY, first) + ws.encode_frame(ws.OP_BINARY, second)
    cut = len(stream) - len(second) - 2  # inside the second frame's header
    dec = ws.FrameDecoder(server=False)
    fed = stream[:cut]
    items = dec.feed(fed)
    assert len(items) == 1 and type(items[0]) is memoryview
    assert items[0].obj is fed and items[0] == first
    tail = memoryview(bytearray(stream[cut:]))
    items = dec.feed(tail)
    assert [bytes(x) for x in items] == [second]
