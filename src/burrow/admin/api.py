"""burrow's own admin API under ``/api/v1``: accounts, API tokens, routes, device-code logins
and the edge's public facts (tunnel addresses, CA). Same envelope as ``/client/v4``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from burrow.admin.app import context, json_response, parse_uuid, principal, read_json, rfc3339
from burrow.admin.auth import CODE_BAD_REQUEST, ApiError, forbidden
from burrow.store.records import (
    LOGIN_APPROVED,
    SCOPE_ACCOUNT_ADMIN,
    SCOPE_OPERATOR,
    Account,
    ApiToken,
    LoginRequest,
    normalize_hostname,
)

PREFIX = "/api/v1"
LOGIN_TTL_S = 600.0
POLL_INTERVAL_S = 1.0


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(PREFIX + "/edge", edge_info)
    router.add_get(PREFIX + "/whoami", whoami)
    router.add_get(PREFIX + "/accounts", list_accounts)
    router.add_post(PREFIX + "/accounts", create_account)
    router.add_get(PREFIX + "/accounts/{account}/tokens", list_tokens)
    router.add_post(PREFIX + "/accounts/{account}/tokens", create_token)
    router.add_delete(PREFIX + "/accounts/{account}/tokens/{token}", revoke_token)
    router.add_get(PREFIX + "/accounts/{account}/routes", list_routes)
    router.add_delete(PREFIX + "/accounts/{account}/routes/{hostname}", delete_route)
    router.add_post(PREFIX + "/login", start_login)
    router.add_post(PREFIX + "/login/poll", poll_login)
    router.add_get(PREFIX + "/login", list_logins)
    router.add_post(PREFIX + "/login/{code}/approve", approve_login)
    router.add_post(PREFIX + "/login/{code}/deny", deny_login)


def account_json(a: Account) -> dict[str, Any]:
    return {"id": a.id, "name": a.name, "created_at": rfc3339(a.created_at)}


def token_json(t: ApiToken) -> dict[str, Any]:
    return {
        "id": t.id,
        "account_id": t.account_id,
        "name": t.name,
        "scopes": sorted(t.scopes),
        "tunnel_id": str(t.tunnel_id) if t.tunnel_id else None,
        "created_at": rfc3339(t.created_at),
        "revoked_at": rfc3339(t.revoked_at) if t.revoked_at else None,
    }


def login_json(r: LoginRequest) -> dict[str, Any]:
    return {
        "code": r.code,
        "client_name": r.client_name,
        "status": r.status,
        "created_at": rfc3339(r.created_at),
        "expires_at": rfc3339(r.expires_at),
        "account_id": r.account_id,
    }


def _operator(request: web.Request) -> None:
    if not principal(request).operator:
        raise forbidden("this needs an operator token")


async def edge_info(request: web.Request) -> web.Response:
    ctx = context(request)
    return json_response(
        {"tunnel_addresses": ctx.edges(), "ca_pem": ctx.ca_pem, "location": ctx.location}
    )


async def whoami(request: web.Request) -> web.Response:
    who = principal(request)
    return json_response(
        {
            "token_id": who.token_id,
            "account_id": who.account_id,
            "scopes": sorted(who.scopes),
            "tunnel_id": str(who.tunnel_id) if who.tunnel_id else None,
        }
    )


async def list_accounts(request: web.Request) -> web.Response:
    who = principal(request)
    store = context(request).store
    if who.operator:
        return json_response([account_json(a) for a in await store.list_accounts()])
    assert who.account_id is not None
    return json_response([account_json(await store.get_account(who.account_id))])


async def create_account(request: web.Request) -> web.Response:
    _operator(request)
    body = await read_json(request)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise ApiError(400, CODE_BAD_REQUEST, "an account needs a name (1-255 characters)")
    return json_response(account_json(await context(request).store.create_account(name.strip())))


async def list_tokens(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    principal(request).admin(account)
    tokens = await context(request).store.list_api_tokens(account)
    return json_response([token_json(t) for t in tokens])


async def create_token(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    principal(request).admin(account)
    body = await read_json(request)
    scopes = body.get("scopes")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise ApiError(400, CODE_BAD_REQUEST, "scopes must be a list of strings")
    if SCOPE_OPERATOR in scopes:
        raise ApiError(400, CODE_BAD_REQUEST, "operator tokens are made on the edge host only")
    name = body.get("name", "")
    if not isinstance(name, str) or len(name) > 255:
        raise ApiError(400, CODE_BAD_REQUEST, "name must be a string of at most 255 characters")
    raw_tunnel = body.get("tunnel_id")
    tunnel_id = parse_uuid(raw_tunnel) if isinstance(raw_tunnel, str) and raw_tunnel else None
    token, text = await context(request).store.create_api_token(
        account, scopes, name=name, tunnel_id=tunnel_id
    )
    result = token_json(token)
    result["token"] = text
    return json_response(result)


async def revoke_token(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    principal(request).admin(account)
    store = context(request).store
    token = await store.get_api_token(request.match_info["token"])
    if token.account_id != account:
        raise ApiError(404, 1004, f"API token {token.id} not found in account {account}")
    await store.revoke_api_token(token.id)
    return json_response({"id": token.id})


async def list_routes(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    principal(request).read(account)
    routes = [r for r in await context(request).store.list_routes() if r.account_id == account]
    return json_response(
        [
            {
                "hostname": r.hostname,
                "tunnel_id": str(r.tunnel_id),
                "created_at": rfc3339(r.created_at),
            }
            for r in routes
        ]
    )


async def delete_route(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    principal(request).admin(account)
    ctx = context(request)
    host = normalize_hostname(request.match_info["hostname"])
    route = {r.hostname: r for r in await ctx.store.list_routes()}.get(host)
    if route is None or route.account_id != account:
        raise ApiError(404, 1004, f"no route for {host} in account {account}")
    await ctx.store.delete_route(host)
    await ctx.reload()
    return json_response({"hostname": host})


# -- device-code login ---------------------------------------------------------------------------


async def start_login(request: web.Request) -> web.Response:
    ctx = context(request)
    peer = request.remote or "?"
    if not ctx.login_limiter.allow(peer):
        raise ApiError(429, 1000, "too many login requests from this address; try again later")
    body = await read_json(request, required=False)
    client = body.get("client_name", "")
    if not isinstance(client, str):
        raise ApiError(400, CODE_BAD_REQUEST, "client_name must be a string")
    req, poll_secret = await ctx.store.create_login_request(
        client.strip()[:100] or peer, ttl_s=LOGIN_TTL_S
    )
    return json_response(
        {
            "code": req.code,
            "poll_secret": poll_secret,
            "expires_at": rfc3339(req.expires_at),
            "interval": POLL_INTERVAL_S,
        }
    )


async def poll_login(request: web.Request) -> web.Response:
    ctx = context(request)
    body = await read_json(request)
    code, secret = body.get("code"), body.get("poll_secret")
    if not isinstance(code, str) or not isinstance(secret, str):
        raise ApiError(400, CODE_BAD_REQUEST, "code and poll_secret are required strings")
    req, token = await ctx.store.redeem_login_request(code, secret, scopes=[SCOPE_ACCOUNT_ADMIN])
    result: dict[str, Any] = {"status": req.status}
    if token is not None:
        result.update(
            status=LOGIN_APPROVED,
            account_id=req.account_id,
            api_token=token,
            tunnel_addresses=ctx.edges(),
            ca_pem=ctx.ca_pem,
        )
    return json_response(result)


async def list_logins(request: web.Request) -> web.Response:
    who = principal(request)
    who.require(SCOPE_ACCOUNT_ADMIN)
    return json_response(
        [login_json(r) for r in await context(request).store.list_login_requests()]
    )


async def approve_login(request: web.Request) -> web.Response:
    """An operator approves for any account (``account_id`` in the body); an account admin
    approves for its own account only."""
    who = principal(request)
    body = await read_json(request, required=False)
    account = body.get("account_id") or who.account_id
    if not isinstance(account, str) or not account:
        raise ApiError(400, CODE_BAD_REQUEST, "account_id is required")
    who.admin(account)
    req = await context(request).store.decide_login_request(
        request.match_info["code"], account_id=account, approve=True
    )
    return json_response(login_json(req))


async def deny_login(request: web.Request) -> web.Response:
    who = principal(request)
    who.require(SCOPE_ACCOUNT_ADMIN)
    req = await context(request).store.decide_login_request(
        request.match_info["code"], account_id=None, approve=False
    )
    return json_response(login_json(req))
