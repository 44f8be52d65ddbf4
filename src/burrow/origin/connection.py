"""Connections from the connector to an origin: HTTP/1.1 over asyncio.Protocol + httptools,
reused through a small keep-alive pool, and switchable to a raw byte relay after a 101.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from burrow.errors import OriginError, RemoteProtocolError
from burrow.net import recvbuf
from burrow.runtime import connection_closed
from burrow.wire import DataPiece, http1

log = logging.getLogger("burrow.origin")

WRITE_HIGH = 1 << 20
WRITE_LOW = 256 << 10


class OriginListener(Protocol):
    """Receives what the origin sends on behalf of one request."""

    def origin_event(self, event: Any) -> None:
        """An http1 ResponseHead, Data, EndOfMessage or Upgraded event."""

    def origin_raw(self, data: DataPiece) -> None:
        """Bytes after an upgrade."""

    def origin_failed(self, exc: Exception) -> None: ...

    def origin_writable(self) -> None:
        """The origin socket's write buffer drained below its low-water mark."""


@dataclass(frozen=True, slots=True)
class OriginAddress:
    host: str
    port: int
    ssl: ssl.SSLContext | None = None
    server_hostname: str | None = None
    unix_path: str | None = None
    connect_timeout: float = 30.0
    tcp_keepalive: float = 30.0
    tls_timeout: float = 10.0
    happy_eyeballs: bool = True  # Go's dialer default; `noHappyEyeballs` turns it off


class OriginConnection(recvbuf.PooledReads):
    def __init__(self, pool: OriginPool | None) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = http1.ResponseParser()
        self.listener: OriginListener | None = None
        self.raw = False
        self.closed = False
        self.write_paused = False
        self.reusable = False
        self.idle_since = 0.0
        self.used = 0
        self._reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)

    def start(self, listener: OriginListener, method: bytes, head: bytes) -> None:
        self.listener = listener
        self.used += 1
        self.reusable = False
        self.parser.expect(method)
        self.write(head)

    def write(self, data: bytes | memoryview) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def data_received(self, data: DataPiece) -> None:
        listener = self.listener
        if listener is None:
            # Bytes while idle: the origin broke the protocol; do not reuse.
            self.abort()
            return
        if self.raw:
            listener.origin_raw(data)
            return
        try:
            events = self.parser.feed(data)
        except RemoteProtocolError as exc:
            self.abort()
            listener.origin_failed(exc)
            return
        for event in events:
            if type(event) is http1.Upgraded:
                self.raw = True
            listener.origin_event(event)
            if self.listener is None:
                break

    def eof_received(self) -> bool | None:
        listener = self.listener
        if listener is not None and not self.raw:
            try:
                events = self.parser.feed_eof()
            except RemoteProtocolError as exc:
                self.listener = None
                listener.origin_failed(exc)
                return None
            for event in events:
                listener.origin_event(event)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        connection_closed()  # a TLS origin's connection is a cycle holding its buffers
        if self.pool is not None:
            self.pool.discard(self)
        listener = self.listener
        self.listener = None
        if listener is not None:
            listener.origin_failed(
                OriginError("origin closed the connection" + (f": {exc}" if exc else ""))
            )

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.listener is not None:
            self.listener.origin_writable()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def finished(self, reusable: bool) -> None:
        """The listener is done with this connection: back to the pool or closed."""
        self.listener = None
        self.resume_reading()
        if reusable and self.pool is not None and not self.closed and not self.raw:
            self.pool.release(self)
        else:
            self.close()

    def close(self) -> None:
        self.listener = None
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        self.listener = None
        if self.transport is not None and not self.closed:
            self.transport.abort()


P = TypeVar("P", bound=asyncio.BaseProtocol)


async def dial(address: OriginAddress, factory: Callable[[], P]) -> tuple[asyncio.Transport, P]:
    """Connect to an origin (TCP or unix socket, optionally TLS) within its connect timeout;
    failures become OriginError with a message that says what to change."""
    loop = asyncio.get_running_loop()
    server_hostname = address.server_hostname if address.ssl else None
    try:
        if address.unix_path is not None:
            coro = loop.create_unix_connection(
                factory, address.unix_path, ssl=address.ssl, server_hostname=server_hostname
            )
        else:
            coro = loop.create_connection(
                factory,
                address.host,
                address.port,
                ssl=address.ssl,
                server_hostname=server_hostname,
                **dial_options(loop, address),
            )
        transport, protocol = await asyncio.wait_for(coro, dial_timeout(address))
    except TimeoutError:
        raise OriginError(
            f"timed out connecting to origin {_describe(address)} after {dial_timeout(address)}s"
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise OriginError(
            f"TLS verification of origin {_describe(address)} failed: {exc.verify_message} "
            f"(server name {address.server_hostname!r}; trust its CA with caPool or "
            "--origin-ca-pool, or set noTLSVerify)"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise OriginError(f"cannot connect to origin {_describe(address)}: {exc}") from None
    return transport, protocol


async def open_connection(address: OriginAddress, pool: OriginPool | None) -> OriginConnection:
    transport, protocol = await dial(address, lambda: OriginConnection(pool))
    tune_socket(transport, address)
    return protocol


def dial_timeout(address: OriginAddress) -> float:
    """connectTimeout for the TCP connect, plus tlsTimeout for the handshake (as Go's dialer and
    http.Transport apply them one after the other)."""
    return address.connect_timeout + (address.tls_timeout if address.ssl is not None else 0.0)


_HAPPY_EYEBALLS_DELAY = 0.3  # Go's net.Dialer default FallbackDelay


def dial_options(loop: asyncio.AbstractEventLoop, address: OriginAddress) -> dict[str, Any]:
    """create_connection keywords for tlsTimeout and happy eyeballs, where the loop has them
    (uvloop has no happy_eyeballs_delay; it then dials addresses in order)."""
    opts: dict[str, Any] = {}
    if address.ssl is not None:
        opts["ssl_handshake_timeout"] = max(address.tls_timeout, 0.001)
    if address.happy_eyeballs and _supports_happy_eyeballs(loop):
        opts["happy_eyeballs_delay"] = _HAPPY_EYEBALLS_DELAY
    return opts


def _supports_happy_eyeballs(loop: asyncio.AbstractEventLoop) -> bool:
    return isinstance(loop, asyncio.BaseEventLoop)


def tune_socket(transport: asyncio.BaseTransport, address: OriginAddress) -> None:
    """TCP_NODELAY, and TCP keep-alive probes every `tcpKeepAlive` (Go sets idle and interval
    to the same value)."""
    sock = transport.get_extra_info("socket")
    if sock is None or address.unix_path is not None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if address.tcp_keepalive > 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            secs = max(1, int(address.tcp_keepalive))
            if hasattr(socket, "TCP_KEEPIDLE"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, secs)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, secs)
    except OSError:
        pass


def _describe(address: OriginAddress) -> str:
    if address.unix_path is not None:
        return f"unix:{address.unix_path}"
    return f"{address.host}:{address.port}"


class OriginPool:
    """Idle keep-alive connections to one origin (bounded count, idle timeout)."""

    def __init__(self, address: OriginAddress, *, max_idle: int = 100, idle_timeout: float = 90.0):
        self.address = address
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: collections.deque[OriginConnection] = collections.deque()

    def take_idle(self) -> OriginConnection | None:
        """A live idle connection, without awaiting: the common case of a warm pool costs no
        task and no extra event-loop tick per request."""
        if not self._idle:
            return None
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_timeout:
                return conn
            conn.close()
        return None

    async def acquire(self) -> tuple[OriginConnection, bool]:
        """A connection and whether it was reused (a reused one may have gone stale)."""
        conn = self.take_idle()
        if conn is not None:
            return conn, True
        return await open_connection(self.address, self), False

    def release(self, conn: OriginConnection) -> None:
        if self.max_idle <= 0:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        while len(self._idle) > self.max_idle:
            self._idle.popleft().close()

    def discard(self, conn: OriginConnection) -> None:
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
