"""Connector side of one proxied request: an h2 stream from the edge relayed to an HTTP origin
(plain requests, and WebSocket upgrades that turn into a raw byte relay).

Flow control: request-body credit is returned to the edge only once the bytes were handed to a
non-congested origin socket; origin reads pause while the h2 stream's outbound buffer is full.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from burrow.errors import OriginError
from burrow.net.h2conn import DataPiece, H2Stream, Headers
from burrow.observability.metrics import ProxyStats
from burrow.origin.connection import OriginConnection, OriginPool
from burrow.wire import http1
from burrow.wire.tunnel_h2 import (
    WARP_TAG,
    connector_error_headers,
    is_internal_header,
    origin_response_headers,
)

log = logging.getLogger("burrow.connector.proxy")

_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
_SKIP_REQUEST = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"host"})


@dataclass(frozen=True, slots=True)
class RelayOptions:
    http_host_header: str = ""
    disable_chunked_encoding: bool = False
    connector_id: bytes = b""
    stats: ProxyStats | None = None  # counted here: status codes, origin failures


class HTTPRelay:
    """StreamHandler (edge side) and OriginListener (origin side) for one request."""

    def __init__(
        self,
        stream: H2Stream,
        headers: Headers,
        end_stream: bool,
        pool: OriginPool,
        options: RelayOptions,
        *,
        websocket: bool = False,
    ) -> None:
        self.stream = stream
        self.pool = pool
        self.websocket = websocket
        self.stats = options.stats
        self.origin: OriginConnection | None = None
        self._pending: list[DataPiece] = []
        self._pending_len = 0
        self._unacked = 0
        self._request_ended = end_stream
        self._chunked = False
        self._unframed = False
        self._response_started = False
        self._done = False
        self._upgraded = False
        self._reused = False
        self.method, self.head = self._build_head(headers, end_stream, options)
        stream.handler = self
        origin = pool.take_idle()
        if origin is not None:
            self._reused = True
            self._attach(origin)
        else:
            asyncio.get_running_loop().create_task(self._connect())

    def _build_head(
        self, headers: Headers, end_stream: bool, options: RelayOptions
    ) -> tuple[bytes, bytes]:
        method = b"GET"
        path = b"/"
        authority = b""
        out: Headers = [(b"Host", b"")]  # Host first; its value is set below
        append = out.append
        has_length = False
        skip = _SKIP_REQUEST
        for header in headers:
            name = header[0]
            first = name[:1]
            if first == b":":
                if name == b":method":
                    method = header[1]
                elif name == b":path":
                    path = header[1]
                elif name == b":authority":
                    authority = header[1]
                continue
            if name in skip or (first == b"c" and is_internal_header(name)):
                continue
            if name == b"content-length":
                has_length = True
            append(header)
        host = authority
        if options.http_host_header:
            host = options.http_host_header.encode()
            append((b"x-forwarded-host", authority))
        out[0] = (b"Host", host)
        if options.connector_id:
            out.append((WARP_TAG, options.connector_id))
        if self.websocket:
            out = [(n, v) for n, v in out if n not in (b"sec-websocket-version",)]
            out.append((b"Connection", b"Upgrade"))
            out.append((b"Upgrade", b"websocket"))
            out.append((b"Sec-WebSocket-Version", b"13"))
            out = [(n, v) for n, v in out if n != b"content-length"]
        elif not has_length and not end_stream and options.disable_chunked_encoding:
            # A body with no length and no chunked framing can only end with the connection
            # (WSGI servers that cannot read chunked bodies): never reuse this connection.
            out.append((b"Connection", b"close"))
            self._unframed = True
        else:
            out.append((b"Connection", b"keep-alive"))
            if not has_length:
                if not end_stream:
                    out.append((b"Transfer-Encoding", b"chunked"))
                    self._chunked = True
                elif method in _BODY_METHODS:
                    out.append((b"Content-Length", b"0"))
        return method, http1.serialize_request_head(method, path, out)

    # --- origin connection ------------------------------------------------------------------------

    async def _connect(self) -> None:
        try:
            self.origin, self._reused = await self.pool.acquire()
        except OriginError as exc:
            self.origin_failed(exc)
            return
        if self._done:
            self.origin.finished(reusable=not self.origin.closed)
            self.origin = None
            return
        self._attach(self.origin)

    def _attach(self, origin: OriginConnection) -> None:
        """Send the request head (and any body received meanwhile) on `origin`."""
        self.origin = origin
        origin.start(self, self.method, self.head)
        if self._pending:
            pending, self._pending = self._pending, []
            self._pending_len = 0
            for chunk in pending:
                self._to_origin(chunk)
        if self._request_ended and not self.websocket:
            self._end_request()

    def _to_origin(self, data: DataPiece) -> None:
        origin = self.origin
        assert origin is not None
        if self._chunked:
            origin.write(http1.encode_chunk(data))
        else:
            origin.write(data)
        if origin.write_paused:
            self._unacked += len(data)
        else:
            self.stream.consumed(len(data))

    def _end_request(self) -> None:
        if self._chunked and self.origin is not None:
            self.origin.write(http1.LAST_CHUNK)

    # --- edge -> origin (StreamHandler) ---------------------------------------------------------

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        pass

    def on_data(self, stream: H2Stream, data: DataPiece, end_stream: bool) -> None:
        if data:
            if self.origin is None:
                self._pending.append(data)
                self._pending_len += len(data)
            else:
                self._to_origin(data)
        if end_stream:
            self.on_end(stream)

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None:
        self.on_end(stream)

    def on_end(self, stream: H2Stream) -> None:
        self._request_ended = True
        if self.websocket:
            # No half-close: the edge ended the flow, so it ends as a whole.
            if self._upgraded:
                self._finish(reusable=False)
                stream.end()
            return
        if self.origin is not None:
            self._end_request()

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        self._finish(reusable=False)

    def on_writable(self, stream: H2Stream) -> None:
        if self.origin is not None:
            self.origin.resume_reading()

    # --- origin -> edge (OriginListener) --------------------------------------------------------

    def origin_event(self, event: Any) -> None:
        t = type(event)
        stream = self.stream
        if t is http1.Data:
            # owned: a view here is of a receive buffer that is not reused while it lives
            if not stream.write(event.data, owned=True) and self.origin is not None:
                self.origin.pause_reading()
        elif t is http1.ResponseHead:
            self._response_started = True
            if self.stats is not None:
                self.stats.response(event.status)
            if self.websocket and event.status == 101:
                self._upgraded = True
            stream.send_headers(
                origin_response_headers(event.status, event.headers, websocket=self._upgraded)
            )
        elif t is http1.EndOfMessage:
            if event.trailers:
                stream.end(trailers=[(n.lower(), v) for n, v in event.trailers])
            else:
                stream.end()
            self._finish(reusable=self._request_ended and not self.websocket and not self._unframed)
        elif t is http1.Upgraded:
            if event.rest:
                self.origin_raw(event.rest)

    def origin_raw(self, data: DataPiece) -> None:
        if not self.stream.write(data, owned=True) and self.origin is not None:
            self.origin.pause_reading()

    def origin_writable(self) -> None:
        if self._unacked:
            self.stream.consumed(self._unacked)
            self._unacked = 0

    def origin_failed(self, exc: Exception) -> None:
        if self._done:
            return
        if self._upgraded:
            self._done = True
            self.origin = None
            self.stream.end()
            return
        self._done = True
        self.origin = None
        if self._response_started:
            log.warning("origin failed mid-response: %s", exc)
            self.stream.reset()
            return
        log.error("failed to serve request: %s", exc)
        if self.stats is not None:
            self.stats.error()
        self.stream.send_headers(connector_error_headers(502))
        self.stream.write(f"burrow connector: {exc}\n".encode())
        self.stream.end()

    def _finish(self, *, reusable: bool) -> None:
        if self._done:
            return
        self._done = True
        origin, self.origin = self.origin, None
        if origin is not None:
            origin.finished(reusable=reusable)
