"""Cloudflare's v4 tunnel configuration API on a running edge, end to end:
`PUT /client/v4/accounts/{a}/cfd_tunnel/{t}/configurations` stores a validated remote config,
the edge pushes it to burrow's connector, and requests follow it; an invalid config is refused
with cloudflared's message and the running one stays; `GET` reports the stored version."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from burrow.ingress.rules import Ingress
from burrow.origin.hello import serve_app
from burrow.testing.harness import provision, start_connector, start_edge
from burrow.testing.origins import named_origin_app


async def _named_origin(name: str) -> tuple[web.AppRunner, int]:
    return await serve_app(named_origin_app(name))


def _config(port: int, **origin: Any) -> dict[str, Any]:
    return {
        "ingress": [
            {
                "hostname": "app.localhost",
                "service": f"http://127.0.0.1:{port}",
                **({"originRequest": origin} if origin else {}),
            },
            {"service": "http_status:404"},
        ]
    }


async def test_put_configurations_is_pushed_and_applied(tmp_path: Path) -> None:
    one, port_one = await _named_origin("one")
    two, port_two = await _named_origin("two")
    edge = await start_edge(tmp_path / "edge", admin_listen="127.0.0.1:0")
    connector = None
    try:
        assert edge.store is not None and edge.admin_address is not None
        made = await provision(edge, hostnames=("app.localhost",))
        connector = await start_connector(made, Ingress.parse([{"service": "http_status:503"}]))
        account = made.credentials.account_tag
        _, token = await edge.store.create_api_token(account, ["account:admin"])
        host, port = edge.admin_address
        api = (
            f"http://{host}:{port}/client/v4/accounts/{account}"
            f"/cfd_tunnel/{made.tunnel.id}/configurations"
        )
        public = f"http://127.0.0.1:{edge.http_addresses[0][1]}/"
        auth = {"Authorization": f"Bearer {token}"}
        loop = asyncio.get_running_loop()

        async with aiohttp.ClientSession() as s:

            async def until(expected: str) -> None:
                deadline = loop.time() + 10
                while True:
                    async with s.get(public, headers={"Host": "app.localhost"}) as r:
                        body = await r.text()
                    if r.status == 200 and body == expected:
                        return
                    assert loop.time() < deadline, (r.status, body)
                    await asyncio.sleep(0.05)

            async with s.get(api, headers=auth) as r:
                doc = await r.json()
            assert r.status == 200 and doc["success"] is True
            assert doc["result"]["source"] == "local" and doc["result"]["config"] is None

            async with s.put(api, json={"config": _config(port_one)}, headers=auth) as r:
                doc = await r.json()
            assert r.status == 200, doc
            assert doc["result"]["version"] == 1 and doc["result"]["source"] == "cloudflare"
            await until("one")
            assert connector.orchestrator.version == 1

            async with s.put(api, json={"config": _config(port_two)}, headers=auth) as r:
                assert r.status == 200
                assert (await r.json())["result"]["version"] == 2
            await until("two")

            # Refused before it is stored: cloudflared's message, the running version stays.
            bad = _config(port_one, connectTimeout="10s")
            async with s.put(api, json={"config": bad}, headers=auth) as r:
                doc = await r.json()
            assert r.status == 400 and doc["success"] is False
            assert "strconv.ParseInt" in doc["errors"][0]["message"], doc
            async with s.put(api, json={"config": "nope"}, headers=auth) as r:
                assert r.status == 400
            async with s.get(api, headers=auth) as r:
                doc = await r.json()
            assert doc["result"]["version"] == 2
            assert doc["result"]["config"] == _config(port_two)
            async with s.get(public, headers={"Host": "app.localhost"}) as r:
                assert await r.text() == "two"
            assert connector.orchestrator.version == 2

            # Without a token, or with a read-only one: refused.
            async with s.put(api, json={"config": _config(port_one)}) as r:
                assert r.status in (401, 403)
    finally:
        if connector is not None:
            await connector.stop(grace=0.5)
        await edge.stop(grace=0.5)
        await one.cleanup()
        await two.cleanup()
