"""The connector's `--metrics ADDR` listener (PROTOCOL.md 4), as cloudflared serves it:

- `/metrics`: Prometheus text with cloudflared's metric names;
- `/ready`: 200 `{"status":200,"readyConnections":N,"connectorId":"..."}` while at least one
  connection is registered, else 503 with the same shape (Kubernetes readiness probes);
- `/healthcheck`: `OK` (liveness);
- `/config`: `{"version": N, "config": {...}}`, the configuration in use.

Nothing here touches the data path: every value is read when the endpoint is requested.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from burrow.net.listen import parse_hostport
from burrow.observability.metrics import CONTENT_TYPE, connector_registry, render

if TYPE_CHECKING:
    from burrow.connector.supervisor import Connector

DEFAULT_METRICS_PORT = 20241  # cloudflared's first default metrics port


async def start_endpoints(
    connector: Connector, address: str
) -> tuple[web.AppRunner, tuple[str, int]]:
    registry = connector_registry(connector)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render(registry), headers={"Content-Type": CONTENT_TYPE})

    async def ready(request: web.Request) -> web.Response:
        n = connector.ready_connections
        status = 200 if n > 0 else 503
        body = {"status": status, "readyConnections": n, "connectorId": str(connector.connector_id)}
        return web.json_response(body, status=status)

    async def healthcheck(request: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    async def config(request: web.Request) -> web.Response:
        return web.json_response(connector.orchestrator.config_document())

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/ready", ready)
    app.router.add_get("/healthcheck", healthcheck)
    app.router.add_get("/config", config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = parse_hostport(address, DEFAULT_METRICS_PORT)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = runner.addresses[0]
    return runner, (str(bound[0]), int(bound[1]))
