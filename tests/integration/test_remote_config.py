"""Remote configuration (PROTOCOL.md 3.4) through a real edge and connector on loopback: the
administrator sets a tunnel's ingress in the store, the edge marks the tunnel remotely managed at
registration and pushes every new version to each connection; a download in flight finishes on
the old rules while new requests follow the new ones; a bad version keeps the old config."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from burrow.ingress.rules import Ingress
from burrow.store.tunnel_configs import get_tunnel_config, set_tunnel_config
from burrow.testing.harness import TunnelStack, start_connector

HOST = {"Host": "app.localhost"}


def _config(ports: dict[str, int], app: str, **origin: Any) -> dict[str, Any]:
    return {
        "ingress": [
            {
                "hostname": "app.localhost",
                "path": "^/sse",
                "service": f"http://127.0.0.1:{ports['stream']}",
            },
            {
                "hostname": "app.localhost",
                "service": f"http://127.0.0.1:{ports[app]}",
                **({"originRequest": origin} if origin else {}),
            },
            {"service": "http_status:404"},
        ],
        "originRequest": {"connectTimeout": 5},
        "warp-routing": {},
    }


async def _text(path: str, stack: TunnelStack) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(stack.url(path), headers=HOST) as r:
        return r.status, await r.text()


async def _until(stack: TunnelStack, expected: str, limit: float = 10.0) -> None:
    """Poll the public URL until the new rules answer (bounded in time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        status, body = await _text("/", stack)
        if body == expected:
            return
        assert loop.time() < deadline, f"still {status} {body!r}"
        await asyncio.sleep(0.1)


async def test_push_applies_without_dropping_in_flight_and_bad_version_is_kept(
    tmp_path: Path, origins: dict[str, int]
) -> None:
    local = Ingress.parse([{"service": f"http://127.0.0.1:{origins['stream']}"}])
    async with TunnelStack.start(tmp_path, local, ha_connections=2) as stack:
        store = stack.edge.store
        assert store is not None
        tunnel_id = stack.made.tunnel.id
        # Locally managed to begin with: the test origin's echo answers.
        status, body = await _text("/echo", stack)
        assert status == 200 and json.loads(body)["path"] == "/echo"

        await set_tunnel_config(store, tunnel_id, _config(origins, "one"))
        await _until(stack, "one")
        assert stack.connector.orchestrator.version == 1

        async with (
            aiohttp.ClientSession() as s,
            s.get(stack.url("/sse?n=8&interval=0.15"), headers=HOST) as download,
        ):
            first = await download.content.readline()
            assert first.startswith(b"data:")
            # Version 2 while the download is in flight.
            await set_tunnel_config(store, tunnel_id, _config(origins, "two"))
            await _until(stack, "two")
            rest = await download.read()
        events = [first, *[line for line in rest.split(b"\n") if line.startswith(b"data:")]]
        assert len(events) == 8

        # Version 3 is invalid (a bad duration and a catch-all that is not last): kept at 2.
        bad = _config(origins, "one")
        bad["ingress"][0]["originRequest"] = {"connectTimeout": "10s"}
        await set_tunnel_config(store, tunnel_id, bad)
        saved = await get_tunnel_config(store, tunnel_id)
        assert saved is not None and saved.version == 3
        orch = stack.connector.orchestrator
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while orch.last_push is None or orch.last_push[0] != 3:
            assert loop.time() < deadline, orch.last_push
            await asyncio.sleep(0.05)
        assert orch.version == 2
        assert "strconv.ParseInt" in (orch.last_push[1] or "")
        assert (await _text("/", stack))[1] == "two"

        # Every connection got the pushes; the versions are per tunnel, not per connection.
        applied = stack.connector.orchestrator.apply_remote(
            json.dumps({"version": 2, "config": _config(origins, "one")}).encode()
        )
        assert applied == (2, None)  # not above the current version: ignored
        assert (await _text("/", stack))[1] == "two"


async def test_remotely_managed_registration_and_config_on_connect(
    tmp_path: Path, origins: dict[str, int]
) -> None:
    local = Ingress.parse([{"service": "http_status:503"}])
    async with TunnelStack.start(tmp_path, local) as stack:
        store = stack.edge.store
        assert store is not None
        session = next(iter(stack.connector.sessions.values()))
        assert session.registered.result().remotely_managed is False
        await set_tunnel_config(store, stack.made.tunnel.id, _config(origins, "one"))
        await _until(stack, "one")
        # A connector that starts now is told at registration and gets the config at once.
        late = await start_connector(stack.made, local)
        try:
            late_session = next(iter(late.sessions.values()))
            assert late_session.registered.result().remotely_managed is True
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while late.orchestrator.version != 1:
                assert loop.time() < deadline
                await asyncio.sleep(0.05)
            assert late.dispatcher.ingress.rules[1].service.port == origins["one"]  # type: ignore[union-attr]
            # A pushed hello_world starts the built-in origin on demand (it was not running).
            assert late.dispatcher.hello_address is None
            await set_tunnel_config(
                store, stack.made.tunnel.id, {"ingress": [{"service": "hello_world"}]}
            )
            deadline = loop.time() + 10
            while True:
                status, body = await _text("/hi", stack)
                if status == 200 and "hello_world" in body:
                    break
                assert loop.time() < deadline, (status, body)
                await asyncio.sleep(0.1)
        finally:
            await late.stop(grace=0.5)
