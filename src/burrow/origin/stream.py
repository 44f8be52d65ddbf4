"""Stream origins: TCP carried over WebSocket (`tcp://`, `ssh://`, `rdp://`, `smb://`, any
non-HTTP scheme, and `bastion`), and raw TCP streams (`cf-cloudflared-proxy-src`).

As in cloudflared (proxy.proxyStream, ingress.tcpOverWSService), the connector dials the target
*first* and only then acknowledges the stream: an unreachable target gets a 502 with a message,
which the eyeball's WebSocket client sees as a failed handshake instead of a silent hang. After
the 200 (with `Sec-WebSocket-Accept` for WebSocket streams) the connector terminates the
WebSocket itself and pipes payload bytes to the TCP connection.

One `StreamBridge` object is both the h2 stream's handler and the origin socket's
asyncio.Protocol, so each byte crosses one Python call per direction. Backpressure both ways:
request credit goes back to the edge only once the origin socket took the bytes without
congestion; origin reads pause while the h2 stream's outbound buffer is above its high-water mark.
There is no half-close (PROTOCOL.md 3.3): the end of either side ends the whole flow.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from typing import cast

from burrow.net import recvbuf
from burrow.net.h2conn import DataPiece, H2Stream, Headers
from burrow.wire import websocket as ws
from burrow.wire.tunnel_h2 import connector_error_headers, origin_response_headers

log = logging.getLogger("burrow.connector.stream")

JUMP_DESTINATION = b"cf-access-jump-destination"
PING_INTERVAL = 54.0  # cloudflared's defaultPingPeriod (pong wait 60 s * 9/10)
ORIGIN_WRITE_HIGH = 1 << 20
ORIGIN_WRITE_LOW = 256 << 10


class DestinationError(ValueError):
    """The stream names no usable destination (missing bastion header, bad ip:port)."""


def bastion_destination(headers: Headers) -> str:
    """The target of a bastion stream, as cloudflared's carrier.ResolveBastionDest finds it:
    `Cf-Access-Jump-Destination`, with any scheme and path stripped."""
    value = ""
    for name, v in headers:
        if name == JUMP_DESTINATION:
            value = v.decode("latin-1").strip()
            break
    if not value:
        raise DestinationError(
            "Did not receive final destination from client. The --destination flag is likely "
            "not set on the client side"
        )
    if "://" in value:
        value = value.split("://", 1)[1]
    return value.split("/", 1)[0]


def split_destination(dest: str, default_port: int | None = None) -> tuple[str, int]:
    """`host:port` or `[v6]:port` into (host, port); a bare host takes `default_port`."""
    host, port_s = dest, ""
    if dest.startswith("["):
        end = dest.find("]")
        if end < 0:
            raise DestinationError(f"invalid destination {dest!r}")
        host, rest = dest[1:end], dest[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise DestinationError(f"invalid destination {dest!r}")
            port_s = rest[1:]
    elif dest.count(":") == 1:
        host, port_s = dest.split(":", 1)
    if not port_s:
        if default_port is None:
            raise DestinationError(f"destination {dest!r} has no port")
        return host, default_port
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise DestinationError(f"invalid port in destination {dest!r}")
    if not host:
        raise DestinationError(f"destination {dest!r} has no host")
    return host, int(port_s)


def _header(headers: Headers, wanted: bytes) -> bytes | None:
    for name, value in headers:
        if name == wanted:
            return value
    return None


class StreamBridge(recvbuf.PooledReads):
    """StreamHandler for one tunnel stream and Protocol for its TCP connection to the target."""

    __slots__ = (
        "_acked",
        "_decoder",
        "_done",
        "_early",
        "_origin_gone",
        "_origin_paused",
        "_pending",
        "_ping",
        "_unacked",
        "describe",
        "stream",
        "transport",
        "websocket_key",
    )

    def __init__(
        self,
        stream: H2Stream,
        host: str,
        port: int,
        *,
        websocket_key: bytes | None,
        describe: str,
        connect_timeout: float = 30.0,
        tcp_keepalive: float = 30.0,
    ) -> None:
        self.stream = stream
        self.websocket_key = websocket_key
        self.describe = describe
        self.transport: asyncio.Transport | None = None
        self._decoder = ws.FrameDecoder(server=True) if websocket_key is not None else None
        self._pending: list[DataPiece] = []  # edge bytes that arrived while dialling (<= h2 window)
        self._early: list[DataPiece] = []  # target bytes that arrived before the 200 was sent
        self._origin_gone = False
        self._unacked = 0
        self._acked = False
        self._done = False
        self._origin_paused = False
        self._ping: asyncio.TimerHandle | None = None
        stream.handler = self
        asyncio.get_running_loop().create_task(
            self._connect(host, port, connect_timeout, tcp_keepalive)
        )

    # --- dialling ---------------------------------------------------------------------------------

    async def _connect(self, host: str, port: int, dial_timeout: float, keepalive: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.create_connection(lambda: self, host, port), dial_timeout)
        except TimeoutError:
            self._refuse(f"timed out connecting to {self.describe} after {dial_timeout:g}s")
            return
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            self._refuse(f"unable to reach {self.describe}: {reason}")
            return
        if self._done:  # the edge gave up while we were dialling
            if self.transport is not None:
                self.transport.abort()
            return
        transport = self.transport  # None if the target already closed again
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None and keepalive > 0:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(keepalive)))
            except (OSError, AttributeError):
                pass
        self._acked = True
        extra: list[tuple[bytes, bytes]] = []
        if self.websocket_key:
            extra = [
                (b"Connection", b"Upgrade"),
                (b"Sec-Websocket-Accept", ws.accept_key(self.websocket_key)),
                (b"Upgrade", b"websocket"),
            ]
        if self._decoder is not None:
            self._ping = loop.call_later(PING_INTERVAL, self._send_ping)
        self.stream.send_headers(origin_response_headers(101, extra, websocket=True))
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)
        if transport is None or self._origin_gone:
            self._give_back_pending()
            self._close_from_origin()
            return
        if not self.stream.producer_paused:
            transport.resume_reading()
        pending, self._pending = self._pending, []
        for piece in pending:
            if self._done or self.transport is None:
                self.stream.consumed(len(piece))
            else:
                self._to_origin(self.stream, self.transport, piece)

    def _refuse(self, message: str) -> None:
        """The target could not be reached: a 502 from the connector, as cloudflared answers."""
        if self._done:
            return
        self._done = True
        log.error("stream to %s failed: %s", self.describe, message)
        stream = self.stream
        stream.send_headers(connector_error_headers(502))
        stream.write(f"burrow connector: {message}\n".encode())
        stream.end()
        self._give_back_pending()

    def _give_back_pending(self) -> None:
        n = sum(len(d) for d in self._pending) + self._unacked
        self._pending = []
        self._unacked = 0
        self.stream.consumed(n)

    # --- asyncio.Protocol (the target's socket) ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = t
        t.set_write_buffer_limits(high=ORIGIN_WRITE_HIGH, low=ORIGIN_WRITE_LOW)

    def data_received(self, data: DataPiece) -> None:
        if self._done:
            return
        if not self._acked:
            # The target spoke before the dial task resumed (ssh servers speak first): hold it
            # until the 200 is out, and stop reading meanwhile.
            self._early.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        if self._decoder is not None:
            header = ws.frame_header(ws.OP_BINARY, len(data))
            if type(data) is bytes:
                data = header + data  # a small read: one piece, one DATA frame
            else:
                self.stream.write(header)  # a large read goes on as its view, not copied
        # owned: a view here is of a receive buffer that is not reused while the view lives
        if not self.stream.write(data, owned=True) and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self._close_from_origin()
        return False  # no half-close: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._origin_gone = True
        self._close_from_origin()

    def pause_writing(self) -> None:
        self._origin_paused = True

    def resume_writing(self) -> None:
        self._origin_paused = False
        if self._unacked:
            n, self._unacked = self._unacked, 0
            self.stream.consumed(n)

    def _close_from_origin(self) -> None:
        if self._done or not self._acked:
            return
        self._done = True
        self._cancel_ping()
        if self._decoder is not None:
            self.stream.write(ws.encode_close(ws.CLOSE_NORMAL))
        self.stream.end()

    # --- StreamHandler (the tunnel stream) --------------------------------------------------------

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        pass

    def on_data(self, stream: H2Stream, data: DataPiece, end_stream: bool) -> None:
        if data:
            transport = self.transport
            if self._done:
                stream.consumed(len(data))
            elif not self._acked or transport is None:
                self._pending.append(data)  # credit withheld: bounded by the h2 window
            else:
                self._to_origin(stream, transport, data)
        if end_stream:
            self.on_end(stream)

    def _to_origin(self, stream: H2Stream, transport: asyncio.Transport, data: DataPiece) -> None:
        decoder = self._decoder
        if decoder is None:
            transport.write(data)
        else:
            try:
                items = decoder.feed(data)
            except ws.WebSocketError as exc:
                log.warning("WebSocket protocol error from %s: %s", self.describe, exc)
                stream.consumed(len(data))
                self._close_from_edge(close_code=exc.close_code)
                return
            for item in items:
                if isinstance(item, ws.Control):
                    self._control(item)
                else:
                    transport.write(item)
        if self._origin_paused:
            self._unacked += len(data)
        else:
            stream.consumed(len(data))

    def _control(self, frame: ws.Control) -> None:
        if frame.opcode == ws.OP_PING:
            self.stream.write(ws.encode_frame(ws.OP_PONG, frame.payload))
        elif frame.opcode == ws.OP_CLOSE:
            code = frame.close_code() or ws.CLOSE_NORMAL
            self._close_from_edge(close_code=code if code < 3000 else ws.CLOSE_NORMAL)

    def _close_from_edge(self, *, close_code: int | None = None) -> None:
        """The eyeball ended the flow: flush what the target still has to receive, then close."""
        if self._done:
            return
        self._done = True
        self._cancel_ping()
        if close_code is not None and self._decoder is not None:
            self.stream.write(ws.encode_close(close_code))
        self.stream.end()
        if self.transport is not None:
            self.transport.close()

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None:
        self.on_end(stream)

    def on_end(self, stream: H2Stream) -> None:
        if not self._acked:
            # The eyeball gave up while we were dialling: nothing was answered yet.
            self._done = True
            self._give_back_pending()
            stream.reset()
            return
        self._close_from_edge()

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        self._done = True
        self._cancel_ping()
        self._pending = []
        if self.transport is not None:
            self.transport.abort()

    def on_writable(self, stream: H2Stream) -> None:
        if self.transport is not None and not self._done:
            self.transport.resume_reading()

    # --- keep-alive pings (cloudflared's websocket.Conn pinger) -----------------------------------

    def _send_ping(self) -> None:
        self._ping = None
        if self._done:
            return
        self.stream.write(ws.encode_frame(ws.OP_PING, b""))
        self._ping = asyncio.get_running_loop().call_later(PING_INTERVAL, self._send_ping)

    def _cancel_ping(self) -> None:
        if self._ping is not None:
            self._ping.cancel()
            self._ping = None


def start_stream_bridge(
    stream: H2Stream,
    headers: Headers,
    *,
    dest: str | None,
    websocket: bool,
    describe: str,
    require_ip: bool = False,
    connect_timeout: float = 30.0,
    tcp_keepalive: float = 30.0,
) -> StreamBridge | None:
    """Start carrying one stream to `dest` (`host:port`; None means bastion: from the
    `Cf-Access-Jump-Destination` header). Answers 502 itself when no destination can be found.
    Raw TCP streams (`require_ip`) name an `ip:port`, as cloudflared's ProxyTCP demands."""
    try:
        if dest is None:
            dest = bastion_destination(headers)
            describe = f"bastion destination {dest}"
        host, port = split_destination(dest)
        if require_ip:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise DestinationError(f"raw TCP destination {dest!r} is not ip:port") from None
    except DestinationError as exc:
        log.error("stream refused: %s", exc)
        stream.send_headers(connector_error_headers(502))
        stream.write(f"burrow connector: {exc}\n".encode())
        stream.end()
        return None
    key = (_header(headers, b"sec-websocket-key") or b"") if websocket else None
    return StreamBridge(
        stream,
        host,
        port,
        websocket_key=key,
        describe=describe,
        connect_timeout=connect_timeout,
        tcp_keepalive=tcp_keepalive,
    )
