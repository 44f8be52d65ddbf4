"""The access admin API on a real edge's admin listener: create an app, a policy and a service
token over HTTP; the edge enforces them at once; non-operator tokens are refused."""

from __future__ import annotations

import aiohttp
from access_fixtures import RawOrigin, raw_request

from burrow.ingress.rules import Ingress
from burrow.store.records import SCOPE_OPERATOR
from burrow.testing.harness import provision, start_connector, start_edge


async def test_admin_api_manages_access(tmp_path) -> None:
    origin = RawOrigin()
    await origin.start()
    edge = await start_edge(tmp_path, admin_listen="127.0.0.1:0")
    connector = None
    try:
        assert edge.store is not None and edge.admin_address is not None
        made = await provision(edge, hostnames=("svc.localhost",))
        connector = await start_connector(
            made, Ingress.parse([{"service": f"http://127.0.0.1:{origin.port}"}])
        )
        _, op_token = await edge.store.create_api_token(None, [SCOPE_OPERATOR], name="op")
        base = f"http://{edge.admin_address[0]}:{edge.admin_address[1]}/api/v1/access"
        auth = {"Authorization": f"Bearer {op_token}"}
        port = edge.http_addresses[0][1]
        async with aiohttp.ClientSession(headers=auth) as s:
            async with s.post(base + "/apps", json={"name": "svc", "domain": "svc.localhost"}) as r:
                assert r.status == 201, await r.text()
                app = (await r.json())["result"]
            async with s.post(base + "/service_tokens", json={"name": "ci"}) as r:
                tok = (await r.json())["result"]
            rule = {"kind": "service_token", "value": tok["id"]}
            async with s.post(
                base + f"/apps/{app['id']}/policies",
                json={"name": "ci", "decision": "non_identity", "include": [rule]},
            ) as r:
                assert r.status == 201, await r.text()
            async with s.get(base + f"/apps/{app['aud']}/policies") as r:
                assert [p["name"] for p in (await r.json())["result"]] == ["ci"]
            h = {
                "CF-Access-Client-Id": tok["client_id"],
                "CF-Access-Client-Secret": tok["client_secret"],
            }
            assert (await raw_request(port, "/", "svc.localhost", headers=h)).status == 200
            assert (await raw_request(port, "/", "svc.localhost")).status == 403
            async with s.get(base + "/service_tokens") as r:
                listed = (await r.json())["result"]
                assert "client_secret" not in listed[0]
            async with s.delete(base + f"/service_tokens/{tok['id']}") as r:
                assert r.status == 200
            assert (await raw_request(port, "/", "svc.localhost", headers=h)).status == 403
            async with s.post(
                base + "/idps",
                json={"name": "m", "type": "onetimepin", "config": {"smtp_password": "pw"}},
            ) as r:
                assert (await r.json())["result"]["config"]["smtp_password"] == "<set>"
        account = await edge.store.get_or_create_default_account()
        _, plain = await edge.store.create_api_token(account.id, ["account:admin"], name="u")
        async with (
            aiohttp.ClientSession() as s,
            s.get(base + "/apps", headers={"Authorization": f"Bearer {plain}"}) as r,
        ):
            assert r.status == 403
    finally:
        if connector is not None:
            await connector.stop(grace=1.0)
        await edge.stop(grace=1.0)
        await origin.stop()
