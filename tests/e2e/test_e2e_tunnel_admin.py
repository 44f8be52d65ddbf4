"""`burrow edge tunnel create|list|delete` against a running `burrow edge serve`."""

from __future__ import annotations

import base64
import json
import stat
import uuid
from pathlib import Path

from e2e_world import E2E


def test_create_list_pickup_delete(e2e: E2E) -> None:
    edge = e2e.start_edge()
    host = "app.localhost"
    # Unknown hostname before the tunnel exists.
    assert e2e.curl(edge.url("/echo"), host=host).status == 404

    made = e2e.create_tunnel(edge, "web", host)
    assert {"id", "name", "token", "credentials_file"} <= set(made)
    assert made["name"] == "web"
    uuid.UUID(made["id"])

    # The credentials file: 0600, cloudflared's JSON format.
    cred_path = Path(made["credentials_file"])
    assert stat.S_IMODE(cred_path.stat().st_mode) == 0o600
    creds = json.loads(cred_path.read_text())
    assert set(creds) == {"AccountTag", "TunnelSecret", "TunnelID", "Endpoint"}
    assert creds["TunnelID"] == made["id"]
    assert len(base64.b64decode(creds["TunnelSecret"], validate=True)) == 32
    assert creds["AccountTag"]
    # The token carries the same credentials (cloudflared's a/s/t keys).
    token = json.loads(base64.b64decode(made["token"]))
    assert (token["a"], token["s"], token["t"]) == (
        creds["AccountTag"],
        creds["TunnelSecret"],
        creds["TunnelID"],
    )

    # `list` shows it, in text and JSON.
    listed = e2e.burrow("edge", "tunnel", "list", *edge.state_args())
    assert listed.returncode == 0, listed.stderr
    assert made["id"] in listed.stdout and "web" in listed.stdout and host in listed.stdout
    rows = json.loads(e2e.burrow("edge", "tunnel", "list", *edge.state_args(), "--json").stdout)
    assert [(r["id"], r["name"], r["hostnames"]) for r in rows] == [(made["id"], "web", [host])]

    # The running edge notices the new route without a restart: the hostname now belongs to
    # a tunnel that is not connected (530) instead of being unknown (404).
    _, waited = e2e.wait_status(edge.url("/echo"), 530, host=host, timeout=5)
    print(f"\nnew tunnel picked up by the running edge after {waited:.2f}s")
    assert waited < 2.5, f"the edge took {waited:.2f}s to pick up the new tunnel"

    conn = e2e.run_connector("--token", made["token"], "--url", e2e.origin)
    edge.wait_connections(1, conn)
    r, _ = e2e.wait_status(edge.url("/echo?x=1"), 200, host=host, timeout=5)
    assert r.json()["path"] == "/echo?x=1"

    # `delete` removes it; the hostname is unknown again (404) on the running edge.
    deleted = e2e.burrow("edge", "tunnel", "delete", "web", *edge.state_args())
    assert deleted.returncode == 0, deleted.stderr
    assert made["id"] in deleted.stdout
    r, waited = e2e.wait_status(edge.url("/echo"), 404, host=host, timeout=5)
    print(f"deleted tunnel dropped by the running edge after {waited:.2f}s")
    assert waited < 2.5, f"the edge took {waited:.2f}s to drop the deleted tunnel"
    listed = e2e.burrow("edge", "tunnel", "list", *edge.state_args(), "--json")
    assert json.loads(listed.stdout) == []
    again = e2e.burrow("edge", "tunnel", "delete", "web", *edge.state_args())
    assert again.returncode != 0 and "web" in again.stderr
    conn.kill()


def test_create_leaves_the_running_edges_tunnel_certificate_alone(e2e: E2E) -> None:
    """`edge tunnel create` needs only the CA: it must not reissue the tunnel-listener
    certificate that `edge serve` made for its own names (it used to, without those names)."""
    edge = e2e.start_edge(extra_args=("--name", "edge.example.test"))
    cert = edge.state_dir / "tunnel.pem"
    before = cert.read_bytes()
    e2e.create_tunnel(edge, "web", "app.localhost")
    assert cert.read_bytes() == before
