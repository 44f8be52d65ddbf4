"""`cryptography` stays out of a running edge, `websockets` out of a connector without WebSockets.

`cryptography` (x509 + hazmat) costs a long-running process ~10 MB of RSS (issue 9: edge and
connector together under 100 MB idle), yet an edge at steady state only hands PEM files to the
stdlib `ssl` module. The CA and tunnel certificate are created or checked in a child process
(`burrow.pki.worker`) and confirmed without parsing on later starts; development certificates
for the HTTPS listener are issued in a child too; the sealing box imports it on first use.
The connector imports `websockets` (for its C unmasking) only on the first masked frame.
The processes write their `sys.modules` on SIGTERM when BURROW_DEBUG_MODULES names a file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from e2e_world import CURL, E2E, Edge, dumped_packages, free_port

HOST = "crypto.localhost"


async def _websocket_echo(edge: Edge) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(edge.url("/ws"), headers={"Host": HOST}) as ws:
            await ws.send_str("through the tunnel")
            msg = await ws.receive(timeout=10)
            return str(msg.data)


def test_edge_never_loads_cryptography_and_connector_loads_websockets_on_use(
    e2e: E2E, tmp_path: Path
) -> None:
    sd = tmp_path / "edge-state"
    ports = (free_port(), free_port(), free_port())
    dumps = {n: tmp_path / f"{n}.modules" for n in ("fresh", "again", "https", "conn", "conn_ws")}

    # 1. A fresh state directory: the CA and tunnel certificate are made in a child process.
    edge = e2e.start_edge_dumping_modules(sd, dumps["fresh"], ports)
    assert (sd / "ca.pem").exists() and (sd / "tunnel.check.json").exists()
    made = e2e.create_tunnel(edge, "crypto", HOST)
    conn = e2e.run_connector(
        "--token", made["token"], "--url", e2e.origin, env={"BURROW_DEBUG_MODULES": str(dumps["conn"])}
    )  # fmt: skip
    r, _ = e2e.wait_status(edge.url("/echo"), 200, host=HOST, timeout=20)
    assert r.json()["host"] == HOST
    conn.stop_cleanly()
    edge.proc.stop_cleanly()

    # 2. Restarted on that state (HTTP/1.1 only).
    edge = e2e.start_edge_dumping_modules(sd, dumps["again"], ports)
    conn = e2e.run_connector(
        "--token", made["token"], "--url", e2e.origin,
        env={"BURROW_DEBUG_MODULES": str(dumps["conn_ws"])},
    )  # fmt: skip
    e2e.wait_status(edge.url("/echo"), 200, host=HOST, timeout=20)
    # A WebSocket through the tunnel works (the connector relays it to the HTTP origin).
    assert asyncio.run(_websocket_echo(edge)) == "through the tunnel"
    edge.proc.stop_cleanly()

    # 3. With the HTTPS listener: the first handshake for the routed name gets a development
    # certificate from the edge CA, issued in a child process.
    https_port = free_port()
    edge = e2e.start_edge_dumping_modules(sd, dumps["https"], ports, https_port=https_port)
    assert CURL is not None
    url = f"https://{HOST}:{https_port}/echo"
    args = ["--cacert", str(sd / "ca.pem"), "--resolve", f"{HOST}:{https_port}:127.0.0.1"]
    r, _ = e2e.wait_status(url, 200, *args, timeout=30)
    assert r.json()["host"] == HOST
    assert e2e.curl(url, *args, "--http1.1").status == 200
    conn.stop_cleanly()
    edge.proc.stop_cleanly()

    loaded = {name: dumped_packages(path) for name, path in dumps.items()}
    for name in ("fresh", "again", "https"):
        assert {"burrow", "sqlalchemy", "ssl"} <= loaded[name], name  # the dumps are real
        assert "cryptography" not in loaded[name], name
    for name in ("conn", "conn_ws"):
        assert {"burrow", "capnp"} <= loaded[name]
        assert "websockets" not in loaded[name], name
