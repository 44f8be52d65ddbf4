"""Test origins: a real aiohttp server on loopback with endpoints that exercise the tunnel.

- `/echo`: JSON of the request (method, path, headers, body size)
- `/upload`: streams the request body, answers its length and SHA-256
- `/download?size=N`: streams N bytes of a deterministic pattern (chunked)
- `/fixed?size=N`: the same with Content-Length
- `/status/N`: answers status N
- `/cookies`: two Set-Cookie headers
- `/ws`: WebSocket echo
- `/sse?n=K&interval=S`: K server-sent events, one every S seconds
- `/slow?delay=S`: answers after S seconds
"""

from __future__ import annotations

import asyncio
import hashlib
import json

from aiohttp import web

from burrow.origin.hello import serve_app, websocket_echo

PATTERN = bytes(range(256)) * 256  # 64 KiB


def pattern_bytes(size: int) -> bytes:
    """The first `size` bytes of the download pattern (for checking downloads)."""
    reps, rest = divmod(size, len(PATTERN))
    return PATTERN * reps + PATTERN[:rest]


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path_qs,
            "host": request.host,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_size": len(body),
            "body": body.decode("latin-1") if len(body) < 4096 else "",
        }
    )


async def _upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"size": size, "sha256": digest.hexdigest()})


async def _download(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("size", "0"))
    resp = web.StreamResponse()
    resp.content_type = "application/octet-stream"
    if request.path == "/fixed":
        resp.content_length = size
    await resp.prepare(request)
    sent = 0
    while sent < size:
        n = min(len(PATTERN), size - sent)
        await resp.write(PATTERN[:n])
        sent += n
    await resp.write_eof()
    return resp


async def _status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    return web.Response(status=code, text=f"status {code}\n" if code not in (204, 304) else None)


async def _cookies(request: web.Request) -> web.Response:
    resp = web.Response(text="cookies\n")
    resp.headers.add("Set-Cookie", "a=1; Path=/")
    resp.headers.add("Set-Cookie", "b=2; Path=/")
    resp.headers["X-Origin"] = "test"
    return resp


async def _sse(request: web.Request) -> web.StreamResponse:
    n = int(request.query.get("n", "3"))
    interval = float(request.query.get("interval", "0.3"))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(n):
        await resp.write(f"data: {json.dumps({'i': i})}\n\n".encode())
        await asyncio.sleep(interval)
    await resp.write_eof()
    return resp


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("delay", "1")))
    return web.Response(text="slow\n")


def test_origin_app() -> web.Application:
    app = web.Application(client_max_size=1 << 40)
    app.router.add_route("*", "/echo", _echo)
    app.router.add_route("*", "/upload", _upload)
    app.router.add_get("/download", _download)
    app.router.add_get("/fixed", _download)
    app.router.add_route("*", "/status/{code}", _status)
    app.router.add_get("/cookies", _cookies)
    app.router.add_get("/ws", websocket_echo)
    app.router.add_get("/sse", _sse)
    app.router.add_get("/slow", _slow)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


async def start_test_origin(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    return await serve_app(test_origin_app(), host, port)


def named_origin_app(name: str) -> web.Application:
    """An origin that answers every request with its own name (to see where a rule routed)."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=name)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app
