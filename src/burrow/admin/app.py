"""The admin REST API on the edge's admin listener: burrow's own API under ``/api/v1`` and, under
``/client/v4``, the part of Cloudflare's v4 API that cloudflared's management commands call.

Every answer uses Cloudflare's envelope ``{"success", "errors", "messages", "result"}`` with
``Content-Type: application/json`` exactly (cloudflared only shows the API's error message when
the header is exactly that). See docs/admin-api.md.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from burrow.admin.auth import (
    CODE_BAD_REQUEST,
    CODE_CONFLICT,
    CODE_NOT_FOUND,
    ApiError,
    Principal,
    authenticate,
)
from burrow.errors import BurrowError, ConfigError, Conflict, NotFound, StoreError
from burrow.net.listen import format_hostport
from burrow.net.ratelimit import KeyedRateLimiter
from burrow.store.sealing import SecretBox
from burrow.store.sqlalchemy_store import SQLStore

if TYPE_CHECKING:
    from burrow.edge.server import EdgeServer

__all__ = ["AdminContext", "context_from_edge", "json_response", "mount_admin"]

log = logging.getLogger("burrow.admin")

PUBLIC_PATHS = frozenset({"/api/v1/login", "/api/v1/login/poll", "/api/v1/edge"})
MAX_BODY = 64 * 1024


@dataclass
class AdminContext:
    """What the API needs from the edge, as plain callables (testable without an edge)."""

    store: SQLStore
    box: SecretBox
    ca_pem: str
    location: str
    edges: Callable[[], list[str]]  # tunnel addresses to put in tokens and cert.pem
    live_connections: Callable[[uuid.UUID], int]  # this node's registered connections
    disconnect: Callable[[uuid.UUID, uuid.UUID | None], int]  # close (tunnel, connector?)
    reload: Callable[[], Awaitable[None]]  # refresh the routing snapshot now
    login_limiter: KeyedRateLimiter


CONTEXT_KEY = web.AppKey("burrow_admin", AdminContext)
PRINCIPAL_KEY = web.RequestKey("burrow_principal", Principal)


def _advertised(addresses: Sequence[tuple[str, int]]) -> list[str]:
    out = []
    for host, port in addresses:
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        out.append(format_hostport(host, port))
    return out


def context_from_edge(edge: EdgeServer) -> AdminContext:
    assert edge.store is not None and edge.pki is not None

    def live(tunnel_id: uuid.UUID) -> int:
        return sum(1 for c in edge.registry.connections(tunnel_id) if c.accepting)

    def disconnect(tunnel_id: uuid.UUID, connector: uuid.UUID | None) -> int:
        count = 0
        for conn in edge.registry.connections(tunnel_id):
            client_id = getattr(conn, "client_id", b"")
            if connector is not None and client_id != connector.bytes:
                continue
            shutdown = getattr(conn, "shutdown", None)
            if shutdown is not None:
                shutdown()
                count += 1
        return count

    return AdminContext(
        store=edge.store,
        box=SecretBox.load_or_create(edge.config.state_dir),
        ca_pem=edge.pki.ca_pem.decode(),
        location=edge.config.location,
        edges=lambda: _advertised(edge.tunnel_addresses),
        live_connections=live,
        disconnect=disconnect,
        reload=edge.reload,
        login_limiter=KeyedRateLimiter(1.0, 10.0),
    )


# -- envelope -----------------------------------------------------------------------------------


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def json_response(
    result: Any, *, status: int = 200, result_info: dict[str, int] | None = None
) -> web.Response:
    body: dict[str, Any] = {"success": True, "errors": [], "messages": [], "result": result}
    if result_info is not None:
        body["result_info"] = result_info
    return web.Response(
        status=status,
        body=json.dumps(body, default=_default).encode(),
        headers={"Content-Type": "application/json"},
    )


def error_response(status: int, code: int, message: str) -> web.Response:
    body = {
        "success": False,
        "errors": [{"code": code, "message": message}],
        "messages": [],
        "result": None,
    }
    return web.Response(
        status=status, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )


@web.middleware
async def _envelope_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    path = request.path
    if not (path.startswith("/client/v4/") or path.startswith("/api/v1/")):
        return await handler(request)
    ctx = request.app[CONTEXT_KEY]
    try:
        if path not in PUBLIC_PATHS:
            request[PRINCIPAL_KEY] = await authenticate(request, ctx.store)
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, str(exc))
    except NotFound as exc:
        return error_response(404, CODE_NOT_FOUND, str(exc))
    except Conflict as exc:
        return error_response(exc.status, CODE_CONFLICT, str(exc))
    except ConfigError as exc:
        return error_response(400, CODE_BAD_REQUEST, str(exc))
    except StoreError as exc:
        log.warning("admin API: state store failed: %s", exc)
        return error_response(503, 1000, f"the edge's state store is unavailable: {exc}")
    except BurrowError as exc:
        return error_response(exc.status, 1000, str(exc))
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_response(
                exc.status, CODE_NOT_FOUND if exc.status == 404 else 1000, exc.reason
            )
        raise


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL_KEY]


def context(request: web.Request) -> AdminContext:
    return request.app[CONTEXT_KEY]


async def read_json(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, CODE_BAD_REQUEST, "request body too large")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, CODE_BAD_REQUEST, "request body too large")
    if not raw.strip():
        if required:
            raise ApiError(400, CODE_BAD_REQUEST, "a JSON object body is required")
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, CODE_BAD_REQUEST, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, CODE_BAD_REQUEST, "request body must be a JSON object")
    return body


def parse_uuid(text: str, what: str = "tunnel id") -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ApiError(400, CODE_BAD_REQUEST, f"{what} {text[:64]!r} is not a UUID") from None


def mount_admin(app: web.Application, ctx: AdminContext) -> None:
    """Add the API routes and middleware to the edge's admin application."""
    from burrow.admin import access_api, api, cfapi, tunnel_config_api, waf_api

    app[CONTEXT_KEY] = ctx
    app.middlewares.append(_envelope_middleware)
    cfapi.add_routes(app.router)
    api.add_routes(app.router)
    access_api.add_routes(app.router)
    tunnel_config_api.add_routes(app.router)
    waf_api.add_routes(app.router)
