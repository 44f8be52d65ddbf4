"""A small HTTP/2 origin over TLS (ALPN h2) for tests of `http2Origin`: it answers every request
like a unary gRPC server would: `content-type: application/grpc`, a body echoing the request
(path, authority, body size), then **trailers** `grpc-status: 0` and `grpc-message: ok`.

Built on the `h2` library directly (sans-IO, in an asyncio.Protocol) so the test does not need a
gRPC stack; what matters is that trailers travel end to end as real h2 trailers.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

import h2.config
import h2.connection
import h2.events


class _H2OriginProtocol(asyncio.Protocol):
    def __init__(self, seen: list[dict[str, Any]]) -> None:
        self.seen = seen
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, dict[str, Any]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except Exception:
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.requests[event.stream_id] = {"headers": dict(event.headers), "size": 0}
                if event.stream_ended is not None:
                    self._respond(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                req = self.requests.get(event.stream_id)
                if req is not None:
                    req["size"] += len(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_ended is not None:
                    self._respond(event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                if event.stream_id in self.requests:
                    self._respond(event.stream_id)
        self._flush()

    def _respond(self, stream_id: int) -> None:
        req = self.requests.pop(stream_id, None)
        if req is None:
            return
        headers = req["headers"]
        self.seen.append(headers)
        body = json.dumps(
            {
                "path": headers.get(":path"),
                "authority": headers.get(":authority"),
                "protocol": "h2",
                "size": req["size"],
            }
        ).encode()
        self.conn.send_headers(
            stream_id,
            [(":status", "200"), ("content-type", "application/grpc"), ("x-origin", "h2")],
        )
        self.conn.send_data(stream_id, body)
        self.conn.send_headers(
            stream_id, [("grpc-status", "0"), ("grpc-message", "ok")], end_stream=True
        )

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)


async def start_h2_origin(
    certfile: str, keyfile: str, host: str = "127.0.0.1"
) -> tuple[asyncio.Server, int, list[dict[str, Any]]]:
    """(server, port, request headers seen) for an h2-over-TLS origin with the given cert."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile, keyfile)
    ctx.set_alpn_protocols(["h2"])
    seen: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _H2OriginProtocol(seen), host, 0, ssl=ctx)
    return server, int(server.sockets[0].getsockname()[1]), seen
