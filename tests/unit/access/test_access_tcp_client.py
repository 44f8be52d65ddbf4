"""The access client's pieces: target parsing (.localhost, --edge, schemes), the headers it
sends (cloudflared's names), the stored-token hook, and the handshake checks against a small
real server on loopback that answers what the test tells it to."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from burrow.access import tcp_client as tc
from burrow.wire import websocket as ws


def test_make_target_schemes_ports_and_loopback_names() -> None:
    t = tc.make_target("ssh.example.com")
    assert (t.secure, t.connect_host, t.connect_port, t.authority) == (
        True, "ssh.example.com", 443, "ssh.example.com",
    )  # fmt: skip
    assert t.url == "wss://ssh.example.com/"
    t = tc.make_target("http://App.localhost:8080")
    assert (t.secure, t.connect_host, t.connect_port, t.authority, t.host) == (
        False, "127.0.0.1", 8080, "App.localhost:8080", "app.localhost",
    )  # fmt: skip
    assert tc.make_target("ws://localhost").connect_port == 80
    t = tc.make_target("ssh.example.com", edge="10.1.2.3:8443")
    assert (t.connect_host, t.connect_port, t.host) == ("10.1.2.3", 8443, "ssh.example.com")
    assert tc.make_target("https://h.example:9443", edge="10.0.0.1").connect_port == 9443
    with pytest.raises(tc.AccessError):
        tc.make_target("ftp://x")
    with pytest.raises(tc.AccessError):
        tc.make_target("")


def test_secrets_stay_out_of_reprs() -> None:
    headers = tc.access_headers(service_token_id="id1", service_token_secret="s3cr3t")
    t = tc.make_target("x.localhost", headers=headers)
    assert "s3cr3t" not in repr(t)


def test_access_headers_names_and_precedence() -> None:
    headers = dict(
        tc.access_headers(
            extra=["X-One: 1", "Cf-Access-Client-Id: from-header", "no colon"],
            service_token_id="id1",
            service_token_secret="sec",
            destination="10.0.0.5:22",
            token="jwt",
        )
    )
    assert headers["X-One"] == "1"
    assert headers["Cf-Access-Client-Id"] == "id1"  # the flag wins, one value only
    assert headers["Cf-Access-Client-Secret"] == "sec"
    assert headers["Cf-Access-Jump-Destination"] == "10.0.0.5:22"
    assert headers["Cf-Access-Token"] == "jwt"
    assert headers["User-Agent"].startswith("burrow/")
    assert "no colon" not in str(headers)


def test_stored_token_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BURROW_ACCESS_TOKEN_DIR", str(tmp_path))
    assert tc.stored_app_token("app.example.com") is None
    (tmp_path / "app.example.com-token").write_text("eyJ.token.sig\n")
    assert tc.stored_app_token("App.Example.com") == "eyJ.token.sig"


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = asyncio.Event()

    def tunnel_data(self, data: bytes) -> None:
        self.data += data

    def tunnel_closed(self, error: str | None) -> None:
        self.closed.set()

    def pause_local_reading(self) -> None:
        pass

    def resume_local_reading(self) -> None:
        pass


@asynccontextmanager
async def fake_edge(answer, hang_up: bool = False) -> AsyncIterator[tuple[int, list[bytes]]]:  # type: ignore[no-untyped-def]
    """A loopback server: reads a request head, records it, writes `answer(key)` (then closes
    at once with `hang_up`)."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        key = b""
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"sec-websocket-key:"):
                key = line.split(b":", 1)[1].strip()
        writer.write(answer(key))
        await writer.drain()
        if hang_up:
            writer.close()
            return
        try:
            while await reader.read(65536):
                pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], heads
    finally:
        server.close()


def _accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + ws.GUID).digest())


async def test_handshake_sends_headers_and_relays_frames() -> None:
    def answer(key: bytes) -> bytes:
        return (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + _accept(key) + b"\r\n\r\n"
            + ws.encode_frame(ws.OP_BINARY, b"from the edge")
        )  # fmt: skip

    async with fake_edge(answer) as (port, heads):
        headers = tc.access_headers(service_token_id="cid", service_token_secret="csec")
        target = tc.make_target(f"http://app.localhost:{port}", headers=headers)
        sink = _Sink()
        conn = await tc.open_websocket(target, sink)
        assert bytes(sink.data) == b"from the edge"
        conn.close()
        await asyncio.wait_for(sink.closed.wait(), 5)
    head = heads[0].decode()
    assert head.startswith("GET / HTTP/1.1\r\n")
    assert f"Host: app.localhost:{port}\r\n" in head
    assert "Cf-Access-Client-Id: cid\r\n" in head and "Cf-Access-Client-Secret: csec\r\n" in head
    assert "Upgrade: websocket\r\n" in head and "Sec-WebSocket-Version: 13\r\n" in head


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            lambda key: (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: d3Jvbmc=\r\n\r\n"
            ),
            "wrong Sec-WebSocket-Accept",
        ),
        (
            lambda key: (
                b"HTTP/1.1 302 Found\r\nLocation: https://app.example/cdn-cgi/access/"
                b"login/app.example?kid=1\r\nContent-Length: 0\r\n\r\n"
            ),
            "protected by Access",
        ),
        (
            lambda key: (
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 25\r\n\r\nburrow connector: no way\n"
            ),
            "answered 502 Bad Gateway: burrow connector: no way",
        ),
        (lambda key: b"HTTP/1.1 101 Swi", "closed the connection during the WebSocket handshake"),
    ],
)
async def test_handshake_failures_are_clear(answer, message: str) -> None:  # type: ignore[no-untyped-def]
    hang_up = "closed the connection" in message
    async with fake_edge(answer, hang_up) as (port, _):
        target = tc.make_target(f"http://app.localhost:{port}", handshake_timeout=5)
        with pytest.raises(tc.AccessError, match=message):
            await tc.open_websocket(target, _Sink())


async def test_nothing_listening_is_a_clear_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = tc.make_target(f"http://app.localhost:{port}")
    with pytest.raises(tc.AccessError, match=r"cannot connect to the edge at 127\.0\.0\.1"):
        await tc.open_websocket(target, _Sink())
