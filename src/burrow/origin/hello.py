"""The built-in `hello_world` origin: a small loopback HTTP server that reports the request it
got, echoes WebSocket messages at /ws and streams a few events at /sse. It is started by the
connector when a rule names `hello_world` (or with `--hello-world`), like cloudflared's."""

from __future__ import annotations

import asyncio
import html
import json

from aiohttp import WSMsgType, web

from burrow import __version__


async def _report(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    info = {
        "method": request.method,
        "path": request.path_qs,
        "host": request.host,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_bytes": len(body),
        "served_by": f"burrow {__version__} hello_world",
    }
    if "text/html" in request.headers.get("Accept", ""):
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
            for k, v in request.headers.items()
        )
        page = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>burrow: hello</title></head>"
            "<body><h1>Congrats! You created a tunnel.</h1>"
            f"<p>{html.escape(request.method)} {html.escape(request.path_qs)} on "
            f"{html.escape(request.host)}</p><table>{rows}</table></body></html>"
        )
        return web.Response(text=page, content_type="text/html")
    return web.Response(text=json.dumps(info, indent=1) + "\n", content_type="application/json")


async def websocket_echo(request: web.Request) -> web.StreamResponse:
    """Echo every WebSocket message back (also used by the test origin)."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def _sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(5):
        await resp.write(f"data: event {i}\n\n".encode())
        await asyncio.sleep(0.2)
    await resp.write_eof()
    return resp


def hello_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/ws", websocket_echo)
    app.router.add_get("/sse", _sse)
    app.router.add_route("*", "/{tail:.*}", _report)
    return app


async def serve_app(
    app: web.Application, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Start an aiohttp app on loopback; returns the runner (for cleanup) and the bound port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, int(runner.addresses[0][1])


async def start_hello_world(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    return await serve_app(hello_app(), host, port)
