"""An HTTP/2 endpoint on an asyncio transport, shared by the edge (tunnel client, eyeball
server), the connector (tunnel server) and the h2 origin client.

`burrow.wire.h2core` does the protocol (sans-IO); this module adds what a proxy needs on top:

- per-stream outbound buffers bounded by a high/low water mark, so producers (eyeball or origin
  sockets) are paused when the peer's flow-control window is exhausted;
- inbound flow-control credit returned only when the consumer has really drained the bytes
  (`H2Stream.consumed`), which carries backpressure end to end;
- large DATA frames (up to the peer's MAX_FRAME_SIZE) and coalesced socket writes: everything
  produced during one event-loop tick leaves in one `transport.writelines`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Protocol, cast

from burrow.runtime import connection_closed
from burrow.wire import DataPiece
from burrow.wire.h2core import (
    CoreStream,
    ErrorCode,
    H2ConnectionError,
    H2Core,
    Setting,
)

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]

# Per-stream initial window we grant. cloudflared uses 1 MiB; 4 MiB keeps a bulk transfer from
# stalling on WINDOW_UPDATE round trips (download through the tunnel ~+35 % on loopback). Memory
# stays bounded by CONNECTION_WINDOW per tunnel connection.
WINDOW_SIZE = 4 << 20
CONNECTION_WINDOW = 32 << 20  # connection-level window we grant (shared by all streams)
MAX_FRAME_SIZE = 1 << 20
MAX_HEADER_LIST_SIZE = 1 << 20
STREAM_HIGH_WATER = 1 << 20  # pending outbound bytes per stream before the producer is paused
STREAM_LOW_WATER = 256 << 10
_COALESCE_BELOW = 64 << 10  # output pieces smaller than this are joined into one write
_EARLY_FLUSH = 8  # queued frames (+ streams with data) written without waiting for the loop
_MAX_UNREAD = 64 << 20  # bytes queued on a transport the peer does not read before we give up

__all__ = [
    "DataPiece",
    "ErrorCode",
    "H2Endpoint",
    "H2Stream",
    "Headers",
    "Setting",
    "StreamHandler",
    "StreamLimitError",
]


class StreamLimitError(RuntimeError):
    """No new stream: the peer's concurrency limit is reached."""


class StreamHandler(Protocol):
    """What one stream's owner receives. Every method is called from the event loop."""

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None: ...

    def on_data(self, stream: H2Stream, data: DataPiece, end_stream: bool) -> None:
        """The handler must call `stream.consumed(len(data))` once the bytes are drained.

        Large bodies come as read-only memoryviews of received bytes (no copy): pass them on
        (transports, `H2Stream.write(..., owned=True)`, `bytearray +=`) rather than relying on
        `bytes` methods; keeping one keeps the whole read it came from."""

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None: ...

    def on_end(self, stream: H2Stream) -> None:
        """For handlers' own use: the endpoint reports END_STREAM through `on_data(b"", True)`,
        `on_headers(..., end_stream=True)` or `on_trailers`."""

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        """The stream was reset by the peer, or the connection was lost."""

    def on_writable(self, stream: H2Stream) -> None:
        """Pending outbound data fell below the low-water mark: producers may resume."""


class H2Stream(CoreStream):
    """One HTTP/2 stream: outbound buffer with flow control, inbound credit accounting."""

    __slots__ = (
        "_end_queued",
        "_pending",
        "_pending_bytes",
        "_trailers",
        "conn",
        "handler",
        "producer_paused",
    )

    def __init__(
        self, conn: H2Endpoint, stream_id: int, send_window: int, recv_window: int
    ) -> None:
        super().__init__(stream_id, send_window, recv_window)
        self.conn = conn
        self.handler: StreamHandler | None = None
        self._pending: collections.deque[bytes | bytearray | memoryview] = collections.deque()
        self._pending_bytes = 0
        self._end_queued = False
        self._trailers: Headers | None = None
        self.producer_paused = False

    def send_headers(self, headers: Headers, end_stream: bool = False) -> None:
        if self.closed or self.local_ended:
            return
        conn = self.conn
        conn.send_headers(self.id, headers, end_stream)
        if end_stream:
            self.local_ended = True
            conn._maybe_forget(self)
        conn.schedule_flush()

    def write(self, data: bytes | bytearray | memoryview, owned: bool = False) -> bool:
        """Queue body bytes. Returns False when the producer should pause until `on_writable`.

        A mutable buffer is copied (the caller may reuse it) unless `owned`: data an endpoint
        delivered to `on_data` is never touched again and is passed on as it is."""
        if self.closed or self._end_queued or self.local_ended or not data:
            return not self.closed
        if not owned and type(data) is not bytes:
            data = bytes(data)
        self._pending.append(data)
        self._pending_bytes += len(data)
        self.conn._stream_has_pending(self)
        if self._pending_bytes >= STREAM_HIGH_WATER:
            self.producer_paused = True
            return False
        return True

    def end(self, trailers: Headers | None = None) -> None:
        """End our side after any pending data (optionally with trailers)."""
        if self.closed or self._end_queued or self.local_ended:
            return
        self._end_queued = True
        self._trailers = trailers
        self.conn._stream_has_pending(self)

    def reset(self, error_code: int = ErrorCode.CANCEL) -> None:
        if self.closed:
            return
        self.closed = True
        self._pending.clear()
        self._pending_bytes = 0
        conn = self.conn
        if not conn.closed:
            conn.send_rst(self.id, error_code)
            conn.schedule_flush()
        conn._forget(self)

    def consumed(self, n: int) -> None:
        """Return `n` bytes of flow-control credit: the consumer drained them.

        Also valid after the stream closed: the credit still belongs to the connection window.
        """
        conn = self.conn
        if n <= 0 or conn.closed:
            return
        out = len(conn.out)
        conn.acknowledge(self, n)
        if len(conn.out) != out:
            conn.schedule_flush()

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def _flush(self, conn: H2Endpoint) -> bool:
        """Move pending bytes into DATA frames as the windows allow. True when fully drained."""
        max_frame = conn.peer_max_frame
        pending = self._pending
        while pending:
            window = min(self.send_window, conn.send_window)
            if window <= 0:
                return False
            chunk = pending[0]
            size = min(len(chunk), window, max_frame)
            if size == len(chunk):
                pending.popleft()
                self._pending_bytes -= size
                if not pending and self._end_queued and not self._trailers:
                    # END_STREAM on the last DATA frame rather than on an empty one after it:
                    # one frame less to build, send, parse and dispatch per response.
                    self.local_ended = True
                    conn.send_data(self, chunk, True)
                    return True
                conn.send_data(self, chunk, False)
            else:
                # Zero-copy split: the frame's payload goes out as its own write buffer.
                view = chunk if type(chunk) is memoryview else memoryview(chunk)
                conn.send_data(self, view[:size], False)
                pending[0] = view[size:]
                self._pending_bytes -= size
        if self._end_queued and not self.local_ended:
            self.local_ended = True
            if self._trailers:
                conn.send_headers(self.id, self._trailers, True)
            else:
                conn.send_data(self, b"", True)
        return True


class H2Endpoint(H2Core, asyncio.Protocol):
    """Base protocol: owns the streams, write coalescing and flow control."""

    def __init__(
        self,
        *,
        client_side: bool,
        validate_inbound_headers: bool = True,
        enable_connect_protocol: bool = False,
    ) -> None:
        """`validate_inbound_headers=False` skips the RFC 9113 8.2 field checks of received
        headers. Only for peers whose headers are consumed by code that validates what it uses:
        the two ends of a tunnel (the edge parses responses with `tunnel_h2.parse_response` and
        writes HTTP/1.1 heads through the CR/LF guard of `http1.serialize_response_head`; the
        connector checks :authority/:path and builds origin requests through the same guard).
        Eyeball- and origin-facing endpoints keep it on."""
        H2Core.__init__(
            self,
            client_side=client_side,
            initial_window=WINDOW_SIZE,
            connection_window=CONNECTION_WINDOW,
            max_frame_size=MAX_FRAME_SIZE,
            max_header_list_size=MAX_HEADER_LIST_SIZE,
            validate_headers=validate_inbound_headers,
            enable_connect_protocol=enable_connect_protocol,
        )
        self._deferred: list[Any] = []
        self._receiving = False  # inside data_received: `defer` may hold output until its end
        self.transport: asyncio.Transport | None = None
        self._blocked: dict[int, H2Stream] = {}
        self._forgotten: list[H2Stream] = []  # done streams whose handler link is still to cut
        self._flush_scheduled = False
        self._flushing = False
        self._write_paused = False
        self._loop = asyncio.get_event_loop()
        self.closed = False

    def new_stream(self, stream_id: int) -> H2Stream:
        return H2Stream(self, stream_id, self.peer_initial_window, self.local_initial_window)

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        self.initiate()
        transport.set_write_buffer_limits(high=4 << 20, low=1 << 20)
        self._flush_now()
        self.h2_ready()

    def data_received(self, data: bytes) -> None:
        # The engine parses `data` in place and hands large bodies on as views of it, which
        # needs bytes nothing writes to again: an asyncio.BufferedProtocol reusing one receive
        # buffer could not, and `net/recvbuf`'s pool would let 32 KiB pieces held by a slow
        # eyeball pin whole buffers. (Its apparent native leak on uvloop TLS, measured
        # earlier, was closed connections waiting for a rare full collection: see
        # `runtime.collect_cycles`.)
        if self.closed:
            return
        self._receiving = True
        try:
            self.receive(data)
        except H2ConnectionError as exc:
            log.warning("h2 protocol error from peer: %s", exc)
            self._flush_now()
            self._abort()
            return
        finally:
            self._receiving = False
        if self._deferred:
            self._run_deferred()
        self._flush_now()

    def defer(self, obj: Any) -> None:
        """Call `obj.flush_deferred()` once the frames of the current read are dispatched
        (at once when called outside a read).

        Lets a handler hold output that more frames of the same read usually complete (a
        response head and its body, the pieces of a large DATA frame) and write it with one
        syscall instead of several."""
        if self._receiving:
            self._deferred.append(obj)
        else:
            obj.flush_deferred()

    def _run_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for obj in deferred:
            obj.flush_deferred()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        connection_closed()  # its objects may be cycles holding TLS buffers: collect soon
        streams = list(self.streams.values())
        self.streams.clear()
        self._blocked.clear()
        for stream in streams:
            if stream.closed:
                continue
            stream.closed = True
            if stream.handler is not None:
                stream.handler.on_reset(stream, ErrorCode.CANCEL)
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
        """Server side: a new request stream. Call `adopt_stream` to take it."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.reset(ErrorCode.REFUSED_STREAM)

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        """The peer sent GOAWAY."""

    def on_ping_ack(self, data: bytes) -> None:
        """A PING we sent was acknowledged."""

    # --- streams ------------------------------------------------------------------------------

    def open_stream(  # type: ignore[override]
        self, headers: Headers, handler: StreamHandler, end_stream: bool = False
    ) -> H2Stream:
        """Client side: start a new request stream.

        Raises `StreamLimitError` when the peer's MAX_CONCURRENT_STREAMS is reached (an h2
        origin's limit; tunnel peers advertise no real limit)."""
        if len(self.streams) >= self.peer_max_streams:
            raise StreamLimitError(f"peer allows {self.peer_max_streams} concurrent streams")
        stream = cast(H2Stream, H2Core.open_stream(self))
        stream.handler = handler
        self.send_headers(stream.id, headers, end_stream)
        if end_stream:
            stream.local_ended = True
        self.schedule_flush()
        return stream

    def adopt_stream(self, stream_id: int, handler: StreamHandler | None) -> H2Stream:
        """Server side: take the stream of a request passed to `on_request`."""
        stream = self.streams.get(stream_id)
        if stream is None:  # already reset or forgotten: a detached object keeps callers simple
            stream = self.new_stream(stream_id)
            stream.closed = True
        stream.handler = handler
        return cast(H2Stream, stream)

    def ping(self, data: bytes = b"burrow!!") -> None:
        if not self.closed:
            self.send_ping(data)
            self.schedule_flush()

    def goaway(self, error_code: int = 0) -> None:
        """Send GOAWAY. With NO_ERROR it is graceful (RFC 9113 6.8): streams already open
        continue on both sides; the peer may open no new ones."""
        if not self.closed and self.transport is not None:
            self.send_goaway(error_code)
            self.schedule_flush()

    def update_local_settings(self, values: dict[int, int]) -> None:
        self.update_settings(values)
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
        self._forgotten.append(stream)

    def _release_forgotten(self) -> None:
        """Cut the link from each stream done with to its handler, which refers back to it.

        Why: stream and handler (an exchange, a relay) form a reference cycle, so without this
        every request left its objects (~12 of them) to the cyclic collector, whose gen0 runs
        then took 6-8 ms every second or so under load (latency spikes, CPU). Done at the next
        flush rather than in `_forget` because the callbacks of the current event (`on_reset`
        after a peer's RST_STREAM, `on_writable` for streams woken by the same drain) still
        need the handler."""
        forgotten, self._forgotten = self._forgotten, []
        for stream in forgotten:
            stream.handler = None

    def _stream_has_pending(self, stream: H2Stream) -> None:
        self._blocked[stream.id] = stream
        self.schedule_flush()

    def _maybe_forget(self, stream: H2Stream) -> None:
        if stream.local_ended and stream.remote_ended and not stream._pending:
            stream.closed = True
            self._forget(stream)

    # --- output -------------------------------------------------------------------------------

    def schedule_flush(self) -> None:
        if len(self.out) + len(self._blocked) >= _EARLY_FLUSH and not self._flushing:
            # Many frames queued within one loop iteration (a burst of requests or responses):
            # send them now rather than after the whole burst, so the peer process can start
            # on them on the other core while this one reads the rest.
            self._flush_now()
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        if self._forgotten:
            self._release_forgotten()
        if self.transport is None or self.closed:
            return
        if self._blocked and not self._write_paused:
            self._flushing = True  # handlers woken here may queue more: no nested flush
            try:
                self._drain_blocked()
            finally:
                self._flushing = False
        if not self.out:
            return
        out = self.take_output()
        if self._write_paused and self.transport.get_write_buffer_size() > _MAX_UNREAD:
            # A peer that sends (PINGs, SETTINGS, requests) but never reads would make our
            # replies pile up without bound.
            log.warning("h2 peer does not read what it asked for; dropping the connection")
            self.abort()
            return
        if len(out) == 1:
            self.transport.write(out[0])
        else:
            self.transport.writelines(_coalesce(out))

    def _drain_blocked(self) -> None:
        woken: list[H2Stream] = []
        blocked = self._blocked
        for stream_id, stream in list(blocked.items()):
            if stream.closed:
                del blocked[stream_id]
                continue
            if stream._flush(self):
                del blocked[stream_id]
            if stream.producer_paused and stream._pending_bytes <= STREAM_LOW_WATER:
                stream.producer_paused = False
                woken.append(stream)
            if stream.local_ended and stream.remote_ended:
                stream.closed = True
                self._forget(stream)
            if self.send_window <= 0:
                break
        for stream in woken:
            if stream.handler is not None:
                stream.handler.on_writable(stream)

    # --- H2Core hooks -------------------------------------------------------------------------

    def h2_request(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        self.on_request(stream.id, headers, end_stream)

    def h2_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        handler = stream.handler
        if handler is not None:
            handler.on_headers(stream, headers, end_stream)
        if end_stream:
            self._maybe_forget(stream)

    def h2_trailers(self, stream: H2Stream, headers: Headers) -> None:
        handler = stream.handler
        if handler is not None:
            handler.on_trailers(stream, headers)
        self._maybe_forget(stream)

    def h2_data(self, stream: H2Stream, data: DataPiece, end_stream: bool) -> None:
        handler = stream.handler
        if handler is None:
            if data:
                self.acknowledge(stream, len(data))
        else:
            handler.on_data(stream, data, end_stream)
        if end_stream:
            self._maybe_forget(stream)

    def h2_stream_reset(self, stream: H2Stream, code: int) -> None:
        self._forget(stream)
        stream._pending.clear()
        stream._pending_bytes = 0
        if stream.handler is not None:
            stream.handler.on_reset(stream, code)

    def h2_window_opened(self, stream: H2Stream | None) -> None:
        if stream is None:
            self._block_all_pending()
        elif stream._pending or (stream._end_queued and not stream.local_ended):
            self._blocked[stream.id] = stream

    def h2_settings_changed(self) -> None:
        self._block_all_pending()

    def _block_all_pending(self) -> None:
        blocked = self._blocked
        for stream in self.streams.values():
            if stream._pending or (stream._end_queued and not stream.local_ended):
                blocked[stream.id] = stream

    def h2_goaway(self, last_stream_id: int, code: int, debug: bytes) -> None:
        self.on_goaway(last_stream_id, code)
        # Streams we opened beyond what the peer will process never ran: retryable refusals.
        for stream in list(self.streams.values()):
            if stream.id > last_stream_id and (stream.id & 1) == (1 if self.client_side else 0):
                stream.closed = True
                self.h2_stream_reset(stream, ErrorCode.REFUSED_STREAM)
        if code != ErrorCode.NO_ERROR:
            self.close()

    def h2_ping_ack(self, data: bytes) -> None:
        self.on_ping_ack(data)


def _coalesce(
    out: list[bytes | bytearray | memoryview],
) -> list[bytes | bytearray | memoryview]:
    """Runs of small pieces joined (fewer TLS records and syscalls), at most _COALESCE_BELOW
    x 4 per joined piece (bounded, reusable allocations); large payloads left as they are."""
    merged: list[bytes | bytearray | memoryview] = []
    small: list[bytes | bytearray | memoryview] = []
    run = 0
    for piece in out:
        n = len(piece)
        if n < _COALESCE_BELOW:
            small.append(piece)
            run += n
            if run >= _COALESCE_BELOW * 4:
                merged.append(b"".join(small))
                small, run = [], 0
            continue
        if small:
            merged.append(small[0] if len(small) == 1 else b"".join(small))
            small, run = [], 0
        merged.append(piece)
    if small:
        merged.append(small[0] if len(small) == 1 else b"".join(small))
    return merged
