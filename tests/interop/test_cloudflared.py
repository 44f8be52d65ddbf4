"""The official cloudflared connector against burrow's edge (PROTOCOL.md section 7).

Skipped unless ``CLOUDFLARED_BIN`` names a cloudflared binary. Each test starts an in-process
edge on loopback, a real origin, and cloudflared with ``tunnel run --token T`` over
``--protocol http2``; ``TUNNEL_EDGE`` / ``TUNNEL_CACERT`` point it at the edge. cloudflared is
always killed by its PID at teardown.

cloudflared gives one connection per edge address, so the edge listens on two ports to get two
HA connections. Pre-checks are switched off (``TUNNEL_NO_PRECHECKS``) because they dial
api.cloudflare.com; the remaining internet lookups of cloudflared (feature and region DNS
records) fail fast and are harmless.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp
import pytest

from burrow.edge.provision import Provisioned
from burrow.edge.server import EdgeServer
from burrow.edge.tunnel_conn import EdgeTunnelConnection
from burrow.net.listen import format_hostport
from burrow.testing.harness import provision, start_edge
from burrow.testing.origins import pattern_bytes, start_test_origin

CLOUDFLARED_BIN = os.environ.get("CLOUDFLARED_BIN", "")

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not CLOUDFLARED_BIN, reason="CLOUDFLARED_BIN is not set (official cloudflared binary)"
    ),
]

HOST = "app.localhost"
OTHER = "other.localhost"
START_TIMEOUT = 20.0


def _cloudflared_version() -> str:
    out = subprocess.run(
        [CLOUDFLARED_BIN, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    match = re.search(r"version (\S+)", out)
    assert match, out
    return match.group(1)


def _plain_token(made: Provisioned) -> str:
    """The token exactly as Cloudflare's dashboard would print it: only a, s, t."""
    creds = made.credentials
    body = {
        "a": creds.account_tag,
        "s": base64.b64encode(creds.tunnel_secret).decode(),
        "t": str(creds.tunnel_id),
    }
    return base64.b64encode(json.dumps(body).encode()).decode()


def _open_log(path: Path) -> BinaryIO:
    return open(path, "wb")  # the caller closes it


@dataclass
class Cloudflared:
    proc: asyncio.subprocess.Process
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    async def stop(self, limit: float = 10.0) -> int:
        """SIGTERM (graceful: unregister, drain) and wait; SIGKILL if it hangs."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), limit)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode


@contextlib.asynccontextmanager
async def run_cloudflared(
    tmp_path: Path,
    edge: EdgeServer,
    token: str,
    args: Sequence[str] = (),
    *,
    tunnel_args: Sequence[str] = (),
    name: str = "cloudflared",
) -> AsyncIterator[Cloudflared]:
    """`cloudflared tunnel [tunnel_args] run --token T [args]` against `edge`."""
    assert edge.pki is not None
    home = tmp_path / f"{name}-home"  # keeps ~/.cloudflared of the machine out of the test
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TUNNEL_EDGE": ",".join(format_hostport(*a) for a in edge.tunnel_addresses),
        "TUNNEL_CACERT": str(edge.pki.ca_cert_path),
        "TUNNEL_NO_PRECHECKS": "true",
    }
    cmd = [
        CLOUDFLARED_BIN,
        "tunnel",
        "--no-autoupdate",
        "--protocol",
        "http2",
        "--metrics",
        "127.0.0.1:0",
        "--loglevel",
        "debug",
        *tunnel_args,
        "run",
        "--token",
        token,
        *args,
    ]
    log_path = tmp_path / f"{name}.log"
    with _open_log(log_path) as out:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=home,
            start_new_session=True,
        )
    cfd = Cloudflared(proc, log_path)
    try:
        yield cfd
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()


async def wait_registered(
    edge: EdgeServer, made: Provisioned, cfd: Cloudflared, count: int
) -> list[EdgeTunnelConnection]:
    """Poll the edge registry until `count` connections of the tunnel are accepting."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while True:
        conns = [
            c
            for c in edge.registry.connections(made.tunnel.id)
            if isinstance(c, EdgeTunnelConnection) and c.accepting
        ]
        if len(conns) >= count:
            return conns
        if cfd.proc.returncode is not None:
            pytest.fail(f"cloudflared exited ({cfd.proc.returncode}):\n{cfd.tail()}")
        if loop.time() > deadline:
            pytest.fail(f"cloudflared did not register {count} connection(s):\n{cfd.tail()}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def origin_port() -> AsyncIterator[int]:
    runner, port = await start_test_origin()
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[EdgeServer]:
    server = await start_edge(
        tmp_path / "edge", tunnel_listen=["127.0.0.1:0", "127.0.0.1:0"], handshake_burst=200.0
    )
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


@pytest.fixture
async def made(edge: EdgeServer) -> Provisioned:
    return await provision(edge, "interop", hostnames=(HOST, OTHER))


def _url(edge: EdgeServer, path: str) -> str:
    return f"http://127.0.0.1:{edge.http_addresses[0][1]}{path}"


async def _check_traffic(edge: EdgeServer) -> None:
    """GET with a query, POST with a body, repeated headers, status codes, WebSocket echo,
    a 20 MB download and upload with checksums."""
    headers = {"Host": HOST}
    async with aiohttp.ClientSession() as s:
        async with s.get(_url(edge, "/echo?a=1&b=two%20words"), headers=headers) as r:
            assert r.status == 200
            info = await r.json()
        assert info["method"] == "GET"
        assert info["path"] == "/echo?a=1&b=two%20words"
        assert info["host"] == HOST
        got = {k.lower(): v for k, v in info["headers"]}
        assert got["cf-connecting-ip"] == "127.0.0.1"
        assert "cf-warp-tag-id" in got  # added by cloudflared

        async with s.post(_url(edge, "/echo"), data=b"hello cloudflared", headers=headers) as r:
            info = await r.json()
        assert info["method"] == "POST" and info["body"] == "hello cloudflared"

        async with s.get(_url(edge, "/cookies"), headers=headers) as r:
            assert r.status == 200
            assert r.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
            assert r.headers["X-Origin"] == "test"
            assert not any(k.lower().startswith("cf-cloudflared") for k in r.headers)

        for code in (201, 302, 404, 503):
            async with s.get(
                _url(edge, f"/status/{code}"), headers=headers, allow_redirects=False
            ) as r:
                assert r.status == code
                assert await r.text() == f"status {code}\n"

        async with s.ws_connect(_url(edge, "/ws"), headers=headers) as ws:
            for i in range(3):
                await ws.send_str(f"ping {i}")
                assert await asyncio.wait_for(ws.receive_str(), 10) == f"ping {i}"
            blob = os.urandom(200_000)
            await ws.send_bytes(blob)
            assert await asyncio.wait_for(ws.receive_bytes(), 10) == blob

        size = 20_000_000
        digest = hashlib.sha256()
        received = 0
        async with s.get(_url(edge, f"/download?size={size}"), headers=headers) as r:
            assert r.status == 200
            async for chunk in r.content.iter_any():
                digest.update(chunk)
                received += len(chunk)
        assert received == size
        assert digest.hexdigest() == hashlib.sha256(pattern_bytes(size)).hexdigest()

        body = os.urandom(1 << 20) * 20
        async with s.post(_url(edge, "/upload"), data=body, headers=headers) as r:
            assert r.status == 200
            assert await r.json() == {
                "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }


async def test_token_and_url_registers_and_proxies(
    tmp_path: Path, edge: EdgeServer, made: Provisioned, origin_port: int
) -> None:
    version = _cloudflared_version()
    async with run_cloudflared(
        tmp_path, edge, made.token, ["--url", f"http://127.0.0.1:{origin_port}"]
    ) as cfd:
        conns = await wait_registered(edge, made, cfd, 2)
        assert sorted(c.conn_index for c in conns) == [0, 1]
        for c in conns:
            assert c.client_version == version
            assert len(c.client_id) == 16
        assert len({c.client_id for c in conns}) == 1  # one connector, two connections
        await _check_traffic(edge)
        assert await cfd.stop() == 0, cfd.tail()


async def test_plain_token_with_config_ingress(
    tmp_path: Path, edge: EdgeServer, made: Provisioned, origin_port: int
) -> None:
    """A token with only a/s/t (as Cloudflare prints it) and a config.yml ingress list."""
    config = tmp_path / "config.yml"
    config.write_text(
        f"ingress:\n"
        f"  - hostname: {HOST}\n"
        f"    service: http://127.0.0.1:{origin_port}\n"
        f"  - service: http_status:418\n"
    )
    async with run_cloudflared(
        tmp_path, edge, _plain_token(made), tunnel_args=["--config", str(config)]
    ) as cfd:
        conns = await wait_registered(edge, made, cfd, 2)
        await _check_traffic(edge)
        async with (
            aiohttp.ClientSession() as s,
            s.get(_url(edge, "/echo"), headers={"Host": OTHER}) as r,
        ):
            assert r.status == 418  # cloudflared's catch-all rule answered
        # Connection 0 of a locally configured tunnel pushes its config to the edge.
        first = next(c for c in conns if c.conn_index == 0)
        assert first.local_config is not None
        pushed = json.loads(first.local_config)
        assert [r.get("service") for r in pushed["ingress"]] == [
            f"http://127.0.0.1:{origin_port}",
            "http_status:418",
        ]
        assert await cfd.stop() == 0, cfd.tail()


async def test_graceful_shutdown_drains_and_exits_promptly(
    tmp_path: Path, edge: EdgeServer, made: Provisioned, origin_port: int
) -> None:
    """SIGTERM: cloudflared unregisters, the request in flight completes, and cloudflared exits
    as soon as it is done (the edge closes drained connections) rather than after its 30 s
    grace period."""
    async with run_cloudflared(
        tmp_path, edge, made.token, ["--url", f"http://127.0.0.1:{origin_port}"]
    ) as cfd:
        await wait_registered(edge, made, cfd, 2)
        async with aiohttp.ClientSession() as s:
            slow = asyncio.ensure_future(
                s.get(_url(edge, "/slow?delay=1.5"), headers={"Host": HOST})
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while not any(c.in_flight for c in edge.registry.connections(made.tunnel.id)):
                assert loop.time() < deadline, "the slow request never reached the tunnel"
                await asyncio.sleep(0.01)
            started = loop.time()
            os.kill(cfd.proc.pid, signal.SIGTERM)
            async with await slow as r:
                assert r.status == 200
                assert await r.text() == "slow\n"
            await asyncio.wait_for(cfd.proc.wait(), 15)
            elapsed = loop.time() - started
        assert cfd.proc.returncode == 0, cfd.tail()
        assert elapsed < 10, f"cloudflared took {elapsed:.1f}s to exit"
        assert "Unregistered tunnel connection" in cfd.log()
        assert not edge.registry.connections(made.tunnel.id)


async def test_wrong_secret_is_refused_permanently(
    tmp_path: Path,
    edge: EdgeServer,
    made: Provisioned,
    origin_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="burrow")
    wrong_secret = os.urandom(32)
    creds = made.credentials
    token = base64.b64encode(
        json.dumps(
            {
                "a": creds.account_tag,
                "s": base64.b64encode(wrong_secret).decode(),
                "t": str(creds.tunnel_id),
            }
        ).encode()
    ).decode()
    async with run_cloudflared(
        tmp_path, edge, token, ["--url", f"http://127.0.0.1:{origin_port}"]
    ) as cfd:
        # A permanent refusal of the first connection ends cloudflared with an error.
        try:
            rc = await asyncio.wait_for(cfd.proc.wait(), START_TIMEOUT)
        except TimeoutError:
            pytest.fail(f"cloudflared kept running after a refusal:\n{cfd.tail()}")
        assert rc != 0
        out = cfd.log()
        assert "Register tunnel error from server side" in out, cfd.tail()
        assert "tunnel secret does not match" in out
        assert not edge.registry.connections(made.tunnel.id)
    refusals = [r for r in caplog.records if "registration refused" in r.getMessage()]
    assert 1 <= len(refusals) <= 2, [r.getMessage() for r in refusals]  # no retry storm
    text = caplog.text
    for secret in (wrong_secret, creds.tunnel_secret):
        for form in (
            base64.b64encode(secret).decode(),
            base64.b64encode(secret).decode().rstrip("="),
            base64.urlsafe_b64encode(secret).decode().rstrip("="),
            secret.hex(),
            repr(secret),
        ):
            assert form not in text
