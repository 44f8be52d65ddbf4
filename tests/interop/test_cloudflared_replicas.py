"""The official cloudflared and burrow's connector serving one tunnel as replicas (issue 5).

Skipped unless ``CLOUDFLARED_BIN`` names a cloudflared binary. cloudflared gives one connection
per edge address, so the edge listens on two tunnel ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from burrow.connector.supervisor import Connector, ConnectorConfig
from burrow.edge.tunnel_conn import EdgeTunnelConnection
from burrow.ingress.rules import Ingress
from burrow.net.listen import format_hostport
from burrow.testing.harness import provision, start_edge
from burrow.testing.origins import start_test_origin

CLOUDFLARED_BIN = os.environ.get("CLOUDFLARED_BIN", "")

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not CLOUDFLARED_BIN, reason="CLOUDFLARED_BIN is not set (official cloudflared binary)"
    ),
]


async def test_cloudflared_and_burrow_are_replicas(tmp_path: Path) -> None:
    runner, origin_port = await start_test_origin()
    edge = await start_edge(tmp_path / "edge", tunnel_listen=["127.0.0.1:0", "127.0.0.1:0"])
    proc = None
    connector = None
    try:
        assert edge.pki is not None
        made = await provision(edge, hostnames=("app.localhost",))
        edges = [format_hostport(*a) for a in edge.tunnel_addresses]
        log = os.open(tmp_path / "cloudflared.log", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                CLOUDFLARED_BIN, "tunnel", "--no-autoupdate", "--protocol", "http2",
                "--ha-connections", "2", "--url", f"http://127.0.0.1:{origin_port}",
                "run", "--token", made.token,
                env={
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "HOME": str(tmp_path),
                    "TUNNEL_EDGE": ",".join(edges),
                    "TUNNEL_CACERT": str(edge.pki.ca_cert_path),
                    "TUNNEL_NO_PRECHECKS": "true",
                },
                stdout=log, stderr=log,
            )  # fmt: skip
        finally:
            os.close(log)
        connector = Connector(
            ConnectorConfig(
                credentials=made.credentials,
                ingress=Ingress.single(f"http://127.0.0.1:{origin_port}"),
                edges=edges,
                ha_connections=2,
            )
        )
        await connector.start()

        def clients() -> set[bytes]:
            return {c.client_id for c in edge.registry.all() if isinstance(c, EdgeTunnelConnection)}

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(clients()) < 2 or len(edge.registry.all()) < 4:
            assert loop.time() < deadline, (tmp_path / "cloudflared.log").read_text()[-3000:]
            await asyncio.sleep(0.1)

        seen: set[str] = set()
        url = f"http://127.0.0.1:{edge.http_addresses[0][1]}/echo"
        async with aiohttp.ClientSession() as s:
            for _ in range(40):
                async with s.get(url, headers={"Host": "app.localhost"}) as r:
                    assert r.status == 200
                    headers = {k.lower(): v for k, v in (await r.json())["headers"]}
                    seen.add(headers["cf-warp-tag-id"])
        assert str(connector.connector_id) in seen
        assert len(seen) == 2  # cloudflared served some of them too
    finally:
        if connector is not None:
            await connector.stop(grace=0.5)
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 20)
        await edge.stop(grace=0.5)
        await runner.cleanup()
