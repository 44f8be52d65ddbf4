"""Connector-side dispatch: each request stream is matched against the ingress rules and handed
to the origin service of the matching rule.

The ingress in use is an immutable value swapped atomically on reload; origin pools are keyed by
everything that makes two connections interchangeable, so a reload that keeps an origin keeps its
warm connections.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from typing import TYPE_CHECKING, Any

from burrow.connector.session import ConnectorSession
from burrow.errors import LocalProtocolError
from burrow.ingress.config import OriginRequest
from burrow.ingress.rules import (
    BastionService,
    HelloWorldService,
    HTTPService,
    Ingress,
    Rule,
    StatusService,
    StreamService,
    UnixService,
)
from burrow.net.h2conn import H2Stream, Headers
from burrow.observability.metrics import ProxyStats
from burrow.origin.connection import OriginAddress, OriginPool
from burrow.origin.h2origin import H2OriginPool, H2Relay, h2_alpn_context
from burrow.origin.relay import HTTPRelay, RelayOptions
from burrow.origin.stream import start_stream_bridge
from burrow.origin.tls import origin_context
from burrow.wire.tunnel_h2 import (
    StreamType,
    connector_error_headers,
    origin_response_headers,
)

if TYPE_CHECKING:
    from burrow.connector.access_check import AccessChecker

log = logging.getLogger("burrow.connector.proxy")


class Dispatcher:
    def __init__(
        self,
        ingress: Ingress,
        *,
        connector_id: bytes,
        hello_address: tuple[str, int] | None = None,
        origin_ca_pool: str | None = None,
    ) -> None:
        self.ingress = ingress
        self.connector_id = connector_id
        self.hello_address = hello_address
        self.origin_ca_pool = origin_ca_pool
        self.stats = ProxyStats()
        self._pools: dict[Any, OriginPool | H2OriginPool] = {}
        self._ssl: dict[Any, ssl.SSLContext] = {}
        self._access: AccessChecker | None = None  # originRequest.access, made on first use
        self._per_rule: dict[int, tuple[Rule, RelayOptions, dict[bool, Any]]] = {}

    @property
    def access(self) -> AccessChecker:
        """The Access JWT checker, imported and built only when a rule requires Access: its
        dependencies (aiohttp client, joserfc) are ~17 MB of a connector's idle RSS."""
        if self._access is None:
            from burrow.connector.access_check import AccessChecker

            self._access = AccessChecker()
        return self._access

    def replace_ingress(self, ingress: Ingress) -> None:
        self.ingress = ingress
        self._per_rule.clear()

    def __call__(
        self,
        session: ConnectorSession,
        stream: H2Stream,
        headers: Headers,
        end_stream: bool,
        kind: StreamType,
    ) -> None:
        host = b""
        path = b"/"
        for name, value in headers:
            if name == b":authority":
                host = value
            elif name == b":path":
                path = value
            elif name[:1] != b":":
                break
        self.stats.total_requests += 1
        host_s = host.decode("latin-1")
        path_s = path.decode("latin-1").split("?", 1)[0]
        _, rule = self.ingress.match(host_s, path_s)
        access = rule.origin_request.access
        if access.required and not self.access.gate(
            access,
            stream,
            headers,
            self._forbidden,
            lambda: self._dispatch(stream, headers, end_stream, kind, host_s, path_s, rule),
        ):
            return
        self._dispatch(stream, headers, end_stream, kind, host_s, path_s, rule)

    def _dispatch(
        self,
        stream: H2Stream,
        headers: Headers,
        end_stream: bool,
        kind: StreamType,
        host_s: str,
        path_s: str,
        rule: Rule,
    ) -> None:
        service = rule.service
        if kind is StreamType.TCP or (
            kind is StreamType.WEBSOCKET and isinstance(service, (StreamService, BastionService))
        ):
            # TCP over WebSocket (access tcp/ssh/rdp, bastion) or a raw TCP stream.
            tcp = kind is StreamType.TCP
            start_stream_bridge(
                stream,
                headers,
                dest=host_s if tcp else getattr(service, "dest", None),
                websocket=not tcp,
                describe=f"tcp://{host_s}" if tcp else str(service),
                require_ip=tcp,
                connect_timeout=rule.origin_request.connect_timeout,
                tcp_keepalive=rule.origin_request.tcp_keep_alive,
            )
            return
        if kind is StreamType.HTTP or kind is StreamType.WEBSOCKET:
            if isinstance(service, StatusService):
                self._status(stream, service.code)
                return
            websocket = kind is StreamType.WEBSOCKET
            # Per rule (an immutable value, replaced on reload): the relay options and, when
            # the pool does not depend on the request's host (no TLS server name), the pool.
            cached = self._per_rule.get(id(rule))
            if cached is None or cached[0] is not rule:
                cached = (rule, self._relay_options(rule), {})
                if len(self._per_rule) > 4096:
                    self._per_rule.clear()
                self._per_rule[id(rule)] = cached
            pools = cached[2]
            pool = pools.get(websocket)
            if pool is None:
                pool = self._pool_for(rule, host_s, h2=not websocket)
                if pool is not None and not _needs_server_name(service):
                    pools[websocket] = pool
            if pool is None:
                log.error(
                    "no origin for %s%s: service %s is not supported yet", host_s, path_s, service
                )
                self._error(stream, 502, f"service {service} is not supported for HTTP requests")
                return
            options = cached[1]
            try:
                if isinstance(pool, H2OriginPool):
                    H2Relay(stream, headers, end_stream, pool, options)
                    return
                HTTPRelay(stream, headers, end_stream, pool, options, websocket=websocket)
            except LocalProtocolError as exc:
                # A request the tunnel carried but HTTP/1.1 cannot express (CR/LF in a field,
                # a space in the method or target): refuse the stream, keep the connection.
                self._error(stream, 400, f"invalid request: {exc}")
            return
        self._error(stream, 502, f"stream type {kind.value} is not supported by this connector")

    def _relay_options(self, rule: Rule) -> RelayOptions:
        return RelayOptions(
            http_host_header=rule.origin_request.http_host_header,
            disable_chunked_encoding=rule.origin_request.disable_chunked_encoding,
            connector_id=self.connector_id,
            stats=self.stats,
        )

    # --- simple answers ---------------------------------------------------------------------

    def _status(self, stream: H2Stream, code: int) -> None:
        self.stats.response(code)
        stream.send_headers(
            origin_response_headers(code, [(b"Content-Length", b"0")]), end_stream=True
        )

    def _forbidden(self, stream: H2Stream) -> None:
        """originRequest.access refused the request (no or bad Cf-Access-Jwt-Assertion)."""
        self.stats.response(403)
        body = b"Forbidden: a valid Cf-Access-Jwt-Assertion is required\n"
        stream.send_headers(
            origin_response_headers(
                403,
                [(b"Content-Type", b"text/plain"), (b"Content-Length", str(len(body)).encode())],
            )
        )
        stream.write(body)
        stream.end()

    def _error(self, stream: H2Stream, status: int, message: str) -> None:
        self.stats.error()
        stream.send_headers(connector_error_headers(status))
        stream.write(f"burrow connector: {message}\n".encode())
        stream.end()

    # --- origin pools -------------------------------------------------------------------------

    def _pool_for(
        self, rule: Rule, request_host: str, *, h2: bool = True
    ) -> OriginPool | H2OriginPool | None:
        service = rule.service
        opts = rule.origin_request
        if isinstance(service, HTTPService):
            secure = service.scheme in ("https", "wss")
            host, port, unix = service.host, service.port, None
        elif isinstance(service, UnixService):
            secure = service.tls
            host, port, unix = "localhost", 0, service.path
        elif isinstance(service, HelloWorldService) and self.hello_address is not None:
            secure = False
            (host, port), unix = self.hello_address, None
        else:
            return None
        server_name = _server_name(service, opts, request_host) if secure else None
        use_h2 = h2 and secure and opts.http2_origin
        key = (host, port, unix, secure, server_name, use_h2, opts)
        pool = self._pools.get(key)
        if pool is None:
            address = OriginAddress(
                host=host,
                port=port,
                ssl=self._ssl_context(opts) if secure else None,
                server_hostname=server_name,
                unix_path=unix,
                connect_timeout=opts.connect_timeout,
                tcp_keepalive=opts.tcp_keep_alive,
                tls_timeout=opts.tls_timeout,
                happy_eyeballs=not opts.no_happy_eyeballs,
            )
            # Go's Transport: MaxIdleConnsPerHost 0 means its default of 2, not "no reuse".
            max_idle = opts.keep_alive_connections if opts.keep_alive_connections > 0 else 2
            http1_pool = OriginPool(
                address, max_idle=max_idle, idle_timeout=opts.keep_alive_timeout
            )
            pool = http1_pool
            if use_h2:
                h2_address = dataclasses.replace(address, ssl=self._ssl_context(opts, h2=True))
                pool = H2OriginPool(h2_address, fallback=http1_pool)
            self._pools[key] = pool
        return pool

    def _ssl_context(self, opts: OriginRequest, *, h2: bool = False) -> ssl.SSLContext:
        key = (opts.ca_pool, opts.no_tls_verify, self.origin_ca_pool, h2)
        ctx = self._ssl.get(key)
        if ctx is None:
            ctx = origin_context(
                extra_ca=[p for p in (opts.ca_pool, self.origin_ca_pool) if p],
                verify=not opts.no_tls_verify,
            )
            if h2:
                ctx = h2_alpn_context(ctx)
            self._ssl[key] = ctx
        return ctx

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _needs_server_name(service: object) -> bool:
    """Whether `_pool_for` keys the pool on the request's host (TLS toward the origin)."""
    if isinstance(service, HTTPService):
        return service.scheme in ("https", "wss")
    if isinstance(service, UnixService):
        return service.tls
    return False


def _server_name(service: object, opts: OriginRequest, request_host: str) -> str:
    """The TLS server name toward an origin, as cloudflared's transport picks it:
    `matchSNItoHost` uses the request's Host (after `httpHostHeader`), else `originServerName`,
    else the service URL's host; for `unix+tls:` the URL host is the request's host."""
    host = request_host.rsplit(":", 1)[0] if request_host.count(":") == 1 else request_host
    host = host.strip("[]")
    if opts.match_sni_to_host and isinstance(service, HTTPService):
        return opts.http_host_header or host
    if opts.origin_server_name:
        return opts.origin_server_name
    if isinstance(service, HTTPService):
        return service.host
    return host
