"""The official `cloudflared access tcp` against burrow's HTTPS edge (issue 6).

Skipped unless ``CLOUDFLARED_BIN`` names a cloudflared binary. cloudflared's client always dials
``wss://HOSTNAME/``; the edge's certificate (from the edge's own CA) is trusted through
``SSL_CERT_FILE`` in cloudflared's environment only. The origin side is burrow's connector with a
``tcp://`` rule to a TCP echo server on loopback; cloudflared is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from burrow.edge.server import EdgeServer
from burrow.ingress.rules import Ingress
from burrow.testing.harness import provision, start_connector, start_edge

CLOUDFLARED_BIN = os.environ.get("CLOUDFLARED_BIN", "")

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not CLOUDFLARED_BIN, reason="CLOUDFLARED_BIN is not set (official cloudflared binary)"
    ),
]

HOST = "tcp.localhost"


class Echo(asyncio.Protocol):
    """Echoes every byte; records that it was closed."""

    def __init__(self, opened: asyncio.Queue[Echo]) -> None:
        self.opened = opened
        self.closed = asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.opened.put_nowait(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _access_tcp(
    tmp_path: Path, ca: Path, args: Sequence[str]
) -> AsyncIterator[tuple[int, Path]]:
    """`cloudflared access tcp ARGS --url 127.0.0.1:PORT`; yields PORT once it accepts."""
    home = tmp_path / "cfd-home"
    home.mkdir(exist_ok=True)
    port = _free_port()
    log_path = tmp_path / "cloudflared-access.log"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        proc = await asyncio.create_subprocess_exec(
            CLOUDFLARED_BIN, "access", "tcp", *args, "--url", f"127.0.0.1:{port}",
            "--loglevel", "debug",
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(home),
                "SSL_CERT_FILE": str(ca),  # Go's system pool: only the edge's CA
            },
            stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, cwd=home,
        )  # fmt: skip
    finally:
        os.close(fd)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:  # an external process: poll its listener
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                assert proc.returncode is None, log_path.read_text()[-3000:]
                assert loop.time() < deadline, log_path.read_text()[-3000:]
                await asyncio.sleep(0.05)
                continue
            w.close()  # cloudflared dials the edge per accepted connection; this one is dropped
            break
        yield port, log_path
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()


def _block(total: int) -> bytes:
    return hashlib.sha256(str(total).encode()).digest() * (1 << 15)  # 1 MiB


async def _echo(port: int, total: int) -> None:
    """Send `total` bytes and read them back concurrently, byte-exact."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    block = _block(total)

    async def send() -> None:
        left = total
        while left > 0:
            n = min(left, len(block))
            writer.write(block[:n])
            await writer.drain()
            left -= n

    sender = asyncio.create_task(send())
    got = hashlib.sha256()
    n = 0
    async with asyncio.timeout(60):
        while n < total:
            data = await reader.read(1 << 20)
            assert data, f"closed after {n} of {total} bytes"
            got.update(data)
            n += len(data)
    await sender
    want = hashlib.sha256()
    left = total
    while left > 0:
        want.update(block[: min(left, len(block))])
        left -= len(block)
    assert n == total and got.hexdigest() == want.hexdigest()
    writer.close()


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[int, asyncio.Queue[Echo]]]:
    opened: asyncio.Queue[Echo] = asyncio.Queue()
    server = await asyncio.get_running_loop().create_server(lambda: Echo(opened), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], opened
    finally:
        server.close()


@pytest.fixture
async def https_edge(
    tmp_path: Path, echo_server: tuple[int, asyncio.Queue[Echo]]
) -> AsyncIterator[EdgeServer]:
    edge = await start_edge(tmp_path / "edge", https_listen=["127.0.0.1:0"])
    connector = None
    try:
        made = await provision(edge, hostnames=(HOST,))
        ingress = Ingress.parse(
            [{"hostname": HOST, "service": f"tcp://127.0.0.1:{echo_server[0]}"},
             {"service": "http_status:404"}]
        )  # fmt: skip
        connector = await start_connector(made, ingress)
        yield edge
    finally:
        if connector is not None:
            await connector.stop(grace=0.5)
        await edge.stop(grace=0.5)


def _target_args(edge: EdgeServer) -> list[str]:
    """`--hostname H:PORT`, plus `--connect-to localhost:PORT` because Go's resolver does not
    map `*.localhost` to loopback (no nss-myhostname here): cloudflared then dials
    ``wss://localhost:PORT/`` (the edge's default certificate names ``localhost``, verified
    against the edge CA) with ``Host: H:PORT``, which selects the route."""
    port = edge.https_addresses[0][1]
    return ["--hostname", f"{HOST}:{port}", "--connect-to", f"localhost:{port}"]


async def test_cloudflared_access_tcp_echo_and_close(
    tmp_path: Path, https_edge: EdgeServer, echo_server: tuple[int, asyncio.Queue[Echo]]
) -> None:
    assert https_edge.pki is not None
    _, opened = echo_server
    async with _access_tcp(tmp_path, https_edge.pki.ca_cert_path, _target_args(https_edge)) as (
        port,
        log,
    ):
        await _echo(port, 4 * 1000 * 1000 + 7)
        # Close from the client side: the origin's TCP connection closes promptly.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"ping\n"
        while True:  # the probe connection of _access_tcp may also have reached the origin
            origin = await asyncio.wait_for(opened.get(), 10)
            if not origin.closed.is_set() and opened.empty():
                break
        writer.close()
        await asyncio.wait_for(origin.closed.wait(), 10)
        # Close from the origin side: the client's connection ends promptly.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"pong\n")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"pong\n"
        origin = await asyncio.wait_for(opened.get(), 10)
        assert origin.transport is not None
        origin.transport.close()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        assert "failed to connect to origin" not in log.read_text()


async def test_cloudflared_access_tcp_untrusted_edge_fails(
    tmp_path: Path, https_edge: EdgeServer
) -> None:
    """Without the edge CA in SSL_CERT_FILE the TLS handshake is refused: no bytes flow."""
    empty = tmp_path / "empty-ca.pem"
    empty.write_text("")
    async with _access_tcp(tmp_path, empty, _target_args(https_edge)) as (port, log):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello\n")
        try:  # cloudflared closes or resets the local connection
            assert await asyncio.wait_for(reader.read(), 15) == b""
        except ConnectionResetError:
            pass
        writer.close()
        assert "certificate signed by unknown authority" in log.read_text()
