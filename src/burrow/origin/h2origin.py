"""`http2Origin`: HTTP/2 from the connector to an HTTPS origin (gRPC), with trailers relayed as
real h2 trailers on the tunnel stream.

As in cloudflared (Go's `http2.ConfigureTransport`), HTTP/2 is negotiated with ALPN over TLS; an
origin that does not select `h2` is spoken to over HTTP/1.1 instead (the pool remembers that).
One multiplexed connection per origin is shared by all requests; a new one is dialled when it
dies or the origin sends GOAWAY.

Backpressure: credit on the edge stream is returned only when the origin stream accepted the
bytes without pausing, and credit on the origin stream only when the edge stream did.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from burrow.errors import OriginError
from burrow.net.h2conn import DataPiece, H2Endpoint, H2Stream, Headers, StreamLimitError
from burrow.origin.connection import (
    OriginAddress,
    OriginPool,
    dial,
    tune_socket,
)
from burrow.origin.relay import HTTPRelay, RelayOptions
from burrow.wire import http1
from burrow.wire.tunnel_h2 import (
    WARP_TAG,
    connector_error_headers,
    is_internal_header,
    origin_response_headers,
)

log = logging.getLogger("burrow.connector.proxy")

# Connection-specific headers are forbidden in HTTP/2 (RFC 9113 8.2.2); `te` only as "trailers".
_SKIP = http1.HOP_BY_HOP | {b"host", b"content-length"} - {b"te"}


class H2OriginConnection(H2Endpoint):
    """The h2 client side of one connection to an origin."""

    def __init__(self) -> None:
        super().__init__(client_side=True)
        self.lost = asyncio.Event()
        self.goaway_received = False

    @property
    def usable(self) -> bool:
        return not self.closed and not self.goaway_received

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        self.goaway_received = True

    def h2_closed(self, exc: Exception | None) -> None:
        self.lost.set()


class H2OriginPool:
    """A shared h2 connection to one origin, or an HTTP/1.1 pool once ALPN said no."""

    def __init__(self, address: OriginAddress, fallback: OriginPool) -> None:
        self.address = address
        self.fallback = fallback
        self.h2_unsupported = False
        self._conn: H2OriginConnection | None = None
        self._dialing: asyncio.Future[H2OriginConnection | None] | None = None

    async def connection(self) -> H2OriginConnection | None:
        """The shared h2 connection; None when the origin does not speak h2 (use `fallback`)."""
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        if self.h2_unsupported:
            return None
        if self._dialing is None:
            self._dialing = asyncio.ensure_future(self._dial())
        dialing = self._dialing
        try:
            return await asyncio.shield(dialing)
        finally:
            if self._dialing is dialing and dialing.done():
                self._dialing = None

    async def _dial(self) -> H2OriginConnection | None:
        address = self.address
        transport, conn = await dial(address, H2OriginConnection)
        ssl_obj = transport.get_extra_info("ssl_object")
        if ssl_obj is None or ssl_obj.selected_alpn_protocol() != "h2":
            log.info(
                "origin %s did not negotiate HTTP/2 (http2Origin): using HTTP/1.1",
                _describe(address),
            )
            self.h2_unsupported = True
            transport.close()
            return None
        tune_socket(transport, address)
        self._conn = conn
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.fallback.close()


def _describe(address: OriginAddress) -> str:
    return f"unix:{address.unix_path}" if address.unix_path else f"{address.host}:{address.port}"


class _OriginSide:
    """StreamHandler of the origin stream: forwards to the relay."""

    __slots__ = ("relay",)

    def __init__(self, relay: H2Relay) -> None:
        self.relay = relay

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        self.relay.origin_headers(headers, end_stream)

    def on_data(self, stream: H2Stream, data: DataPiece, end_stream: bool) -> None:
        self.relay.origin_data(data, end_stream)

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None:
        self.relay.origin_end(headers)

    def on_end(self, stream: H2Stream) -> None:
        self.relay.origin_end(None)

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        self.relay.origin_reset(error_code)

    def on_writable(self, stream: H2Stream) -> None:
        self.relay.origin_writable()


class H2Relay:
    """StreamHandler of the edge stream for one request to an h2 origin."""

    def __init__(
        self,
        stream: H2Stream,
        headers: Headers,
        end_stream: bool,
        pool: H2OriginPool,
        options: RelayOptions,
    ) -> None:
        self.stream = stream
        self.headers = headers
        self.first_end_stream = end_stream
        self.pool = pool
        self.options = options
        self.origin: H2Stream | None = None
        self._pending: list[DataPiece] = []
        self._request_ended = end_stream
        self._edge_unacked = 0  # request bytes not yet credited to the edge
        self._origin_unacked = 0  # response bytes not yet credited to the origin
        self._response_started = False
        self._done = False
        stream.handler = self
        asyncio.get_running_loop().create_task(self._start())

    def _origin_headers(self) -> Headers:
        method, path, authority = b"GET", b"/", b""
        rest: Headers = []
        for name, value in self.headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue
            lname = name.lower()
            if lname == b"te":
                if value.strip().lower() == b"trailers":
                    rest.append((b"te", b"trailers"))
                continue
            if lname in _SKIP or is_internal_header(lname):
                continue
            rest.append((lname, value))
        host = authority
        if self.options.http_host_header:
            host = self.options.http_host_header.encode()
            rest.append((b"x-forwarded-host", authority))
        if self.options.connector_id:
            rest.append((WARP_TAG, self.options.connector_id))
        return [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", host),
            (b":path", path),
            *rest,
        ]

    async def _start(self) -> None:
        try:
            conn = await self.pool.connection()
        except OriginError as exc:
            self._fail(exc)
            return
        if self._done:
            return
        if conn is None:
            self._fall_back()
            return
        try:
            self.origin = conn.open_stream(
                self._origin_headers(), _OriginSide(self), end_stream=self.first_end_stream
            )
        except StreamLimitError as exc:  # the origin's MAX_CONCURRENT_STREAMS: a 502, not a crash
            self._fail(OriginError(f"cannot open a stream to the origin: {exc}"))
            return
        pending, self._pending = self._pending, []
        for chunk in pending:
            self._to_origin(chunk)
        if self._request_ended and not self.first_end_stream:
            self.origin.end()

    def _fall_back(self) -> None:
        """ALPN did not select h2: replay what we have into an HTTP/1.1 relay."""
        relay = HTTPRelay(
            self.stream, self.headers, self.first_end_stream, self.pool.fallback, self.options
        )
        for chunk in self._pending:
            relay.on_data(self.stream, chunk, False)
        self._pending = []
        if self._request_ended and not self.first_end_stream:
            relay.on_end(self.stream)

    def _to_origin(self, data: DataPiece) -> None:
        assert self.origin is not None
        if self.origin.write(data, owned=True):
            self.stream.consumed(len(data))
        else:
            self._edge_unacked += len(data)

    # --- edge -> origin -------------------------------------------------------------------

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        pass

    def on_data(self, stream: H2Stream, data: DataPiece, end_stream: bool) -> None:
        if data:
            if self.origin is None:
                self._pending.append(data)
            else:
                self._to_origin(data)
        if end_stream:
            self.on_end(stream)

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None:
        self._request_ended = True
        if self.origin is not None:
            self.origin.end(trailers=[(n.lower(), v) for n, v in headers])

    def on_end(self, stream: H2Stream) -> None:
        self._request_ended = True
        if self.origin is not None:
            self.origin.end()

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        self._done = True
        if self.origin is not None:
            self.origin.reset()

    def on_writable(self, stream: H2Stream) -> None:
        if self._origin_unacked and self.origin is not None:
            self.origin.consumed(self._origin_unacked)
            self._origin_unacked = 0

    # --- origin -> edge ---------------------------------------------------------------------

    def origin_headers(self, headers: Headers, end_stream: bool) -> None:
        status = 502
        user: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            if name == b":status":
                status = int(value)
            elif name[:1] != b":":
                user.append((name, value))
        if 100 <= status < 200:
            return  # informational responses are not relayed
        self._response_started = True
        if self.options.stats is not None:
            self.options.stats.response(status)
        self.stream.send_headers(origin_response_headers(status, user), end_stream=end_stream)
        if end_stream:
            self._done = True

    def origin_data(self, data: DataPiece, end_stream: bool) -> None:
        if data:
            if self.stream.write(data, owned=True):
                if self.origin is not None:
                    self.origin.consumed(len(data))
            else:
                self._origin_unacked += len(data)
        if end_stream:
            self.origin_end(None)

    def origin_end(self, trailers: Headers | None) -> None:
        if self._done:
            return
        self._done = True
        if trailers:
            self.stream.end(trailers=[(n, v) for n, v in trailers if not is_internal_header(n)])
        else:
            self.stream.end()

    def origin_writable(self) -> None:
        if self._edge_unacked:
            self.stream.consumed(self._edge_unacked)
            self._edge_unacked = 0

    def origin_reset(self, error_code: int) -> None:
        if self._done:
            return
        if self._response_started:
            self._done = True
            self.stream.reset()
            return
        self._fail(OriginError(f"origin reset the stream (h2 error {error_code})"))

    def _fail(self, exc: Exception) -> None:
        if self._done:
            return
        self._done = True
        if self.options.stats is not None:
            self.options.stats.error()
        log.error("failed to serve request: %s", exc)
        self.stream.send_headers(connector_error_headers(502))
        self.stream.write(f"burrow connector: {exc}\n".encode())
        self.stream.end()


def h2_alpn_context(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """`ctx` offering h2 then http/1.1 (mutates and returns the given context)."""
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx
