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
import signal
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
from e2e_world import CURL, E2E, Edge, Proc, free_port, store_args, wait_until

HOST = "crypto.localhost"


def _loaded(path: Path) -> set[str]:
    return {name.split(".")[0] for name in path.read_text().split()}


def _spawn_edge(
    e2e: E2E, sd: Path, ports: tuple[int, int, int], dump: Path, https_port: int | None = None
) -> Edge:
    """`burrow edge serve` waited for on its public listener (not /healthz: that would load
    the admin API, which is not what this test is about)."""
    tunnel_port, http_port, admin_port = ports
    store_url = e2e.store_url(sd)
    args = ["edge", "serve", "--state-dir", str(sd), *store_args(store_url)]
    args += ["--tunnel-listen", f"127.0.0.1:{tunnel_port}", "--http-listen"]
    args += [f"127.0.0.1:{http_port}", "--admin-listen", f"127.0.0.1:{admin_port}"]
    if https_port is not None:
        args += ["--https-listen", f"127.0.0.1:{https_port}"]
    proc = e2e.spawn("edge", args, {"BURROW_DEBUG_MODULES": str(dump)})
    edge = Edge(proc, sd, tunnel_port, http_port, admin_port, store_url)

    def listening() -> bool:
        assert edge.proc.running(), edge.proc.describe()
        try:
            urllib.request.urlopen(edge.url("/"), timeout=2)
        except urllib.error.HTTPError:
            return True  # any HTTP answer: the public listener is up
        except OSError:
            return False
        return True

    wait_until(listening, 30, what="the edge's public listener")
    return edge


def _stop(proc: Proc) -> None:
    code, _ = proc.stop_and_wait(signal.SIGTERM, 30)
    assert code == 0, proc.describe()


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
    edge = _spawn_edge(e2e, sd, ports, dumps["fresh"])
    assert (sd / "ca.pem").exists() and (sd / "tunnel.check.json").exists()
    made = e2e.create_tunnel(edge, "crypto", HOST)
    conn = e2e.run_connector(
        "--token", made["token"], "--url", e2e.origin, env={"BURROW_DEBUG_MODULES": str(dumps["conn"])}
    )  # fmt: skip
    r, _ = e2e.wait_status(edge.url("/echo"), 200, host=HOST, timeout=20)
    assert r.json()["host"] == HOST
    _stop(conn)
    _stop(edge.proc)

    # 2. Restarted on that state (HTTP/1.1 only).
    edge = _spawn_edge(e2e, sd, ports, dumps["again"])
    conn = e2e.run_connector(
        "--token", made["token"], "--url", e2e.origin,
        env={"BURROW_DEBUG_MODULES": str(dumps["conn_ws"])},
    )  # fmt: skip
    e2e.wait_status(edge.url("/echo"), 200, host=HOST, timeout=20)
    # A WebSocket through the tunnel works (the connector relays it to the HTTP origin).
    assert asyncio.run(_websocket_echo(edge)) == "through the tunnel"
    _stop(edge.proc)

    # 3. With the HTTPS listener: the first handshake for the routed name gets a development
    # certificate from the edge CA, issued in a child process.
    https_port = free_port()
    edge = _spawn_edge(e2e, sd, ports, dumps["https"], https_port=https_port)
    assert CURL is not None
    url = f"https://{HOST}:{https_port}/echo"
    args = ["--cacert", str(sd / "ca.pem"), "--resolve", f"{HOST}:{https_port}:127.0.0.1"]
    r, _ = e2e.wait_status(url, 200, *args, timeout=30)
    assert r.json()["host"] == HOST
    assert e2e.curl(url, *args, "--http1.1").status == 200
    _stop(conn)
    _stop(edge.proc)

    loaded = {name: _loaded(path) for name, path in dumps.items()}
    for name in ("fresh", "again", "https"):
        assert {"burrow", "sqlalchemy", "ssl"} <= loaded[name], name  # the dumps are real
        assert "cryptography" not in loaded[name], name
    for name in ("conn", "conn_ws"):
        assert {"burrow", "capnp"} <= loaded[name]
        assert "websockets" not in loaded[name], name
