"""Crash recovery: a SIGKILLed connector restarted, and a SIGKILLed edge restarted on the same
ports and state directory (the connector reconnects by itself)."""

from __future__ import annotations

import signal
import time

from e2e_world import E2E

HOST = "app.localhost"


def test_connector_killed_and_restarted(e2e: E2E) -> None:
    edge = e2e.start_edge()
    made = e2e.create_tunnel(edge, "crash", HOST)
    args = ("--token", made["token"], "--url", e2e.origin)
    conn = e2e.run_connector(*args)
    edge.wait_connections(4, conn)
    e2e.wait_status(edge.url("/echo"), 200, host=HOST)

    conn.signal(signal.SIGKILL)
    conn.wait(5)
    # The edge sees the connections drop: the hostname now says the tunnel is down.
    _, down_s = e2e.wait_status(edge.url("/echo"), 530, host=HOST, timeout=10)

    t0 = time.monotonic()
    conn2 = e2e.run_connector(*args)
    r, _ = e2e.wait_status(edge.url("/echo"), 200, host=HOST, timeout=10)
    back_s = time.monotonic() - t0
    print(f"\nconnector SIGKILL: 530 after {down_s:.2f}s; restarted, 200 after {back_s:.2f}s")
    assert back_s < 6, f"requests came back after {back_s:.1f}s"
    assert r.json()["path"] == "/echo"
    edge.wait_connections(4, conn2)


def test_edge_killed_and_restarted_connector_reconnects(e2e: E2E) -> None:
    edge = e2e.start_edge()
    made = e2e.create_tunnel(edge, "edgecrash", HOST)
    conn = e2e.run_connector("--token", made["token"], "--url", e2e.origin)
    edge.wait_connections(4, conn)
    e2e.wait_status(edge.url("/echo"), 200, host=HOST)

    edge.proc.signal(signal.SIGKILL)
    edge.proc.wait(5)
    assert e2e.curl(edge.url("/echo"), host=HOST, timeout=2).status == 0  # nothing listening

    t0 = time.monotonic()
    edge2 = e2e.start_edge(
        edge.state_dir, (edge.tunnel_port, edge.http_port, edge.admin_port), wait=False
    )
    r, _ = e2e.wait_status(edge2.url("/echo?again=1"), 200, host=HOST, timeout=15)
    back_s = time.monotonic() - t0
    print(f"\nedge SIGKILL: restarted, 200 through the reconnected connector after {back_s:.2f}s")
    assert back_s < 10, f"requests came back after {back_s:.1f}s"
    assert r.json()["path"] == "/echo?again=1"
    assert conn.running(), conn.describe()
    edge2.wait_connections(4, conn)
