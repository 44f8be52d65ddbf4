"""An in-process edge + connector (+ origin) on loopback, for tests and benchmarks.

async with TunnelStack.start(tmp_path, ingress=...) as stack:
    url = stack.url("/echo")          # http://127.0.0.1:PORT/echo, send Host: stack.host
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from burrow.connector.supervisor import Connector, ConnectorConfig
from burrow.edge.provision import Provisioned, create_tunnel
from burrow.edge.server import EdgeConfig, EdgeServer
from burrow.ingress.rules import Ingress
from burrow.net import recvbuf
from burrow.net.listen import format_hostport
from burrow.testing.pgdb import create_database, edges_use_postgres
from burrow.wire import DataPiece

_PG_DATABASES: dict[str, str] = {}


async def start_edge(state_dir: Path, **overrides: Any) -> EdgeServer:
    cfg = EdgeConfig(
        state_dir=state_dir,
        tunnel_listen=["127.0.0.1:0"],
        http_listen=["127.0.0.1:0"],
        admin_listen=None,
        grace_period=5.0,
        poll_interval=0.2,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    if cfg.store_url is None and edges_use_postgres():
        # The same tests, on PostgreSQL: scripts/test.sh runs a second pass this way. An edge
        # restarted on the same state directory finds the same database.
        key = str(state_dir)  # tests pass the same path object to a restarted edge
        if key not in _PG_DATABASES:
            _PG_DATABASES[key] = await create_database("burrow_edge")
        cfg.store_url = _PG_DATABASES[key]
    edge = EdgeServer(cfg)
    await edge.start()
    return edge


async def provision(
    edge: EdgeServer, name: str = "test", hostnames: Sequence[str] = ("app.localhost",)
) -> Provisioned:
    assert edge.store is not None and edge.pki is not None
    made = await create_tunnel(
        edge.store,
        edge.pki,
        edge.config.state_dir,
        name,
        hostnames,
        edges=[format_hostport(*a) for a in edge.tunnel_addresses],
    )
    await edge.reload()
    return made


async def start_connector(
    made: Provisioned, ingress: Ingress, *, ha_connections: int = 1, wait: bool = True
) -> Connector:
    connector = Connector(
        ConnectorConfig(
            credentials=made.credentials,
            ingress=ingress,
            ha_connections=ha_connections,
            grace_period=5.0,
        )
    )
    await connector.start()
    if wait:
        await asyncio.wait_for(connector.ready.wait(), 10)
    return connector


@dataclass
class TunnelStack:
    edge: EdgeServer
    connector: Connector
    made: Provisioned
    host: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def http_port(self) -> int:
        return self.edge.http_addresses[0][1]

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def host_url(self, path: str = "/") -> str:
        """A URL with the routed name (`*.localhost` resolves to loopback in curl)."""
        return f"http://{self.host}:{self.http_port}{path}"

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        state_dir: Path,
        ingress: Ingress,
        *,
        hostnames: Sequence[str] = ("app.localhost",),
        ha_connections: int = 1,
    ) -> AsyncIterator[TunnelStack]:
        edge = await start_edge(state_dir)
        connector = None
        try:
            made = await provision(edge, hostnames=hostnames)
            connector = await start_connector(made, ingress, ha_connections=ha_connections)
            yield cls(edge=edge, connector=connector, made=made, host=hostnames[0])
        finally:
            if connector is not None:
                await connector.stop(grace=1.0)
            await edge.stop(grace=1.0)


@asynccontextmanager
async def protocol_origin(
    factory: Callable[[], asyncio.BaseProtocol],
    origin_request: dict[str, Any] | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[Ingress]:
    """A raw asyncio origin on loopback (one that times, splits or breaks its answers on
    purpose) and the ingress routing app.localhost to it, with a 404 for anything else.
    With `tls` it serves HTTPS (`origin_request` then says how to verify it)."""
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if tls is not None else "http"
    route: dict[str, Any] = {"hostname": "app.localhost", "service": f"{scheme}://127.0.0.1:{port}"}
    if origin_request:
        route["originRequest"] = origin_request
    try:
        yield Ingress.parse([route, {"service": "http_status:404"}])
    finally:
        server.close()


def origin_tls(
    directory: Path, name: str = "origin.localhost"
) -> tuple[ssl.SSLContext, dict[str, Any]]:
    """A server context for an HTTPS test origin, with a certificate for `name` from a fresh
    test CA, and the `originRequest` options that make the connector verify it."""
    import trustme  # a test dependency

    ca = trustme.CA()
    ca_path = directory / "origin-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(server_ctx)
    return server_ctx, {"caPool": str(ca_path), "originServerName": name}


class CountingPool(recvbuf.RecvBuffers):
    """A receive-buffer pool that counts the bytes read through it and those it lent as views:
    install it as `recvbuf.POOL` to see that a path reads through the pool."""

    def __init__(self) -> None:
        super().__init__()
        self.lent = 0
        self.filled_bytes = 0

    def filled(self, n: int, copy_small: bool = True) -> DataPiece:
        piece = super().filled(n, copy_small)
        self.filled_bytes += n
        if type(piece) is memoryview:
            self.lent += n
        return piece


async def read_stalling(reader: asyncio.StreamReader, rounds: int = 40) -> bytearray:
    """Read a little at a time with pauses between, so that the tunnel behind fills and
    drains again and again (views of receive buffers wait in it meanwhile)."""
    got = bytearray()
    for _ in range(rounds):
        await asyncio.sleep(0.01)
        got += await asyncio.wait_for(reader.read(256 << 10), 10)
    return got
