"""Listener helpers: address parsing, and TLS servers that can refuse a peer before the handshake."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

from burrow.wire.tls_hello import parse_client_hello

log = logging.getLogger(__name__)


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """`host:port`, `[v6]:port`, `:port` (all addresses) or `host` with a default port."""
    value = value.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep:
            raise ValueError(f"invalid address {value!r}: missing ']'")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_s = value.partition(":")
    elif value.count(":") > 1:
        host, port_s = value, ""  # bare IPv6 address
    else:
        host, port_s = value, ""
    if not port_s:
        if default_port is None:
            raise ValueError(f"invalid address {value!r}: missing port")
        port = default_port
    else:
        try:
            port = int(port_s)
        except ValueError:
            raise ValueError(f"invalid address {value!r}: port must be a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"invalid address {value!r}: port out of range")
    return host or "0.0.0.0", port


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(sock.fileno(), ready)
    try:
        await fut
    finally:
        loop.remove_reader(sock.fileno())


async def peek_server_name(sock: socket.socket) -> str | None:
    """The SNI of the ClientHello waiting on `sock`, without consuming any byte of it."""
    loop = asyncio.get_running_loop()
    need = 5
    lowat = 1
    try:
        while True:
            try:
                data = sock.recv(max(need, 4096), socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                data = None
            if data is not None:
                if not data:
                    return None  # closed before saying anything
                done, name, need = parse_client_hello(data)
                if done:
                    return name
                if len(data) >= need:  # cannot happen: parse asked for more than it had
                    return None
                # Wake up only once `need` bytes are there (the peeked ones stay readable).
                lowat = need
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
            await _readable(loop, sock)
    finally:
        if lowat != 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


class GatedTLSServer:
    """A TLS listener that asks `admit(peer_ip)` before spending any handshake work.

    It accepts sockets itself and hands admitted ones to `connect_accepted_socket` with TLS;
    refused ones are closed at once. (`loop.start_tls` from a plain protocol would also work on
    asyncio, but uvloop's server-side start_tls resets the connection.)

    With `prepare`, the ClientHello's SNI is peeked at first (``MSG_PEEK``: the bytes stay for
    OpenSSL) and `prepare(server_name)` awaited before the handshake: OpenSSL's SNI callback is
    synchronous, so a certificate made on first use (the edge's development certificates,
    issued in a child process) must be ready before it runs. The whole wait counts against the
    handshake timeout.
    """

    def __init__(
        self,
        sock: socket.socket,
        ssl_context: ssl.SSLContext,
        admit: Callable[[str], bool],
        make_protocol: Callable[[str], asyncio.Protocol],
        handshake_timeout: float,
        prepare: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.sockets = [sock]
        self._prepare = prepare
        self._sock = sock
        self._ssl = ssl_context
        self._admit = admit
        self._make = make_protocol
        self._timeout = handshake_timeout
        self._task = asyncio.get_running_loop().create_task(self._accept_loop())
        self._pending: set[asyncio.Task[None]] = set()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self._sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            ip = str(peer[0]) if peer else "?"
            if not self._admit(ip):
                conn.close()
                continue
            conn.setblocking(False)
            task = loop.create_task(self._handshake(conn, ip))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _handshake(self, conn: socket.socket, ip: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            if self._prepare is not None:
                async with asyncio.timeout_at(deadline):
                    name = await peek_server_name(conn)
                    if name:
                        await self._prepare(name)
            await loop.connect_accepted_socket(
                lambda: self._make(ip),
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=max(0.1, deadline - loop.time()),
            )
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            log.debug("TLS handshake with %s failed: %s", ip, exc)
            conn.close()
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        self._task.cancel()
        for task in self._pending:
            task.cancel()
        self._sock.close()

    async def wait_closed(self) -> None:
        try:
            await self._task
        except asyncio.CancelledError:
            pass


async def serve_tls_gated(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    admit: Callable[[str], bool],
    make_protocol: Callable[[str], asyncio.Protocol],
    *,
    handshake_timeout: float = 10.0,
    prepare: Callable[[str], Awaitable[None]] | None = None,
) -> GatedTLSServer:
    """A TLS server whose `admit` check (and `prepare`) run before any handshake work."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind(addr)
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return GatedTLSServer(sock, ssl_context, admit, make_protocol, handshake_timeout, prepare)
