"""The client half of TCP over WebSocket: `burrow access tcp|ssh|rdp|smb`.

Each local TCP connection (or stdin/stdout, for OpenSSH's `ProxyCommand`) gets its own
WebSocket to the edge, `wss://H/` (or `ws://` for a plain-HTTP edge), exactly as cloudflared's
carrier does: a GET upgrade with `Host: H`, the Access headers (`Cf-Access-Token`,
`Cf-Access-Client-Id/-Secret`, `Cf-Access-Jump-Destination`, `--header` values), then every
chunk of local bytes as one masked binary frame, and binary frames back as local bytes.

Why not the `websockets` client: its asyncio layer is stream-based and costs a task switch per
message; this module is two asyncio.Protocols glued together with the sans-IO codec of
`burrow.wire.websocket`, with backpressure in both directions (the local socket stops being
read while the edge socket's write buffer is full, and vice versa). There is no half-close, as in
cloudflared: the end of either side ends the flow.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from burrow import __version__
from burrow.access.loopback import is_loopback_name
from burrow.errors import BurrowError
from burrow.net.recvbuf import PooledReads
from burrow.wire import DataPiece, http1
from burrow.wire import websocket as ws

log = logging.getLogger("burrow.access")

WRITE_HIGH = 1 << 20
WRITE_LOW = 256 << 10
HANDSHAKE_TIMEOUT = 30.0
MAX_ERROR_BODY = 4096
ACCESS_LOGIN_PATH = "/cdn-cgi/access/login"

CF_ACCESS_TOKEN = "Cf-Access-Token"
CF_ACCESS_CLIENT_ID = "Cf-Access-Client-Id"
CF_ACCESS_CLIENT_SECRET = "Cf-Access-Client-Secret"
CF_JUMP_DESTINATION = "Cf-Access-Jump-Destination"


class AccessError(BurrowError):
    """The WebSocket to the edge could not be opened (refused, unreachable, bad handshake)."""

    status = 502


# --- the stored-token hook --------------------------------------------------------------------------


def token_dir() -> Path:
    """Where `burrow access login` keeps application tokens (mode 0600 files)."""
    env = os.environ.get("BURROW_ACCESS_TOKEN_DIR")
    return Path(env) if env else Path.home() / ".burrow" / "access"


def stored_app_token(hostname: str) -> str | None:
    """The stored Access application token for `hostname`, if `burrow access login` left one.

    HOOK for the access issue: `burrow access login https://H` should write the app JWT to
    `token_dir() / f"{H}-token"` (H lower-cased, no port); this function is the only reader, so
    a different layout only needs changing here. Expired tokens are the edge's to refuse.
    """
    name = hostname.lower().rstrip(".")
    path = token_dir() / f"{name}-token"
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


# --- where and how to connect ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccessTarget:
    """One application behind the edge, and how to reach the edge for it."""

    host: str  # the application's hostname (TLS SNI, token lookup)
    authority: str  # the Host header: host[:port] as given
    path: str
    secure: bool  # wss:// (TLS) or ws://
    connect_host: str  # where the TCP connection goes (after --edge and *.localhost)
    connect_port: int
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold secrets
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    handshake_timeout: float = HANDSHAKE_TIMEOUT

    @property
    def url(self) -> str:
        return f"{'wss' if self.secure else 'ws'}://{self.authority}{self.path}"


def _split_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[1:end], text[end + 1 :]
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:] else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port) if port else None
    return text, None


def make_target(
    hostname: str,
    *,
    edge: str | None = None,
    cacert: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> AccessTarget:
    """`hostname` is `H`, `H:PORT` or a URL: `https://`/`wss://` (the default) or
    `http://`/`ws://` for a plain-HTTP edge. `edge` (`ADDR[:PORT]`) is where to connect when the
    name does not resolve to the edge; names under `.localhost` go to 127.0.0.1."""
    raw = hostname.strip()
    if not raw:
        raise AccessError("no hostname given (--hostname)")
    if "://" not in raw:
        raw = "https://" + raw
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss"):
        raise AccessError(f"unsupported scheme in hostname {hostname!r}")
    secure = scheme in ("https", "wss")
    try:
        host = parts.hostname or ""
        port = parts.port
    except ValueError as exc:
        raise AccessError(f"invalid hostname {hostname!r}: {exc}") from None
    if not host:
        raise AccessError(f"invalid hostname {hostname!r}")
    authority = parts.netloc.rsplit("@", 1)[-1]
    default_port = 443 if secure else 80
    if edge:
        try:
            connect_host, edge_port = _split_hostport(edge)
        except ValueError:
            raise AccessError(f"invalid --edge address {edge!r}") from None
        connect_port = edge_port or port or default_port
    else:
        connect_host = "127.0.0.1" if is_loopback_name(host) else host
        connect_port = port or default_port
    ctx: ssl.SSLContext | None = None
    if secure:
        ctx = ssl.create_default_context()
        if cacert:
            try:
                ctx.load_verify_locations(cafile=cacert)
            except (OSError, ssl.SSLError) as exc:
                raise AccessError(f"cannot load CA certificates from {cacert}: {exc}") from None
    return AccessTarget(
        host=host,
        authority=authority,
        path=parts.path or "/",
        secure=secure,
        connect_host=connect_host,
        connect_port=connect_port,
        headers=tuple(headers),
        ssl_context=ctx,
        handshake_timeout=handshake_timeout,
    )


def access_headers(
    *,
    extra: Sequence[str] = (),
    service_token_id: str | None = None,
    service_token_secret: str | None = None,
    destination: str | None = None,
    token: str | None = None,
) -> list[tuple[str, str]]:
    """The request headers cloudflared's `access tcp` sends, in its order of precedence:
    `--header "Name: value"` pairs, then service-token and bastion headers, then the app token."""
    out: dict[str, tuple[str, str]] = {}
    for item in extra:
        name, sep, value = item.partition(":")
        if sep and name.strip():
            out[name.strip().lower()] = (name.strip(), value.strip())
    fixed: Mapping[str, str | None] = {
        CF_ACCESS_CLIENT_ID: service_token_id,
        CF_ACCESS_CLIENT_SECRET: service_token_secret,
        CF_JUMP_DESTINATION: destination,
        CF_ACCESS_TOKEN: token,
    }
    for fixed_name, fixed_value in fixed.items():
        if fixed_value:
            out[fixed_name.lower()] = (fixed_name, fixed_value)
    out.setdefault("user-agent", ("User-Agent", f"burrow/{__version__}"))
    return list(out.values())


# --- the WebSocket to the edge --------------------------------------------------------------------


class TunnelSink(Protocol):
    """The local side of one flow, as the WebSocket sees it."""

    def tunnel_data(self, data: DataPiece) -> None: ...

    def tunnel_closed(self, error: str | None) -> None: ...

    def pause_local_reading(self) -> None: ...

    def resume_local_reading(self) -> None: ...


class EdgeWebSocket(asyncio.Protocol):
    """Client end of one WebSocket: the HTTP/1.1 upgrade, then masked binary frames out and
    unmasked frames in."""

    def __init__(self, target: AccessTarget, sink: TunnelSink) -> None:
        self.target = target
        self.sink = sink
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._key = base64.b64encode(os.urandom(16))
        self._parser: http1.ResponseParser | None = http1.ResponseParser()
        self._parser.expect(b"GET")
        self._status = 0
        self._reason = b""
        self._location = b""
        self._body = bytearray()
        self._decoder = ws.FrameDecoder(server=False)
        self.closed = False
        self.lost = asyncio.Event()  # the TCP connection to the edge is gone

    # --- handshake ------------------------------------------------------------------------------

    def _request(self) -> bytes:
        t = self.target
        headers = [(b"Host", t.authority.encode("idna" if not t.authority.isascii() else "ascii"))]
        for name, value in t.headers:
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
        headers += [
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Key", self._key),
            (b"Sec-WebSocket-Version", b"13"),
        ]
        return http1.serialize_request_head(b"GET", t.path.encode("latin-1"), headers)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = t
        t.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        t.write(self._request())

    def _handshake(self, data: bytes) -> None:
        parser = self._parser
        assert parser is not None
        try:
            events = parser.feed(data)
        except BurrowError as exc:
            self._fail(f"bad handshake response from the edge: {exc}")
            return
        for event in events:
            t = type(event)
            if t is http1.ResponseHead:
                head = cast(http1.ResponseHead, event)
                self._status, self._reason = head.status, head.reason
                for name, value in head.headers:
                    lname = name.lower()
                    if lname == b"location":
                        self._location = value
                    elif lname == b"sec-websocket-accept" and head.status == 101:
                        if value.strip() != ws.accept_key(self._key):
                            self._fail("the edge sent a wrong Sec-WebSocket-Accept")
                            return
                if head.status == 101 and not any(
                    n.lower() == b"sec-websocket-accept" for n, _ in head.headers
                ):
                    self._fail("the edge accepted the upgrade without Sec-WebSocket-Accept")
                    return
            elif t is http1.Upgraded:
                self._parser = None
                if not self.opened.done():
                    self.opened.set_result(None)
                rest = cast(http1.Upgraded, event).rest
                if rest:
                    self._frames(bytes(rest))
                return
            elif t is http1.Data:
                room = MAX_ERROR_BODY - len(self._body)
                if room > 0:
                    self._body += cast(http1.Data, event).data[:room]
            elif t is http1.EndOfMessage:
                self._fail(self._refusal())
                return

    def _refusal(self) -> str:
        status = self._status
        if status in (301, 302, 303, 307, 308):
            location = self._location.decode("latin-1")
            if ACCESS_LOGIN_PATH in location or "/cdn-cgi/access/" in location:
                return (
                    f"{self.target.host} is protected by Access: run `burrow access login "
                    f"https://{self.target.host}` or use --service-token-id/--service-token-secret"
                )
            return f"the edge redirected to {location} instead of upgrading"
        text = bytes(self._body).decode("utf-8", "replace").strip()
        if "<" in text[:1]:  # an HTML error page: the status says enough
            text = ""
        reason = self._reason.decode("latin-1")
        detail = f": {text}" if text else ""
        return f"{self.target.url} answered {status} {reason}{detail}"

    def _fail(self, message: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(AccessError(message))
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._parser is not None:
            self._handshake(data)
        elif not self.closed:
            self._frames(data)

    def _frames(self, data: bytes) -> None:
        try:
            items = self._decoder.feed(data)
        except ws.WebSocketError as exc:
            self.close(exc.close_code, error=f"WebSocket protocol error from the edge: {exc}")
            return
        sink = self.sink
        for item in items:
            if not isinstance(item, ws.Control):
                sink.tunnel_data(item)
            else:
                frame = item
                if frame.opcode == ws.OP_PING:
                    self._send(ws.OP_PONG, frame.payload)
                elif frame.opcode == ws.OP_CLOSE:
                    self.close(ws.CLOSE_NORMAL)
                    return

    def eof_received(self) -> bool | None:
        if self._parser is not None:
            self._fail(
                f"the edge closed the connection during the WebSocket handshake "
                f"(status {self._status or 'none'})"
            )
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.lost.set()
        if not self.opened.done():
            reason = f": {exc}" if exc else ""
            self.opened.set_exception(AccessError(f"connection to the edge lost{reason}"))
            self.closed = True
            return  # the opener reports the failure; the sink was never connected
        if self.opened.exception() is not None:
            return
        error = None if self.closed else (str(exc) if exc else None)
        self.closed = True
        self.sink.tunnel_closed(error)

    def pause_writing(self) -> None:
        self.sink.pause_local_reading()

    def resume_writing(self) -> None:
        self.sink.resume_local_reading()

    # --- used by the local side -----------------------------------------------------------------

    def _send(self, opcode: int, payload: DataPiece) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            mask = os.urandom(4)
            # Two buffers in one write: joining them would copy the payload once more.
            transport.writelines(
                (ws.frame_header(opcode, len(payload), mask), ws.apply_mask(payload, mask))
            )

    def send(self, data: DataPiece) -> None:
        """Local bytes to the edge, as one binary frame (a view is done with on return)."""
        if not self.closed:
            self._send(ws.OP_BINARY, data)

    def close(self, code: int = ws.CLOSE_NORMAL, *, error: str | None = None) -> None:
        """End the flow: a close frame, then the TCP connection (pending bytes are flushed)."""
        if error:
            log.warning("%s", error)
        if self.closed:
            return
        self._send(ws.OP_CLOSE, code.to_bytes(2, "big"))
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


async def open_websocket(target: AccessTarget, sink: TunnelSink) -> EdgeWebSocket:
    """Connect to the edge and complete the upgrade; AccessError with a readable reason if not."""
    loop = asyncio.get_running_loop()
    proto: EdgeWebSocket | None = None

    def factory() -> EdgeWebSocket:
        nonlocal proto
        proto = EdgeWebSocket(target, sink)
        return proto

    where = f"{target.connect_host}:{target.connect_port}"
    try:
        async with asyncio.timeout(target.handshake_timeout):
            await loop.create_connection(
                factory,
                target.connect_host,
                target.connect_port,
                ssl=target.ssl_context,
                server_hostname=target.host if target.ssl_context is not None else None,
            )
            assert proto is not None
            await proto.opened
    except TimeoutError:
        if proto is not None and proto.transport is not None:
            proto.transport.abort()
        raise AccessError(
            f"timed out opening {target.url} via {where} after {target.handshake_timeout:g}s"
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise AccessError(
            f"TLS certificate of {where} not trusted for {target.host}: {exc.verify_message} "
            "(--cacert names a CA bundle)"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise AccessError(f"cannot connect to the edge at {where}: {exc}") from None
    assert proto is not None
    return proto


# --- local side: a TCP listener -------------------------------------------------------------------


class LocalConnection(PooledReads):
    """One accepted local TCP connection, carried over its own WebSocket.

    Its reads land in the pooled receive buffers (`burrow.net.recvbuf`) and come as views:
    masking reads each straight from the buffer into the frame it sends, so a local byte is
    copied once in user space on its way to the edge rather than three times."""

    keeps_views = False  # masking copies; what waits for the WebSocket is copied too

    def __init__(self, target: AccessTarget, active: set[LocalConnection]) -> None:
        self.target = target
        self.active = active
        self.transport: asyncio.Transport | None = None
        self.ws: EdgeWebSocket | None = None
        self.closed = False
        self._early: list[bytes] = []
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        self.transport = t
        t.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        t.pause_reading()  # nothing to send until the WebSocket is open
        self.active.add(self)
        self._task = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        try:
            self.ws = await open_websocket(self.target, self)
        except AccessError as exc:
            log.error("%s", exc)
            if self.transport is not None:
                self.transport.close()
            return
        early, self._early = self._early, []
        for data in early:
            self.ws.send(data)
        if self.closed:
            self.ws.close()
            return
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: DataPiece) -> None:
        if self.ws is not None:
            self.ws.send(data)
        else:
            # uvloop starts reading only after connection_made, so the pause there may not
            # hold: keep what came early and pause now (bounded by one read).
            self._early.append(bytes(data))
            if self.transport is not None:
                self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return False  # no half-close: the flow ends (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.active.discard(self)
        if self.ws is not None:
            self.ws.close()

    def pause_writing(self) -> None:
        if self.ws is not None:
            self.ws.pause_reading()

    def resume_writing(self) -> None:
        if self.ws is not None:
            self.ws.resume_reading()

    # TunnelSink
    def tunnel_data(self, data: DataPiece) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def tunnel_closed(self, error: str | None) -> None:
        if error:
            log.info("WebSocket to %s closed: %s", self.target.host, error)
        if self.transport is not None:
            self.transport.close()

    def pause_local_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_local_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.ws is not None:
            self.ws.close(ws.CLOSE_GOING_AWAY)
        if self.transport is not None:
            self.transport.close()


class TCPForwarder:
    """`burrow access tcp --url ADDR`: a local listener; each connection gets a WebSocket."""

    def __init__(self, target: AccessTarget) -> None:
        self.target = target
        self.server: asyncio.Server | None = None
        self.active: set[LocalConnection] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: LocalConnection(self.target, self.active), host, port, reuse_address=True
        )
        addr = self.server.sockets[0].getsockname()
        return addr[0], addr[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.active):
            conn.abort()
        if self.server is not None:
            await self.server.wait_closed()


# --- local side: stdin/stdout (OpenSSH ProxyCommand) -------------------------------------------


class _StdinProtocol(asyncio.Protocol):
    def __init__(self, bridge: StdioBridge) -> None:
        self.bridge = bridge

    def data_received(self, data: bytes) -> None:
        if self.bridge.ws is not None:
            self.bridge.ws.send(data)

    def eof_received(self) -> bool | None:
        self.bridge.finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.bridge.finish()


class _StdoutProtocol(asyncio.Protocol):
    def __init__(self, bridge: StdioBridge) -> None:
        self.bridge = bridge

    def pause_writing(self) -> None:
        if self.bridge.ws is not None:
            self.bridge.ws.pause_reading()

    def resume_writing(self) -> None:
        if self.bridge.ws is not None:
            self.bridge.ws.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.bridge.stdout_lost.set()
        self.bridge.finish()


class StdioBridge:
    """stdin -> WebSocket -> stdout, until either end closes."""

    def __init__(self) -> None:
        self.ws: EdgeWebSocket | None = None
        self.stdin: asyncio.ReadTransport | None = None
        self.stdout: asyncio.WriteTransport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stdout_lost = asyncio.Event()

    def tunnel_data(self, data: DataPiece) -> None:
        if self.stdout is not None and not self.stdout.is_closing():
            self.stdout.write(data)

    def tunnel_closed(self, error: str | None) -> None:
        if error:
            log.info("WebSocket closed: %s", error)
        self.finish()

    def pause_local_reading(self) -> None:
        if self.stdin is not None:
            self.stdin.pause_reading()

    def resume_local_reading(self) -> None:
        if self.stdin is not None and not self.stdin.is_closing():
            self.stdin.resume_reading()

    def finish(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.stdout is not None and not self.stdout.is_closing():
            self.stdout.close()  # flushes what is buffered
        if self.stdin is not None and not self.stdin.is_closing():
            self.stdin.close()
        if not self.done.done():
            self.done.set_result(None)


async def run_stdio(target: AccessTarget, stdin: Any = None, stdout: Any = None) -> None:
    """Carry stdin/stdout over one WebSocket (ssh's ProxyCommand); AccessError if it fails."""
    loop = asyncio.get_running_loop()
    bridge = StdioBridge()
    bridge.ws = await open_websocket(target, bridge)
    in_file = stdin if stdin is not None else os.fdopen(sys.stdin.fileno(), "rb", 0, closefd=False)
    out_file = (
        stdout if stdout is not None else os.fdopen(sys.stdout.fileno(), "wb", 0, closefd=False)
    )
    out_t, _ = await loop.connect_write_pipe(lambda: _StdoutProtocol(bridge), out_file)
    out_t.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
    bridge.stdout = out_t
    in_t, _ = await loop.connect_read_pipe(lambda: _StdinProtocol(bridge), in_file)
    bridge.stdin = in_t
    await bridge.done
    # Let the close frame and the last stdout bytes leave before the loop stops.
    try:
        async with asyncio.timeout(5):
            await bridge.ws.lost.wait()
            await bridge.stdout_lost.wait()
    except TimeoutError:
        pass
