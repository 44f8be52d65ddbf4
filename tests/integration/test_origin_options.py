"""originRequest options that change how the connector reaches an origin, against real origins
on loopback: the TLS server name (service URL, originServerName, matchSNItoHost, unix+tls),
tlsTimeout, and keepAliveTimeout."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from burrow.ingress.rules import Ingress
from burrow.testing.harness import TunnelStack

HOSTS = (
    "sni.localhost",
    "named.localhost",
    "plain.localhost",
    "unixtls.localhost",
    "slow.localhost",
    "idle.localhost",
    "reuse.localhost",
    "h1.localhost",
)


async def _peer(request: web.Request) -> web.Response:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return web.Response(text=str(peer[1] if peer else "unix"))


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[TunnelStack]:
    ca = trustme.CA()
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # The certificate names the public hostnames only, not 127.0.0.1.
    ca.issue_cert(
        "sni.localhost", "named.localhost", "plain.localhost", "unixtls.localhost"
    ).configure_cert(server_ctx)
    app = web.Application()
    app.router.add_get("/{tail:.*}", _peer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    tls_site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await tls_site.start()
    tls_port = tls_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    sock = str(tmp_path / "tls.sock")
    await web.UnixSite(runner, sock, ssl_context=server_ctx).start()
    plain_site = web.TCPSite(runner, "127.0.0.1", 0)
    await plain_site.start()
    plain_port = plain_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts TCP, never answers the TLS handshake
        writer.close()

    silent_server = await asyncio.start_server(silent, "127.0.0.1", 0)
    silent_port = silent_server.sockets[0].getsockname()[1]
    ca_opt = {"caPool": str(ca_path)}
    rules: list[dict[str, Any]] = [
        {
            "hostname": "sni.localhost",
            "service": f"https://127.0.0.1:{tls_port}",
            "originRequest": {**ca_opt, "matchSNItoHost": True},
        },
        {
            "hostname": "named.localhost",
            "service": f"https://127.0.0.1:{tls_port}",
            "originRequest": {**ca_opt, "originServerName": "named.localhost"},
        },
        {
            "hostname": "plain.localhost",
            "service": f"https://127.0.0.1:{tls_port}",
            "originRequest": ca_opt,
        },
        {"hostname": "unixtls.localhost", "service": f"unix+tls:{sock}", "originRequest": ca_opt},
        {
            "hostname": "slow.localhost",
            "service": f"https://127.0.0.1:{silent_port}",
            "originRequest": {"tlsTimeout": "300ms", "noTLSVerify": True},
        },
        {
            "hostname": "idle.localhost",
            "service": f"http://127.0.0.1:{plain_port}",
            "originRequest": {"keepAliveTimeout": "100ms"},
        },
        {"hostname": "reuse.localhost", "service": f"http://127.0.0.1:{plain_port}"},
        {
            "hostname": "h1.localhost",
            "service": f"https://127.0.0.1:{tls_port}",
            "originRequest": {**ca_opt, "originServerName": "named.localhost", "http2Origin": True},
        },
        {"service": "http_status:404"},
    ]
    try:
        async with TunnelStack.start(tmp_path / "edge", Ingress.parse(rules), hostnames=HOSTS) as s:
            yield s
    finally:
        silent_server.close()
        await runner.cleanup()


async def _get(stack: TunnelStack, host: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(stack.url("/"), headers={"Host": host}) as r:
        return r.status, await r.text()


async def test_tls_server_name_choices(stack: TunnelStack) -> None:
    # The service URL's host (127.0.0.1) is not in the certificate: verification fails.
    status, text = await _get(stack, "plain.localhost")
    assert status == 502 and "server name '127.0.0.1'" in text
    # matchSNItoHost uses the request's host; originServerName names it explicitly.
    assert (await _get(stack, "sni.localhost"))[0] == 200
    assert (await _get(stack, "named.localhost"))[0] == 200
    # unix+tls: the server name is the request's host.
    assert (await _get(stack, "unixtls.localhost")) == (200, "unix")


async def test_tls_timeout(stack: TunnelStack) -> None:
    start = time.monotonic()
    status, text = await _get(stack, "slow.localhost")
    assert status == 502 and "burrow connector" in text
    assert time.monotonic() - start < 5  # not the 10 s default, let alone forever


async def test_keep_alive_timeout(stack: TunnelStack) -> None:
    first = (await _get(stack, "reuse.localhost"))[1]
    assert (await _get(stack, "reuse.localhost"))[1] == first  # the idle connection is reused
    first = (await _get(stack, "idle.localhost"))[1]
    await asyncio.sleep(0.3)  # longer than keepAliveTimeout (100ms): the idle connection expires
    assert (await _get(stack, "idle.localhost"))[1] != first


async def test_http2_origin_falls_back_to_http1_without_alpn_h2(stack: TunnelStack) -> None:
    # The origin (aiohttp) only speaks HTTP/1.1: ALPN does not select h2, as with Go's transport.
    assert (await _get(stack, "h1.localhost"))[0] == 200
    assert (await _get(stack, "h1.localhost"))[0] == 200
