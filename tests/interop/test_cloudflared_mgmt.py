"""The official cloudflared's management commands against burrow's admin API (issue 3):
`cloudflared tunnel --origincert cert.pem create|list|route dns|token|info|run NAME|delete`, with
``TUNNEL_API_URL`` pointing at the edge's ``/client/v4``.

Skipped unless ``CLOUDFLARED_BIN`` names a cloudflared binary. Every cloudflared runs with its
own HOME under tmp_path; the long-running `tunnel run` is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from burrow.admin.client import OriginCert, write_origin_cert
from burrow.connector.credentials import decode_token
from burrow.edge.server import EdgeServer
from burrow.net.listen import format_hostport
from burrow.testing.harness import start_edge
from burrow.testing.origins import start_test_origin
from burrow.testing.pgdb import store_url_or_none

CLOUDFLARED_BIN = os.environ.get("CLOUDFLARED_BIN", "")

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not CLOUDFLARED_BIN, reason="CLOUDFLARED_BIN is not set (official cloudflared binary)"
    ),
]


@pytest.fixture
async def origin_port() -> AsyncIterator[int]:
    runner, port = await start_test_origin()
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[EdgeServer]:
    async with store_url_or_none() as store_url:
        server = await start_edge(
            tmp_path / "edge", admin_listen="127.0.0.1:0", store_url=store_url
        )
        try:
            yield server
        finally:
            await server.stop(grace=0.5)


class Cfd:
    def __init__(self, edge: EdgeServer, home: Path, cert: Path) -> None:
        assert edge.admin_address is not None and edge.pki is not None
        host, port = edge.admin_address
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "TUNNEL_API_URL": f"http://{host}:{port}/client/v4",
            "TUNNEL_EDGE": ",".join(format_hostport(*a) for a in edge.tunnel_addresses),
            "TUNNEL_CACERT": str(edge.pki.ca_cert_path),
            "TUNNEL_NO_PRECHECKS": "true",
        }
        self.cert = cert

    async def run(self, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            CLOUDFLARED_BIN,
            "tunnel",
            "--origincert",
            str(self.cert),
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace")

    @contextlib.asynccontextmanager
    async def running(
        self, name: str, url: str, log: Path
    ) -> AsyncIterator[asyncio.subprocess.Process]:
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                CLOUDFLARED_BIN,
                "tunnel",
                "--origincert",
                str(self.cert),
                "--no-autoupdate",
                "--protocol",
                "http2",
                "--url",
                url,
                "run",
                name,
                env=self.env,
                stdout=out,
                stderr=out,
            )
        finally:
            os.close(out)
        try:
            yield proc
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    await proc.wait()


async def _fetch(edge: EdgeServer, host: str) -> int:
    port = edge.http_addresses[0][1]
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}/echo", headers={"Host": host}) as r,
    ):
        return r.status


async def test_cloudflared_management_commands(
    edge: EdgeServer, tmp_path: Path, origin_port: int
) -> None:
    assert edge.store is not None and edge.pki is not None
    acct = await edge.store.create_account("acme")
    _, token = await edge.store.create_api_token(acct.id, ["account:admin"])
    home = tmp_path / "home"
    cert = home / ".cloudflared" / "cert.pem"
    write_origin_cert(cert, OriginCert(account_id=acct.id, api_token=token))
    cfd = Cfd(edge, home, cert)

    rc, out = await cfd.run("create", "web")
    assert rc == 0, out
    rc, out = await cfd.run("list", "--output", "json")
    assert rc == 0, out
    [tunnel] = json.loads(out[out.index("[") :])
    tid = tunnel["id"]
    assert tunnel["name"] == "web"
    creds = json.loads((cert.parent / f"{tid}.json").read_text())
    assert creds["AccountTag"] == acct.id and creds["TunnelID"] == tid

    rc, out = await cfd.run("route", "dns", "web", "app.localhost")
    assert rc == 0 and "app.localhost" in out, out
    rc, out = await cfd.run("route", "dns", "web", "bad host!")
    assert rc != 0 and "not a valid hostname" in out, out
    rc, out = await cfd.run("token", "web")
    assert rc == 0, out
    assert str(decode_token(out.strip().splitlines()[-1]).tunnel_id) == tid
    rc, out = await cfd.run("info", "nosuch")
    assert rc != 0 and "neither the ID nor the name" in out, out

    async with cfd.running("web", f"http://127.0.0.1:{origin_port}", tmp_path / "run.log") as proc:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not any(c.accepting for c in edge.registry.connections(uuid.UUID(tid))):
            assert proc.returncode is None, (tmp_path / "run.log").read_text()[-3000:]
            assert loop.time() < deadline, (tmp_path / "run.log").read_text()[-3000:]
            await asyncio.sleep(0.1)  # an external process: nothing in-process to await
        assert await _fetch(edge, "app.localhost") == 200
        assert edge.journal is not None
        await edge.journal.flush()
        rc, out = await cfd.run("info", "web")
        assert rc == 0 and "CONNECTOR ID" in out, out
        rc, out = await cfd.run("delete", "web")
        assert rc != 0 and "active connections" in out, out

    await edge.journal.flush()
    rc, out = await cfd.run("delete", "web")
    assert rc == 0, out
    assert not (cert.parent / f"{tid}.json").exists()
    rc, out = await cfd.run("list", "--output", "json")
    assert json.loads(out.strip().splitlines()[-1]) in (None, [])  # Go prints a nil list as null
