"""An HTTPS listener that reads the client's SNI before the TLS handshake starts.

The certificate for a name is chosen inside OpenSSL's SNI callback, which is synchronous: it
cannot wait for anything. A development certificate issued on the first handshake for a routed
name is made in a child process (`burrow.pki.worker`, so `cryptography` never loads into the
edge), which takes a few hundred milliseconds; blocking the event loop for that is not an
option. So this listener accepts sockets itself, peeks at the ClientHello (``MSG_PEEK``: the
bytes stay in the kernel for OpenSSL to read), lets `prepare(server_name)` make the certificate
ready asynchronously, and only then hands the socket to the event loop's TLS machinery
(`connect_accepted_socket`), whose SNI callback finds the certificate ready.

Accepting like this is what `burrow.net.listen.GatedTLSServer` does for the tunnel listener
(uvloop's server-side `start_tls` resets connections, so the socket is never wrapped after the
fact). The whole wait, peek included, counts against the handshake timeout.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

log = logging.getLogger("burrow.edge.https")

#: A ClientHello larger than this is left to OpenSSL without a peek (no SNI preparation).
MAX_PEEK = 65536
_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0x0000


def parse_client_hello(data: bytes) -> tuple[bool, str | None, int]:
    """Look for the SNI host name in the TLS records at the start of `data`.

    Returns ``(done, name, need)``: ``done`` with the name (None when there is none, or the
    bytes are not a TLS ClientHello: the handshake then fails or proceeds as it would have),
    or not done yet and ``need`` total bytes to look at next time.
    """
    hello = bytearray()
    pos = 0
    while True:
        if len(data) < pos + 5:
            return False, None, pos + 5
        if data[pos] != _HANDSHAKE:
            return True, None, 0
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        end = pos + 5 + length
        if end > MAX_PEEK:
            return True, None, 0
        if len(data) < end:
            return False, None, end
        hello += data[pos + 5 : end]
        pos = end
        if len(hello) >= 4:
            if hello[0] != _CLIENT_HELLO:
                return True, None, 0
            body_len = int.from_bytes(hello[1:4], "big")
            if len(hello) >= 4 + body_len:
                return True, _server_name(bytes(hello[4 : 4 + body_len])), 0


def _server_name(body: bytes) -> str | None:
    """The host_name of the server_name extension (RFC 6066) of a ClientHello body."""
    try:
        pos = 2 + 32  # legacy_version, random
        pos += 1 + body[pos]  # legacy_session_id
        pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher_suites
        pos += 1 + body[pos]  # legacy_compression_methods
        end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= min(end, len(body)):
            ext_type = int.from_bytes(body[pos : pos + 2], "big")
            ext_len = int.from_bytes(body[pos + 2 : pos + 4], "big")
            ext = body[pos + 4 : pos + 4 + ext_len]
            pos += 4 + ext_len
            if ext_type != _EXT_SERVER_NAME:
                continue
            i = 2  # server_name_list length
            while i + 3 <= len(ext):
                name_type = ext[i]
                name_len = int.from_bytes(ext[i + 1 : i + 3], "big")
                name = ext[i + 3 : i + 3 + name_len]
                i += 3 + name_len
                if name_type == 0 and name:
                    return name.decode("ascii").lower().rstrip(".") or None
            return None
    except (IndexError, UnicodeDecodeError):
        return None
    return None


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


class SniPreparingServer:
    """A TLS listener that awaits `prepare(server_name)` before each handshake (see above)."""

    def __init__(
        self,
        sock: socket.socket,
        ssl_context: ssl.SSLContext,
        prepare: Callable[[str], Awaitable[None]],
        make_protocol: Callable[[], asyncio.Protocol],
        handshake_timeout: float,
    ) -> None:
        self.sockets = [sock]
        self._sock = sock
        self._ssl = ssl_context
        self._prepare = prepare
        self._make = make_protocol
        self._timeout = handshake_timeout
        self._task = asyncio.get_running_loop().create_task(self._accept_loop())
        self._pending: set[asyncio.Task[None]] = set()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _peer = await loop.sock_accept(self._sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            task = loop.create_task(self._serve(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                name = await peek_server_name(conn)
                if name:
                    await self._prepare(name)
            await loop.connect_accepted_socket(
                self._make,
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=max(0.1, deadline - loop.time()),
            )
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            log.debug("TLS connection setup failed: %s", exc)
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


async def serve_tls_sni_preparing(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    prepare: Callable[[str], Awaitable[None]],
    make_protocol: Callable[[], asyncio.Protocol],
    *,
    handshake_timeout: float,
) -> SniPreparingServer:
    """Listen on `host:port` (SO_REUSEADDR, backlog 512, like the other listeners)."""
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
    return SniPreparingServer(sock, ssl_context, prepare, make_protocol, handshake_timeout)
