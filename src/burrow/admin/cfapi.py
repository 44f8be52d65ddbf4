"""``/client/v4``: the subset of Cloudflare's v4 API that cloudflared's management commands call
(``cfapi/`` in the cloudflared source): create, list, get and delete tunnels, fetch a tunnel's
token, route a DNS hostname, list and clean up connections.

burrow has no DNS zones: the ``zoneID`` in cert.pem is the account id, and a "DNS route" is a
hostname route on the edge (first come, first served across accounts).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any

from aiohttp import web

from burrow.admin.app import context, json_response, parse_uuid, principal, read_json, rfc3339
from burrow.admin.auth import (
    CODE_BAD_REQUEST,
    CODE_CONFLICT,
    CODE_HAS_CONNECTIONS,
    CODE_NOT_FOUND,
    ApiError,
)
from burrow.connector.credentials import TunnelCredentials, encode_token, generate_tunnel_secret
from burrow.errors import Conflict, NotFound
from burrow.store.records import (
    ConnectionRecord,
    Tunnel,
    normalize_hostname,
)
from burrow.store.secrets import MIN_SECRET_BYTES, hash_secret

PREFIX = "/client/v4"
DEFAULT_PER_PAGE = 100
MAX_PER_PAGE = 1000
_NAME_BAD = re.compile(r"[\x00-\x1f\x7f]")


def add_routes(router: web.UrlDispatcher) -> None:
    acct = PREFIX + "/accounts/{account}/cfd_tunnel"
    router.add_post(acct, create_tunnel)
    router.add_get(acct, list_tunnels)
    router.add_get(acct + "/{tunnel}", get_tunnel)
    router.add_delete(acct + "/{tunnel}", delete_tunnel)
    router.add_get(acct + "/{tunnel}/token", get_token)
    router.add_get(acct + "/{tunnel}/connections", list_connections)
    router.add_delete(acct + "/{tunnel}/connections", cleanup_connections)
    router.add_put(PREFIX + "/zones/{zone}/tunnels/{tunnel}/routes", route_tunnel)


# -- shapes ---------------------------------------------------------------------------------------


def connection_json(c: ConnectionRecord) -> dict[str, Any]:
    return {
        "id": str(c.id),
        "uuid": str(c.id),
        "colo_name": c.colo,
        "client_id": str(c.connector_id),
        "client_version": c.client_version,
        "is_pending_reconnect": False,
        "origin_ip": c.origin_ip,
        "opened_at": rfc3339(c.opened_at),
        # burrow's additions (cloudflared ignores unknown keys): which HA slot, which edge node.
        "conn_index": c.conn_index,
        "edge_node": c.edge_node,
    }


def tunnel_json(t: Tunnel, conns: list[ConnectionRecord]) -> dict[str, Any]:
    return {
        "id": str(t.id),
        "account_tag": t.account_id,
        "name": t.name,
        "created_at": rfc3339(t.created_at),
        "deleted_at": rfc3339(t.deleted_at) if t.deleted_at else None,
        "connections": [connection_json(c) for c in conns],
        "conns_active_at": rfc3339(min(c.opened_at for c in conns)) if conns else None,
        "tun_type": "cfd_tunnel",
        "status": "inactive" if not conns else "healthy",
        "remote_config": False,
        "metadata": {},
    }


async def _tunnel_in(request: web.Request, account: str, *, live: bool = False) -> Tunnel:
    """The tunnel named by the URL, if it is in ``account`` (404 otherwise, so that ids of
    other accounts cannot be probed)."""
    tunnel_id = parse_uuid(request.match_info["tunnel"])
    store = context(request).store
    try:
        tunnel: Tunnel | None = await store.get_tunnel(tunnel_id)
    except NotFound:
        tunnel = None
    if tunnel is None or tunnel.account_id != account:
        raise ApiError(404, CODE_NOT_FOUND, f"tunnel {tunnel_id} not found in account {account}")
    if live and tunnel.deleted:
        raise ApiError(404, CODE_NOT_FOUND, f"tunnel {tunnel_id} has been deleted")
    return tunnel


# -- handlers -------------------------------------------------------------------------------------


async def create_tunnel(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    who = principal(request)
    who.admin(account)
    ctx = context(request)
    body = await read_json(request)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, CODE_BAD_REQUEST, "tunnel name required")
    if len(name) > 255 or _NAME_BAD.search(name):
        raise ApiError(400, CODE_BAD_REQUEST, "tunnel name must be 1-255 printable characters")
    try:
        uuid.UUID(name)
    except ValueError:
        pass
    else:
        raise ApiError(400, CODE_BAD_REQUEST, "you cannot use UUIDs as tunnel names")
    raw_secret = body.get("tunnel_secret")
    if raw_secret is None:
        secret = generate_tunnel_secret()
    else:
        try:
            if not isinstance(raw_secret, str):
                raise ValueError
            secret = base64.b64decode(raw_secret, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, CODE_BAD_REQUEST, "tunnel_secret must be standard base64") from None
        if len(secret) < MIN_SECRET_BYTES:
            raise ApiError(
                400,
                CODE_BAD_REQUEST,
                f"tunnel_secret must decode to at least {MIN_SECRET_BYTES} bytes",
            )
    tunnel_id = uuid.uuid4()
    try:
        tunnel = await ctx.store.create_tunnel(
            account,
            name,
            hash_secret(secret),
            tunnel_id=tunnel_id,
            secret_sealed=ctx.box.seal(tunnel_id, secret),
        )
    except Conflict:
        raise ApiError(
            409, CODE_CONFLICT, f"a tunnel named {name!r} already exists in this account"
        ) from None
    await ctx.reload()
    creds = _credentials(ctx, tunnel, secret)
    result = tunnel_json(tunnel, [])
    result["token"] = encode_token(creds)
    result["credentials_file"] = {
        "AccountTag": tunnel.account_id,
        "TunnelID": str(tunnel.id),
        "TunnelName": tunnel.name,
        "TunnelSecret": base64.b64encode(secret).decode(),
    }
    return json_response(result)


def _credentials(ctx: Any, tunnel: Tunnel, secret: bytes) -> TunnelCredentials:
    return TunnelCredentials(
        account_tag=tunnel.account_id,
        tunnel_secret=secret,
        tunnel_id=tunnel.id,
        edge=tuple(ctx.edges()),
        ca_pem=ctx.ca_pem,
    )


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, CODE_BAD_REQUEST, f"existed_at {text!r} is not an RFC 3339 time"
        ) from None


def _int_param(request: web.Request, key: str, default: int, lo: int, hi: int) -> int:
    text = request.query.get(key)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, CODE_BAD_REQUEST, f"{key} must be an integer") from None
    if not lo <= value <= hi:
        raise ApiError(400, CODE_BAD_REQUEST, f"{key} must be between {lo} and {hi}")
    return value


async def list_tunnels(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    who = principal(request)
    who.read(account)
    q = request.query
    store = context(request).store
    deleted = q.get("is_deleted")
    if deleted not in (None, "", "true", "false"):
        raise ApiError(400, CODE_BAD_REQUEST, "is_deleted must be true or false")
    tunnels = await store.list_tunnels(account, include_deleted=deleted != "false")
    if deleted == "true":
        tunnels = [t for t in tunnels if t.deleted]
    if (name := q.get("name")) is not None and name != "":
        tunnels = [t for t in tunnels if t.name == name]
    if prefix := q.get("name_prefix"):
        tunnels = [t for t in tunnels if t.name.startswith(prefix)]
    if exclude := q.get("exclude_prefix"):
        tunnels = [t for t in tunnels if not t.name.startswith(exclude)]
    if wanted := q.get("uuid"):
        wanted_id = parse_uuid(wanted)
        tunnels = [t for t in tunnels if t.id == wanted_id]
    if at := q.get("existed_at"):
        moment = _parse_time(at)
        tunnels = [
            t
            for t in tunnels
            if t.created_at <= moment and (t.deleted_at is None or t.deleted_at > moment)
        ]
    tunnels = [t for t in tunnels if who.may_see(t.id)]
    page = _int_param(request, "page", 1, 1, 1_000_000)
    per_page = _int_param(request, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
    chunk = tunnels[(page - 1) * per_page : page * per_page]
    by_tunnel: dict[uuid.UUID, list[ConnectionRecord]] = defaultdict(list)
    if chunk:
        for c in await store.list_connections(account_id=account):
            by_tunnel[c.tunnel_id].append(c)
    return json_response(
        [tunnel_json(t, by_tunnel.get(t.id, [])) for t in chunk],
        result_info={
            "page": page,
            "per_page": per_page,
            "count": len(chunk),
            "total_count": len(tunnels),
        },
    )


async def get_tunnel(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    who = principal(request)
    who.read(account)
    tunnel = await _tunnel_in(request, account)
    if not who.may_see(tunnel.id):
        raise ApiError(404, CODE_NOT_FOUND, f"tunnel {tunnel.id} not found in account {account}")
    conns = await context(request).store.list_connections(tunnel.id)
    return json_response(tunnel_json(tunnel, conns))


async def delete_tunnel(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    principal(request).admin(account)
    ctx = context(request)
    tunnel = await _tunnel_in(request, account, live=True)
    cascade = request.query.get("cascade", "").lower() in ("true", "1")
    connected = len(await ctx.store.list_connections(tunnel.id)) + ctx.live_connections(tunnel.id)
    if connected and not cascade:
        raise ApiError(
            400,
            CODE_HAS_CONNECTIONS,
            f"tunnel {tunnel.name} ({tunnel.id}) has active connections; stop its connectors "
            "or delete with --force (cascade=true)",
        )
    deleted = await ctx.store.delete_tunnel(tunnel.id)
    ctx.disconnect(tunnel.id, None)
    await ctx.reload()
    return json_response(tunnel_json(deleted, []))


async def get_token(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    who = principal(request)
    ctx = context(request)
    tunnel_id = parse_uuid(request.match_info["tunnel"])
    who.run(account, tunnel_id)
    tunnel = await _tunnel_in(request, account, live=True)
    if tunnel.secret_sealed is None:
        raise ApiError(
            400,
            CODE_BAD_REQUEST,
            f"tunnel {tunnel.id} was created without a recoverable secret; use its "
            "credentials file, or create a new tunnel",
        )
    secret = ctx.box.open(tunnel.id, tunnel.secret_sealed)
    return json_response(encode_token(_credentials(ctx, tunnel, secret)))


async def list_connections(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    who = principal(request)
    who.read(account)
    tunnel = await _tunnel_in(request, account)
    if not who.may_see(tunnel.id):
        raise ApiError(404, CODE_NOT_FOUND, f"tunnel {tunnel.id} not found in account {account}")
    clients: dict[uuid.UUID, list[ConnectionRecord]] = defaultdict(list)
    for c in await context(request).store.list_connections(tunnel.id):
        clients[c.connector_id].append(c)
    result = [
        {
            "id": str(client_id),
            "features": [],
            "version": conns[0].client_version,
            "arch": conns[0].arch,
            "run_at": rfc3339(min(c.opened_at for c in conns)),
            "conns": [connection_json(c) for c in sorted(conns, key=lambda c: c.conn_index)],
        }
        for client_id, conns in clients.items()
    ]
    return json_response(result)


async def cleanup_connections(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    principal(request).admin(account)
    ctx = context(request)
    tunnel = await _tunnel_in(request, account, live=True)
    client = request.query.get("client_id")
    connector = parse_uuid(client, "client_id") if client else None
    closed = ctx.disconnect(tunnel.id, connector)
    removed = await ctx.store.delete_connections(tunnel_id=tunnel.id, connector_id=connector)
    return json_response({"closed": closed, "removed": len(removed)})


async def route_tunnel(request: web.Request) -> web.Response:
    zone = request.match_info["zone"]
    principal(request).admin(zone)  # burrow's zone id is the account id
    ctx = context(request)
    tunnel = await _tunnel_in(request, zone, live=True)
    body = await read_json(request)
    kind = body.get("type")
    if kind == "lb":
        raise ApiError(400, CODE_BAD_REQUEST, "load balancer routes are not supported by burrow")
    if kind != "dns":
        raise ApiError(400, CODE_BAD_REQUEST, 'route type must be "dns"')
    raw = body.get("user_hostname")
    if not isinstance(raw, str) or not raw.strip():
        raise ApiError(400, CODE_BAD_REQUEST, "user_hostname is required")
    host = normalize_hostname(raw)
    overwrite = body.get("overwrite_existing") is True
    before = {r.hostname: r for r in await ctx.store.list_routes()}.get(host)
    if before is not None and before.tunnel_id == tunnel.id:
        return json_response({"cname": "unchanged", "name": host})
    if before is not None and before.account_id == zone and not overwrite:
        raise ApiError(
            409,
            CODE_CONFLICT,
            f"{host} is already routed to tunnel {before.tunnel_id}; use --overwrite-dns to "
            "move it to this tunnel",
        )
    await ctx.store.add_route(host, tunnel.id, overwrite=overwrite, account_id=zone)
    await ctx.reload()
    return json_response({"cname": "new" if before is None else "updated", "name": host})
