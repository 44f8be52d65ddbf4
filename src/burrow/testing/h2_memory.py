"""In-memory HTTP/2 test fixtures: asyncio transports without sockets, and the reference peer.

Why: the HTTP/2 engine (`burrow.wire.h2core`) and its asyncio adapter (`burrow.net.h2conn`)
are tested byte for byte against the `h2` package, with no event loop I/O in between, so a
protocol slip shows up as an `h2` exception at the exact frame. Those tests all need the same
three pieces, kept here once:

- `Sink`: a transport that collects what an endpoint writes, for the test to hand on;
- `Pipe`: a transport that delivers writes to another endpoint on the next loop tick (two
  endpoints talking to each other, as both ends of a tunnel connection do);
- `Peer`: the reference `h2` connection, sending bodies (with trailers or padding) within its
  flow-control windows and recording what it receives;
- `parse_frames`: what an endpoint wrote, frame by frame, parsed by `hyperframe` (for checks
  on the exact frames, where `h2` would only report events);
- `EndHandler`: a stream handler that drains data and records whether the stream ended or was
  reset.

Test-only: it imports `h2`, which burrow itself no longer uses on any data path.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, TypeVar

import h2.config
import h2.connection
import h2.events
from hyperframe.frame import Frame

from burrow.wire.h2core import PREFACE

Headers = list[tuple[bytes, bytes]]
Buffer = bytes | bytearray | memoryview
E = TypeVar("E", bound=h2.events.Event)


class _MemoryTransport(asyncio.Transport):
    """What both transports share: no buffer limits, and close/abort only remembered."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.aborted = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


class Sink(_MemoryTransport):
    """Collects what the endpoint writes (`take` hands it on); remembers close/abort."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []

    def write(self, data: Buffer) -> None:
        self.out.append(bytes(data))

    def writelines(self, list_of_data: Iterable[Buffer]) -> None:
        for piece in list_of_data:
            self.out.append(bytes(piece))

    def take(self) -> bytes:
        """Everything written since the last call, as one byte string."""
        data = b"".join(self.out)
        self.out.clear()
        return data


class Pipe(_MemoryTransport):
    """In-memory transport: bytes written go to `peer.data_received` on the next tick, until
    it is closed or aborted."""

    def __init__(self) -> None:
        super().__init__()
        self.peer: asyncio.Protocol | None = None

    def write(self, data: Buffer) -> None:
        peer = self.peer
        if peer is not None and not self.closed:
            asyncio.get_running_loop().call_soon(peer.data_received, bytes(data))

    def abort(self) -> None:
        super().abort()
        self.closed = True


class Peer:
    """The reference `h2` connection, acking received data at once unless told otherwise.

    `send` queues a body (optionally followed by trailers, optionally padded); `pump` sends
    what the windows allow; `receive` feeds our bytes to `h2` and records its events."""

    def __init__(self, *, client_side: bool, auto_ack: bool = True, **config: Any) -> None:
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=client_side, header_encoding=None, **config)
        )
        self.conn.initiate_connection()
        self.auto_ack = auto_ack
        self.events: list[h2.events.Event] = []
        self.bodies: dict[int, bytearray] = defaultdict(bytearray)
        self.flow: dict[int, int] = defaultdict(int)  # flow-controlled bytes received per stream
        self.outbound: dict[int, list[Any]] = {}  # stream id -> [body, end, trailers, pad]

    def send(
        self,
        stream_id: int,
        body: bytes,
        *,
        end: bool = True,
        trailers: Headers | None = None,
        pad: int | None = None,
    ) -> None:
        self.outbound[stream_id] = [memoryview(body), end, trailers, pad]

    def pump(self) -> None:
        conn = self.conn
        for stream_id, entry in list(self.outbound.items()):
            data, end, trailers, pad = entry
            overhead = 0 if pad is None else pad + 1
            while data:
                room = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                n = min(len(data), room - overhead)
                if n <= 0:
                    break
                last = n == len(data) and end and trailers is None
                conn.send_data(stream_id, bytes(data[:n]), end_stream=last, pad_length=pad)
                data = data[n:]
            entry[0] = data
            if data:
                continue
            del self.outbound[stream_id]
            if trailers is not None:
                conn.send_headers(stream_id, trailers, end_stream=True)

    def receive(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            self.events.append(event)
            if isinstance(event, h2.events.DataReceived):
                assert event.stream_id is not None and event.data is not None
                assert event.flow_controlled_length is not None
                self.bodies[event.stream_id] += event.data
                self.flow[event.stream_id] += event.flow_controlled_length
                if self.auto_ack:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )

    def of(self, kind: type[E]) -> list[E]:
        """The events of one kind received so far, in order."""
        return [e for e in self.events if isinstance(e, kind)]


def parse_frames(data: bytes) -> list[Frame]:
    """Every frame in `data` (after an optional client preface), parsed by hyperframe."""
    if data.startswith(PREFACE):
        data = data[len(PREFACE) :]
    view = memoryview(data)
    frames: list[Frame] = []
    pos = 0
    while pos < len(data):
        frame, length = Frame.parse_frame_header(view[pos : pos + 9])
        frame.parse_body(view[pos + 9 : pos + 9 + length])
        frames.append(frame)
        pos += 9 + length
    assert pos == len(data)
    return frames


class EndHandler:
    """A `StreamHandler` that returns credit for all data and records the stream's end."""

    def __init__(self) -> None:
        self.ended = False
        self.reset_code: int | None = None

    def on_headers(self, stream: Any, headers: Headers, end_stream: bool) -> None:
        self.ended = self.ended or end_stream

    def on_data(self, stream: Any, data: bytes, end_stream: bool) -> None:
        stream.consumed(len(data))
        self.ended = self.ended or end_stream

    def on_trailers(self, stream: Any, headers: Headers) -> None:
        self.ended = True

    def on_end(self, stream: Any) -> None:
        self.ended = True

    def on_reset(self, stream: Any, error_code: int) -> None:
        self.reset_code = error_code

    def on_writable(self, stream: Any) -> None:
        pass
