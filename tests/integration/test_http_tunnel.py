"""HTTP through a real edge and connector on loopback, against a real origin."""

from __future__ import annotations

import asyncio
import hashlib
import json

import aiohttp
import pytest

from burrow.testing.harness import TunnelStack, provision, start_edge
from burrow.testing.origins import pattern_bytes
from burrow.wire import http1

HOST = {"Host": "app.localhost"}


async def test_get_with_query_preserves_host_and_adds_eyeball_headers(stack: TunnelStack) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.get(stack.url("/echo?a=1&b=two"), headers={**HOST, "X-Custom": "v1"}) as r,
    ):
        assert r.status == 200
        info = await r.json()
    headers = {k.lower(): v for k, v in info["headers"]}
    assert info["path"] == "/echo?a=1&b=two"
    assert info["host"] == "app.localhost"
    assert headers["x-custom"] == "v1"
    assert headers["cf-connecting-ip"] == "127.0.0.1"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert json.loads(headers["cf-visitor"]) == {"scheme": "http"}
    assert headers["cf-ray"].endswith("-burrow")
    assert headers["cf-warp-tag-id"] == str(stack.connector.connector_id)


async def test_post_body_and_status_codes(stack: TunnelStack) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(stack.url("/echo"), data=b"hello body", headers=HOST) as r:
            info = await r.json()
            assert info["method"] == "POST" and info["body"] == "hello body"
        for code in (201, 204, 302, 404, 500, 503):
            async with s.get(
                stack.url(f"/status/{code}"), headers=HOST, allow_redirects=False
            ) as r:
                assert r.status == code
                if code != 204:
                    assert await r.text() == f"status {code}\n"


async def test_repeated_response_headers(stack: TunnelStack) -> None:
    async with aiohttp.ClientSession() as s, s.get(stack.url("/cookies"), headers=HOST) as r:
        assert r.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
        assert r.headers["X-Origin"] == "test"
        # tunnel-internal headers never reach the eyeball
        assert not any(k.lower().startswith("cf-cloudflared") for k in r.headers)


async def test_spoofed_internal_headers_are_dropped(stack: TunnelStack) -> None:
    headers = {
        **HOST,
        "Cf-Cloudflared-Proxy-Connection-Upgrade": "control-stream",
        "Cf-Connecting-Ip": "6.6.6.6",
        "X-Forwarded-For": "10.1.2.3",
    }
    async with aiohttp.ClientSession() as s, s.get(stack.url("/echo"), headers=headers) as r:
        assert r.status == 200
        info = await r.json()
    got = {k.lower(): v for k, v in info["headers"]}
    assert "cf-cloudflared-proxy-connection-upgrade" not in got
    assert got["cf-connecting-ip"] == "127.0.0.1"
    assert got["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"


async def _raw_requests(port: int, requests: list[bytes]) -> list[tuple[int, bytes]]:
    """Send requests one after another on one connection; collect (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parser = http1.ResponseParser()
    out: list[tuple[int, bytes]] = []
    try:
        for req in requests:
            parser.expect(req.split(b" ", 1)[0])
            writer.write(req)
            status, body, done = 0, bytearray(), False
            while not done:
                data = await asyncio.wait_for(reader.read(65536), 10)
                events = parser.feed(data) if data else parser.feed_eof()
                for ev in events:
                    if isinstance(ev, http1.ResponseHead):
                        status = ev.status
                    elif isinstance(ev, http1.Data):
                        body += ev.data
                    elif isinstance(ev, http1.EndOfMessage):
                        done = True
                if not data:
                    break
            out.append((status, bytes(body)))
    finally:
        writer.close()
    return out


async def test_1000_sequential_requests_on_one_keepalive_connection(stack: TunnelStack) -> None:
    req = b"GET /echo HTTP/1.1\r\nHost: app.localhost\r\n\r\n"
    results = await _raw_requests(stack.http_port, [req] * 1000)
    assert len(results) == 1000
    assert all(status == 200 for status, _ in results)


async def test_100_concurrent_requests(stack: TunnelStack) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as s:

        async def one(i: int) -> str:
            async with s.get(stack.url(f"/echo?i={i}"), headers=HOST) as r:
                assert r.status == 200
                return str((await r.json())["path"])

        paths = await asyncio.gather(*(one(i) for i in range(100)))
    assert sorted(paths) == sorted(f"/echo?i={i}" for i in range(100))


@pytest.mark.parametrize("path", ["/download", "/fixed"])
async def test_download_streams_exact_bytes(stack: TunnelStack, path: str) -> None:
    size = 5 * 1024 * 1024 + 123
    digest = hashlib.sha256()
    got = 0
    async with (
        aiohttp.ClientSession() as s,
        s.get(stack.url(f"{path}?size={size}"), headers=HOST) as r,
    ):
        assert r.status == 200
        async for chunk in r.content.iter_any():
            digest.update(chunk)
            got += len(chunk)
    assert got == size
    assert digest.hexdigest() == hashlib.sha256(pattern_bytes(size)).hexdigest()


async def test_chunked_upload(stack: TunnelStack) -> None:
    blob = pattern_bytes(3 * 1024 * 1024 + 7)

    async def gen():
        for i in range(0, len(blob), 100_000):
            yield blob[i : i + 100_000]

    async with (
        aiohttp.ClientSession() as s,
        s.post(stack.url("/upload"), data=gen(), headers=HOST) as r,
    ):
        info = await r.json()
    assert info == {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


async def test_websocket_echo(stack: TunnelStack) -> None:
    async with aiohttp.ClientSession() as s, s.ws_connect(stack.url("/ws"), headers=HOST) as ws:
        await ws.send_str("hello")
        assert (await ws.receive_str(timeout=5)) == "hello"
        blob = pattern_bytes(300_000)
        await ws.send_bytes(blob)
        assert (await ws.receive_bytes(timeout=5)) == blob


async def test_origin_down_gives_502_from_connector(stack: TunnelStack) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.get(stack.url("/"), headers={"Host": "down.localhost"}) as r,
    ):
        assert r.status == 502
        text = await r.text()
    assert "cannot connect to origin 127.0.0.1:1" in text


async def test_unknown_host_404_and_catch_all(stack: TunnelStack) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(stack.url("/"), headers={"Host": "nobody.localhost"}) as r:
            assert r.status == 404
            assert "No tunnel is routed for this hostname" in await r.text()


async def test_routed_but_not_connected_gives_530(tmp_path) -> None:
    edge = await start_edge(tmp_path)
    try:
        await provision(edge, hostnames=["idle.localhost"])
        async with (
            aiohttp.ClientSession() as s,
            s.get(
                f"http://127.0.0.1:{edge.http_addresses[0][1]}/", headers={"Host": "idle.localhost"}
            ) as r,
        ):
            assert r.status == 530
            text = await r.text()
            assert "Error 1033" in text and "not connected" in text
    finally:
        await edge.stop(grace=0)


async def _raw(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    try:
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", b"431"),
        (
            b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"400",
        ),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: app.localhost\r\n\r\n", b"414"),
    ],
)
async def test_malformed_requests_are_refused_and_edge_keeps_serving(
    stack: TunnelStack, payload: bytes, status: bytes
) -> None:
    answer = await _raw(stack.http_port, payload)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
    async with aiohttp.ClientSession() as s, s.get(stack.url("/echo"), headers=HOST) as r:
        assert r.status == 200


async def test_websocket_upgrade_refused_by_origin_is_a_plain_response(stack: TunnelStack) -> None:
    """The origin answers an upgrade request with 200: the eyeball must not see a 101."""
    answer = await _raw(
        stack.http_port,
        b"GET /echo HTTP/1.1\r\nHost: app.localhost\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert b"101" not in answer.split(b"\r\n", 1)[0]
