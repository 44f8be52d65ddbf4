"""One connector, one config, every kind of HTTP origin at once (issue 4), with real origins on
loopback: two apps by hostname, one by path, a unix socket, HTTPS with a private CA (caPool),
hello_world, an http_status catch-all, WebSocket, SSE as it is produced, and an h2 origin with
trailers through http2Origin."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import h11
import pytest
import trustme
from aiohttp import web

from burrow.ingress.rules import Ingress
from burrow.testing.h2_origin import start_h2_origin
from burrow.testing.harness import TunnelStack
from burrow.testing.origins import start_test_origin

HOSTS = (
    "a.localhost",
    "b.localhost",
    "unix.localhost",
    "tls.localhost",
    "badtls.localhost",
    "hello.localhost",
    "ws.localhost",
    "grpc.localhost",
    "other.localhost",
)


def _named_app(name: str) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "app": name,
                "path": request.path_qs,
                "host": request.headers.get("Host"),
                "xfh": request.headers.get("X-Forwarded-Host"),
                "tls": request.secure,
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def _serve(app: web.Application, **site: Any) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    if "path" in site:
        await web.UnixSite(runner, site["path"]).start()
        return runner, 0
    tcp = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=site.get("ssl_context"))
    await tcp.start()
    return runner, int(tcp._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca_path = tmp_path / "origin-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert_path, key_path = tmp_path / "origin.pem", tmp_path / "origin.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)

    runners = []
    out: dict[str, Any] = {"ca": str(ca_path)}
    for name in ("a", "b", "api"):
        runner, out[name] = await _serve(_named_app(name))
        runners.append(runner)
    out["sock"] = str(tmp_path / "app.sock")
    runner, _ = await _serve(_named_app("unix"), path=out["sock"])
    runners.append(runner)
    runner, out["tls"] = await _serve(_named_app("tls"), ssl_context=ctx)
    runners.append(runner)
    runner, out["origin"] = await start_test_origin()
    runners.append(runner)
    h2server, out["h2"], out["h2_seen"] = await start_h2_origin(str(cert_path), str(key_path))
    try:
        yield out
    finally:
        h2server.close()
        for r in runners:
            await r.cleanup()


def services_ingress(svc: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"hostname": "a.localhost", "path": "^/api/", "service": f"http://127.0.0.1:{svc['api']}"},
        {"hostname": "a.localhost", "service": f"http://127.0.0.1:{svc['a']}"},
        {
            "hostname": "b.localhost",
            "service": f"http://127.0.0.1:{svc['b']}",
            "originRequest": {"httpHostHeader": "internal.b"},
        },
        {"hostname": "unix.localhost", "service": f"unix:{svc['sock']}"},
        {
            "hostname": "tls.localhost",
            "service": f"https://localhost:{svc['tls']}",
            "originRequest": {"caPool": svc["ca"], "noHappyEyeballs": True},
        },
        {"hostname": "badtls.localhost", "service": f"https://localhost:{svc['tls']}"},
        {"hostname": "hello.localhost", "service": "hello_world"},
        {"hostname": "ws.localhost", "service": f"ws://127.0.0.1:{svc['origin']}"},
        {
            "hostname": "grpc.localhost",
            "service": f"https://localhost:{svc['h2']}",
            "originRequest": {"caPool": svc["ca"], "http2Origin": True},
        },
        {"service": "http_status:418"},
    ]


@pytest.fixture
async def stack(tmp_path: Path, services: dict[str, Any]) -> AsyncIterator[TunnelStack]:
    ingress = Ingress.parse(services_ingress(services))
    async with TunnelStack.start(tmp_path / "edge", ingress, hostnames=HOSTS) as s:
        s.extra.update(services)
        yield s


async def _get(stack: TunnelStack, host: str, path: str = "/") -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(stack.url(path), headers={"Host": host}) as r:
        body = await r.read()
        try:
            return r.status, json.loads(body)
        except ValueError:
            return r.status, body.decode(errors="replace")


async def test_http_apps_by_hostname_path_and_host_header(stack: TunnelStack) -> None:
    status, a = await _get(stack, "a.localhost", "/x?q=1")
    assert (status, a["app"], a["path"], a["host"]) == (200, "a", "/x?q=1", "a.localhost")
    status, api = await _get(stack, "a.localhost", "/api/users")
    assert (status, api["app"]) == (200, "api")
    status, b = await _get(stack, "b.localhost", "/")
    assert (status, b["app"]) == (200, "b")
    assert b["host"] == "internal.b" and b["xfh"] == "b.localhost"


async def test_unix_socket_origin(stack: TunnelStack) -> None:
    status, body = await _get(stack, "unix.localhost", "/sock")
    assert (status, body["app"], body["path"]) == (200, "unix", "/sock")


async def test_https_origin_with_private_ca(
    stack: TunnelStack, caplog: pytest.LogCaptureFixture
) -> None:
    status, body = await _get(stack, "tls.localhost", "/secure")
    assert (status, body["app"], body["tls"]) == (200, "tls", True)
    caplog.set_level(logging.ERROR, logger="burrow.connector.proxy")
    status, text = await _get(stack, "badtls.localhost", "/secure")
    assert status == 502
    assert "TLS verification of origin localhost" in text
    assert any(
        "TLS verification of origin localhost" in r.getMessage() and "caPool" in r.getMessage()
        for r in caplog.records
    )


async def test_hello_world_and_status_catch_all(stack: TunnelStack) -> None:
    status, body = await _get(stack, "hello.localhost", "/hi")
    assert status == 200 and "hello.localhost" in json.dumps(body)
    status, _ = await _get(stack, "other.localhost", "/")
    assert status == 418


async def test_websocket_origin(stack: TunnelStack) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(stack.url("/ws"), headers={"Host": "ws.localhost"}) as ws,
    ):
        await ws.send_str("ping")
        assert await ws.receive_str(timeout=5) == "ping"


async def test_sse_events_arrive_as_produced(stack: TunnelStack) -> None:
    interval, n = 0.3, 4
    arrivals: list[float] = []
    async with (
        aiohttp.ClientSession() as s,
        s.get(stack.url(f"/sse?n={n}&interval={interval}"), headers={"Host": "ws.localhost"}) as r,
    ):
        assert r.headers["Content-Type"].startswith("text/event-stream")
        start = time.monotonic()
        async for line in r.content:
            if line.startswith(b"data:"):
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) == n
    # The first event arrives long before the stream ends, and events are spread out in time.
    assert arrivals[0] < interval * (n - 1) / 2
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) > interval / 2, gaps


async def _raw_request(port: int, request: bytes) -> tuple[h11.Response, bytes, list[Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))  # state only
    response: h11.Response | None = None
    body = b""
    trailers: list[Any] = []
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), 10)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                trailers = list(event.headers)
                break
    finally:
        writer.close()
    assert response is not None
    return response, body, trailers


async def test_h2_origin_trailers_reach_a_chunked_eyeball(stack: TunnelStack) -> None:
    response, body, trailers = await _raw_request(
        stack.http_port,
        b"GET /pkg.Service/Method HTTP/1.1\r\nHost: grpc.localhost\r\nTE: trailers\r\n\r\n",
    )
    assert response.status_code == 200
    headers = dict(response.headers)
    assert headers[b"content-type"] == b"application/grpc"
    assert headers[b"transfer-encoding"] == b"chunked"
    info = json.loads(body)
    assert info == {
        "path": "/pkg.Service/Method",
        "authority": "grpc.localhost",
        "protocol": "h2",
        "size": 0,
    }
    assert (b"grpc-status", b"0") in trailers and (b"grpc-message", b"ok") in trailers
    seen = stack.extra["h2_seen"][-1]
    assert seen[":scheme"] == "https" and seen["te"] == "trailers"
    assert "cf-connecting-ip" in seen and "cf-warp-tag-id" in seen


async def test_chunked_download_and_long_poll(stack: TunnelStack) -> None:
    from burrow.testing.origins import pattern_bytes

    size = 3_000_000
    async with aiohttp.ClientSession() as s:
        async with s.get(
            stack.url(f"/download?size={size}"), headers={"Host": "ws.localhost"}
        ) as r:
            assert r.status == 200 and "Content-Length" not in r.headers
            assert await r.read() == pattern_bytes(size)
        start = time.monotonic()
        async with s.get(stack.url("/slow?delay=1.5"), headers={"Host": "ws.localhost"}) as r:
            assert (r.status, await r.text()) == (200, "slow\n")
        assert time.monotonic() - start >= 1.4
