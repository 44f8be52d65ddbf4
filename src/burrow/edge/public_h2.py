"""HTTP/2 eyeballs (ALPN h2 on the HTTPS listener): each eyeball stream is bridged to one tunnel
stream.

The eyeball connection is an `H2Endpoint` on the server side. A request passes the same gate as
HTTP/1.1 (limits, WAF, routing; `edge.gate`) and gets the same tunnel headers
(`exchange.tunnel_request_headers`). Flow control is carried across the bridge in both
directions: credit for eyeball DATA is returned only when the tunnel stream accepted the bytes
without exceeding its buffer, and credit for tunnel DATA only when the eyeball stream did.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from burrow.edge import pages
from burrow.edge.exchange import record_request, tunnel_request_headers
from burrow.edge.gate import TOO_LARGE, Refusal
from burrow.errors import RemoteProtocolError
from burrow.net.deadline import Deadline
from burrow.net.h2conn import DataPiece, ErrorCode, H2Endpoint, H2Stream, Headers, Setting
from burrow.wire import http1
from burrow.wire.tunnel_h2 import is_internal_header, parse_response

if TYPE_CHECKING:
    from burrow.edge.public import PublicContext
    from burrow.edge.tunnel_conn import EdgeTunnelConnection

log = logging.getLogger("burrow.edge.public_h2")

# Connection-specific fields are forbidden in HTTP/2 (RFC 9113 8.2.2).
_H2_FORBIDDEN = http1.HOP_BY_HOP | {b"content-length-range"}
_CANCEL = ErrorCode.CANCEL
_VISITOR = b'{"scheme":"https"}'
# Streams an eyeball may have reset (by RST_STREAM, or by a stream error we answered) in a burst,
# and how fast that allowance refills. Opening and cancelling streams at once ("rapid reset",
# CVE-2023-44487) would otherwise let one connection start unbounded tunnel work: concurrency
# limits do not help because every reset frees its slot.
RESET_BURST = 200
RESET_REFILL_PER_S = 20.0


def _response_headers(status: int, headers: Headers) -> Headers:
    """Origin response headers for an h2 eyeball: lower-case, no connection-specific fields."""
    named = http1.connection_tokens(headers)
    out: Headers = [(b":status", str(status).encode())]
    for name, value in headers:
        lname = name.lower()
        if lname in _H2_FORBIDDEN or lname in named or is_internal_header(lname):
            continue
        out.append((lname, value))
    return out


class H2Exchange:
    """One eyeball stream <-> one tunnel stream. StreamHandler of both (told apart by identity)."""

    __slots__ = (
        "_counted",
        "_eyeball_withheld",
        "_status",
        "_t0",
        "_ttfb",
        "_tunnel_withheld",
        "body_left",
        "conn",
        "extra_response",
        "eyeball",
        "host",
        "owner",
        "ray",
        "response_started",
        "tunnel",
    )

    def __init__(
        self,
        owner: H2EyeballConnection,
        conn: EdgeTunnelConnection,
        host: str,
        ray: str,
        body_limit: int,
    ) -> None:
        self.owner = owner
        self.conn = conn
        self.host = host
        self.ray = ray
        self.body_left = body_limit if body_limit else -1
        self.response_started = False
        self.eyeball: H2Stream | None = None
        self.tunnel: H2Stream | None = None
        self.extra_response: Headers = []  # set by the listener (Access's Set-Cookie)
        self._counted = True
        self._t0 = time.monotonic()
        self._status = 0
        self._ttfb: float | None = None
        self._eyeball_withheld = 0  # eyeball DATA bytes whose credit waits for the tunnel
        self._tunnel_withheld = 0  # tunnel DATA bytes whose credit waits for the eyeball
        conn.in_flight += 1

    def _finish(self) -> None:
        if self._counted:
            self._counted = False
            self.conn.stream_finished()
            self.owner.stream_done(self)
            record_request(
                self.owner.ctx.stats, self.conn, self.host, self._status, self._ttfb, self._t0
            )

    # --- StreamHandler -------------------------------------------------------------------

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        if stream is not self.tunnel:
            return
        eyeball = self.eyeball
        try:
            status, origin_headers, _source = parse_response(headers)
        except RemoteProtocolError as exc:
            log.warning("bad response headers from connector: %s", exc)
            stream.reset()
            self._fail(502, str(exc))
            return
        if status < 200:
            return  # informational: not relayed
        self.response_started = True
        self._status = status
        self._ttfb = time.monotonic() - self._t0
        if eyeball is None or eyeball.closed:
            stream.reset()
            self._finish()
            return
        out = _response_headers(status, origin_headers)
        if self.extra_response:
            out.extend(self.extra_response)
        eyeball.send_headers(out, end_stream=end_stream)
        if end_stream:
            if eyeball.remote_ended:
                self.owner._forget(eyeball)
            self._finish()

    def on_data(self, stream: H2Stream, data: DataPiece, end_stream: bool) -> None:
        n = len(data)
        if stream is self.tunnel:
            eyeball = self.eyeball
            if eyeball is None or eyeball.closed:
                stream.consumed(n)
                return
            if n:
                if eyeball.write(data, owned=True) and not self._tunnel_withheld:
                    stream.consumed(n)
                else:
                    self._tunnel_withheld += n
            if end_stream:
                eyeball.end()
                self._finish()
            return
        # eyeball -> tunnel
        tunnel = self.tunnel
        if tunnel is None or tunnel.closed:
            stream.consumed(n)
            return
        if self.body_left >= 0:
            self.body_left -= n
            if self.body_left < 0:
                stream.consumed(n)
                tunnel.reset()
                self._refuse_body()
                return
        if n:
            if tunnel.write(data, owned=True) and not self._eyeball_withheld:
                stream.consumed(n)
            else:
                self._eyeball_withheld += n
        if end_stream:
            tunnel.end()

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None:
        if stream is self.tunnel:
            if self.eyeball is not None:
                trailers = [
                    (n.lower(), v)
                    for n, v in headers
                    if n[:1] != b":" and not is_internal_header(n.lower())
                ]
                self.eyeball.end(trailers or None)
            self._finish()
        elif self.tunnel is not None:
            self.tunnel.end()

    def on_end(self, stream: H2Stream) -> None:
        if stream is self.tunnel:
            if self.eyeball is not None:
                self.eyeball.end()
            self._finish()
        elif self.tunnel is not None:
            self.tunnel.end()

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        if stream is self.tunnel:
            if not self.response_started:
                self._fail(502, None)
            elif self.eyeball is not None:
                self.eyeball.reset(ErrorCode.INTERNAL_ERROR)
            self._finish()
        else:  # the eyeball cancelled
            if self.tunnel is not None:
                self.tunnel.reset()
            self._finish()

    def on_writable(self, stream: H2Stream) -> None:
        if stream is self.tunnel:
            if self._eyeball_withheld and self.eyeball is not None:
                self.eyeball.consumed(self._eyeball_withheld)
                self._eyeball_withheld = 0
        elif self._tunnel_withheld and self.tunnel is not None:
            self.tunnel.consumed(self._tunnel_withheld)
            self._tunnel_withheld = 0

    # --- edge-generated answers -----------------------------------------------------------

    def _fail(self, status: int, detail: str | None) -> None:
        self._status = status
        error = pages.TUNNEL_LOST if status == 502 else pages.EdgeError(status, status, "Error", "")
        if self.eyeball is not None and not self.eyeball.closed:
            self.owner.answer(self.eyeball, Refusal(error, detail=detail), self.host, self.ray)
        self._finish()

    def _refuse_body(self) -> None:
        self._status = 413
        if self.response_started:
            if self.eyeball is not None:
                self.eyeball.reset(ErrorCode.CANCEL)
        elif self.eyeball is not None:
            self.owner.answer(self.eyeball, Refusal(TOO_LARGE), self.host, self.ray)
        self._finish()


class H2EyeballConnection(H2Endpoint):
    """One eyeball HTTP/2 connection over TLS."""

    def __init__(self, ctx: PublicContext) -> None:
        super().__init__(client_side=False)
        self.ctx = ctx
        self.ip = "0.0.0.0"
        self.ip_b = b"0.0.0.0"
        self.active: set[H2Exchange] = set()
        self._counted = False
        self._deadline = Deadline(self._idle)  # the header timeout, then the idle timeout
        self._reset_budget = float(RESET_BURST)
        self._reset_at = time.monotonic()

    # --- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else "0.0.0.0"
        if ip.startswith("::ffff:"):
            ip = ip[7:]
        self.ip, self.ip_b = ip, ip.encode()
        super().connection_made(transport)
        if not self.ctx.gate.connection_opened(ip):
            log.debug("too many connections from %s", ip)
            self.goaway(ErrorCode.ENHANCE_YOUR_CALM)
            self.close()
            return
        self._counted = True
        self._deadline.arm(self.ctx.gate.settings.header_timeout)

    def h2_ready(self) -> None:
        settings = self.ctx.gate.settings
        self.update_local_settings(
            {
                Setting.MAX_CONCURRENT_STREAMS: settings.max_h2_streams,
                Setting.MAX_HEADER_LIST_SIZE: self.ctx.max_header_bytes,
            }
        )
        self.schedule_flush()

    def h2_stream_reset(self, stream: H2Stream, code: int) -> None:
        super().h2_stream_reset(stream, code)
        now = time.monotonic()
        budget = self._reset_budget + (now - self._reset_at) * RESET_REFILL_PER_S
        self._reset_budget = min(float(RESET_BURST), budget) - 1
        self._reset_at = now
        if self._reset_budget < 0 and not self.closed:
            log.warning("eyeball %s resets streams too fast; closing the connection", self.ip)
            self.goaway(ErrorCode.ENHANCE_YOUR_CALM)
            self.close()

    def h2_closed(self, exc: Exception | None) -> None:
        self._deadline.close()
        if self._counted:
            self._counted = False
            self.ctx.gate.connection_closed(self.ip)

    def _idle(self) -> None:
        if not self.active and not self.closed:
            self.goaway()
            self.close()

    def stream_done(self, exchange: H2Exchange) -> None:
        self.active.discard(exchange)
        if not self.active and not self.closed:
            self._deadline.arm(self.ctx.gate.settings.idle_timeout)

    # --- requests -----------------------------------------------------------------------

    def on_request(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        ctx = self.ctx
        gate = ctx.gate
        stream = self.adopt_stream(stream_id, None)
        if len(self.active) >= gate.settings.max_h2_streams:
            stream.reset(ErrorCode.REFUSED_STREAM)
            return
        method = path = authority = b""
        host_b: bytes | None = None
        regular: Headers = []
        cookies: list[bytes] = []
        size = 0
        content_length: int | None = None
        for name, value in headers:
            size += len(name) + len(value) + 32
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue
            if name == b"host":
                host_b = value
            elif name == b"cookie":
                cookies.append(value)
                continue
            elif name == b"content-length":
                content_length = int(value) if value.isdigit() else None
            regular.append((name, value))
        if cookies:  # RFC 9113 8.2.3: one field towards HTTP/1.1 origins
            regular.append((b"cookie", b"; ".join(cookies)))
        ray = ctx.next_ray()
        if size > ctx.max_header_bytes:
            self.answer(stream, Refusal(_error(431, "Request header fields too large")), "", ray)
            return
        if len(path) > ctx.max_target_bytes:
            self.answer(stream, Refusal(_error(414, "URI too long")), "", ray)
            return
        if method == b"CONNECT" or not path.startswith(b"/"):
            self.answer(stream, Refusal(_error(501 if method == b"CONNECT" else 400, "")), "", ray)
            return
        host = http1.normalize_host(authority or host_b or b"")
        if not host:
            self.answer(stream, Refusal(pages.BAD_REQUEST), "", ray)
            return
        refusal = gate.check_request(
            ip=self.ip,
            host=host,
            method=method,
            target=path,
            headers=regular,
            content_length=content_length,
            ssl=True,
            ray=ray,
        )
        if refusal is not None:
            self.answer(stream, refusal, host, ray)
            return
        if ctx.access is not None:
            path = ctx.access.h2(
                self, stream, method, path, host, authority or host_b, regular, end_stream
            )
            if path is None:
                return  # answered by Access (login redirect, 401/403, /cdn-cgi/access/*)
        tunnel_id = ctx.lookup(host)
        if tunnel_id is None:
            self.answer(stream, Refusal(pages.UNKNOWN_HOST), host, ray)
            return
        conn = gate.pick(ctx.registry, tunnel_id)
        if type(conn) is Refusal:
            self.answer(stream, conn, host, ray)
            return
        if conn is None:
            self.answer(stream, Refusal(pages.TUNNEL_DOWN), host, ray)
            return
        exchange = H2Exchange(
            self, cast("EdgeTunnelConnection", conn), host, ray, gate.body_limit(host)
        )
        if ctx.access is not None:
            exchange.extra_response = ctx.access.take_response_headers()
        self.active.add(exchange)
        self._deadline.cancel()
        stream.handler = exchange
        exchange.eyeball = stream
        tunnel_headers = tunnel_request_headers(
            method,
            path,
            host,
            regular,
            scheme_b=b"https",
            visitor_b=_VISITOR,
            ip_b=self.ip_b,
            ray=ray,
        )
        tunnel_conn = cast("EdgeTunnelConnection", conn)
        exchange.tunnel = tunnel_conn.open_stream(tunnel_headers, exchange, end_stream=end_stream)

    def answer(self, stream: H2Stream, refusal: Refusal, host: str, ray: str) -> None:
        """An edge-generated response on an eyeball stream."""
        if stream.closed:
            return
        body = pages.render(refusal.error, host, ray, refusal.detail)
        headers: Headers = [
            (b":status", str(refusal.error.status).encode()),
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cf-ray", ray.encode()),
            (b"server", b"burrow"),
        ]
        headers += [(n.lower(), v) for n, v in refusal.extra_headers()]
        stream.handler = None
        stream.send_headers(headers)
        stream.write(body)
        stream.end()
        if not stream.remote_ended:
            # RFC 9113 8.1: a complete early response, then ask the client to stop sending
            # the request body (NO_ERROR) -- after the response has been flushed.
            self._loop.call_soon(self._stop_request_body, stream)

    def _stop_request_body(self, stream: H2Stream) -> None:
        if not stream.closed and stream.local_ended and not stream.remote_ended:
            stream.reset(ErrorCode.NO_ERROR)


def _error(status: int, title: str) -> pages.EdgeError:
    return pages.EdgeError(status, status, title or "Bad request", title)


class AlpnDispatch(asyncio.Protocol):
    """The HTTPS listener's protocol: after the TLS handshake, hand the transport to the HTTP/2
    or the HTTP/1.1 eyeball protocol according to the ALPN the client chose."""

    def __init__(self, ctx: PublicContext) -> None:
        self.ctx = ctx

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from burrow.edge.public import EyeballProtocol

        sslobj = transport.get_extra_info("ssl_object")
        alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
        proto: asyncio.Protocol
        if alpn == "acme-tls/1":
            transport.close()  # a tls-alpn-01 validation: the handshake was all it needed
            return
        if alpn == "h2":
            proto = H2EyeballConnection(self.ctx)
        else:
            proto = EyeballProtocol(self.ctx, "https")
        transport.set_protocol(proto)
        proto.connection_made(transport)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - replaced before data
        raise AssertionError("AlpnDispatch received data")
