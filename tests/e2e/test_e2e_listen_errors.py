"""A listener that cannot bind ends `burrow edge serve` with one clear line, not a traceback."""

from __future__ import annotations

import socket

from e2e_world import E2E, free_port


def test_port_in_use_is_a_clear_error(e2e: E2E) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        edge = e2e.start_edge(ports=(free_port(), port, free_port()), wait=False)
        code = edge.proc.wait(timeout=30)
    err = edge.proc.stderr()
    assert code == 1, err
    assert "error:" in err and "address already in use" in err, err
    assert "Traceback" not in err, err
