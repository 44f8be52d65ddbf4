"""An HTTP/2 endpoint on an asyncio transport, shared by the edge (h2 client) and the connector
(h2 server) of a tunnel connection.

The `h2` state machine does the protocol; this module adds what a proxy needs on top of it:

- per-stream outbound buffers bounded by a high/low water mark, so producers (eyeball or origin
  sockets) are paused when the peer's flow-control window is exhausted;
- inbound flow-control credit returned only when the consumer has really drained the bytes
  (`H2Stream.consumed`), which carries backpressure end to end;
- large DATA frames (up to the peer's MAX_FRAME_SIZE) and coalesced socket writes: everything
  produced during one event-loop tick leaves in one `transport.write`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
from typing import Any, Protocol, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import h2.stream
import h2.utilities
from hyperframe.exceptions import InvalidDataError, InvalidFrameError
from hyperframe.frame import DataFrame, Frame

from burrow.net.hpack_fast import FastDecoder, FastEncoder

log = logging.getLogger(__name__)

# h2 computes `repr(frame)` for a trace log line on every received frame, even when logging is
# off; for 1 MiB DATA frames that is 10-40 % of receive CPU. The name is looked up in the module's
# globals before builtins, so this shadows it for h2.connection only.
h2.connection.repr = lambda _obj: ""  # type: ignore[attr-defined]

Headers = list[tuple[bytes, bytes]]

# Two per-header-block costs of h2 that a proxy passing bytes, with validation off, need not pay
# (each ~3-5 % of a tunnel endpoint's Python time for small requests):
_utf8_encode_headers = h2.utilities.utf8_encode_headers
_build_hdr_validation_flags = h2.stream.H2Stream._build_hdr_validation_flags
_NO_VALIDATION_FLAGS = h2.utilities.HeaderValidationFlags(False, False, False, False)


def _bytes_headers(headers: Any) -> Any:
    """h2 rebuilds every header list to encode str names/values: skip it when all are bytes."""
    if type(headers) is list:
        for header in headers:
            if (
                type(header) is not tuple
                or type(header[0]) is not bytes
                or type(header[1]) is not bytes
            ):
                return _utf8_encode_headers(headers)
        return headers
    return _utf8_encode_headers(headers)


def _validation_flags(self: Any, events: Any) -> Any:
    """The flags only feed header validation/normalisation: not built when all are off."""
    c = self.config
    if (
        c._validate_inbound_headers
        or c._normalize_inbound_headers
        or c._validate_outbound_headers
        or c._normalize_outbound_headers
    ):
        return _build_hdr_validation_flags(self, events)
    return _NO_VALIDATION_FLAGS


h2.stream.utf8_encode_headers = _bytes_headers  # type: ignore[attr-defined]

h2.stream.H2Stream._build_hdr_validation_flags = _validation_flags  # type: ignore[method-assign]

# Per-stream initial window we grant. cloudflared uses 1 MiB; 4 MiB keeps a bulk transfer from
# stalling on WINDOW_UPDATE round trips (download through the tunnel ~+35 % on loopback). Memory
# stays bounded by CONNECTION_WINDOW per tunnel connection.
WINDOW_SIZE = 4 << 20
CONNECTION_WINDOW = 32 << 20  # connection-level window we grant (shared by all streams)
MAX_FRAME_SIZE = 1 << 20
STREAM_HIGH_WATER = 1 << 20  # pending outbound bytes per stream before the producer is paused
STREAM_LOW_WATER = 256 << 10
_UNLIMITED_STREAMS = 1 << 30  # a MAX_CONCURRENT_STREAMS at least this large: no real limit


class StreamHandler(Protocol):
    """What one stream's owner receives. Every method is called from the event loop."""

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None: ...

    def on_data(self, stream: H2Stream, data: bytes, end_stream: bool) -> None:
        """The handler must call `stream.consumed(len(data))` once the bytes are drained."""

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None: ...

    def on_end(self, stream: H2Stream) -> None:
        """The peer ended its side (END_STREAM) without data or headers in the same frame."""

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        """The stream was reset by the peer, or the connection was lost."""

    def on_writable(self, stream: H2Stream) -> None:
        """Pending outbound data fell below the low-water mark: producers may resume."""


class H2Stream:
    """One HTTP/2 stream: outbound buffer with flow control, inbound credit accounting."""

    __slots__ = (
        "_end_queued",
        "_pending",
        "_pending_bytes",
        "_trailers",
        "closed",
        "conn",
        "handler",
        "id",
        "local_ended",
        "producer_paused",
        "remote_ended",
    )

    def __init__(self, conn: H2Endpoint, stream_id: int, handler: StreamHandler | None) -> None:
        self.conn = conn
        self.id = stream_id
        self.handler = handler
        self._pending: collections.deque[bytes | memoryview] = collections.deque()
        self._pending_bytes = 0
        self._end_queued = False
        self._trailers: Headers | None = None
        self.closed = False
        self.local_ended = False
        self.remote_ended = False
        self.producer_paused = False

    def send_headers(self, headers: Headers, end_stream: bool = False) -> None:
        if self.closed:
            return
        self.conn._h2.send_headers(self.id, headers, end_stream=end_stream)
        if end_stream:
            self.local_ended = True
        self.conn.schedule_flush()

    def write(self, data: bytes) -> bool:
        """Queue body bytes. Returns False when the producer should pause until `on_writable`."""
        if self.closed or self._end_queued or not data:
            return not self.closed
        if type(data) is not bytes:
            data = bytes(data)  # a caller's mutable buffer must not change under the queue
        self._pending.append(data)
        self._pending_bytes += len(data)
        self.conn._stream_has_pending(self)
        if self._pending_bytes >= STREAM_HIGH_WATER:
            self.producer_paused = True
            return False
        return True

    def end(self, trailers: Headers | None = None) -> None:
        """End our side after any pending data (optionally with trailers)."""
        if self.closed or self._end_queued:
            return
        self._end_queued = True
        self._trailers = trailers
        self.conn._stream_has_pending(self)

    def reset(self, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        if self.closed:
            return
        self.closed = True
        self._pending.clear()
        self._pending_bytes = 0
        try:
            self.conn._h2.reset_stream(self.id, error_code)
        except h2.exceptions.H2Error:
            pass
        self.conn._forget(self)
        self.conn.schedule_flush()

    def consumed(self, n: int) -> None:
        """Return `n` bytes of flow-control credit: the consumer drained them.

        Also valid after the stream closed: the credit still belongs to the connection window.
        """
        h2c = self.conn._h2
        if n <= 0 or h2c is None or self.conn.closed:
            return
        try:
            h2c.acknowledge_received_data(n, self.id)
        except h2.exceptions.H2Error:
            return
        self.conn.schedule_flush()

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def _flush(self, h2c: h2.connection.H2Connection) -> bool:
        """Move pending bytes into h2 as the window allows. True when fully drained."""
        max_frame = h2c.max_outbound_frame_size
        while self._pending:
            window = h2c.local_flow_control_window(self.id)
            if window <= 0:
                return False
            chunk = self._pending[0]
            size = min(len(chunk), window, max_frame)
            if size == len(chunk):
                self._pending.popleft()
                if not self._pending and self._end_queued and not self._trailers:
                    # END_STREAM on the last DATA frame rather than on an empty one after it:
                    # one frame less to build, send, parse and dispatch per response.
                    self.local_ended = True
                    h2c.send_data(self.id, chunk, end_stream=True)
                    self._pending_bytes -= size
                    return True
                h2c.send_data(self.id, chunk)
            else:
                # Zero-copy split: the frame goes out as its own write buffer (_H2Connection).
                view = chunk if type(chunk) is memoryview else memoryview(chunk)
                h2c.send_data(self.id, view[:size])
                self._pending[0] = view[size:]
            self._pending_bytes -= size
        if self._end_queued and not self.local_ended:
            self.local_ended = True
            if self._trailers:
                h2c.send_headers(self.id, self._trailers, end_stream=True)
            else:
                h2c.end_stream(self.id)
        return True


_FRAME_HEADER = struct.Struct("!HBBBL")
_COALESCE_BELOW = 64 << 10  # output pieces smaller than this are joined into one write


class _FrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's FrameBuffer, minus one copy of every received frame body: the body is parsed
    from a view of the buffer instead of a slice of it."""

    def __next__(self) -> Frame:
        data = self._data
        if len(data) < 9:
            raise StopIteration
        try:
            f, length = Frame.parse_frame_header(memoryview(data)[:9])
        except (InvalidDataError, InvalidFrameError) as err:
            raise h2.exceptions.ProtocolError(
                f"Received frame with invalid header: {err!s}"
            ) from err
        if len(data) < length + 9:
            raise StopIteration
        self._validate_frame_length(length)
        view = memoryview(data)[9 : 9 + length]
        try:
            f.parse_body(view)
        except InvalidDataError as err:
            raise h2.exceptions.ProtocolError("Received frame with non-compliant data") from err
        except InvalidFrameError as err:
            raise h2.exceptions.FrameDataMissingError("Frame data missing or invalid") from err
        view.release()
        try:
            del data[: 9 + length]
        except BufferError:  # a frame kept a view of the buffer: leave it to that frame
            self._data = data[9 + length :]
        new_frame = self._update_header_buffer(f)
        return new_frame if new_frame is not None else self.__next__()


class _H2Connection(h2.connection.H2Connection):
    """h2 with two changes for a proxy:

    - Output is kept as a list of pieces instead of one growing buffer: a DATA frame's payload
      is not copied into it (nor re-serialised by hyperframe) but written as its own piece
      (`data_chunks`), which saves two to three copies of every body byte sent.
    - h2 ends the whole connection on any GOAWAY (and drops queued output). A graceful one
      (NO_ERROR) only means "no new streams": in-flight streams must finish (RFC 9113 6.8),
      which is how an edge drains a tunnel connection on shutdown."""

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        self._chunks: list[bytes | memoryview] = []
        self.incoming_buffer = _FrameBuffer(server=not config.client_side)

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        if not frames:
            return
        out = self._chunks
        if self._data_to_send:  # written directly by h2 (connection preamble): keep the order
            out.append(bytes(self._data_to_send))
            self._data_to_send = bytearray()
        for f in frames:
            if type(f) is DataFrame and not f.pad_length:
                data = f.data
                n = len(data)
                f.body_len = n
                flags = 1 if "END_STREAM" in f.flags else 0
                out.append(_FRAME_HEADER.pack((n >> 8) & 0xFFFF, n & 0xFF, 0, flags, f.stream_id))
                if n:
                    out.append(data)
            else:
                out.append(f.serialize())

    def data_chunks(self) -> list[bytes | memoryview]:
        """Everything queued for sending, as pieces for `transport.writelines`: runs of small
        pieces joined (one TLS record, one syscall), large DATA payloads left as they are."""
        out = self._chunks
        if self._data_to_send:
            out.append(bytes(self._data_to_send))
            self._data_to_send = bytearray()
        if not out:
            return out
        self._chunks = []
        if len(out) == 1:
            return out
        merged: list[bytes | memoryview] = []
        small: list[bytes | memoryview] = []
        for piece in out:
            if len(piece) < _COALESCE_BELOW:
                small.append(piece)
                continue
            if small:
                merged.append(b"".join(small))
                small = []
            merged.append(piece)
        if small:
            merged.append(b"".join(small))
        return merged

    def data_to_send(self, amount: int | None = None) -> bytes:
        data = b"".join(self.data_chunks())
        if amount is None:
            return data
        self._data_to_send = bytearray(data)
        return super().data_to_send(amount)

    def clear_outbound_data_buffer(self) -> None:
        self._chunks = []
        super().clear_outbound_data_buffer()

    _scan_skipped = 0

    def _open_streams(self, remainder: int) -> int:
        """h2 counts open streams by scanning every stream each time one is opened (to enforce
        MAX_CONCURRENT_STREAMS), and drops closed streams only there. When neither side limits
        concurrency (tunnel connections advertise 2^31-1 both ways) the count cannot matter:
        scan (and clean up) only every 32nd time."""
        if (
            self._scan_skipped < 32
            and self.local_settings.max_concurrent_streams >= _UNLIMITED_STREAMS
            and self.remote_settings.max_concurrent_streams >= _UNLIMITED_STREAMS
        ):
            self._scan_skipped += 1
            return 0
        self._scan_skipped = 0
        return super()._open_streams(remainder)

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[Any]]:
        if frame.error_code != 0:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors.ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class H2Endpoint(asyncio.Protocol):
    """Base protocol: owns the h2 connection, the streams, write coalescing and flow control."""

    def __init__(self, *, client_side: bool, validate_inbound_headers: bool = True) -> None:
        """`validate_inbound_headers=False` skips h2's per-field checks of received headers
        (~8 % of a tunnel endpoint's CPU). Only for peers whose headers are consumed by code that
        validates what it uses: the two ends of a tunnel (the edge parses responses with
        `tunnel_h2.parse_response` and writes HTTP/1.1 heads through the CR/LF guard of
        `http1.serialize_response_head`; the connector checks :authority/:path and builds origin
        requests through the same guard). Eyeball- and origin-facing endpoints keep it on."""
        self._client_side = client_side
        self._validate_inbound = validate_inbound_headers
        self._deferred: list[Any] = []
        self._h2: Any = None
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self._blocked: dict[int, H2Stream] = {}
        self._flush_scheduled = False
        self._write_paused = False
        self._loop = asyncio.get_event_loop()
        self.closed = False

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        config = h2.config.H2Configuration(
            client_side=self._client_side,
            header_encoding=None,
            validate_inbound_headers=self._validate_inbound,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        h2c = _H2Connection(config=config)
        # Stateless cached encoding, fast decoding of plain blocks (burrow.net.hpack_fast).
        decoder = FastDecoder()
        decoder.max_header_list_size = h2c.decoder.max_header_list_size
        h2c.encoder, h2c.decoder = FastEncoder(), decoder
        h2c.local_settings = h2.settings.Settings(
            client=self._client_side,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2**31 - 1,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW_SIZE,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 20,
            },
        )
        # Settings given as initial values count as already acknowledged, so h2 never raises
        # its inbound frame-size limit from them: set it to what we advertise.
        h2c.max_inbound_frame_size = MAX_FRAME_SIZE
        self._h2 = h2c
        h2c.initiate_connection()
        h2c.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        transport.set_write_buffer_limits(high=4 << 20, low=1 << 20)
        self._flush_now()
        self.h2_ready()

    def data_received(self, data: bytes) -> None:
        h2c = self._h2
        if h2c is None:
            return
        try:
            events = h2c.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.warning("h2 protocol error from peer: %s", exc)
            self._flush_now()
            self._abort()
            return
        for event in events:
            self._dispatch(event)
        if self._deferred:
            self._run_deferred()
        self._flush_now()

    def defer(self, obj: Any) -> None:
        """Call `obj.flush_deferred()` once the events of the current read are dispatched.

        Lets a handler hold output that more events of the same read usually complete (a
        response head and its body) and write it with one syscall instead of several."""
        self._deferred.append(obj)

    def _run_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for obj in deferred:
            obj.flush_deferred()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        streams = list(self.streams.values())
        self.streams.clear()
        self._blocked.clear()
        for stream in streams:
            stream.closed = True
            if stream.handler is not None:
                stream.handler.on_reset(stream, h2.errors.ErrorCodes.CANCEL)
        self.h2_closed(exc)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self.schedule_flush()

    # --- hooks for subclasses -----------------------------------------------------------------

    def h2_ready(self) -> None:
        """The preface and settings have been queued."""

    def h2_closed(self, exc: Exception | None) -> None:
        """The transport is gone; every stream has been reset."""

    def on_request(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        """Server side: a new request stream."""
        self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        """The peer sent GOAWAY."""

    def on_ping_ack(self, data: bytes) -> None:
        """A PING we sent was acknowledged."""

    # --- streams ------------------------------------------------------------------------------

    def open_stream(
        self, headers: Headers, handler: StreamHandler, end_stream: bool = False
    ) -> H2Stream:
        """Client side: start a new request stream."""
        stream_id = self._h2.get_next_available_stream_id()
        stream = H2Stream(self, stream_id, handler)
        self.streams[stream_id] = stream
        self._h2.send_headers(stream_id, headers, end_stream=end_stream)
        if end_stream:
            stream.local_ended = True
        self.schedule_flush()
        return stream

    def adopt_stream(self, stream_id: int, handler: StreamHandler | None) -> H2Stream:
        """Server side: create the stream object for a received request."""
        stream = H2Stream(self, stream_id, handler)
        self.streams[stream_id] = stream
        return stream

    def ping(self, data: bytes = b"burrow!!") -> None:
        if self._h2 is not None and not self.closed:
            self._h2.ping(data)
            self.schedule_flush()

    def goaway(self, error_code: int = 0) -> None:
        """Send GOAWAY. With NO_ERROR it is graceful (RFC 9113 6.8): streams already open
        continue on both sides, which h2's own state machine does not allow, so its state is
        kept open here and `_H2Connection` does the same on the receiving side."""
        h2c = self._h2
        if h2c is not None and not self.closed:
            state = h2c.state_machine.state
            h2c.close_connection(error_code=error_code)
            if error_code == 0:
                h2c.state_machine.state = state
            self.schedule_flush()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._flush_now()
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now: no flush, no TLS close_notify exchange."""
        if self.transport is not None:
            self.transport.abort()

    _abort = abort

    def _forget(self, stream: H2Stream) -> None:
        self.streams.pop(stream.id, None)
        self._blocked.pop(stream.id, None)

    def _stream_has_pending(self, stream: H2Stream) -> None:
        self._blocked[stream.id] = stream
        self.schedule_flush()

    # --- output -------------------------------------------------------------------------------

    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        h2c = self._h2
        if h2c is None or self.transport is None or self.closed:
            return
        if self._blocked and not self._write_paused:
            self._drain_blocked(h2c)
        chunks = h2c.data_chunks()
        if chunks:
            if len(chunks) == 1:
                self.transport.write(chunks[0])
            else:
                self.transport.writelines(chunks)

    def _drain_blocked(self, h2c: Any) -> None:
        woken: list[H2Stream] = []
        for stream_id, stream in list(self._blocked.items()):
            if stream.closed:
                del self._blocked[stream_id]
                continue
            try:
                done = stream._flush(h2c)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                del self._blocked[stream_id]
                continue
            if done:
                del self._blocked[stream_id]
            if stream.producer_paused and stream._pending_bytes <= STREAM_LOW_WATER:
                stream.producer_paused = False
                woken.append(stream)
            if stream.local_ended and stream.remote_ended:
                self._forget(stream)
        for stream in woken:
            if stream.handler is not None:
                stream.handler.on_writable(stream)

    # --- events -------------------------------------------------------------------------------

    def _dispatch(self, event: Any) -> None:
        t = type(event)
        if t is h2.events.DataReceived:
            stream = self.streams.get(event.stream_id)
            padding = event.flow_controlled_length - len(event.data)
            if padding:
                self._h2.acknowledge_received_data(padding, event.stream_id)
            if stream is None or stream.handler is None:
                if event.flow_controlled_length:
                    try:
                        self._h2.acknowledge_received_data(len(event.data), event.stream_id)
                    except h2.exceptions.H2Error:
                        pass
                return
            ended = event.stream_ended is not None
            if ended:
                stream.remote_ended = True
            stream.handler.on_data(stream, event.data, ended)
            if ended:
                self._maybe_forget(stream)
        elif t is h2.events.RequestReceived:
            ended = event.stream_ended is not None
            self.on_request(event.stream_id, event.headers, ended)
            stream = self.streams.get(event.stream_id)
            if stream is not None and ended:
                stream.remote_ended = True
        elif t is h2.events.ResponseReceived or t is h2.events.InformationalResponseReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.handler is not None:
                ended = getattr(event, "stream_ended", None) is not None
                if ended:
                    stream.remote_ended = True
                stream.handler.on_headers(stream, event.headers, ended)
                if ended:
                    self._maybe_forget(stream)
        elif t is h2.events.TrailersReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.handler is not None:
                stream.remote_ended = True
                stream.handler.on_trailers(stream, event.headers)
                self._maybe_forget(stream)
        elif t is h2.events.StreamEnded:
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.remote_ended:
                stream.remote_ended = True
                if stream.handler is not None:
                    stream.handler.on_end(stream)
                self._maybe_forget(stream)
        elif t is h2.events.StreamReset:
            stream = self.streams.pop(event.stream_id, None)
            self._blocked.pop(event.stream_id, None)
            if stream is not None:
                stream.closed = True
                if stream.handler is not None:
                    stream.handler.on_reset(stream, event.error_code)
        elif t is h2.events.WindowUpdated:
            if event.stream_id == 0:
                self._blocked.update(
                    (s.id, s) for s in self.streams.values() if s._pending or s._end_queued
                )
            else:
                stream = self.streams.get(event.stream_id)
                if stream is not None and (stream._pending or stream._end_queued):
                    self._blocked[stream.id] = stream
        elif t is h2.events.RemoteSettingsChanged:
            self._blocked.update(
                (s.id, s) for s in self.streams.values() if s._pending or s._end_queued
            )
        elif t is h2.events.ConnectionTerminated:
            self.on_goaway(event.last_stream_id or 0, int(event.error_code or 0))
        elif t is h2.events.PingAckReceived:
            self.on_ping_ack(event.ping_data)

    def _maybe_forget(self, stream: H2Stream) -> None:
        if stream.local_ended and stream.remote_ended and not stream._pending:
            stream.closed = True
            self._forget(stream)
