"""The admin API on a real edge's admin listener: envelope, bearer tokens, scopes, tenancy and
bad input, with an aiohttp client on loopback."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from burrow.admin.client import (
    OriginCert,
    decode_origin_cert,
    encode_origin_cert,
)
from burrow.connector.credentials import decode_token
from burrow.edge.server import EdgeServer
from burrow.errors import ConfigError
from burrow.store.records import (
    SCOPE_ACCOUNT_ADMIN,
    SCOPE_OPERATOR,
    SCOPE_TUNNEL_READ,
    SCOPE_TUNNEL_RUN,
)
from burrow.testing.harness import start_edge
from burrow.testing.pgdb import store_url_or_none

SECRET_B64 = base64.b64encode(bytes(range(32))).decode()


@dataclass
class Api:
    edge: EdgeServer
    base: str
    session: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, token: str | None, body: Any = None, **params: str
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(
            method, self.base + path, json=body, headers=headers, params=params or None
        ) as r:
            assert r.headers["Content-Type"] == "application/json"  # exactly: cloudflared
            return r.status, await r.json()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with store_url_or_none() as store_url:  # PostgreSQL when BURROW_TEST_PG_URL is set
        edge = await start_edge(tmp_path / "edge", admin_listen="127.0.0.1:0", store_url=store_url)
        assert edge.admin_address is not None
        host, port = edge.admin_address
        try:
            async with aiohttp.ClientSession() as session:
                yield Api(edge, f"http://{host}:{port}", session)
        finally:
            await edge.stop(grace=0.5)


async def _account_with_token(api: Api, name: str, *scopes: str) -> tuple[str, str]:
    store = api.edge.store
    assert store is not None
    acct = await store.create_account(name)
    _, text = await store.create_api_token(acct.id, scopes or [SCOPE_ACCOUNT_ADMIN])
    return acct.id, text


def _tunnels(account: str) -> str:
    return f"/client/v4/accounts/{account}/cfd_tunnel"


async def test_envelope_and_tunnel_crud(api: Api) -> None:
    acct, tok = await _account_with_token(api, "acme")
    status, body = await api.call(
        "POST", _tunnels(acct), tok, {"name": "web", "tunnel_secret": SECRET_B64}
    )
    assert status == 200 and body["success"] is True and body["errors"] == []
    made = body["result"]
    tid = made["id"]
    assert made["name"] == "web" and made["deleted_at"] is None and made["connections"] == []
    creds = decode_token(made["token"])
    assert str(creds.tunnel_id) == tid and creds.account_tag == acct
    assert creds.tunnel_secret == bytes(range(32)) and creds.edge and creds.ca_pem
    # listing with cloudflared's filters and pagination
    status, body = await api.call("GET", _tunnels(acct), tok, name="web", is_deleted="false")
    assert status == 200 and [t["id"] for t in body["result"]] == [tid]
    assert body["result_info"]["total_count"] == 1
    status, body = await api.call("GET", _tunnels(acct), tok, name="nope")
    assert body["result"] == []
    status, body = await api.call("GET", f"{_tunnels(acct)}/{tid}", tok)
    assert status == 200 and body["result"]["name"] == "web"
    status, body = await api.call("GET", f"{_tunnels(acct)}/{tid}/token", tok)
    assert decode_token(body["result"]).tunnel_secret == bytes(range(32))
    # the same name again is a 409 (cloudflared's ErrTunnelNameConflict)
    status, body = await api.call("POST", _tunnels(acct), tok, {"name": "web"})
    assert (
        status == 409
        and body["success"] is False
        and "already exists" in body["errors"][0]["message"]
    )
    # routes
    route = f"/client/v4/zones/{acct}/tunnels/{tid}/routes"
    dns = {"type": "dns", "user_hostname": "App.Example.com", "overwrite_existing": False}
    status, body = await api.call("PUT", route, tok, dns)
    assert status == 200 and body["result"] == {"cname": "new", "name": "app.example.com"}
    status, body = await api.call("PUT", route, tok, dns)
    assert body["result"]["cname"] == "unchanged"
    assert api.edge.snapshot.lookup("app.example.com") == uuid.UUID(tid)  # live at once
    # delete, then it is gone from the live list and its routes are removed
    status, body = await api.call("DELETE", f"{_tunnels(acct)}/{tid}", tok)
    assert status == 200 and body["result"]["deleted_at"]
    status, body = await api.call("GET", _tunnels(acct), tok, is_deleted="false")
    assert body["result"] == []
    status, body = await api.call("GET", _tunnels(acct), tok)
    assert [t["deleted_at"] is not None for t in body["result"]] == [True]
    assert api.edge.snapshot.lookup("app.example.com") is None
    status, body = await api.call("DELETE", f"{_tunnels(acct)}/{tid}", tok)
    assert status == 404


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing Authorization"),
        ("Basic abc", "malformed Authorization"),
        ("Bearer", "malformed Authorization"),
        ("Bearer not-a-token", "malformed API token"),
        ("Bearer burrow_0123456789abcdef_" + "A" * 43, "invalid API token"),
    ],
)
async def test_bad_credentials_are_401(api: Api, header: str | None, message: str) -> None:
    acct, _ = await _account_with_token(api, "acme")
    headers = {"Authorization": header} if header else {}
    async with api.session.get(api.base + _tunnels(acct), headers=headers) as r:
        assert r.status == 401
        body = await r.json()
    assert body["success"] is False and message in body["errors"][0]["message"]


async def test_truncated_and_revoked_tokens(api: Api) -> None:
    acct, tok = await _account_with_token(api, "acme")
    status, body = await api.call("GET", _tunnels(acct), tok[:-5])
    assert status == 401 and "malformed API token" in body["errors"][0]["message"]
    store = api.edge.store
    assert store is not None
    token_id = tok.split("_")[1]
    await store.revoke_api_token(token_id)
    status, body = await api.call("GET", _tunnels(acct), tok)
    assert status == 401 and "revoked" in body["errors"][0]["message"]


async def test_cross_account_attempts_fail(api: Api) -> None:
    a, tok_a = await _account_with_token(api, "a")
    b, tok_b = await _account_with_token(api, "b")
    _, body = await api.call("POST", _tunnels(a), tok_a, {"name": "web"})
    ta = body["result"]["id"]
    _, body = await api.call("POST", _tunnels(b), tok_b, {"name": "web"})  # same name: fine
    tb = body["result"]["id"]
    route_a = f"/client/v4/zones/{a}/tunnels/{ta}/routes"
    await api.call("PUT", route_a, tok_a, {"type": "dns", "user_hostname": "a.example.com"})

    # b's token on a's account: 403, for every verb
    for method, path in [
        ("GET", _tunnels(a)),
        ("POST", _tunnels(a)),
        ("GET", f"{_tunnels(a)}/{ta}"),
        ("GET", f"{_tunnels(a)}/{ta}/token"),
        ("GET", f"{_tunnels(a)}/{ta}/connections"),
        ("DELETE", f"{_tunnels(a)}/{ta}"),
        ("DELETE", f"{_tunnels(a)}/{ta}/connections"),
        ("PUT", route_a),
    ]:
        status, body = await api.call(method, path, tok_b, {"name": "x", "type": "dns"})
        assert status == 403, (method, path)
        assert f"not valid for account {a}" in body["errors"][0]["message"]
    # a's tunnel id under b's own account: 404 (ids of other accounts cannot be probed)
    for method, path in [
        ("GET", f"{_tunnels(b)}/{ta}"),
        ("GET", f"{_tunnels(b)}/{ta}/token"),
        ("DELETE", f"{_tunnels(b)}/{ta}"),
        ("PUT", f"/client/v4/zones/{b}/tunnels/{ta}/routes"),
    ]:
        status, body = await api.call(
            method, path, tok_b, {"type": "dns", "user_hostname": "x.example.com"}
        )
        assert status == 404, (method, path)
    # b cannot take a's hostname, not even with overwrite
    route_b = f"/client/v4/zones/{b}/tunnels/{tb}/routes"
    for overwrite in (False, True):
        status, body = await api.call(
            "PUT",
            route_b,
            tok_b,
            {"type": "dns", "user_hostname": "a.example.com", "overwrite_existing": overwrite},
        )
        assert status == 403 and "another account" in body["errors"][0]["message"]
    # b's list does not show a's tunnel
    _, body = await api.call("GET", _tunnels(b), tok_b)
    assert [t["id"] for t in body["result"]] == [tb]
    assert api.edge.snapshot.lookup("a.example.com") == uuid.UUID(ta)


async def test_scopes(api: Api) -> None:
    store = api.edge.store
    assert store is not None
    acct, admin = await _account_with_token(api, "acme")
    _, body = await api.call("POST", _tunnels(acct), admin, {"name": "one"})
    one = body["result"]["id"]
    _, body = await api.call("POST", _tunnels(acct), admin, {"name": "two"})
    two = body["result"]["id"]
    _, reader = await store.create_api_token(acct, [SCOPE_TUNNEL_READ])
    _, runner = await store.create_api_token(acct, [SCOPE_TUNNEL_RUN], tunnel_id=uuid.UUID(one))
    _, operator = await store.create_api_token(None, [SCOPE_OPERATOR])

    status, body = await api.call("GET", _tunnels(acct), reader)
    assert status == 200 and len(body["result"]) == 2
    status, body = await api.call("POST", _tunnels(acct), reader, {"name": "three"})
    assert status == 403 and "lacks the scope" in body["errors"][0]["message"]
    status, body = await api.call("GET", f"{_tunnels(acct)}/{one}/token", reader)
    assert status == 403
    # a run token bound to tunnel one: sees and runs only that tunnel
    status, body = await api.call("GET", _tunnels(acct), runner)
    assert [t["id"] for t in body["result"]] == [one]
    status, body = await api.call("GET", f"{_tunnels(acct)}/{one}/token", runner)
    assert status == 200 and decode_token(body["result"]).tunnel_id == uuid.UUID(one)
    status, body = await api.call("GET", f"{_tunnels(acct)}/{two}/token", runner)
    assert status == 403 and "only run its own tunnel" in body["errors"][0]["message"]
    status, body = await api.call("DELETE", f"{_tunnels(acct)}/{one}", runner)
    assert status == 403
    # the operator may act in any account, and create accounts
    status, body = await api.call("GET", f"{_tunnels(acct)}/{two}", operator)
    assert status == 200
    status, body = await api.call("POST", "/api/v1/accounts", operator, {"name": "new"})
    assert status == 200 and body["result"]["name"] == "new"
    status, body = await api.call("POST", "/api/v1/accounts", admin, {"name": "new"})
    assert status == 403
    # an account admin mints tokens for its own account only
    status, body = await api.call(
        "POST", f"/api/v1/accounts/{acct}/tokens", admin, {"scopes": [SCOPE_TUNNEL_READ]}
    )
    assert status == 200 and body["result"]["token"].startswith("burrow_")
    status, body = await api.call(
        "POST", f"/api/v1/accounts/{acct}/tokens", admin, {"scopes": ["root"]}
    )
    assert status == 400 and "invalid token scope" in body["errors"][0]["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, "JSON object body is required"),
        ("[1]", "must be a JSON object"),
        ("{bad json", "not valid JSON"),
        ({"name": ""}, "tunnel name required"),
        ({"name": str(uuid.uuid4())}, "cannot use UUIDs"),
        ({"name": "a\nb"}, "printable"),
        ({"name": "x", "tunnel_secret": "###"}, "standard base64"),
        ({"name": "x", "tunnel_secret": base64.b64encode(b"short").decode()}, "at least 32"),
    ],
)
async def test_create_rejects_bad_input(api: Api, body: Any, message: str) -> None:
    acct, tok = await _account_with_token(api, "acme")
    data = body if isinstance(body, str) else None
    async with api.session.post(
        api.base + _tunnels(acct),
        headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"},
        data=data,
        json=None if data is not None or body is None else body,
    ) as r:
        assert r.status == 400
        got = await r.json()
    assert message in got["errors"][0]["message"]
    store = api.edge.store
    assert store is not None and await store.list_tunnels(acct) == []  # nothing half-written


async def test_bad_route_and_ids(api: Api) -> None:
    acct, tok = await _account_with_token(api, "acme")
    _, body = await api.call("POST", _tunnels(acct), tok, {"name": "web"})
    tid = body["result"]["id"]
    route = f"/client/v4/zones/{acct}/tunnels/{tid}/routes"
    status, body = await api.call("PUT", route, tok, {"type": "dns", "user_hostname": "bad host!"})
    assert status == 400 and "invalid hostname" in body["errors"][0]["message"]
    status, body = await api.call("PUT", route, tok, {"type": "lb", "lb_name": "x"})
    assert status == 400 and "not supported" in body["errors"][0]["message"]
    status, body = await api.call("GET", f"{_tunnels(acct)}/not-a-uuid", tok)
    assert status == 400 and "not a UUID" in body["errors"][0]["message"]
    status, body = await api.call("GET", f"{_tunnels(acct)}/{uuid.uuid4()}", tok)
    assert status == 404
    status, body = await api.call("GET", _tunnels(acct), tok, per_page="0")
    assert status == 400
    assert (await api.call("GET", "/client/v4/nope", tok))[0] == 404


async def test_login_flow_over_the_api(api: Api) -> None:
    acct, admin = await _account_with_token(api, "acme")
    status, body = await api.call("POST", "/api/v1/login", None, {"client_name": "laptop"})
    assert status == 200
    code, poll = body["result"]["code"], body["result"]["poll_secret"]
    status, body = await api.call(
        "POST", "/api/v1/login/poll", None, {"code": code, "poll_secret": poll}
    )
    assert body["result"] == {"status": "pending"}
    status, body = await api.call(
        "POST", "/api/v1/login/poll", None, {"code": code, "poll_secret": "guess"}
    )
    assert status == 404
    # another account's admin cannot approve it into this account
    other, other_admin = await _account_with_token(api, "other")
    status, body = await api.call(
        "POST", f"/api/v1/login/{code}/approve", other_admin, {"account_id": acct}
    )
    assert status == 403
    status, body = await api.call("POST", f"/api/v1/login/{code}/approve", admin)
    assert status == 200 and body["result"]["account_id"] == acct
    status, body = await api.call(
        "POST", "/api/v1/login/poll", None, {"code": code, "poll_secret": poll}
    )
    got = body["result"]
    assert got["status"] == "approved" and got["account_id"] == acct
    assert got["api_token"].startswith("burrow_") and "BEGIN CERTIFICATE" in got["ca_pem"]
    status, body = await api.call("GET", "/api/v1/whoami", got["api_token"])
    assert body["result"]["account_id"] == acct
    assert other != acct


def test_origin_cert_roundtrip_and_damage() -> None:
    cert = OriginCert(
        account_id="a" * 32,
        api_token="burrow_0123456789abcdef_" + "x" * 43,
        api_url="http://127.0.0.1:7845",
        edges=("127.0.0.1:7844",),
        ca_pem="-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
    )
    pem = encode_origin_cert(cert)
    assert pem.startswith(b"-----BEGIN ARGO TUNNEL TOKEN-----\n")
    back = decode_origin_cert(pem)
    assert back.zone_id == cert.account_id and back.edges == cert.edges
    assert cert.api_token not in repr(back)
    for damaged, message in [
        (pem[: len(pem) // 2], "truncated"),
        (b"", "empty"),
        (b"hello", "not a PEM file"),
        (pem.replace(b"ARGO TUNNEL TOKEN", b"SOMETHING ELSE"), "unknown block"),
        (pem + pem, "multiple tokens"),
        (b"-----BEGIN ARGO TUNNEL TOKEN-----\nAAAA\n-----END ARGO TUNNEL TOKEN-----\n", "damaged"),
    ]:
        with pytest.raises(ConfigError, match=message):
            decode_origin_cert(damaged)
