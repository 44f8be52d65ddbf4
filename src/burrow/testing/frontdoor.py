"""Front-door test helpers: an edge (with any EdgeConfig overrides) + connector + an origin that
records the paths it serves, and a raw-socket HTTP/1.1 client for malformed requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from burrow.edge.server import EdgeServer
from burrow.ingress.rules import Ingress
from burrow.testing.harness import provision, start_connector, start_edge
from burrow.testing.origins import test_origin_app as make_origin_app
from burrow.wire import http1


class SeenPaths(list[str]):
    """Paths the origin served, with an event set on every arrival."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()

    async def wait_for(self, n: int) -> None:
        while len(self) < n:
            self.arrived.clear()
            await self.arrived.wait()


@asynccontextmanager
async def edge_stack(
    tmp_path: Path,
    hostnames: tuple[str, ...] = ("app.localhost", "other.localhost", "files.localhost"),
    **edge_overrides: Any,
) -> AsyncIterator[tuple[EdgeServer, SeenPaths]]:
    """Edge (with overrides) + connector + an origin that records every path it serves."""
    seen = SeenPaths()

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(request.path_qs)
        seen.arrived.set()
        response: web.StreamResponse = await handler(request)
        return response

    app = make_origin_app()
    app.middlewares.append(record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    edge = await start_edge(tmp_path, **edge_overrides)
    connector = None
    try:
        made = await provision(edge, hostnames=list(hostnames))
        ingress = Ingress.parse([{"service": f"http://127.0.0.1:{port}"}])
        connector = await start_connector(made, ingress)
        yield edge, seen
    finally:
        if connector is not None:
            await connector.stop(grace=0.5)
        await edge.stop(grace=0.5)
        await runner.cleanup()


async def raw_exchange(
    port: int, payload: bytes, *, local: str = "127.0.0.1", limit_s: float = 5.0
) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Send raw bytes, read until the edge closes; every complete response (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    writer.write(payload)
    parser = http1.ResponseParser()
    for _ in range(8):
        parser.expect(b"GET")
    out: list[tuple[int, dict[bytes, bytes], bytes]] = []
    status, headers, body = 0, {}, bytearray()
    try:
        async with asyncio.timeout(limit_s):
            while True:
                data = await reader.read(65536)
                try:
                    events = parser.feed(data) if data else parser.feed_eof()
                except Exception:
                    break
                for ev in events:
                    if isinstance(ev, http1.ResponseHead):
                        status, headers, body = ev.status, dict(ev.headers), bytearray()
                    elif isinstance(ev, http1.Data):
                        body += ev.data
                    elif isinstance(ev, http1.EndOfMessage):
                        out.append((status, headers, bytes(body)))
                if not data:
                    break
    finally:
        writer.close()
    return out


async def curl(
    edge: EdgeServer, host: str, path: str, *args: str, cacert: Path | None = None
) -> tuple[str, int, bytes]:
    """(http_version, status, body) of one curl request to the HTTPS listener."""
    assert edge.pki is not None
    port = edge.https_addresses[0][1]
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "20",
        "--cacert", str(cacert or edge.pki.ca_cert_path),
        "--resolve", f"{host}:{port}:127.0.0.1",
        "-w", "\n%{http_version} %{response_code}",
        *args,
        f"https://{host}:{port}{path}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    body, _, tail = out.rpartition(b"\n")
    version, status = tail.decode().split()
    return version, int(status), body


async def h2_eyeball(
    edge: EdgeServer, host: str = "app.localhost", path: str = "/echo"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any, list[tuple[str, str]]]:
    """A raw HTTP/2 client (the `h2` package, a test dependency) connected to the edge's HTTPS
    listener with its preface queued: (reader, writer, connection, GET headers for `path`)."""
    import ssl

    import h2.config
    import h2.connection

    assert edge.pki is not None
    ctx = ssl.create_default_context(cafile=str(edge.pki.ca_cert_path))
    ctx.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", edge.https_addresses[0][1], ssl=ctx, server_hostname=host
    )
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "GET"), (":scheme", "https"), (":authority", host), (":path", path)]
    return reader, writer, conn, headers
