"""`burrow tunnel info` and the v4 connections API with replicas on two edges (issue 5): two
edge nodes share one store (in-process, one SQLite file or PostgreSQL database, one CA), two
burrow connectors run the same tunnel with one connection to each edge, and every connector and
every connection (edge node, index, version, since) is listed by either edge's API."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from burrow.admin.client import OriginCert, write_origin_cert
from burrow.cli.main import _register_commands, app
from burrow.connector.supervisor import Connector, ConnectorConfig
from burrow.edge.server import EdgeServer, store_url_for
from burrow.ingress.rules import Ingress
from burrow.net.listen import format_hostport
from burrow.pki.ca import CA_CERT_FILE, CA_KEY_FILE
from burrow.testing.harness import provision, start_edge

RUNNER = CliRunner()
_register_commands()  # the CLI registers its subcommands lazily


def _share_ca(first: EdgeServer, state_dir: Path) -> None:
    state_dir.mkdir(parents=True, mode=0o700)
    for name in (CA_CERT_FILE, CA_KEY_FILE):
        shutil.copy2(first.config.state_dir / name, state_dir / name)


async def start_sibling_edge(first: EdgeServer, state_dir: Path) -> EdgeServer:
    """A second edge node on the first one's store and CA, with its own node id."""
    _share_ca(first, state_dir)
    store_url = first.config.store_url or store_url_for(first.config.state_dir)
    return await start_edge(state_dir, store_url=store_url, admin_listen="127.0.0.1:0")


async def flushed(*edges: EdgeServer) -> None:
    for edge in edges:
        assert edge.journal is not None
        await edge.journal.flush()


async def origin_cert_for(edge: EdgeServer, account: str, path: Path) -> Path:
    assert edge.store is not None
    _, token = await edge.store.create_api_token(account, ["account:admin"])
    write_origin_cert(path, OriginCert(account_id=account, api_token=token))
    return path


def api_url(edge: EdgeServer) -> str:
    assert edge.admin_address is not None
    return f"http://{format_hostport(*edge.admin_address)}/client/v4"


async def tunnel_info(edge: EdgeServer, cert: Path, name: str, *extra: str) -> Any:
    args = ["tunnel", "info", name, "--origincert", str(cert), "--api-url", api_url(edge)]
    result = await asyncio.to_thread(RUNNER.invoke, app, [*args, *extra])
    assert result.exit_code == 0, result.output
    return result.output


async def wait_for(check: Any, limit: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not check():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def check_connectors(
    clients: list[dict[str, Any]], expected: dict[str, str], nodes: set[str]
) -> None:
    """`expected`: connector id -> version. Each has one connection on each edge node."""
    assert {c["id"]: c["version"] for c in clients} == expected
    for c in clients:
        conns = c["conns"]
        assert sorted(x["conn_index"] for x in conns) == [0, 1], conns
        assert {x["edge_node"] for x in conns} == nodes, conns
        assert all(x["client_id"] == c["id"] for x in conns)
        assert all(x["client_version"] == c["version"] for x in conns)
        assert all(x["opened_at"] and x["colo_name"] for x in conns)
        assert c["run_at"] == min(x["opened_at"] for x in conns)


async def test_two_replicas_on_two_edges_sharing_a_store(tmp_path: Path) -> None:
    edge_a = await start_edge(tmp_path / "edge-a", admin_listen="127.0.0.1:0")
    edge_b: EdgeServer | None = None
    connectors: list[Connector] = []
    try:
        edge_b = await start_sibling_edge(edge_a, tmp_path / "edge-b")
        assert edge_a.journal is not None and edge_b.journal is not None
        assert edge_a.journal.node != edge_b.journal.node
        made = await provision(edge_a, "replicas", hostnames=("app.localhost",))
        await edge_b.reload()
        edges = [
            format_hostport(*edge_a.tunnel_addresses[0]),
            format_hostport(*edge_b.tunnel_addresses[0]),
        ]
        for _ in range(2):
            connector = Connector(
                ConnectorConfig(
                    credentials=made.credentials,
                    ingress=Ingress.parse([{"service": "http_status:204"}]),
                    edges=edges,
                    ha_connections=2,
                    grace_period=1.0,
                )
            )
            await connector.start()
            connectors.append(connector)
        await wait_for(lambda: all(c.ready_connections == 2 for c in connectors))
        await wait_for(lambda: len(edge_a.registry.all()) == 2 and len(edge_b.registry.all()) == 2)
        await flushed(edge_a, edge_b)

        cert = await origin_cert_for(edge_a, made.credentials.account_tag, tmp_path / "cert.pem")
        version = f"burrow-{__import__('burrow').__version__}"
        expected = {str(c.connector_id): version for c in connectors}
        nodes = {edge_a.journal.node, edge_b.journal.node}
        for edge in (edge_a, edge_b):  # either node's API sees the whole tunnel
            doc = json.loads(await tunnel_info(edge, cert, "replicas", "--output", "json"))
            assert doc["name"] == "replicas" and doc["id"] == str(made.tunnel.id)
            check_connectors(doc["conns"], expected, nodes)
        text = await tunnel_info(edge_a, cert, "replicas")
        assert "CONNECTOR ID" in text and "EDGE NODE" in text
        for connector in connectors:
            lines = [ln for ln in text.splitlines() if ln.startswith(str(connector.connector_id))]
            assert len(lines) == 3, text  # one connector row + one row per connection
        for node in nodes:
            assert text.count(node) == 2  # one connection of each replica on each node

        # One replica stops: it disappears from the listing, the other stays whole.
        await connectors[0].stop(grace=0.5)
        await wait_for(lambda: len(edge_a.registry.all()) == 1 and len(edge_b.registry.all()) == 1)
        await flushed(edge_a, edge_b)
        doc = json.loads(await tunnel_info(edge_b, cert, "replicas", "--output", "json"))
        check_connectors(doc["conns"], {str(connectors[1].connector_id): version}, nodes)
    finally:
        for connector in connectors:
            await connector.stop(grace=0.5)
        if edge_b is not None:
            await edge_b.stop(grace=0.5)
        await edge_a.stop(grace=0.5)
