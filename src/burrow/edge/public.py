"""The public HTTP/1.1 listener: one `EyeballProtocol` per eyeball connection.

Requests are handled one at a time per connection (pipelined requests wait, reading paused);
each is routed by its normalised host to a tunnel and carried by an `Exchange`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from burrow.edge import pages
from burrow.edge.exchange import Exchange
from burrow.edge.gate import TOO_LARGE, TOO_MANY_CONNECTIONS, Gate, LimitSettings, Refusal
from burrow.edge.registry import Registry
from burrow.errors import HTTPRequestError
from burrow.net.deadline import Deadline
from burrow.observability.metrics import EdgeStats
from burrow.runtime import connection_closed
from burrow.wire import http1

log = logging.getLogger("burrow.edge.public")

WRITE_HIGH = 1 << 20
WRITE_LOW = 256 << 10


@dataclass(slots=True)
class PublicContext:
    """What eyeball connections need from the edge; replaced parts are read per request."""

    lookup: Callable[[str], uuid.UUID | None]
    registry: Registry
    location: str
    max_header_bytes: int = 32 * 1024
    max_target_bytes: int = 16 * 1024
    stats: EdgeStats | None = None  # request accounting (burrow.observability.metrics)
    gate: Gate = field(default_factory=lambda: Gate(LimitSettings()))
    https_redirect_port: int | None = None  # set: plain HTTP requests are redirected there
    acme_challenges: dict[str, str] | None = None  # http-01 token -> key authorization
    access: Any = None  # burrow.edge.access_gate.AccessGate when Access is enabled
    _ray_base: int = field(default_factory=lambda: int.from_bytes(os.urandom(8), "big"))
    _ray_counter: Any = field(default_factory=itertools.count)

    def next_ray(self) -> str:
        n = (self._ray_base + next(self._ray_counter)) & 0xFFFFFFFFFFFFFFFF
        return f"{n:016x}-{self.location}"


class EyeballProtocol(asyncio.Protocol):
    def __init__(self, ctx: PublicContext, scheme: str = "http") -> None:
        self.ctx = ctx
        self.scheme_b = scheme.encode()
        self.visitor_b = b'{"scheme":"' + self.scheme_b + b'"}'
        self.transport: asyncio.Transport | None = None
        self.client_ip_b = b""
        self.parser = http1.RequestParser(
            max_header_bytes=ctx.max_header_bytes, max_target_bytes=ctx.max_target_bytes
        )
        self.current: Exchange | None = None
        self.backlog: collections.deque[Any] = collections.deque()
        self.raw: Exchange | None = None
        self.write_paused = False
        self.closing = False
        self._reading_paused = False
        self._deadline = Deadline(self._timeout)  # the header or keep-alive idle timeout
        self._conn_counted = False
        self._body_left = -1  # request body bytes still allowed (-1: no limit)
        self._head_timed = True  # the header deadline runs for the head being received

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else "0.0.0.0"
        if ip.startswith("::ffff:"):
            ip = ip[7:]
        self.client_ip_b = ip.encode()
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        gate = self.ctx.gate
        if not gate.connection_opened(ip):
            body = pages.render(TOO_MANY_CONNECTIONS, "", "-")
            self._write_simple(429, body, "-", keep_alive=False, extra=[(b"Retry-After", b"5")])
            self._close_soon()
            return
        self._conn_counted = True
        self._deadline.arm(gate.settings.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.raw is not None:
            self.raw.request_data(data)
            return
        if self.closing:
            return
        if not self._head_timed and self.current is None:
            # First bytes of the next keep-alive request: its head gets the header deadline
            # (armed once, so trickling bytes cannot extend it).
            self._head_timed = True
            self._deadline.arm(self.ctx.gate.settings.header_timeout)
        try:
            events = self.parser.feed(data)
        except HTTPRequestError as exc:
            self._reject(exc.status, str(exc))
            return
        for event in events:
            self._event(event)

    def eof_received(self) -> bool | None:
        if self.raw is not None:
            return None
        try:
            events = self.parser.feed_eof()
        except HTTPRequestError:
            events = []
        for event in events:
            self._event(event)
        # Keep the transport open only while a response is still being written.
        return self.current is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        connection_closed()  # its objects may be cycles holding TLS buffers: collect soon
        self._deadline.close()  # release this protocol now, not when the timer is due
        if self._conn_counted:
            self._conn_counted = False
            self.ctx.gate.connection_closed(self.client_ip_b.decode())
        exchange = self.current or self.raw
        self.current = self.raw = None
        if exchange is not None:
            exchange.eyeball_closed()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        exchange = self.current or self.raw
        if exchange is not None:
            exchange.eyeball_drained()

    # --- request flow ------------------------------------------------------------------------

    def _event(self, event: Any) -> None:
        current = self.current
        if current is not None and not current.request_done:
            if type(event) is http1.Data:
                if self._body_left >= 0:
                    self._body_left -= len(event.data)
                    if self._body_left < 0:
                        self._body_too_large(current)
                        return
                current.request_data(event.data)
            elif type(event) is http1.EndOfMessage:
                current.request_end()
            elif type(event) is http1.Upgraded:
                # From here on the eyeball speaks the upgraded protocol: raw bytes.
                self.raw = current
                if event.rest:
                    current.request_data(event.rest)
            return
        if current is not None or self.backlog:
            self.backlog.append(event)
            self.pause_reading()
            return
        if type(event) is http1.RequestHead:
            self._start(event)
        # Data/EndOfMessage/Upgraded with no request in progress belong to a request that was
        # already answered (an edge error page): nothing to forward.

    def _start(self, head: http1.RequestHead) -> None:
        self._deadline.cancel()
        self._head_timed = False
        ctx = self.ctx
        target = head.target
        host_b = head.host
        path = target
        if not target.startswith(b"/"):
            if target.startswith((b"http://", b"https://")):
                # absolute-form: its authority must agree with Host (RFC 9112 3.2.2 lets it
                # win; we refuse a mismatch so routing and policy see one host).
                rest = target.split(b"://", 1)[1]
                authority, _, tail = rest.partition(b"/")
                path = b"/" + tail
                if host_b is not None and http1.normalize_host(host_b) != http1.normalize_host(
                    authority
                ):
                    self._reject(400, "absolute-form target does not match the Host header")
                    return
                host_b = authority
            elif target == b"*" and head.method == b"OPTIONS":
                path = b"*"
            else:
                self._reject(400, "invalid request target")
                return
        host = http1.normalize_host(host_b) if host_b is not None else None
        if not host:
            self._reject(400, "missing or invalid Host header")
            return
        ray = ctx.next_ray()
        if ctx.acme_challenges is not None and path.startswith(b"/.well-known/acme-challenge/"):
            answer = ctx.acme_challenges.get(path[28:].decode("ascii", "replace"))
            if answer is not None:
                self._write_simple(
                    200, answer.encode(), ray, keep_alive=False, content_type=b"text/plain"
                )
                self._close_soon()
                return
        if ctx.https_redirect_port is not None and self.scheme_b == b"http":
            if not path.startswith(b"/.well-known/acme-challenge/"):
                self._redirect_https(head, host, path, ray)
                return
        gate = ctx.gate
        refusal = gate.check_request(
            ip=self.client_ip_b.decode(),
            host=host,
            method=head.method,
            target=path,
            headers=head.headers,
            content_length=head.content_length,
            ssl=self.scheme_b == b"https",
            ray=ray,
        )
        if refusal is not None:
            self._refuse(head, refusal, host, ray)
            return
        if (
            ctx.access is not None
            and (path := ctx.access.http1(self, head, host, path, ray)) is None
        ):
            return  # answered by Access (login redirect, 401/403, /cdn-cgi/access/*)
        tunnel_id = ctx.lookup(host)
        if tunnel_id is None:
            if ctx.stats is not None:
                ctx.stats.request(None, "", pages.UNKNOWN_HOST.status, None, 0.0)
            self._local_error(head, pages.UNKNOWN_HOST, host, ray)
            return
        conn = gate.pick(ctx.registry, tunnel_id)
        if type(conn) is Refusal:
            self._refuse(head, conn, host, ray)
            return
        if conn is None:
            if ctx.stats is not None:
                ctx.stats.request(tunnel_id, host, pages.TUNNEL_DOWN.status, None, 0.0)
            self._local_error(head, pages.TUNNEL_DOWN, host, ray)
            return
        limit = gate.body_limit(host) if head.chunked else 0
        self._body_left = limit if limit else -1
        if head.expect_continue and (head.content_length or head.chunked):
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.current = Exchange(self, head, host, path, conn, ray)  # type: ignore[arg-type]
        if ctx.access is not None:
            self.current.extra_response = ctx.access.take_response_headers()

    def _local_error(
        self,
        head: http1.RequestHead,
        error: pages.EdgeError,
        host: str,
        ray: str,
        detail: str | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Answer from the edge; the request body (if any) is discarded by closing afterwards."""
        body = pages.render(error, host, ray, detail)
        has_body = head.chunked or bool(head.content_length)
        keep = head.keep_alive and not has_body
        self._write_simple(
            error.status, body, ray, keep_alive=keep, head_only=head.method == b"HEAD", extra=extra
        )
        if not keep:
            self._close_soon()
        else:
            self._deadline.arm(self.ctx.gate.settings.idle_timeout)

    def _redirect_https(self, head: http1.RequestHead, host: str, path: bytes, ray: str) -> None:
        port = self.ctx.https_redirect_port
        authority = f"[{host}]" if ":" in host else host
        if port != 443:
            authority += f":{port}"
        location = b"https://" + authority.encode() + path
        status = 301 if head.method in (b"GET", b"HEAD") else 308
        has_body = head.chunked or bool(head.content_length)
        keep = head.keep_alive and not has_body
        headers = [
            (b"Location", location),
            (b"Content-Length", b"0"),
            (b"Cf-Ray", ray.encode()),
            (b"Server", b"burrow"),
        ]
        if not keep:
            headers.append((b"Connection", b"close"))
        self.write(http1.serialize_response_head(status, None, headers))
        if keep:
            self._deadline.arm(self.ctx.gate.settings.idle_timeout)
        else:
            self._close_soon()

    def _refuse(self, head: http1.RequestHead, refusal: Refusal, host: str, ray: str) -> None:
        self._local_error(
            head, refusal.error, host, ray, refusal.detail, refusal.extra_headers() or None
        )

    def _body_too_large(self, exchange: Exchange) -> None:
        """A chunked body ran past the hostname's limit: cancel the stream, answer 413."""
        started = exchange.response_started
        exchange.eyeball_closed()  # resets the tunnel stream, settles the accounting
        self.current = self.raw = None
        if started:
            self._close_soon()
            return
        body = pages.render(TOO_LARGE, exchange.host, exchange.ray)
        self._write_simple(413, body, exchange.ray, keep_alive=False)
        self._close_soon()

    def _write_simple(
        self,
        status: int,
        body: bytes,
        ray: str,
        *,
        keep_alive: bool,
        head_only: bool = False,
        extra: list[tuple[bytes, bytes]] | None = None,
        content_type: bytes = b"text/html; charset=utf-8",
    ) -> None:
        headers = [
            (b"Content-Type", content_type),
            (b"Content-Length", str(len(body)).encode()),
            (b"Cf-Ray", ray.encode()),
            (b"Server", b"burrow"),
        ]
        if extra:
            headers.extend(extra)
        if not keep_alive:
            headers.append((b"Connection", b"close"))
        self.write(
            http1.serialize_response_head(status, None, headers) + (b"" if head_only else body)
        )

    def _reject(self, status: int, message: str) -> None:
        """Malformed request: answer with `status` and close the connection."""
        if self.transport is None or self.closing:
            return
        log.info(
            "rejected eyeball request from %s: %d %s", self.client_ip_b.decode(), status, message
        )
        if self.current is None or not self.current.response_started:
            body = pages.render(
                pages.EdgeError(status, status, "Bad request", message), "", self.ctx.next_ray()
            )
            self._write_simple(status, body, "-", keep_alive=False)
        self._close_soon()

    def _close_soon(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # --- callbacks from the Exchange ------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def writelines(self, pieces: list[bytes | memoryview]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if len(pieces) == 1:
                self.transport.write(pieces[0])
            else:
                self.transport.writelines(pieces)

    def switch_to_raw(self, exchange: Exchange) -> None:
        """After a 101: every further eyeball byte belongs to the tunnel stream."""
        self.raw = exchange
        self.current = None
        self.resume_reading()

    def exchange_done(self, exchange: Exchange, *, close: bool) -> None:
        if exchange is self.raw:
            self.raw = self.current = None
            self._close_soon()
            return
        if exchange is not self.current:
            return
        self.current = None
        if close:
            self._close_soon()
            return
        self._deadline.arm(self.ctx.gate.settings.idle_timeout)
        while self.backlog and self.current is None and not self.closing:
            self._event(self.backlog.popleft())
        if self.current is None or self.current.request_done:
            self.resume_reading()

    def exchange_failed(self, exchange: Exchange, status: int, detail: str | None) -> None:
        """The tunnel failed before a response started: answer from the edge."""
        if exchange is not self.current and exchange is not self.raw:
            return
        error = pages.TUNNEL_LOST if status == 502 else pages.EdgeError(status, status, "Error", "")
        body = pages.render(error, exchange.host, exchange.ray, detail)
        self._write_simple(error.status, body, exchange.ray, keep_alive=False)
        self.current = self.raw = None
        self._close_soon()

    def abort_exchange(self, exchange: Exchange) -> None:
        self.current = self.raw = None
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closing:
            self._reading_paused = False
            self.transport.resume_reading()

    # --- timers -----------------------------------------------------------------------------

    def _timeout(self) -> None:
        if self.current is None and self.raw is None:
            # Slow or idle client: a request head never completed, or keep-alive idled out.
            self._close_soon()
