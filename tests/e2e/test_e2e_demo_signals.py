"""`burrow demo` as a first-time user runs it, and clean exits on SIGINT/SIGTERM."""

from __future__ import annotations

import re
import signal

import pytest
from e2e_world import E2E, free_port, wait_until


def test_demo_prints_a_working_url_and_stops_on_sigint(e2e: E2E) -> None:
    port = free_port()
    demo = e2e.spawn("demo", ["demo", "--port", str(port)])

    def url() -> str | None:
        assert demo.running(), demo.describe()
        m = re.search(r"http://\S+", demo.stdout())
        return m.group(0) if m else None

    printed = wait_until(url, 30, what="the demo's URL")
    assert printed == f"http://hello.localhost:{port}/", demo.stdout()
    # No Host header or --resolve: curl resolves *.localhost to loopback by itself.
    r = e2e.curl(printed)
    assert r.status == 200, r
    assert r.json()["served_by"].endswith("hello_world")
    page = e2e.curl(printed, "-H", "Accept: text/html")
    assert page.status == 200 and b"Congrats! You created a tunnel." in page.body, page

    code, took = demo.stop_and_wait(signal.SIGINT, 10)
    print(f"\ndemo: SIGINT -> exit {code} after {took:.2f}s")
    assert code in (0, 130), demo.describe()
    assert took < 5
    assert "Traceback" not in demo.stderr(), demo.describe()


@pytest.mark.parametrize("first", ["connector", "edge"])
def test_sigterm_stops_connector_and_edge_with_status_0(e2e: E2E, first: str) -> None:
    """Either order: the edge going away first leaves the connector reconnecting, and a
    SIGTERM must still end it at once."""
    edge = e2e.start_edge()
    made = e2e.create_tunnel(edge, "term", "term.localhost")
    conn = e2e.run_connector("--token", made["token"], "--url", e2e.origin)
    edge.wait_connections(4, conn)
    e2e.wait_status(edge.url("/echo"), 200, host="term.localhost")

    if first == "connector":
        conn_code, conn_s = conn.stop_and_wait(signal.SIGTERM, 10)
        # The connector unregistered: the edge has no connections left.
        wait_until(lambda: edge.connections() == 0, 5, what="the edge to drop the connections")
        edge_code, edge_s = edge.proc.stop_and_wait(signal.SIGTERM, 10)
    else:
        edge_code, edge_s = edge.proc.stop_and_wait(signal.SIGTERM, 10)
        assert conn.running(), conn.describe()  # an edge going away is not fatal
        conn_code, conn_s = conn.stop_and_wait(signal.SIGTERM, 10)
    print(
        f"\nSIGTERM ({first} first): connector exit {conn_code} in {conn_s:.2f}s, "
        f"edge exit {edge_code} in {edge_s:.2f}s"
    )
    assert conn_code == 0, conn.describe()
    assert edge_code == 0, edge.proc.describe()
    assert conn_s < 5 and edge_s < 5
    for p in (conn, edge.proc):
        assert "Traceback" not in p.stderr(), p.describe()
