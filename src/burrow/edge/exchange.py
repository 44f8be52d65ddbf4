"""One eyeball request carried through a tunnel: the bridge between an eyeball HTTP/1.1
connection and one h2 stream on a tunnel connection.

Backpressure both ways: when the tunnel stream's window is exhausted the eyeball socket stops
being read; when the eyeball socket's write buffer is full, flow-control credit for the response
is withheld, so the connector stops sending.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from burrow.errors import LocalProtocolError, RemoteProtocolError
from burrow.net.h2conn import DataPiece, H2Stream, Headers
from burrow.wire import http1
from burrow.wire.tunnel_h2 import UPGRADE_HEADER, is_internal_header, parse_response

if TYPE_CHECKING:
    from burrow.edge.public import EyeballProtocol
    from burrow.edge.tunnel_conn import EdgeTunnelConnection

log = logging.getLogger("burrow.edge.proxy")

# Request headers never forwarded into the tunnel: hop-by-hop ones, the eyeball's attempts to
# set tunnel-internal or edge-provided headers, and Host (it travels as :authority).
_DROP_REQUEST = http1.HOP_BY_HOP | {
    b"host",
    b"expect",
    b"cf-connecting-ip",
    b"cf-ray",
    b"cf-visitor",
    b"x-forwarded-proto",
    b"cf-warp-tag-id",
}
_NO_BODY_STATUS = frozenset({204, 304})


def tunnel_request_headers(
    method: bytes,
    path: bytes,
    host: str,
    headers: Headers,
    *,
    scheme_b: bytes,
    visitor_b: bytes,
    ip_b: bytes,
    ray: str,
    websocket: bool = False,
) -> Headers:
    """The h2 request headers of a tunnel stream for one eyeball request (HTTP/1.1 or h2):
    the eyeball's headers minus hop-by-hop/internal ones, plus the edge-provided ones.
    `headers` have lower-case names."""
    out: Headers = [
        (b":method", method),
        (b":scheme", scheme_b),
        (b":authority", host.encode()),
        (b":path", path),
    ]
    drop = _DROP_REQUEST
    named = http1.connection_tokens(headers) if headers else set()
    xff: bytes | None = None
    for name, value in headers:
        if name in drop or name in named or is_internal_header(name):
            if name == b"te" and value.strip().lower() == b"trailers":
                out.append((name, b"trailers"))
            continue
        if name == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
            continue
        out.append((name, value))
    out.append((b"x-forwarded-for", ip_b if xff is None else xff + b", " + ip_b))
    out.append((b"cf-connecting-ip", ip_b))
    out.append((b"x-forwarded-proto", scheme_b))
    out.append((b"cf-ray", ray.encode()))
    out.append((b"cf-visitor", visitor_b))
    if websocket:
        out.append((UPGRADE_HEADER, b"websocket"))
    return out


def record_request(
    stats: Any, conn: EdgeTunnelConnection, host: str, status: int, ttfb: float | None, t0: float
) -> None:
    """Count one finished proxied request in the edge's metrics (shared by HTTP/1.1 and h2)."""
    if stats is not None:
        # 499 (nginx's "client closed request") when the eyeball left before a response.
        stats.request(conn.tunnel_id, host, status or 499, ttfb, time.monotonic() - t0)


class Exchange:
    """StreamHandler for one proxied request."""

    __slots__ = (
        "_chunked",
        "_close_after",
        "_counted",
        "_held",
        "_status",
        "_t0",
        "_ttfb",
        "_unacked",
        "conn",
        "extra_response",
        "eyeball",
        "head",
        "host",
        "ray",
        "request_done",
        "response_done",
        "response_started",
        "stream",
        "websocket",
    )

    def __init__(
        self,
        eyeball: EyeballProtocol,
        head: http1.RequestHead,
        host: str,
        path: bytes,
        conn: EdgeTunnelConnection,
        ray: str,
    ) -> None:
        self.eyeball = eyeball
        self.head = head
        self.host = host
        self.conn = conn
        self.ray = ray
        self.websocket = head.upgrade == b"websocket"
        self.extra_response: Headers = []  # set by the listener (Access's Set-Cookie)
        self.request_done = False
        self.response_started = False
        self.response_done = False
        self._chunked = False
        # Response bytes of the current tunnel read (head, body pieces), written together.
        self._held: list[DataPiece] = []
        self._close_after = not head.keep_alive
        self._unacked = 0
        self._counted = True
        self._t0 = time.monotonic()
        self._status = 0
        self._ttfb: float | None = None
        has_body = self.websocket or head.chunked or bool(head.content_length)
        conn.in_flight += 1
        self.stream: H2Stream | None = conn.open_stream(
            self._tunnel_headers(path), self, end_stream=not has_body
        )
        if not has_body:
            self.request_done = True

    def _tunnel_headers(self, path: bytes) -> Headers:
        eyeball = self.eyeball
        return tunnel_request_headers(
            self.head.method,
            path,
            self.host,
            self.head.headers,
            scheme_b=eyeball.scheme_b,
            visitor_b=eyeball.visitor_b,
            ip_b=eyeball.client_ip_b,
            ray=self.ray,
            websocket=self.websocket,
        )

    # --- eyeball -> tunnel ----------------------------------------------------------------------

    def request_data(self, data: DataPiece) -> None:
        stream = self.stream
        if stream is None or stream.closed:
            return
        if not stream.write(data):
            self.eyeball.pause_reading()

    def request_end(self) -> None:
        self.request_done = True
        if self.stream is not None and not self.websocket:
            self.stream.end()

    def eyeball_closed(self) -> None:
        """The eyeball went away: cancel the stream if it is still open."""
        stream = self.stream
        if stream is not None and not stream.closed and not self.response_done:
            if self.websocket and self.response_started:
                stream.end()  # the eyeball closed the flow: end it as a whole
            else:
                stream.reset()
        self._finish_accounting()

    # --- tunnel -> eyeball (StreamHandler) ------------------------------------------------------

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        try:
            status, origin_headers, _source = parse_response(headers)
        except RemoteProtocolError as exc:
            log.warning("bad response headers from connector: %s", exc)
            stream.reset()
            self.response_done = True
            self._status = 502
            self._finish_accounting()  # reset() reports nothing back: count the stream out
            self.eyeball.exchange_failed(self, 502, str(exc))
            return
        if 100 <= status < 200 and status != 101:
            return  # informational: nothing to relay for HTTP/1.1 eyeballs here
        self._status = status
        self._ttfb = time.monotonic() - self._t0
        content_length: bytes | None = None
        for name, value in headers:
            if name == b"content-length":
                content_length = value
        out: Headers = []
        named = http1.connection_tokens(origin_headers)
        # A 101 travels as 200; only the origin's Upgrade/Sec-WebSocket-Accept headers tell an
        # accepted upgrade from an origin that answered the upgrade request with a plain 200.
        upgrade = (
            self.websocket
            and status in (101, 200)
            and any(
                n.lower() == b"sec-websocket-accept"
                or (n.lower() == b"upgrade" and v.lower() == b"websocket")
                for n, v in origin_headers
            )
        )
        for name, value in origin_headers:
            lname = name.lower()
            if lname == b"content-length":
                if content_length is None:
                    content_length = value
                continue
            if upgrade and lname in (b"connection", b"upgrade"):
                continue
            if lname in http1.HOP_BY_HOP or lname in named or is_internal_header(lname):
                continue
            out.append((name, value))
        if self.extra_response:
            out.extend(self.extra_response)
        self.response_started = True
        if upgrade:
            out.append((b"Connection", b"Upgrade"))
            out.append((b"Upgrade", b"websocket"))
            self.eyeball.write(http1.serialize_response_head(101, None, out))
            self.eyeball.switch_to_raw(self)
            if end_stream:
                self._response_end()
            return
        no_body = self.head.method == b"HEAD" or status in _NO_BODY_STATUS
        if content_length is not None:
            out.append((b"Content-Length", content_length))
        elif no_body:
            pass
        elif end_stream:
            out.append((b"Content-Length", b"0"))
        elif self.head.version == b"1.1":
            out.append((b"Transfer-Encoding", b"chunked"))
            self._chunked = True
        else:
            self._close_after = True
        if self.websocket:
            # The origin refused the upgrade: an ordinary response, then close.
            self._close_after = True
        if self._close_after:
            out.append((b"Connection", b"close"))
        elif self.head.version == b"1.0":
            out.append((b"Connection", b"keep-alive"))
        try:
            response_head = http1.serialize_response_head(status, None, out)
        except LocalProtocolError as exc:  # CR/LF smuggled into a field by the connector
            log.warning("bad response headers from connector: %s", exc)
            self.response_started = False
            stream.reset()
            self.response_done = True
            self._status = 502
            self._finish_accounting()
            self.eyeball.exchange_failed(self, 502, "invalid response headers from the origin")
            return
        if end_stream:
            self.eyeball.write(response_head)
            self._response_end()
        else:
            self._write(response_head)

    def _write(self, data: DataPiece) -> None:
        """Hold response bytes until the tunnel read that carried them is handled: the head
        and the body pieces of one read (a large frame arrives in several) go to the eyeball
        with one syscall."""
        held = self._held
        held.append(data)
        if len(held) == 1:
            self.conn.defer(self)  # outside a tunnel read this writes at once

    def flush_deferred(self) -> None:
        held = self._held
        if held:
            self._held = []
            self.eyeball.writelines(held)

    def on_data(self, stream: H2Stream, data: DataPiece, end_stream: bool) -> None:
        if data:
            if self._chunked:
                self._write(http1.encode_chunk(data))
            else:
                self._write(data)
            if self.eyeball.write_paused:
                self._unacked += len(data)
            else:
                stream.consumed(len(data))
        if end_stream:
            self._response_end()

    def eyeball_drained(self) -> None:
        """The eyeball's write buffer fell below its low-water mark: return withheld credit."""
        if self._unacked and self.stream is not None:
            self.stream.consumed(self._unacked)
            self._unacked = 0

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None:
        # A chunked HTTP/1.1 response carries the origin's trailers (gRPC status and the like)
        # in its last chunk; otherwise there is nowhere to put them.
        self._response_end(
            [(n, v) for n, v in headers if n[:1] != b":" and not is_internal_header(n.lower())]
        )

    def on_end(self, stream: H2Stream) -> None:
        self._response_end()

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        if self.response_done:
            return
        self.response_done = True
        self._finish_accounting()
        if not self.response_started:
            self._status = 502
            self.eyeball.exchange_failed(self, 502, None)
        else:
            # Mid-body failure: the only honest signal to an HTTP/1.1 client is to cut it off.
            self.eyeball.abort_exchange(self)

    def on_writable(self, stream: H2Stream) -> None:
        self.eyeball.resume_reading()

    def _response_end(self, trailers: Headers | None = None) -> None:
        if self.response_done:
            return
        self.response_done = True
        if self._chunked:
            if trailers:
                lines = b"".join(n + b": " + v + b"\r\n" for n, v in trailers)
                self._write(b"0\r\n" + lines + b"\r\n")
            else:
                self._write(http1.LAST_CHUNK)
        self.flush_deferred()
        if self.websocket and self.stream is not None and not self.stream.local_ended:
            # No half-close in the tunnel: the origin ended, so the whole flow ends.
            self.stream.end()
        self._finish_accounting()
        self.eyeball.exchange_done(self, close=self._close_after or not self.request_done)

    def _finish_accounting(self) -> None:
        """Count the stream out of the connection's in-flight total, exactly once."""
        if self._counted:
            self._counted = False
            self.conn.stream_finished()
            record_request(
                self.eyeball.ctx.stats, self.conn, self.host, self._status, self._ttfb, self._t0
            )
