"""Connector-side dispatch: each request stream is matched against the ingress rules and handed
to the origin service of the matching rule.

The ingress in use is an immutable value swapped atomically on reload; origin pools are keyed by
everything that makes two connections interchangeable, so a reload that keeps an origin keeps its
warm connections.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from burrow.connector.session import ConnectorSession
from burrow.ingress.config import OriginRequest
from burrow.ingress.rules import (
    HelloWorldService,
    HTTPService,
    Ingress,
    Rule,
    StatusService,
    UnixService,
)
from burrow.origin.tls import origin_context
from burrow.net.h2conn import H2Stream, Headers
from burrow.origin.connection import OriginAddress, OriginPool
from burrow.origin.relay import HTTPRelay, RelayOptions
from burrow.wire.tunnel_h2 import (
    StreamType,
    connector_error_headers,
    origin_response_headers,
)

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
        self._pools: dict[Any, OriginPool] = {}
        self._ssl: dict[Any, ssl.SSLContext] = {}

    def replace_ingress(self, ingress: Ingress) -> None:
        self.ingress = ingress

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
        host_s = host.decode("latin-1")
        path_s = path.decode("latin-1").split("?", 1)[0]
        _, rule = self.ingress.match(host_s, path_s)
        service = rule.service
        if kind is StreamType.HTTP or kind is StreamType.WEBSOCKET:
            if isinstance(service, StatusService):
                self._status(stream, service.code)
                return
            pool = self._pool_for(rule)
            if pool is None:
                log.error("no origin for %s%s: service %s is not supported yet", host_s, path_s, service)
                self._error(stream, 502, f"service {service} is not supported for HTTP requests")
                return
            options = RelayOptions(
                http_host_header=rule.origin_request.http_host_header,
                disable_chunked_encoding=rule.origin_request.disable_chunked_encoding,
                connector_id=self.connector_id,
            )
            HTTPRelay(
                stream, headers, end_stream, pool, options, websocket=kind is StreamType.WEBSOCKET
            )
            return
        self._error(stream, 502, f"stream type {kind.value} is not supported by this connector")

    # --- simple answers ---------------------------------------------------------------------

    def _status(self, stream: H2Stream, code: int) -> None:
        stream.send_headers(origin_response_headers(code, [(b"Content-Length", b"0")]), end_stream=True)

    def _error(self, stream: H2Stream, status: int, message: str) -> None:
        stream.send_headers(connector_error_headers(status))
        stream.write(f"burrow connector: {message}\n".encode())
        stream.end()

    # --- origin pools -------------------------------------------------------------------------

    def _pool_for(self, rule: Rule) -> OriginPool | None:
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
        key = (host, port, unix, secure, opts)
        pool = self._pools.get(key)
        if pool is None:
            ctx = self._ssl_context(opts) if secure else None
            server_name = opts.origin_server_name or (host if secure else None)
            address = OriginAddress(
                host=host,
                port=port,
                ssl=ctx,
                server_hostname=server_name,
                unix_path=unix,
                connect_timeout=opts.connect_timeout,
                tcp_keepalive=opts.tcp_keep_alive,
            )
            pool = OriginPool(
                address, max_idle=opts.keep_alive_connections, idle_timeout=opts.keep_alive_timeout
            )
            self._pools[key] = pool
        return pool

    def _ssl_context(self, opts: OriginRequest) -> ssl.SSLContext:
        key = (opts.ca_pool, opts.no_tls_verify, self.origin_ca_pool)
        ctx = self._ssl.get(key)
        if ctx is None:
            ctx = origin_context(
                extra_ca=[p for p in (opts.ca_pool, self.origin_ca_pool) if p],
                verify=not opts.no_tls_verify,
            )
            self._ssl[key] = ctx
        return ctx

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
