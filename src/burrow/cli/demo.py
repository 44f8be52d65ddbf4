"""`burrow demo`: a complete local deployment in one process, on embedded defaults.

An edge (SQLite state in a user directory), a tunnel routed for `hello.localhost`, a connector
dialling the edge, and the built-in hello_world origin. Names under `.localhost` resolve to
loopback in curl and browsers, so the printed URL works with no DNS set-up.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
from pathlib import Path

import typer

from burrow.cli.apps import app
from burrow.cli.common import handle_errors, run_async, serve_until_signal
from burrow.connector.supervisor import Connector, ConnectorConfig
from burrow.edge.provision import create_tunnel
from burrow.edge.server import EdgeConfig, EdgeServer
from burrow.ingress.rules import Ingress
from burrow.net.listen import format_hostport
from burrow.observability.logs import setup_logging


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@app.command("demo")
def demo(
    port: int = typer.Option(8080, "--port", help="Public HTTP port (a free one if taken)."),
    hostname: str = typer.Option("hello.localhost", "--hostname"),
    state_dir: Path = typer.Option(None, "--state-dir", help="Default: a temporary directory."),
    loglevel: str = typer.Option("warn", "--loglevel"),
) -> None:
    """Run an edge, a tunnel, a connector and a hello-world origin; print a URL to curl."""

    async def main() -> None:
        setup_logging(loglevel)
        tmp = None
        sd = state_dir
        if sd is None:
            tmp = tempfile.TemporaryDirectory(prefix="burrow-demo-")
            sd = Path(tmp.name)
        http_port = port if _free(port) else 0
        edge = EdgeServer(
            EdgeConfig(
                state_dir=sd,
                tunnel_listen=["127.0.0.1:0"],
                http_listen=[f"127.0.0.1:{http_port}"],
                admin_listen=None,
                grace_period=2.0,
            )
        )
        await edge.start()
        assert edge.store is not None and edge.pki is not None
        tunnel_addr = format_hostport(*edge.tunnel_addresses[0])
        existing = await edge.store.find_tunnel(
            (await edge.store.get_or_create_default_account()).id, "demo"
        )
        if existing is not None:
            await edge.store.delete_tunnel(existing.id)
        made = await create_tunnel(
            edge.store, edge.pki, sd, "demo", [hostname], edges=[tunnel_addr], overwrite=True
        )
        await edge.reload()
        connector = Connector(
            ConnectorConfig(
                credentials=made.credentials,
                ingress=Ingress.single(None, hello_world=True),
                ha_connections=2,
                grace_period=2.0,
            )
        )
        run_task = asyncio.ensure_future(connector.run())
        await asyncio.wait_for(connector.ready.wait(), 15)
        public_port = edge.http_addresses[0][1]
        url = f"http://{hostname}:{public_port}/"
        typer.echo(f"burrow demo is up: tunnel {made.tunnel.id} is connected.\n")
        typer.echo(f"  curl {url}\n")
        typer.echo("Press Ctrl-C to stop.")

        async def stop() -> None:
            await connector.stop(grace=1.0)
            await edge.stop(grace=1.0)
            if tmp is not None:
                tmp.cleanup()

        await serve_until_signal(stop, run_task)

    handle_errors(lambda: run_async(main()))
