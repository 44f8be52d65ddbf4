"""A small sans-IO WebSocket (RFC 6455) frame codec for TCP carried over WebSocket.

Why our own: the connector terminates the WebSocket of `burrow/cloudflared access tcp` and pipes
the payload to a TCP origin, and the access client does the reverse. Both only need binary data
frames plus ping/pong/close, and bulk TCP must not pay per-frame costs: this decoder hands out
payload bytes as they arrive (a 1 GB frame is never buffered whole), unmasks with the C
`apply_mask` that ships with the `websockets` package, and keeps no per-message state beyond
the current frame header. Text frames are treated as bytes (cloudflared does not validate them
either). Extensions (permessage-deflate) are never negotiated, so RSV bits are errors.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from burrow.errors import RemoteProtocolError
from burrow.wire import DataPiece

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_INTERNAL_ERROR: Final = 1011

_DATA_OPS: Final = frozenset({OP_CONT, OP_TEXT, OP_BINARY})
_CONTROL_OPS: Final = frozenset({OP_CLOSE, OP_PING, OP_PONG})
_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")


def accept_key(key: bytes) -> bytes:
    """The `Sec-WebSocket-Accept` value for a request's `Sec-WebSocket-Key`."""
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def _py_apply_mask(data: DataPiece, mask: bytes) -> bytes:  # pragma: no cover - ~50x slower
    n = len(data)
    reps = mask * (n // 4 + 1)
    return (int.from_bytes(data, "little") ^ int.from_bytes(reps[:n], "little")).to_bytes(
        n, "little"
    )


def _first_apply_mask(data: DataPiece, mask: bytes) -> bytes:
    """Find the C helper of the `websockets` package (~15 GB/s) on first use, not at import:
    most connectors never carry a WebSocket, and the package costs a long-running process
    ~1 MB of RSS. Later calls go straight to the helper found here."""
    global _apply_mask
    try:
        from websockets.speedups import apply_mask as c_apply_mask
    except ImportError:  # pragma: no cover
        _apply_mask = _py_apply_mask
    else:
        _apply_mask = c_apply_mask
    return _apply_mask(data, mask)


_apply_mask: Callable[[DataPiece, bytes], bytes] = _first_apply_mask


def apply_mask(data: DataPiece, mask: bytes) -> bytes:
    """XOR `data` with the 4-byte `mask` repeated (masking and unmasking are the same): a new
    `bytes`, so a view passed in may be released or its buffer reused at once."""
    return _apply_mask(data, mask)


class WebSocketError(RemoteProtocolError):
    """The peer broke the framing rules; `close_code` is what to send back."""

    def __init__(self, message: str, close_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.close_code = close_code


@dataclass(frozen=True, slots=True)
class Control:
    """A complete control frame (close, ping or pong) received from the peer."""

    opcode: int
    payload: bytes

    def close_code(self) -> int | None:
        """The status code of a close frame (None when it carries none)."""
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return int.from_bytes(self.payload[:2], "big")


def frame_header(opcode: int, length: int, mask: bytes | None = None, fin: bool = True) -> bytes:
    b0 = (0x80 if fin else 0) | opcode
    m = 0x80 if mask is not None else 0
    if length < 126:
        head = bytes((b0, m | length))
    elif length < 65536:
        head = _H16.pack(b0, m | 126, length)
    else:
        head = _H64.pack(b0, m | 127, length)
    return head + mask if mask is not None else head


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One complete frame; `mask` (4 bytes) for client-to-server frames."""
    if mask is None:
        return frame_header(opcode, len(payload)) + payload
    return frame_header(opcode, len(payload), mask) + apply_mask(payload, mask)


def encode_close(code: int = CLOSE_NORMAL, reason: str = "", mask: bytes | None = None) -> bytes:
    payload = code.to_bytes(2, "big") + reason.encode()[:123]
    return encode_frame(OP_CLOSE, payload, mask)


class FrameDecoder:
    """Incremental decoder: `feed(data)` returns the payload of data frames (possibly partial,
    in order) interleaved with `Control` objects for control frames.

    Payload is never copied but to unmask it: unmasked payload comes out as views of what was
    fed (a `bytes`, or a view the caller will not write to again), masked payload as the new
    `bytes` that `apply_mask` makes. Callers tell the two kinds of item apart with
    `isinstance(item, Control)`.

    `server=True` (the side receiving from a client) requires masked frames; a client requires
    unmasked ones, as RFC 6455 5.1 says.
    """

    __slots__ = (
        "_buf",
        "_ctrl",
        "_fragmented",
        "_mask",
        "_offset",
        "_opcode",
        "_remaining",
        "closed",
        "server",
    )

    def __init__(self, *, server: bool) -> None:
        self.server = server
        self._buf = b""
        self._remaining = 0  # payload bytes of the current frame still to come
        self._mask: bytes | None = None
        self._offset = 0  # payload bytes of the current frame already consumed (mask phase)
        self._opcode = 0
        self._ctrl: bytes | None = None  # accumulating control payload
        self._fragmented = False  # inside a message whose last frame had FIN clear
        self.closed = False  # a close frame was received: nothing more is accepted

    def feed(self, data: DataPiece) -> list[DataPiece | Control]:
        if self.closed:
            return []
        out: list[DataPiece | Control] = []
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if type(data) is bytes:
            data = memoryview(data)  # slices of a view are free; of bytes, copies
        pos = 0
        n = len(data)
        while pos < n:
            remaining = self._remaining
            if remaining:
                take = n - pos
                if take > remaining:
                    take = remaining
                chunk = data if (pos == 0 and take == n) else data[pos : pos + take]
                mask = self._mask
                if mask is not None:
                    k = self._offset & 3
                    chunk = apply_mask(chunk, mask[k:] + mask[:k] if k else mask)
                    self._offset += take
                pos += take
                self._remaining = remaining - take
                if self._ctrl is not None:
                    self._ctrl += chunk
                    if not self._remaining:
                        self._finish_control(out)
                        if self.closed:
                            return out
                else:
                    out.append(chunk)
                continue
            pos = self._header(data, pos, n, out)
            if pos < 0:
                break
            if self.closed:
                return out
        return out

    def _header(self, data: DataPiece, pos: int, n: int, out: list[DataPiece | Control]) -> int:
        """Parse one frame header at `pos`; the new position, or -1 if more bytes are needed."""
        if n - pos < 2:
            self._buf = bytes(data[pos:])  # a copy: a few bytes must not pin the buffer fed
            return -1
        b0 = data[pos]
        b1 = data[pos + 1]
        length = b1 & 0x7F
        masked = b1 & 0x80
        need = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if masked else 0)
        if n - pos < need:
            self._buf = bytes(data[pos:])
            return -1
        if b0 & 0x70:
            raise WebSocketError("reserved bits set (no extension was negotiated)")
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        p = pos + 2
        if length == 126:
            length = int.from_bytes(data[p : p + 2], "big")
            p += 2
        elif length == 127:
            length = int.from_bytes(data[p : p + 8], "big")
            if length >> 63:
                raise WebSocketError("frame length has its most significant bit set")
            p += 8
        if masked:
            mask: bytes | None = bytes(data[p : p + 4])
            p += 4
        else:
            mask = None
        if self.server and mask is None:
            raise WebSocketError("client frames must be masked")
        if not self.server and mask is not None:
            raise WebSocketError("server frames must not be masked")
        if opcode in _CONTROL_OPS:
            if not fin or length > 125:
                raise WebSocketError("control frames must be final and at most 125 bytes")
            self._ctrl = b""
        elif opcode in _DATA_OPS:
            if opcode == OP_CONT:
                if not self._fragmented:
                    raise WebSocketError("continuation frame outside a fragmented message")
            elif self._fragmented:
                raise WebSocketError("new data frame inside a fragmented message")
            self._fragmented = not fin
            self._ctrl = None
        else:
            raise WebSocketError(f"unknown opcode {opcode:#x}")
        self._opcode = opcode
        self._mask = mask if length else None
        self._offset = 0
        self._remaining = length
        if length == 0 and self._ctrl is not None:
            self._finish_control(out)
        return p

    def _finish_control(self, out: list[DataPiece | Control]) -> None:
        payload = self._ctrl or b""
        self._ctrl = None
        if self._opcode == OP_CLOSE:
            if len(payload) == 1:
                raise WebSocketError("close frame with a one-byte payload")
            self.closed = True
        out.append(Control(self._opcode, payload))
