"""`burrow tunnel run` in each of the ways a user configures it, GET and POST through the edge."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from e2e_world import E2E, Edge

HOST = "app.localhost"


def _get_and_post(e2e: E2E, edge: Edge, host: str = HOST) -> None:
    r, _ = e2e.wait_status(edge.url("/echo?q=1&q=2"), 200, host=host, timeout=10)
    info = r.json()
    assert info["method"] == "GET" and info["path"] == "/echo?q=1&q=2"
    assert info["host"] == host
    # --resolve instead of a Host header: what a user does with a real name.
    r = e2e.curl(
        f"http://{host}:{edge.http_port}/echo",
        "--resolve",
        f"{host}:{edge.http_port}:127.0.0.1",
        "--data-binary",
        "hello through the tunnel",
    )
    assert r.status == 200, r
    info = r.json()
    assert info["method"] == "POST" and info["body"] == "hello through the tunnel"
    # The edge forwards the normalised host (port dropped) as :authority.
    assert info["host"].split(":")[0] == host


def test_run_with_token(e2e: E2E) -> None:
    edge = e2e.start_edge()
    made = e2e.create_tunnel(edge, "tok", HOST)
    # The token carries the edge address and CA the running edge recorded: nothing else needed.
    conn = e2e.run_connector("--token", made["token"], "--url", e2e.origin)
    edge.wait_connections(4, conn)
    _get_and_post(e2e, edge)


def test_run_with_credentials_file_edge_and_cacert(e2e: E2E) -> None:
    edge = e2e.start_edge()
    made = e2e.create_tunnel(edge, "cred", HOST)
    conn = e2e.run_connector(
        "--credentials-file",
        made["credentials_file"],
        "--edge",
        edge.tunnel_addr,
        "--cacert",
        str(edge.ca),
        "--url",
        e2e.origin,
        "--ha-connections",
        "2",
    )
    edge.wait_connections(2, conn)
    _get_and_post(e2e, edge)


def test_run_with_environment_variables(e2e: E2E) -> None:
    edge = e2e.start_edge()
    made = e2e.create_tunnel(edge, "env", HOST)
    # A token without the burrow-specific edge/CA keys, as a cloudflared user would have it:
    # the edge and CA then come from TUNNEL_EDGE / TUNNEL_CACERT.
    body = json.loads(base64.b64decode(made["token"]))
    plain = base64.b64encode(json.dumps({k: body[k] for k in ("a", "s", "t")}).encode()).decode()
    conn = e2e.run_connector(
        "--url",
        e2e.origin,
        env={"TUNNEL_TOKEN": plain, "TUNNEL_EDGE": edge.tunnel_addr, "TUNNEL_CACERT": str(edge.ca)},
    )
    edge.wait_connections(4, conn)
    _get_and_post(e2e, edge)


def test_run_with_config_file_ingress(e2e: E2E, tmp_path: Path) -> None:
    edge = e2e.start_edge()
    made = e2e.create_tunnel(edge, "cfg", "a.localhost", "b.localhost", "c.localhost")
    config = tmp_path / "config.yml"
    config.write_text(
        f"tunnel: {made['id']}\n"
        f"credentials-file: {made['credentials_file']}\n"
        "ingress:\n"
        "  - hostname: a.localhost\n"
        f"    service: {e2e.origin}\n"
        "  - hostname: b.localhost\n"
        "    service: hello_world\n"
        "  - service: http_status:418\n"
    )
    conn = e2e.run_connector(
        "--config", str(config), "--edge", edge.tunnel_addr, "--cacert", str(edge.ca)
    )
    edge.wait_connections(4, conn)
    _get_and_post(e2e, edge, "a.localhost")
    r = e2e.curl(edge.url("/"), host="b.localhost")
    assert r.status == 200, r
    assert r.json()["served_by"].endswith("hello_world") and r.json()["host"] == "b.localhost"
    # Routed to the tunnel but matched by no hostname rule: the catch-all answers.
    r = e2e.curl(edge.url("/echo"), host="c.localhost")
    assert r.status == 418, r
