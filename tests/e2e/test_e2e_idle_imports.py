"""An idle `burrow edge serve` and `burrow tunnel run` do not load optional stacks.

Every loaded module costs a long-running process RSS for its whole life (issue 9: edge and
connector together under 100 MB idle). These stacks are only needed when their feature is
used, so a plain edge + connector that has proxied a request must not have them loaded:
alembic (schema upgrades run in a child process), aiohttp (the admin API is built on its first
connection; the connector only uses it for a metrics server or hello_world), joserfc and
smtplib (Access), prometheus_client (built on the first scrape). The processes write their
`sys.modules` on SIGTERM when BURROW_DEBUG_MODULES names a file.
"""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

from e2e_world import E2E, Edge, free_port, store_args, wait_until

HOST = "idle.localhost"

# Top-level packages neither process needs until a feature asks for them.
NOT_IN_EITHER = {"alembic", "mako", "pygments", "joserfc", "smtplib", "prometheus_client", "rich"}
NOT_IN_CONNECTOR = NOT_IN_EITHER | {"aiohttp", "sqlalchemy", "aiosqlite", "cryptography"}
NOT_IN_EDGE = NOT_IN_EITHER | {"aiohttp"}


def _loaded(path: Path) -> set[str]:
    return {name.split(".")[0] for name in path.read_text().split()}


def test_idle_edge_and_connector_leave_optional_stacks_unloaded(e2e: E2E, tmp_path: Path) -> None:
    edge_dump, conn_dump = tmp_path / "edge.modules", tmp_path / "connector.modules"
    sd = tmp_path / "edge-state"
    tunnel_port, http_port, admin_port = free_port(), free_port(), free_port()
    store_url = e2e.store_url(sd)
    # Started by hand, not with `start_edge`: that waits on /healthz, which loads the admin API.
    args = ["edge", "serve", "--state-dir", str(sd), *store_args(store_url)]
    args += ["--tunnel-listen", f"127.0.0.1:{tunnel_port}"]
    args += ["--http-listen", f"127.0.0.1:{http_port}", "--admin-listen", f"127.0.0.1:{admin_port}"]
    proc = e2e.spawn("edge", args, {"BURROW_DEBUG_MODULES": str(edge_dump)})
    edge = Edge(proc, sd, tunnel_port, http_port, admin_port, store_url)

    def listening() -> bool:
        assert edge.proc.running(), edge.proc.describe()
        if not (sd / "edge.json").exists():
            return False
        try:
            urllib.request.urlopen(edge.url("/"), timeout=2)
        except urllib.error.HTTPError:
            return True  # any HTTP answer: the public listener is up
        except OSError:
            return False
        return True

    wait_until(listening, 20, what="the edge's public listener")
    made = e2e.create_tunnel(edge, "idle", HOST)
    conn = e2e.run_connector(
        "--token", made["token"], "--url", e2e.origin, env={"BURROW_DEBUG_MODULES": str(conn_dump)}
    )
    r, _ = e2e.wait_status(edge.url("/echo"), 200, host=HOST, timeout=20)
    assert r.json()["host"] == HOST

    for proc in (conn, edge.proc):
        code, _ = proc.stop_and_wait(signal.SIGTERM, 30)
        assert code == 0, proc.describe()

    edge_mods, conn_mods = _loaded(edge_dump), _loaded(conn_dump)
    # The dumps are real: each process has the stack it does need.
    assert {"burrow", "capnp"} <= conn_mods
    assert {"burrow", "sqlalchemy", "capnp"} <= edge_mods
    assert not edge_mods & NOT_IN_EDGE, sorted(edge_mods & NOT_IN_EDGE)
    assert not conn_mods & NOT_IN_CONNECTOR, sorted(conn_mods & NOT_IN_CONNECTOR)

    # The admin API still answers after a restart on the same state (loaded on first use).
    again = e2e.start_edge(state_dir=sd)  # waits for /healthz through the lazily built API
    health = again.healthz()
    assert health is not None and health["status"] == "ok"
