"""A connector with a wrong secret or an unknown tunnel id: refused permanently, exits non-zero
with a clear message; the edge logs the refusal without ever writing the secret."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from pathlib import Path

import pytest
from e2e_world import E2E


@pytest.mark.parametrize("bad", ["secret", "tunnel_id"])
def test_refused_registration_exits_nonzero(e2e: E2E, bad: str) -> None:
    # Debug logging at the edge: the most verbose it gets must still not leak the secret.
    edge = e2e.start_edge(loglevel="debug")
    made = e2e.create_tunnel(edge, "victim", "victim.localhost")
    cred_path = Path(made["credentials_file"])
    creds = json.loads(cred_path.read_text())
    real_secret = creds["TunnelSecret"]
    sent_secret = real_secret
    if bad == "secret":
        sent_secret = base64.b64encode(os.urandom(32)).decode()
        creds["TunnelSecret"] = sent_secret
        expected = "secret"
    else:
        creds["TunnelID"] = str(uuid.uuid4())
        expected = "tunnel"
    cred_path.write_text(json.dumps(creds))

    t0 = time.monotonic()
    conn = e2e.run_connector(
        "--credentials-file",
        str(cred_path),
        "--edge",
        edge.tunnel_addr,
        "--cacert",
        str(edge.ca),
        "--url",
        e2e.origin,
    )
    code = conn.wait(15)
    took = time.monotonic() - t0
    err = conn.stderr()
    print(f"\n{bad}: connector exited {code} after {took:.2f}s: {err.strip().splitlines()[-1]}")
    assert code != 0, err
    assert took < 8, f"took {took:.1f}s to give up"
    last = err.strip().splitlines()[-1].lower()
    assert "refused" in last and expected in last, err
    assert "Traceback" not in err, err

    edge_log = edge.proc.stderr()
    assert "refused" in edge_log.lower(), edge_log
    assert creds["TunnelID"] in edge_log, edge_log  # says which tunnel was refused
    for secret in {real_secret, sent_secret}:
        assert secret not in edge_log
        assert secret not in err
        # Nor any other rendering of the secret bytes.
        raw = base64.b64decode(secret)
        assert raw.hex() not in edge_log and raw.hex() not in err
        assert base64.urlsafe_b64encode(raw).decode().rstrip("=") not in edge_log
    assert edge.proc.running()
    assert edge.connections() == 0
