"""Cloudflare's v4 endpoint for remotely managed tunnel configuration:

    GET /client/v4/accounts/{account}/cfd_tunnel/{tunnel}/configurations
    PUT /client/v4/accounts/{account}/cfd_tunnel/{tunnel}/configurations   {"config": {...}}

The config is cloudflared's remote JSON form (`burrow.ingress.remote`; durations in seconds),
validated with cloudflared's messages before it is stored; the edge then pushes the new version
to every connection of the tunnel (`burrow.edge.remote_config`). Mounted with `add_routes`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from burrow.admin.app import context, json_response, principal, read_json, rfc3339
from burrow.admin.auth import CODE_BAD_REQUEST, CODE_NOT_FOUND, ApiError
from burrow.admin.cfapi import PREFIX, _tunnel_in
from burrow.errors import ConfigError, NotFound
from burrow.ingress.remote import parse_remote_config
from burrow.store.tunnel_configs import TunnelConfig, get_tunnel_config, set_tunnel_config


def add_routes(router: web.UrlDispatcher) -> None:
    path = PREFIX + "/accounts/{account}/cfd_tunnel/{tunnel}/configurations"
    router.add_get(path, get_configuration)
    router.add_put(path, put_configuration)


def _result(tunnel_id: str, saved: TunnelConfig | None) -> dict[str, Any]:
    return {
        "tunnel_id": tunnel_id,
        "version": saved.version if saved else 0,
        "config": saved.config if saved else None,
        "source": "cloudflare" if saved else "local",
        "created_at": rfc3339(saved.updated_at) if saved else None,
    }


async def get_configuration(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    principal(request).read(account)
    tunnel = await _tunnel_in(request, account)
    saved = await get_tunnel_config(context(request).store, tunnel.id)
    return json_response(_result(str(tunnel.id), saved))


async def put_configuration(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    principal(request).admin(account)
    tunnel = await _tunnel_in(request, account, live=True)
    body = await read_json(request)
    config = body.get("config")
    if not isinstance(config, dict):
        raise ApiError(400, CODE_BAD_REQUEST, "config must be an object")
    try:
        parse_remote_config(config)
    except ConfigError as exc:
        raise ApiError(400, CODE_BAD_REQUEST, f"invalid configuration: {exc}") from None
    try:
        saved = await set_tunnel_config(context(request).store, tunnel.id, config)
    except NotFound as exc:
        raise ApiError(404, CODE_NOT_FOUND, str(exc)) from None
    return json_response(_result(str(tunnel.id), saved))
