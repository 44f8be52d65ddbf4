"""Admin API for Zero Trust access under ``/api/v1/access`` (operator tokens only): applications,
their policies, service tokens and identity providers. Same envelope as the rest of the API;
changes reach the edge's access snapshot at once on this node and within a poll interval on
others."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from burrow.admin.app import context, json_response, principal, read_json, rfc3339
from burrow.admin.auth import CODE_BAD_REQUEST, ApiError, forbidden
from burrow.store.access_store import AccessStore, AppRecord, PolicyRecord, SelectorSpec

PREFIX = "/api/v1/access"


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(PREFIX + "/apps", list_apps)
    router.add_post(PREFIX + "/apps", create_app)
    router.add_delete(PREFIX + "/apps/{app}", delete_app)
    router.add_get(PREFIX + "/apps/{app}/policies", list_policies)
    router.add_post(PREFIX + "/apps/{app}/policies", create_policy)
    router.add_delete(PREFIX + "/policies/{policy}", delete_policy)
    router.add_get(PREFIX + "/service_tokens", list_tokens)
    router.add_post(PREFIX + "/service_tokens", create_token)
    router.add_delete(PREFIX + "/service_tokens/{token}", delete_token)
    router.add_get(PREFIX + "/idps", list_idps)
    router.add_post(PREFIX + "/idps", create_idp)
    router.add_delete(PREFIX + "/idps/{idp}", delete_idp)


def _store(request: web.Request) -> AccessStore:
    if not principal(request).operator:
        raise forbidden("access settings need an operator token")
    ctx = context(request)
    return AccessStore(ctx.store, ctx.box)


async def _changed(request: web.Request) -> None:
    await context(request).reload()


def app_json(a: AppRecord) -> dict[str, Any]:
    return {
        "id": a.id,
        "name": a.name,
        "domain": a.domain,
        "aud": a.aud,
        "session_duration": a.session_duration,
        "allowed_idps": list(a.allowed_idps),
        "cors": a.cors,
        "created_at": rfc3339(a.created_at),
    }


def policy_json(p: PolicyRecord) -> dict[str, Any]:
    def rules(specs: tuple[SelectorSpec, ...]) -> list[dict[str, str]]:
        return [{"kind": k, "value": v, **({"claim": c} if c else {})} for k, v, c in specs]

    return {
        "id": p.id,
        "app_id": p.app_id,
        "name": p.name,
        "decision": p.action,
        "precedence": p.precedence,
        "include": rules(p.include),
        "require": rules(p.require),
        "exclude": rules(p.exclude),
        "created_at": rfc3339(p.created_at),
    }


def _rules(body: dict[str, Any], key: str) -> list[SelectorSpec]:
    raw = body.get(key) or []
    if not isinstance(raw, list):
        raise ApiError(400, CODE_BAD_REQUEST, f"{key} must be a list of rules")
    out: list[SelectorSpec] = []
    for item in raw:
        if not isinstance(item, dict) or "kind" not in item:
            raise ApiError(400, CODE_BAD_REQUEST, f"each {key} rule is {{kind, value, claim?}}")
        out.append((str(item["kind"]), str(item.get("value", "")), str(item.get("claim", ""))))
    return out


async def list_apps(request: web.Request) -> web.Response:
    return json_response([app_json(a) for a in await _store(request).list_apps()])


async def create_app(request: web.Request) -> web.Response:
    st = _store(request)
    body = await read_json(request)
    if not isinstance(body.get("domain"), str):
        raise ApiError(400, CODE_BAD_REQUEST, "domain is required")
    a = await st.create_app(
        str(body.get("name") or body["domain"]),
        body["domain"],
        session_duration=float(body.get("session_duration", 24 * 3600.0)),
        allowed_idps=[str(i) for i in body.get("allowed_idps", [])],
        cors=body.get("cors") if isinstance(body.get("cors"), dict) else None,
    )
    await _changed(request)
    return json_response(app_json(a), status=201)


async def delete_app(request: web.Request) -> web.Response:
    st = _store(request)
    a = await st.find_app(request.match_info["app"])
    await st.delete_app(a.id)
    await _changed(request)
    return json_response({"id": a.id})


async def list_policies(request: web.Request) -> web.Response:
    st = _store(request)
    a = await st.find_app(request.match_info["app"])
    return json_response([policy_json(p) for p in await st.list_policies(a.id)])


async def create_policy(request: web.Request) -> web.Response:
    st = _store(request)
    a = await st.find_app(request.match_info["app"])
    body = await read_json(request)
    precedence = body.get("precedence")
    p = await st.create_policy(
        a.id,
        str(body.get("name", "")),
        str(body.get("decision", body.get("action", "allow"))),
        _rules(body, "include"),
        _rules(body, "require"),
        _rules(body, "exclude"),
        precedence=int(precedence) if precedence is not None else None,
    )
    await _changed(request)
    return json_response(policy_json(p), status=201)


async def delete_policy(request: web.Request) -> web.Response:
    st = _store(request)
    await st.delete_policy(request.match_info["policy"])
    await _changed(request)
    return json_response({"id": request.match_info["policy"]})


async def list_tokens(request: web.Request) -> web.Response:
    toks = await _store(request).list_service_tokens()
    return json_response(
        [
            {
                "id": t.id,
                "name": t.name,
                "client_id": t.client_id,
                "expires_at": rfc3339(t.expires_at) if t.expires_at else None,
            }
            for t in toks
        ]
    )


async def create_token(request: web.Request) -> web.Response:
    st = _store(request)
    body = await read_json(request)
    duration = body.get("duration")
    t, secret = await st.create_service_token(
        str(body.get("name", "")), duration=float(duration) if duration else None
    )
    await _changed(request)
    return json_response(
        {
            "id": t.id,
            "name": t.name,
            "client_id": t.client_id,
            "client_secret": secret,
            "expires_at": rfc3339(t.expires_at) if t.expires_at else None,
        },
        status=201,
    )


async def delete_token(request: web.Request) -> web.Response:
    st = _store(request)
    t = await st.find_service_token(request.match_info["token"])
    await st.delete_service_token(t.id)
    await _changed(request)
    return json_response({"id": t.id})


async def list_idps(request: web.Request) -> web.Response:
    return json_response([i.public() for i in await _store(request).list_idps()])


async def create_idp(request: web.Request) -> web.Response:
    st = _store(request)
    body = await read_json(request)
    config = body.get("config") or {}
    if not isinstance(config, dict):
        raise ApiError(400, CODE_BAD_REQUEST, "config must be an object")
    i = await st.create_idp(str(body.get("name", "")), str(body.get("type", "")), config)
    await _changed(request)
    return json_response(i.public(), status=201)


async def delete_idp(request: web.Request) -> web.Response:
    st = _store(request)
    i = await st.find_idp(request.match_info["idp"])
    await st.delete_idp(i.id)
    await _changed(request)
    return json_response({"id": i.id})
