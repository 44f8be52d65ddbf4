from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from burrow.ingress.rules import Ingress
from burrow.net import recvbuf
from burrow.origin.hello import serve_app
from burrow.testing.harness import CountingPool, TunnelStack
from burrow.testing.origins import named_origin_app, start_test_origin


@pytest.fixture
def every_read_lent(monkeypatch: pytest.MonkeyPatch) -> CountingPool:
    """Every pooled read is lent as a view (none is copied out), through a pool that counts."""
    monkeypatch.setattr(recvbuf, "VIEW_MIN", 1)
    pool = CountingPool()
    monkeypatch.setattr(recvbuf, "POOL", pool)
    return pool


@pytest.fixture
async def origin_port() -> AsyncIterator[int]:
    runner, port = await start_test_origin()
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.fixture
async def stack(tmp_path, origin_port) -> AsyncIterator[TunnelStack]:
    ingress = Ingress.parse(
        [
            {"hostname": "app.localhost", "service": f"http://127.0.0.1:{origin_port}"},
            {"hostname": "down.localhost", "service": "http://127.0.0.1:1"},
            {"service": "http_status:404"},
        ]
    )
    async with TunnelStack.start(
        tmp_path, ingress, hostnames=("app.localhost", "down.localhost")
    ) as s:
        s.extra["origin_port"] = origin_port
        yield s


@pytest.fixture
async def origins() -> AsyncIterator[dict[str, int]]:
    """The test origin ("stream") and two origins that answer "one" and "two"."""
    runners = []
    ports: dict[str, int] = {}
    runner, ports["stream"] = await start_test_origin()
    runners.append(runner)
    for name in ("one", "two"):
        runner, ports[name] = await serve_app(named_origin_app(name))
        runners.append(runner)
    try:
        yield ports
    finally:
        for runner in runners:
            await runner.cleanup()
