"""A sans-IO HTTP/2 connection (RFC 9113) built for a proxy's hot path.

Why not the `h2` package: a tunnel request crosses two HTTP/2 endpoints, and `h2` spends ~660
Python calls on one small request/response pair (event objects, a per-stream state machine of
closures, frame objects from `hyperframe`, settings objects). This engine keeps the protocol
state a proxy needs in plain slotted attributes and calls the owner's methods directly:

- frames are parsed in place from the bytes the transport delivers (only an incomplete frame
  is buffered); a large DATA frame's body is handed over piece by piece as views of those
  bytes, never copied or reassembled; frames are built from pre-packed headers and a DATA
  payload is never copied into an output buffer (`out` is a list of pieces for `writelines`);
- per-stream state is one `CoreStream` (flow-control windows, two end flags); no event objects;
- header blocks go through `burrow.wire.hpack_codec` (stateless encoding, fast decoding).

What it still enforces (a tunnel peer is authenticated but not trusted, eyeballs not at all):
frame sizes, stream-id order and parity, flow-control windows both ways, SETTINGS values,
CONTINUATION sequencing with a bounded header block, HPACK errors, and (optionally) RFC 9113
8.2/8.3 header-field rules. Connection errors raise `H2ConnectionError` after queueing GOAWAY;
stream errors reset the stream and tell the owner.

The owner subclasses `H2Core` and implements the `h2_*` hooks; it owns the stream objects
(`new_stream` is the factory) so one object per stream carries both this state and the
owner's buffers.
"""

from __future__ import annotations

import struct
from typing import Any

from hpack.exceptions import HPACKError

from burrow.wire import DataPiece
from burrow.wire.hpack_codec import FastDecoder, FastEncoder

Headers = list[tuple[bytes, bytes]]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0, 1, 2, 3, 4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 5, 6, 7, 8, 9

FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20


class ErrorCode:
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    ENHANCE_YOUR_CALM = 0xB


class Setting:
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6
    ENABLE_CONNECT_PROTOCOL = 0x8


MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME = 16384

_HEADER = struct.Struct("!BHBBL")  # length (24 bits as 8+16), type, flags, stream id
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
_U32 = struct.Struct("!L")
_STREAM_BODY = 16 << 10  # unpadded DATA frames this large go to the owner piece by piece
_VIEW_MIN = 32 << 10  # pieces this large are views of the received bytes; smaller ones copies
_RECV_BUFFER = 16 << 10  # holds an incomplete frame (grows for a larger one, then shrinks)
_SETTING = struct.Struct("!HL")


def frame_header(length: int, ftype: int, flags: int, stream_id: int) -> bytes:
    return _pack_header(length >> 16, length & 0xFFFF, ftype, flags, stream_id)


class H2ConnectionError(Exception):
    """The peer broke the protocol: GOAWAY with `code` has been queued; drop the connection."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _StreamError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class CoreStream:
    """Protocol state of one stream. Subclassed by the owner to add its buffers."""

    __slots__ = (
        "closed",
        "expected_length",
        "final_headers",
        "id",
        "local_ended",
        "recv_unacked",
        "recv_window",
        "remote_ended",
        "send_window",
    )

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.recv_window = recv_window
        self.recv_unacked = 0
        self.expected_length = -1  # a validated request's content-length still to come; -1: none
        self.final_headers = False  # a request (server) / final response (client) was received
        self.local_ended = False
        self.remote_ended = False
        self.closed = False


class H2Core:
    """The connection state machine. See the module docstring; hooks are at the end."""

    def __init__(
        self,
        *,
        client_side: bool,
        initial_window: int,
        connection_window: int,
        max_frame_size: int,
        max_header_list_size: int,
        max_concurrent_streams: int = MAX_WINDOW,
        validate_headers: bool = True,
        enable_connect_protocol: bool = False,
    ) -> None:
        self.client_side = client_side
        self.validate_headers = validate_headers
        self.streams: dict[int, Any] = {}
        self.out: list[bytes | bytearray | memoryview] = []
        self._rbuf = bytearray(_RECV_BUFFER)
        self._rend = 0  # bytes of an incomplete frame held in _rbuf
        self._need_preface = not client_side
        self._encoder = FastEncoder()
        self._decoder = FastDecoder()
        self._decoder.max_header_list_size = max_header_list_size
        # What we advertise.
        self.local_initial_window = initial_window
        self.local_max_frame = max_frame_size
        self.local_max_streams = max_concurrent_streams
        self.max_header_block = max_header_list_size
        self._connection_window = connection_window
        self.recv_window = connection_window
        self.recv_unacked = 0
        # What the peer advertises (RFC 9113 6.5.2 defaults until its SETTINGS arrive).
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_FRAME
        self.peer_max_streams = MAX_WINDOW
        self.send_window = DEFAULT_WINDOW
        # Stream ids.
        self.next_stream_id = 1 if client_side else 2
        self.highest_peer_stream = 0
        self.goaway_sent = False
        self.goaway_received = False
        self._continuation: tuple[int, int, bytearray] | None = None  # (stream, flags, block)
        # The DATA frame whose body is being streamed: bytes still to come, its stream (None:
        # refused, credit already returned) and its END_STREAM flag.
        self._body_left = 0
        self._body_stream: Any = None
        self._body_end = False
        self.local_connect_protocol = enable_connect_protocol and not client_side
        self._initial_settings = {
            Setting.ENABLE_PUSH: 0,
            Setting.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            Setting.INITIAL_WINDOW_SIZE: initial_window,
            Setting.MAX_FRAME_SIZE: max_frame_size,
            Setting.MAX_HEADER_LIST_SIZE: max_header_list_size,
        }
        if enable_connect_protocol and not client_side:
            self._initial_settings[Setting.ENABLE_CONNECT_PROTOCOL] = 1

    # --- output ------------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the preface (client), our SETTINGS and the connection window increase."""
        if self.client_side:
            self.out.append(PREFACE)
        self._queue_settings(self._initial_settings)
        if self._connection_window > DEFAULT_WINDOW:
            self.send_window_update(0, self._connection_window - DEFAULT_WINDOW)

    def _queue_settings(self, values: dict[int, int]) -> None:
        body = b"".join(_SETTING.pack(k, v) for k, v in values.items())
        self.out.append(frame_header(len(body), SETTINGS, 0, 0) + body)

    def update_settings(self, values: dict[int, int]) -> None:
        """Advertise new values. Stricter limits on what we accept apply at once; a larger
        window or frame size too (the peer may use it as soon as it has read the SETTINGS).
        Lowering INITIAL_WINDOW_SIZE is refused: data the peer sent under the old value would
        then be a flow-control error until it acknowledged."""
        if Setting.MAX_CONCURRENT_STREAMS in values:
            self.local_max_streams = values[Setting.MAX_CONCURRENT_STREAMS]
        if Setting.MAX_HEADER_LIST_SIZE in values:
            self.max_header_block = values[Setting.MAX_HEADER_LIST_SIZE]
            self._decoder.max_header_list_size = self.max_header_block
        if Setting.INITIAL_WINDOW_SIZE in values:
            window = values[Setting.INITIAL_WINDOW_SIZE]
            if not self.local_initial_window <= window <= MAX_WINDOW:
                raise ValueError("INITIAL_WINDOW_SIZE can only grow, up to 2^31-1")
            delta = window - self.local_initial_window
            self.local_initial_window = window
            for stream in self.streams.values():
                stream.recv_window += delta
        if Setting.MAX_FRAME_SIZE in values:
            size = values[Setting.MAX_FRAME_SIZE]
            if not DEFAULT_FRAME <= size <= (1 << 24) - 1:
                raise ValueError("MAX_FRAME_SIZE out of range")
            self.local_max_frame = max(self.local_max_frame, size)
        self._queue_settings(values)

    def new_stream(self, stream_id: int) -> CoreStream:
        """Factory for stream objects; the owner overrides it to return its subclass."""
        return CoreStream(stream_id, self.peer_initial_window, self.local_initial_window)

    def open_stream(self) -> Any:
        """Client side: allocate the next stream (headers are sent by `send_headers`)."""
        stream_id = self.next_stream_id
        self.next_stream_id += 2
        stream = self.new_stream(stream_id)
        self.streams[stream_id] = stream
        return stream

    def send_headers(self, stream_id: int, headers: Any, end_stream: bool = False) -> None:
        block = self._encoder.encode(headers)
        flags = FLAG_END_STREAM if end_stream else 0
        size = len(block)
        max_frame = self.peer_max_frame
        if size <= max_frame:
            self.out.append(
                frame_header(size, HEADERS, flags | FLAG_END_HEADERS, stream_id) + block
            )
            return
        view = memoryview(block)
        self.out.append(frame_header(max_frame, HEADERS, flags, stream_id) + view[:max_frame])
        pos = max_frame
        while pos < size:
            piece = view[pos : pos + max_frame]
            pos += len(piece)
            last = FLAG_END_HEADERS if pos >= size else 0
            self.out.append(frame_header(len(piece), CONTINUATION, last, stream_id) + piece)

    def send_data(
        self, stream: CoreStream, data: bytes | bytearray | memoryview, end_stream: bool
    ) -> None:
        """One DATA frame; the caller keeps it within `peer_max_frame` and both windows."""
        n = len(data)
        stream.send_window -= n
        self.send_window -= n
        out = self.out
        out.append(
            _pack_header(n >> 16, n & 0xFFFF, DATA, FLAG_END_STREAM if end_stream else 0, stream.id)
        )
        if n:
            out.append(data)

    def send_rst(self, stream_id: int, code: int) -> None:
        self.out.append(frame_header(4, RST_STREAM, 0, stream_id) + _U32.pack(code))

    def send_window_update(self, stream_id: int, increment: int) -> None:
        self.out.append(frame_header(4, WINDOW_UPDATE, 0, stream_id) + _U32.pack(increment))

    def send_ping(self, data: bytes, ack: bool = False) -> None:
        self.out.append(frame_header(8, PING, FLAG_ACK if ack else 0, 0) + data[:8].ljust(8, b"\0"))

    def send_goaway(self, code: int = ErrorCode.NO_ERROR, debug: bytes = b"") -> None:
        body = struct.pack("!LL", self.highest_peer_stream, code) + debug
        self.out.append(frame_header(len(body), GOAWAY, 0, 0) + body)
        self.goaway_sent = True

    def acknowledge(self, stream: CoreStream | None, n: int) -> None:
        """Return `n` bytes of receive credit once the consumer drained them.

        WINDOW_UPDATEs are batched: sent when a quarter of a window is owed, and never for a
        stream the peer has ended (only the connection window still matters then)."""
        self.recv_unacked += n
        if self.recv_unacked >= self._connection_window >> 2:
            self.recv_window += self.recv_unacked
            self.send_window_update(0, self.recv_unacked)
            self.recv_unacked = 0
        if stream is None or stream.remote_ended or stream.closed:
            return
        stream.recv_unacked += n
        if stream.recv_unacked >= self.local_initial_window >> 2:
            stream.recv_window += stream.recv_unacked
            self.send_window_update(stream.id, stream.recv_unacked)
            stream.recv_unacked = 0

    def flush_acknowledgements(self) -> None:
        """Send any connection credit still owed (e.g. before going idle)."""
        if self.recv_unacked:
            self.recv_window += self.recv_unacked
            self.send_window_update(0, self.recv_unacked)
            self.recv_unacked = 0

    def take_output(self) -> list[bytes | bytearray | memoryview]:
        out = self.out
        self.out = []
        return out

    # --- input -------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Feed bytes from the peer: every complete frame is handled.

        Frames are parsed in place from `data`; only an incomplete frame's bytes are kept (in
        the receive buffer) for the next call. The body of a large DATA frame is not buffered
        at all: it goes to the owner piece by piece as it arrives, each piece a view of `data`
        (no copy), with the frame's flow control and stream checks applied once at its header.

        Raises `H2ConnectionError` (GOAWAY already queued) when the peer broke the protocol."""
        if type(data) is not bytes:
            data = bytes(data)
        n = len(data)
        pos = 0
        if self._need_preface:
            pos = self._read_preface(data)
        view: memoryview | None = None
        while pos < n:
            if self._body_left:
                if view is None:
                    view = memoryview(data)
                k = min(self._body_left, n - pos)
                self._body_piece(view[pos : pos + k] if k >= _VIEW_MIN else data[pos : pos + k])
                pos += k
            elif self._rend:
                pos = self._complete_buffered(data, pos)
            else:
                pos = self._parse(data, pos, n)
                if pos < n and not self._body_left:  # an incomplete frame: keep it
                    self._keep(data, pos, n)
                    pos = n

    def _read_preface(self, data: bytes) -> int:
        """Check the client preface (server side), which may arrive split; bytes consumed."""
        have = self._rend
        take = min(len(PREFACE) - have, len(data))
        self._rbuf[have : have + take] = data[:take]
        if not PREFACE.startswith(bytes(self._rbuf[: have + take])):
            self._fail(ErrorCode.PROTOCOL_ERROR, "invalid connection preface")
        self._rend = have + take
        if self._rend == len(PREFACE):
            self._need_preface = False
            self._rend = 0
        return take

    def _keep(self, data: bytes, pos: int, end: int) -> None:
        """Start the receive buffer with an incomplete frame's first bytes."""
        k = end - pos
        if k > len(self._rbuf):
            self._rbuf = bytearray(k)
        self._rbuf[:k] = data[pos:end]
        self._rend = k

    def _complete_buffered(self, data: bytes, pos: int) -> int:
        """Add to the buffered incomplete frame only the bytes it still needs (its header,
        then its payload; only the header of a DATA frame whose body is streamed) and handle
        it once complete. Returns the position in `data` after the bytes taken."""
        have = self._rend
        if have < 9:
            take = min(9 - have, len(data) - pos)
            self._rbuf[have : have + take] = data[pos : pos + take]
            pos += take
            have += take
            self._rend = have
            if have < 9:
                return pos
        total = self._frame_need(self._rbuf)
        take = min(total - have, len(data) - pos)
        if total > len(self._rbuf):
            grown = bytearray(total)
            grown[:have] = self._rbuf[:have]
            self._rbuf = grown
        self._rbuf[have : have + take] = data[pos : pos + take]
        pos += take
        self._rend = have + take
        if self._rend == total:
            frame = bytes(self._rbuf[:total])
            self._rend = 0
            if len(self._rbuf) > _RECV_BUFFER:  # it held a big frame: let that memory go
                self._rbuf = bytearray(_RECV_BUFFER)
            self._parse(frame, 0, total)
        return pos

    def _frame_need(self, buf: bytearray) -> int:
        """Bytes of the frame whose header starts `buf` that must be buffered: all of it, or
        only the header of a DATA frame whose body is streamed."""
        hi, lo, ftype, flags = _unpack_header(buf, 0)[:4]
        length: int = (hi << 16) | lo
        if length > self.local_max_frame:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes")
        if ftype == DATA and length >= _STREAM_BODY and not flags & FLAG_PADDED:
            return 9
        return 9 + length

    def _parse(self, buf: bytes, pos: int, end: int) -> int:
        """Handle the complete frames in `buf[pos:end]`; stop at an incomplete one or after
        the header of a DATA frame whose body is streamed. Returns where parsing stopped."""
        max_frame = self.local_max_frame
        dispatch = self._dispatch
        while end - pos >= 9:
            hi, lo, ftype, flags, stream_id = _unpack_header(buf, pos)
            length = (hi << 16) | lo
            if length > max_frame:
                self._fail(ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes")
            if ftype == DATA and length >= _STREAM_BODY and not flags & FLAG_PADDED:
                self._body_begin(stream_id & 0x7FFFFFFF, flags, length)
                return pos + 9
            frame_end = pos + 9 + length
            if frame_end > end:
                break
            dispatch(ftype, flags, stream_id & 0x7FFFFFFF, buf[pos + 9 : frame_end])
            pos = frame_end
        return pos

    def _dispatch(self, ftype: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is not None and ftype != CONTINUATION:
            self._fail(ErrorCode.PROTOCOL_ERROR, "expected CONTINUATION")
        if ftype == DATA:
            self._on_data(stream_id, flags, payload)
        elif ftype == HEADERS:
            self._on_headers_frame(stream_id, flags, payload)
        elif ftype == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif ftype == RST_STREAM:
            self._on_rst(stream_id, payload)
        elif ftype == SETTINGS:
            self._on_settings(stream_id, flags, payload)
        elif ftype == PING:
            self._on_ping(stream_id, flags, payload)
        elif ftype == GOAWAY:
            self._on_goaway(stream_id, payload)
        elif ftype == CONTINUATION:
            self._on_continuation(stream_id, flags, payload)
        elif ftype == PRIORITY:
            if stream_id == 0:
                self._fail(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self._stream_error(stream_id, ErrorCode.FRAME_SIZE_ERROR)
        elif ftype == PUSH_PROMISE:
            self._fail(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE is disabled")
        # Unknown frame types are ignored (RFC 9113 5.5).

    def _fail(self, code: int, message: str) -> None:
        self.send_goaway(code, message.encode()[:256])
        raise H2ConnectionError(code, message)

    def _stream_error(self, stream_id: int, code: int) -> None:
        """Reset one stream (RFC 9113 5.4.2) and tell its owner."""
        self.send_rst(stream_id, code)
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.closed:
            stream.closed = True
            self.h2_stream_reset(stream, code)

    def _is_idle(self, stream_id: int) -> bool:
        """Never opened: beyond the highest id either side has used."""
        if (stream_id & 1) == (1 if self.client_side else 0):  # ours
            return stream_id >= self.next_stream_id
        return stream_id > self.highest_peer_stream

    def _on_data(self, stream_id: int, flags: int, payload: bytes) -> None:
        """A DATA frame received whole (small or padded)."""
        flow = len(payload)
        data = payload
        if flags & FLAG_PADDED:
            if not payload or payload[0] >= flow:
                self._fail(ErrorCode.PROTOCOL_ERROR, "bad padding")
            data = payload[1 : flow - payload[0]]
        end = bool(flags & FLAG_END_STREAM)
        stream = self._data_begin(stream_id, flow, len(data), end)
        if stream is not None:
            if end:
                stream.remote_ended = True
            self.h2_data(stream, data, end)

    def _body_begin(self, stream_id: int, flags: int, length: int) -> None:
        """The header of a DATA frame whose body is streamed: its checks and flow control
        now, for the whole frame; `_body_piece` delivers the body."""
        if self._continuation is not None:
            self._fail(ErrorCode.PROTOCOL_ERROR, "expected CONTINUATION")
        end = bool(flags & FLAG_END_STREAM)
        self._body_stream = self._data_begin(stream_id, length, length, end)
        self._body_left = length
        self._body_end = end

    def _body_piece(self, piece: bytes | memoryview) -> None:
        n = len(piece)
        self._body_left -= n
        last = not self._body_left
        stream = self._body_stream
        if last:
            self._body_stream = None
        if stream is None:
            return  # refused at its header, credit already returned
        if stream.closed:  # reset while the frame arrived: the connection credit is still owed
            self.acknowledge(None, n)
            return
        end = last and self._body_end
        if end:
            stream.remote_ended = True
        self.h2_data(stream, piece, end)

    def _data_begin(self, stream_id: int, flow: int, size: int, end: bool) -> Any:
        """Checks and flow-control accounting of a DATA frame of `flow` bytes carrying `size`
        bytes of data (the rest is padding): the stream to give the data to, or None when the
        frame is refused (its credit is returned; the stream reset as RFC 9113 says)."""
        if stream_id == 0:
            self._fail(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        self.recv_window -= flow
        if self.recv_window < 0:
            self._fail(ErrorCode.FLOW_CONTROL_ERROR, "connection window exceeded")
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_ended or stream.closed:
            self.acknowledge(None, flow)
            if self._is_idle(stream_id):
                self._fail(ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream")
            if stream is not None and not stream.closed:
                self._stream_error(stream_id, ErrorCode.STREAM_CLOSED)
            return None
        if not stream.final_headers:
            self.acknowledge(None, flow)
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR)
            return None
        stream.recv_window -= flow
        if stream.recv_window < 0:
            self.acknowledge(None, flow)
            self._stream_error(stream_id, ErrorCode.FLOW_CONTROL_ERROR)
            return None
        if flow != size:  # padding: credit it now, the owner only sees the data
            self.acknowledge(stream, flow - size)
        if stream.expected_length >= 0:
            stream.expected_length -= size
            if stream.expected_length < 0 or (end and stream.expected_length):
                self.acknowledge(None, size)
                self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR)  # RFC 9113 8.1.1
                return None
        return stream

    def _on_headers_frame(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            self._fail(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = 0, len(payload)
        if flags & FLAG_PADDED:
            if not payload or payload[0] >= end:
                self._fail(ErrorCode.PROTOCOL_ERROR, "bad padding")
            end -= payload[0]
            start = 1
        if flags & FLAG_PRIORITY:
            start += 5
            if start > end:
                self._fail(ErrorCode.FRAME_SIZE_ERROR, "short HEADERS")
        block = payload[start:end]
        if flags & FLAG_END_HEADERS:
            self._on_header_block(stream_id, flags, block)
        else:
            self._continuation = (stream_id, flags, bytearray(block))

    def _on_continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        pending = self._continuation
        if pending is None or pending[0] != stream_id:
            self._fail(ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION")
            return
        block = pending[2]
        block += payload
        if len(block) > self.max_header_block + 4096:
            self._fail(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if flags & FLAG_END_HEADERS:
            self._continuation = None
            self._on_header_block(stream_id, pending[1], bytes(block))

    def _on_header_block(self, stream_id: int, flags: int, block: bytes | bytearray) -> None:
        try:
            headers = self._decoder.decode(bytes(block), raw=True)
        except HPACKError as err:  # the decoder's state is now unknown: connection error
            self._fail(ErrorCode.COMPRESSION_ERROR, f"header block: {err}")
            return
        except (ValueError, IndexError) as err:
            self._fail(ErrorCode.COMPRESSION_ERROR, f"header block: {err}")
            return
        end = bool(flags & FLAG_END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is None:
            self._on_new_peer_stream(stream_id, headers, end)
            return
        if stream.closed or stream.remote_ended:
            self._stream_error(stream_id, ErrorCode.STREAM_CLOSED)
            return
        try:
            if not stream.final_headers:
                if self.client_side:
                    status = _response_status(headers, self.validate_headers)
                    if 100 <= status < 200:
                        if end:
                            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "1xx with END_STREAM")
                        self.h2_headers(stream, headers, False)
                        return
                stream.final_headers = True
                if end:
                    stream.remote_ended = True
                self.h2_headers(stream, headers, end)
                return
            if not end:
                raise _StreamError(ErrorCode.PROTOCOL_ERROR, "trailers without END_STREAM")
            if stream.expected_length > 0:
                raise _StreamError(ErrorCode.PROTOCOL_ERROR, "body shorter than content-length")
            if self.validate_headers:
                _check_fields(headers, trailers=True)
        except _StreamError as err:
            self._stream_error(stream_id, err.code)
            return
        stream.remote_ended = True
        self.h2_trailers(stream, headers)

    def _on_new_peer_stream(self, stream_id: int, headers: Headers, end: bool) -> None:
        if self.client_side or not stream_id & 1:
            if self._is_idle(stream_id):
                self._fail(ErrorCode.PROTOCOL_ERROR, "HEADERS on an idle stream")
            self._stream_error(stream_id, ErrorCode.STREAM_CLOSED)
            return
        if stream_id <= self.highest_peer_stream:
            self._stream_error(stream_id, ErrorCode.STREAM_CLOSED)
            return
        self.highest_peer_stream = stream_id
        if self.goaway_sent:
            return  # after our GOAWAY new streams are ignored (RFC 9113 6.8)
        if len(self.streams) >= self.local_max_streams:
            self.send_rst(stream_id, ErrorCode.REFUSED_STREAM)
            return
        length = -1
        if self.validate_headers:
            try:
                length = _check_request(headers, self.local_connect_protocol)
                if end and length > 0:
                    raise _StreamError(ErrorCode.PROTOCOL_ERROR, "no body for content-length")
            except _StreamError as err:
                self.send_rst(stream_id, err.code)
                return
        stream = self.new_stream(stream_id)
        stream.expected_length = length
        stream.final_headers = True
        if end:
            stream.remote_ended = True
        self.streams[stream_id] = stream
        self.h2_request(stream, headers, end)

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                self._fail(ErrorCode.PROTOCOL_ERROR, "zero WINDOW_UPDATE")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                self._fail(ErrorCode.FLOW_CONTROL_ERROR, "connection window overflow")
            self.h2_window_opened(None)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                self._fail(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if increment == 0:
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(stream_id, ErrorCode.FLOW_CONTROL_ERROR)
            return
        self.h2_window_opened(stream)

    def _on_rst(self, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            self._fail(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM length")
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                self._fail(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            return
        if not stream.closed:
            stream.closed = True
            self.h2_stream_reset(stream, _U32.unpack(payload)[0])

    def _on_settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id != 0:
            self._fail(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & FLAG_ACK:
            if payload:
                self._fail(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a body")
            return
        if len(payload) % 6:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS length")
        window_delta = 0
        for offset in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self._fail(ErrorCode.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
                window_delta += value - self.peer_initial_window
                self.peer_initial_window = value
            elif key == Setting.MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= (1 << 24) - 1:
                    self._fail(ErrorCode.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self.peer_max_frame = value
            elif key == Setting.MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif key == Setting.ENABLE_PUSH:
                if value > 1 or (value and self.client_side):
                    self._fail(ErrorCode.PROTOCOL_ERROR, "ENABLE_PUSH invalid")
            elif key == Setting.HEADER_TABLE_SIZE:
                self._encoder.header_table_size = value
            elif key == Setting.ENABLE_CONNECT_PROTOCOL:
                if value > 1:
                    self._fail(ErrorCode.PROTOCOL_ERROR, "ENABLE_CONNECT_PROTOCOL invalid")
        if window_delta:
            for stream in self.streams.values():
                stream.send_window += window_delta
                if stream.send_window > MAX_WINDOW:
                    self._fail(ErrorCode.FLOW_CONTROL_ERROR, "stream window overflow")
        self.out.append(frame_header(0, SETTINGS, FLAG_ACK, 0))
        self.h2_settings_changed()

    def _on_ping(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id != 0:
            self._fail(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "PING length")
        if flags & FLAG_ACK:
            self.h2_ping_ack(bytes(payload))
        else:
            self.send_ping(bytes(payload), ack=True)

    def _on_goaway(self, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            self._fail(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY length")
        last, code = struct.unpack_from("!LL", payload)
        self.goaway_received = True
        self.h2_goaway(last & 0x7FFFFFFF, code, bytes(payload[8:]))

    # --- hooks (the owner implements these) -------------------------------------------------

    def h2_request(self, stream: Any, headers: Headers, end_stream: bool) -> None:
        """Server side: the peer opened `stream` with a (validated) request head."""
        raise NotImplementedError

    def h2_headers(self, stream: Any, headers: Headers, end_stream: bool) -> None:
        """Client side: a response head (1xx informational ones too)."""
        raise NotImplementedError

    def h2_trailers(self, stream: Any, headers: Headers) -> None:
        raise NotImplementedError

    def h2_data(self, stream: Any, data: DataPiece, end_stream: bool) -> None:
        """The owner must `acknowledge(stream, len(data))` once the bytes are drained. A large
        frame's body may come in several calls; only the last carries `end_stream`."""
        raise NotImplementedError

    def h2_stream_reset(self, stream: Any, code: int) -> None:
        raise NotImplementedError

    def h2_window_opened(self, stream: Any | None) -> None:
        """A WINDOW_UPDATE arrived (`None`: the connection window)."""

    def h2_settings_changed(self) -> None:
        """The peer's SETTINGS were applied (windows may have grown)."""

    def h2_goaway(self, last_stream_id: int, code: int, debug: bytes) -> None:
        """The peer sent GOAWAY."""

    def h2_ping_ack(self, data: bytes) -> None:
        """A PING we sent was acknowledged."""


# --- header-field rules (RFC 9113 8.2, 8.3) -----------------------------------------------------

_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))
_BAD_NAME = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ \t\r\n\0:")
_BAD_VALUE = (b"\r", b"\n", b"\0")


def _check_fields(headers: Headers, *, trailers: bool = False) -> None:
    """Regular fields: lowercase token names, no CR/LF/NUL, no connection-specific fields."""
    for name, value in headers:
        if not name or name[0] == 0x3A:
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "pseudo-header in trailers")
        if not _BAD_NAME.isdisjoint(name):
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "invalid field name")
        if name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "connection-specific field")
        if value and (value[0] in b" \t" or value[-1] in b" \t"):
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "field value whitespace")
        for bad in _BAD_VALUE:
            if bad in value:
                raise _StreamError(ErrorCode.PROTOCOL_ERROR, "invalid field value")


def _split_pseudo(headers: Headers) -> tuple[dict[bytes, bytes], Headers]:
    pseudo: dict[bytes, bytes] = {}
    index = 0
    for name, value in headers:
        if not name.startswith(b":"):
            break
        if name in pseudo:
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "duplicate pseudo-header")
        pseudo[name] = value
        index += 1
    return pseudo, headers[index:]


def _check_request(headers: Headers, connect_protocol: bool) -> int:
    """RFC 9113 8.3.1 request rules; returns the declared content-length (-1: none)."""
    pseudo, regular = _split_pseudo(headers)
    if not _REQUEST_PSEUDO.issuperset(pseudo):
        raise _StreamError(ErrorCode.PROTOCOL_ERROR, "unknown pseudo-header")
    method = pseudo.get(b":method")
    if not method:
        raise _StreamError(ErrorCode.PROTOCOL_ERROR, "no :method")
    if method == b"CONNECT" and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo or b":authority" not in pseudo:
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "malformed CONNECT")
    else:
        if b":protocol" in pseudo and (method != b"CONNECT" or not connect_protocol):
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, ":protocol without extended CONNECT")
        if not pseudo.get(b":scheme") or not pseudo.get(b":path"):
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "no :scheme or :path")
    _check_fields(regular)
    authority = pseudo.get(b":authority")
    length = -1
    for name, value in regular:
        if name == b"content-length":
            if not value.isdigit() or len(value) > 18 or (length >= 0 and int(value) != length):
                raise _StreamError(ErrorCode.PROTOCOL_ERROR, "invalid content-length")
            length = int(value)
        elif name == b"host" and authority is not None and value != authority:
            # RFC 9113 8.3.1: two names for the request's target would let routing and the
            # origin disagree about it.
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "host differs from :authority")
    return length


def _response_status(headers: Headers, validate: bool) -> int:
    pseudo, regular = _split_pseudo(headers) if validate else ({}, [])
    if validate:
        if set(pseudo) != {b":status"}:
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "bad response pseudo-headers")
        _check_fields(regular)
    for name, value in headers:
        if name == b":status":
            if len(value) == 3 and value.isdigit():
                return int(value)
            break
    raise _StreamError(ErrorCode.PROTOCOL_ERROR, "bad :status")
