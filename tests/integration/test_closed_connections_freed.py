"""A closed HTTPS connection to the edge is freed soon, even with the collection thresholds
servers run with.

Why: a closed TLS connection is a reference cycle (uvloop's SSLProtocol and its transport,
our streams and their connection) that holds OpenSSL's buffers, up to ~6 MB after a large
download. Servers raise the collector's thresholds (`runtime.tune_gc`), so such cycles piled
up until `H2Endpoint.connection_lost` started telling `runtime.collect_cycles` to run."""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import Any

import pytest

from burrow import runtime
from burrow.edge.public import EyeballProtocol
from burrow.edge.public_h2 import H2EyeballConnection
from burrow.testing.frontdoor import curl, edge_stack


@pytest.mark.parametrize(
    ("protocol", "flag", "version"),
    [(H2EyeballConnection, "--http2", "2"), (EyeballProtocol, "--http1.1", "1.1")],
    ids=["h2", "http1.1"],
)
async def test_closed_eyeball_connection_is_collected(
    tmp_path: Path,
    rare_collections: None,
    monkeypatch: pytest.MonkeyPatch,
    protocol: Any,
    flag: str,
    version: str,
) -> None:
    seen: list[weakref.ref[Any]] = []
    made = protocol.connection_made

    def record(self: Any, transport: asyncio.BaseTransport) -> None:
        seen.append(weakref.ref(self))
        made(self, transport)

    monkeypatch.setattr(protocol, "connection_made", record)
    async with edge_stack(tmp_path, https_listen=["127.0.0.1:0"]) as (edge, _seen):
        collector = asyncio.ensure_future(runtime.collect_cycles(interval=0.1))
        try:
            got = await curl(
                edge, "app.localhost", "/download?size=3000000", flag, "-o", "/dev/null"
            )
            assert got[:2] == (version, 200)
            assert len(seen) == 1
            for _ in range(30):  # the connection closes, then the collector runs
                await asyncio.sleep(0.1)
                if seen[0]() is None:
                    break
            assert seen[0]() is None, "the closed connection is still alive"
        finally:
            collector.cancel()
