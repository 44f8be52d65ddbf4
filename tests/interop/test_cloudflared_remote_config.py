"""Remote configuration pushed by burrow's edge to the official cloudflared (issue 4,
PROTOCOL.md 3.4).

Skipped unless ``CLOUDFLARED_BIN`` names a cloudflared binary. cloudflared runs with only
``--token`` (no ``--url``, no config file), so every rule it serves comes from the edge: the
tunnel's ingress is managed in the store (as `burrow edge tunnel ingress set` and the v4
``configurations`` API do), registration answers ``tunnelIsRemotelyManaged=true``, and each
new version is pushed on an ``update-configuration`` stream. cloudflared is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from burrow.edge.server import EdgeServer
from burrow.edge.tunnel_conn import EdgeTunnelConnection
from burrow.net.listen import format_hostport
from burrow.origin.hello import serve_app
from burrow.store.tunnel_configs import get_tunnel_config, set_tunnel_config
from burrow.testing.harness import provision, start_edge
from burrow.testing.origins import named_origin_app

CLOUDFLARED_BIN = os.environ.get("CLOUDFLARED_BIN", "")

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not CLOUDFLARED_BIN, reason="CLOUDFLARED_BIN is not set (official cloudflared binary)"
    ),
]

HOST = "app.localhost"


@pytest.fixture
async def origins() -> AsyncIterator[dict[str, int]]:
    runners: list[web.AppRunner] = []
    ports: dict[str, int] = {}
    for name in ("one", "two", "three"):
        runner, ports[name] = await serve_app(named_origin_app(name))
        runners.append(runner)
    try:
        yield ports
    finally:
        for runner in runners:
            await runner.cleanup()


def _config(port: int, **origin: Any) -> dict[str, Any]:
    return {
        "ingress": [
            {
                "hostname": HOST,
                "service": f"http://127.0.0.1:{port}",
                **({"originRequest": origin} if origin else {}),
            },
            {"service": "http_status:404"},
        ],
        "originRequest": {"connectTimeout": 5},
        "warp-routing": {},
    }


@contextlib.asynccontextmanager
async def _cloudflared(
    tmp_path: Path, edge: EdgeServer, token: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path]]:
    assert edge.pki is not None
    home = tmp_path / "cfd-home"
    home.mkdir(exist_ok=True)
    log_path = tmp_path / "cloudflared.log"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        proc = await asyncio.create_subprocess_exec(
            CLOUDFLARED_BIN, "tunnel", "--no-autoupdate", "--protocol", "http2",
            "--metrics", "127.0.0.1:0", "--loglevel", "debug", "run", "--token", token,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(home),
                "TUNNEL_EDGE": ",".join(format_hostport(*a) for a in edge.tunnel_addresses),
                "TUNNEL_CACERT": str(edge.pki.ca_cert_path),
                "TUNNEL_NO_PRECHECKS": "true",
            },
            stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, cwd=home,
            start_new_session=True,
        )  # fmt: skip
    finally:
        os.close(fd)
    try:
        yield proc, log_path
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


def _read(log: Path) -> str:
    return log.read_text(errors="replace")


async def _get(edge: EdgeServer, path: str = "/") -> tuple[int, str]:
    url = f"http://127.0.0.1:{edge.http_addresses[0][1]}{path}"
    async with aiohttp.ClientSession() as s, s.get(url, headers={"Host": HOST}) as r:
        return r.status, await r.text()


async def _until(edge: EdgeServer, expected: str, log: Path, limit: float = 15.0) -> None:
    """Poll the public URL until the pushed rules answer (bounded in time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        status, body = await _get(edge)
        if status == 200 and body == expected:
            return
        assert loop.time() < deadline, f"still {status} {body!r}\n{_read(log)[-3000:]}"
        await asyncio.sleep(0.1)


async def _cloudflared_config(log: Path) -> dict[str, Any]:
    """cloudflared's own view (`/config` on its metrics listener)."""
    match = re.search(r"Starting metrics server on (\S+)/metrics", _read(log))
    assert match, _read(log)[-3000:]
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://{match.group(1)}/config") as r,
    ):
        assert r.status == 200
        doc: dict[str, Any] = json.loads(await r.text())
        return doc


async def test_cloudflared_applies_pushed_configs_and_reports_a_bad_one(
    tmp_path: Path, origins: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="burrow.edge.config")
    edge = await start_edge(
        tmp_path / "edge", tunnel_listen=["127.0.0.1:0", "127.0.0.1:0"], handshake_burst=200.0
    )
    try:
        assert edge.store is not None
        made = await provision(edge, "remote", hostnames=(HOST,))
        tid = made.tunnel.id
        await set_tunnel_config(edge.store, tid, _config(origins["one"]))
        await edge.reload()  # managed from the first registration on (no poll race)
        assert edge.remote_configs.managed(tid)
        async with _cloudflared(tmp_path, edge, made.token) as (proc, log):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while True:
                conns = [
                    c
                    for c in edge.registry.connections(tid)
                    if isinstance(c, EdgeTunnelConnection) and c.accepting
                ]
                if len(conns) >= 2:
                    break
                assert proc.returncode is None, _read(log)[-3000:]
                assert loop.time() < deadline, _read(log)[-3000:]
                await asyncio.sleep(0.05)  # an external process: poll the registry
            # Registered as remotely managed, so cloudflared uploaded no local configuration
            # (it does so on connection 0 only when the answer says not remotely managed).
            assert all(c.local_config is None for c in conns)
            await _until(edge, "one", log)
            status, _ = await _get(edge, "/x")
            assert status == 200
            cfg = await _cloudflared_config(log)
            assert cfg["version"] == 1, cfg
            assert cfg["config"]["ingress"][0]["service"] == f"http://127.0.0.1:{origins['one']}"

            # Version 2 changes the routing.
            await set_tunnel_config(edge.store, tid, _config(origins["two"]))
            await _until(edge, "two", log)
            assert (await _cloudflared_config(log))["version"] == 2

            # Version 3 is invalid for cloudflared (a duration must be whole seconds as a JSON
            # integer): it answers with an error, keeps version 2, and the old rules still work.
            await set_tunnel_config(
                edge.store, tid, _config(origins["three"], connectTimeout="10s")
            )
            saved = await get_tunnel_config(edge.store, tid)
            assert saved is not None and saved.version == 3
            deadline = loop.time() + 15
            while (
                sum("rejected configuration version 3" in r.getMessage() for r in caplog.records)
                < 2
            ):
                assert loop.time() < deadline, caplog.text
                await asyncio.sleep(0.05)
            assert "keeps 2" in caplog.text
            assert '"Func":"ParseInt"' in caplog.text  # cloudflared's Go error, rendered
            assert (await _get(edge))[1] == "two"
            assert (await _cloudflared_config(log))["version"] == 2
            assert "Failed to deserialize new configuration" in _read(log)

            # Version 4 (valid) after the bad one is applied.
            await set_tunnel_config(edge.store, tid, _config(origins["three"]))
            await _until(edge, "three", log)
            assert (await _cloudflared_config(log))["version"] == 4
            # Every connection reported version 4 applied.
            deadline = loop.time() + 15
            while (
                sum("applied configuration version 4" in r.getMessage() for r in caplog.records) < 2
            ):
                assert loop.time() < deadline, caplog.text
                await asyncio.sleep(0.05)
    finally:
        await edge.stop(grace=0.5)
