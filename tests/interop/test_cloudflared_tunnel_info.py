"""`burrow tunnel info` and the v4 connections API with the official cloudflared and burrow's
connector as replicas of one tunnel on two edge nodes sharing one store (issue 5).

Skipped unless ``CLOUDFLARED_BIN`` names a cloudflared binary. Each connector keeps one
connection to each edge node (cloudflared gives one connection per ``--edge`` address);
cloudflared is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from burrow.admin.client import OriginCert, write_origin_cert
from burrow.cli.main import _register_commands, app
from burrow.connector.supervisor import Connector, ConnectorConfig
from burrow.edge.server import EdgeServer, store_url_for
from burrow.edge.tunnel_conn import EdgeTunnelConnection
from burrow.ingress.rules import Ingress
from burrow.net.listen import format_hostport
from burrow.pki.ca import CA_CERT_FILE, CA_KEY_FILE
from burrow.testing.harness import provision, start_edge

CLOUDFLARED_BIN = os.environ.get("CLOUDFLARED_BIN", "")

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not CLOUDFLARED_BIN, reason="CLOUDFLARED_BIN is not set (official cloudflared binary)"
    ),
]

RUNNER = CliRunner()
_register_commands()


def _share_ca(first: EdgeServer, state_dir: Path) -> None:
    state_dir.mkdir(parents=True, mode=0o700)
    for name in (CA_CERT_FILE, CA_KEY_FILE):
        shutil.copy2(first.config.state_dir / name, state_dir / name)


def _cfd_version() -> str:
    out = subprocess.run(
        [CLOUDFLARED_BIN, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    match = re.search(r"version (\S+)", out)
    assert match, out
    return match.group(1)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


async def test_cloudflared_and_burrow_replicas_in_tunnel_info(tmp_path: Path) -> None:
    edge_a = await start_edge(tmp_path / "edge-a", admin_listen="127.0.0.1:0")
    edge_b: EdgeServer | None = None
    connector: Connector | None = None
    proc: asyncio.subprocess.Process | None = None
    log = tmp_path / "cloudflared.log"
    try:
        _share_ca(edge_a, tmp_path / "edge-b")
        edge_b = await start_edge(
            tmp_path / "edge-b",
            store_url=edge_a.config.store_url or store_url_for(edge_a.config.state_dir),
        )
        assert edge_a.pki is not None and edge_a.journal and edge_b.journal
        made = await provision(edge_a, "mixed", hostnames=("app.localhost",))
        await edge_b.reload()
        edges = [format_hostport(*e.tunnel_addresses[0]) for e in (edge_a, edge_b)]
        home = tmp_path / "cfd-home"
        home.mkdir()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                CLOUDFLARED_BIN, "tunnel", "--no-autoupdate", "--protocol", "http2",
                "--metrics", "127.0.0.1:0", "--ha-connections", "2",
                "--url", "http://127.0.0.1:9", "run", "--token", made.token,
                env={
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "HOME": str(home),
                    "TUNNEL_EDGE": ",".join(edges),
                    "TUNNEL_CACERT": str(edge_a.pki.ca_cert_path),
                    "TUNNEL_NO_PRECHECKS": "true",
                },
                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, cwd=home,
            )  # fmt: skip
        finally:
            os.close(fd)
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

        def registered() -> int:
            return sum(
                isinstance(c, EdgeTunnelConnection) and c.accepting
                for e in (edge_a, edge_b)
                for c in e.registry.all()
            )

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while registered() < 4:  # an external process: poll the registries
            assert proc.returncode is None, _tail(log)
            assert loop.time() < deadline, _tail(log)
            await asyncio.sleep(0.05)
        await edge_a.journal.flush()
        await edge_b.journal.flush()

        assert edge_a.store is not None and edge_a.admin_address is not None
        account = made.credentials.account_tag
        _, token = await edge_a.store.create_api_token(account, ["account:admin"])
        cert = tmp_path / "cert.pem"
        write_origin_cert(cert, OriginCert(account_id=account, api_token=token))
        api = f"http://{format_hostport(*edge_a.admin_address)}/client/v4"
        args = ["tunnel", "info", "mixed", "--origincert", str(cert), "--api-url", api]
        result = await asyncio.to_thread(RUNNER.invoke, app, [*args, "--output", "json"])
        assert result.exit_code == 0, result.output
        clients: list[dict[str, Any]] = json.loads(result.output)["conns"]
        versions = {c["id"]: c["version"] for c in clients}
        burrow_id = str(connector.connector_id)
        assert versions.pop(burrow_id).startswith("burrow-")
        assert list(versions.values()) == [_cfd_version()], clients
        nodes = {edge_a.journal.node, edge_b.journal.node}
        for c in clients:
            assert sorted(x["conn_index"] for x in c["conns"]) == [0, 1]
            assert {x["edge_node"] for x in c["conns"]} == nodes
            assert all(x["opened_at"] and x["client_version"] == c["version"] for x in c["conns"])
        text = await asyncio.to_thread(RUNNER.invoke, app, args)
        assert text.exit_code == 0, text.output
        for c in clients:
            assert sum(ln.startswith(c["id"]) for ln in text.output.splitlines()) == 3
    finally:
        if connector is not None:
            await connector.stop(grace=0.5)
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
        if edge_b is not None:
            await edge_b.stop(grace=0.5)
        await edge_a.stop(grace=0.5)
