"""`GET|PUT /client/v4/accounts/{a}/cfd_tunnel/{t}/configurations` on the admin application
(mounted beside the rest of the API), with a real edge state store and an aiohttp client."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from aiohttp import web

from burrow.admin import tunnel_config_api
from burrow.admin.app import context_from_edge, mount_admin
from burrow.store.records import SCOPE_ACCOUNT_ADMIN
from burrow.store.tunnel_configs import get_tunnel_config
from burrow.testing.harness import start_edge


async def test_put_validates_stores_and_get_returns_it(tmp_path: Path) -> None:
    edge = await start_edge(tmp_path / "edge")
    runner = None
    try:
        store = edge.store
        assert store is not None
        acct = await store.create_account("acme")
        _, token = await store.create_api_token(acct.id, [SCOPE_ACCOUNT_ADMIN])
        tunnel = await store.create_tunnel(acct.id, "web", "x" * 64)
        app = web.Application()
        mount_admin(app, context_from_edge(edge))
        tunnel_config_api.add_routes(app.router)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}/client/v4/accounts/{acct.id}/cfd_tunnel/{tunnel.id}/configurations"
        headers = {"Authorization": f"Bearer {token}"}
        config = {
            "ingress": [
                {"hostname": "a.example.com", "service": "http://localhost:8000"},
                {"service": "http_status:404"},
            ],
            "originRequest": {"connectTimeout": 10},
        }
        async with aiohttp.ClientSession(headers=headers) as s:
            async with s.get(url) as r:
                body = await r.json()
                assert r.status == 200 and body["result"]["config"] is None
            async with s.put(url, json={"config": config}) as r:
                body = await r.json()
                assert r.status == 200, body
                assert body["result"]["version"] == 1
            async with s.put(
                url, json={"config": {"ingress": [{"hostname": "x.com", "service": "http://a:1"}]}}
            ) as r:
                body = await r.json()
                assert r.status == 400
                assert "The last ingress rule must match all URLs" in body["errors"][0]["message"]
            async with s.get(url) as r:
                body = await r.json()
                assert body["result"]["version"] == 1 and body["result"]["config"] == config
        saved = await get_tunnel_config(store, tunnel.id)
        assert saved is not None and saved.config == config
    finally:
        if runner is not None:
            await runner.cleanup()
        await edge.stop(grace=0.5)
