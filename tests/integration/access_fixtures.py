"""Shared pieces of the Access integration tests: a raw origin that reports exactly what it
received (request target and headers; it echoes bytes after a WebSocket upgrade), a raw HTTP
client (aiohttp would normalise the paths under test), and an edge + connector stack."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from burrow.edge.server import EdgeServer
from burrow.ingress.rules import Ingress
from burrow.store.access_store import AccessStore
from burrow.testing.harness import provision, start_connector, start_edge

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass
class RawOrigin:
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    server: asyncio.Server | None = None
    port: int = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                target = lines[0].split(" ")[1]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                self.seen.append((target, headers))
                n = int(headers.get("content-length", "0") or 0)
                if n:
                    await r.readexactly(n)
                if headers.get("upgrade", "").lower() == "websocket":
                    accept = base64.b64encode(
                        hashlib.sha1((headers["sec-websocket-key"] + WS_GUID).encode()).digest()
                    ).decode()
                    w.write(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                        + accept.encode()
                        + b"\r\n\r\n"
                    )
                    while data := await r.read(65536):
                        w.write(data)
                    return
                body = json.dumps({"target": target, "headers": headers}).encode()
                w.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return ""

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_request(
    port: int,
    target: str,
    host: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> Response:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        w.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        data = await asyncio.wait_for(r.read(), 10)
    finally:
        w.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *hlines = head.decode("latin-1").split("\r\n")
    hs = [(k.strip(), v.strip()) for k, _, v in (h.partition(":") for h in hlines)]
    return Response(int(status_line.split(" ")[1]), hs, rest)


def cookie_of(resp: Response) -> str:
    for v in resp.all("set-cookie"):
        if v.startswith("CF_Authorization="):
            return v.split(";", 1)[0].split("=", 1)[1]
    return ""


@dataclass
class AccessStack:
    edge: EdgeServer
    origin: RawOrigin
    access: AccessStore

    @property
    def port(self) -> int:
        return self.edge.http_addresses[0][1]

    async def get(self, target: str, host: str = "app.localhost", **kw: Any) -> Response:
        return await raw_request(self.port, target, f"{host}:{self.port}", **kw)

    async def sync(self) -> None:
        """Make the edge pick up store changes now (the poller would within 0.2 s)."""
        await self.edge.reload()


@asynccontextmanager
async def access_stack(tmp_path: Path, hosts: tuple[str, ...]) -> AsyncIterator[AccessStack]:
    origin = RawOrigin()
    await origin.start()
    edge = await start_edge(tmp_path, access_team_domain="auth.localhost")
    connector = None
    try:
        made = await provision(edge, hostnames=hosts)
        ingress = Ingress.parse([{"service": f"http://127.0.0.1:{origin.port}"}])
        connector = await start_connector(made, ingress)
        assert edge.access is not None and edge.access.store is not None
        yield AccessStack(edge, origin, edge.access.store)
    finally:
        if connector is not None:
            await connector.stop(grace=1.0)
        await edge.stop(grace=1.0)
        await origin.stop()
