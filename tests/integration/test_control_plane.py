"""The control plane end to end: burrow's CLI (login, create, route dns, run, list, info,
delete, token, operator commands) against a real edge, with real connectors and a real origin.

Management commands run in-process in a worker thread (Typer's CliRunner; they start their own
event loop there) while the edge serves on the test's loop; `burrow tunnel run` runs as a real
subprocess, stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import stat
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from typer.testing import CliRunner, Result

from burrow.cli.main import _register_commands, app
from burrow.edge.server import EdgeServer
from burrow.testing.harness import start_edge
from burrow.testing.pgdb import store_url_or_none

_register_commands()
RUNNER = CliRunner()


async def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return await asyncio.to_thread(RUNNER.invoke, app, list(args), env=env)


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[EdgeServer]:
    async with store_url_or_none() as store_url:  # PostgreSQL when BURROW_TEST_PG_URL is set
        server = await start_edge(
            tmp_path / "edge", admin_listen="127.0.0.1:0", store_url=store_url
        )
        try:
            yield server
        finally:
            await server.stop(grace=0.5)


def store_args(edge: EdgeServer) -> list[str]:
    """How operator commands reach the edge's store (its state dir, or its PostgreSQL URL)."""
    if edge.config.store_url:
        return ["--store-url", edge.config.store_url]
    return ["--state-dir", str(edge.config.state_dir)]


def admin_url(edge: EdgeServer) -> str:
    assert edge.admin_address is not None
    host, port = edge.admin_address
    return f"http://{host}:{port}"


async def fetch(edge: EdgeServer, host: str, path: str = "/echo") -> tuple[int, bytes]:
    port = edge.http_addresses[0][1]
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}) as r,
    ):
        return r.status, await r.read()


@contextlib.asynccontextmanager
async def run_connector(*args: str, home: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`burrow tunnel run ...` as a subprocess with its own HOME; stopped by PID."""
    env = {**os.environ, "HOME": str(home)}
    for key in ("TUNNEL_ORIGIN_CERT", "TUNNEL_TOKEN", "TUNNEL_API_URL"):
        env.pop(key, None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from burrow.cli.main import main; main()",
        "tunnel",
        "run",
        "--ha-connections",
        "1",
        "--grace-period",
        "1s",
        *args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def wait_connected(edge: EdgeServer, proc: asyncio.subprocess.Process, tunnel: str) -> None:
    """Until the edge has a registered connection for the tunnel (bounded: 20 s), failing early
    with the connector's stderr if it exits."""
    tid = uuid.UUID(tunnel)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not any(c.accepting for c in edge.registry.connections(tid)):
        if proc.returncode is not None:
            err = await proc.stderr.read() if proc.stderr else b""
            pytest.fail(f"connector exited {proc.returncode}: {err.decode()[-2000:]}")
        assert loop.time() < deadline, "connector did not register within 20 s"
        await asyncio.sleep(0.05)  # a subprocess: nothing to await in-process
    assert edge.journal is not None
    await edge.journal.flush()


async def test_seed_flow_with_burrow_cli(
    edge: EdgeServer, tmp_path: Path, origin_port: int
) -> None:
    """login (approved by the operator), create, route dns, run NAME, curl, list, info,
    delete refused while connected, delete after."""
    out = await cli("edge", "account", "create", "acme", *store_args(edge), "--json")
    assert out.exit_code == 0, out.output
    account = json.loads(out.output)["id"]

    home = tmp_path / "home"
    cert = home / ".cloudflared" / "cert.pem"
    login = asyncio.create_task(
        cli("tunnel", "login", "--edge", admin_url(edge), "--origincert", str(cert))
    )
    assert edge.store is not None
    code = None
    for _ in range(400):  # the login request appears in the store (bounded, 20 s)
        pending = await edge.store.list_login_requests()
        if pending:
            code = pending[0].code
            break
        await asyncio.sleep(0.05)
    assert code is not None
    approve = await cli("edge", "login", "approve", code, "--account", "acme", *store_args(edge))
    assert approve.exit_code == 0, approve.output
    result = await asyncio.wait_for(login, 30)
    assert result.exit_code == 0, result.output
    assert code in result.output and "successfully logged in" in result.output
    assert stat.S_IMODE(cert.stat().st_mode) == 0o600
    assert "-----BEGIN ARGO TUNNEL TOKEN-----" in cert.read_text()

    oc = ["--origincert", str(cert)]
    made = await cli("tunnel", "create", "web", *oc)
    assert made.exit_code == 0, made.output
    tid = re.search(r"Created tunnel web with id ([0-9a-f-]{36})", made.output).group(1)  # type: ignore[union-attr]
    creds_file = cert.parent / f"{tid}.json"
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    assert json.loads(creds_file.read_text())["AccountTag"] == account

    routed = await cli("tunnel", "route", "dns", "web", "app.localhost", *oc)
    assert routed.exit_code == 0 and "Added CNAME app.localhost" in routed.output, routed.output

    async with run_connector(
        "--url", f"http://127.0.0.1:{origin_port}", *oc, "web", home=home
    ) as proc:
        await wait_connected(edge, proc, tid)
        status, body = await fetch(edge, "app.localhost")
        assert status == 200 and json.loads(body)["host"] == "app.localhost"

        listed = await cli("tunnel", "list", "--output", "json", *oc)
        assert listed.exit_code == 0, listed.output
        [row] = json.loads(listed.output)
        assert row["id"] == tid and row["name"] == "web" and len(row["connections"]) == 1
        assert row["connections"][0]["colo_name"] == edge.config.location
        text = await cli("tunnel", "list", *oc)
        assert f"1x{edge.config.location}" in text.output

        info = await cli("tunnel", "info", "web", *oc)
        assert info.exit_code == 0 and "CONNECTOR ID" in info.output and "127.0.0.1" in info.output

        refused = await cli("tunnel", "delete", "web", *oc)
        assert refused.exit_code == 1 and "active connections" in refused.output
        assert creds_file.exists()

    # after the connector stopped, its connection rows are gone and delete works
    await edge.journal.flush()  # type: ignore[union-attr]
    gone = await cli("tunnel", "delete", "web", *oc)
    assert gone.exit_code == 0, gone.output
    assert not creds_file.exists()
    status, _ = await fetch(edge, "app.localhost")
    assert status != 200


async def test_admin_and_owner_with_only_a_token(
    edge: EdgeServer, tmp_path: Path, origin_port: int
) -> None:
    """The administrator creates and routes the tunnel and hands over `tunnel token`; the
    owner runs it with nothing but that token."""
    assert edge.store is not None
    acct = await edge.store.create_account("acme")
    _, api_token = await edge.store.create_api_token(acct.id, ["account:admin"])
    cert = tmp_path / "admin" / "cert.pem"
    logged = await cli(
        "tunnel",
        "login",
        "--edge",
        admin_url(edge),
        "--api-token",
        api_token,
        "--origincert",
        str(cert),
    )
    assert logged.exit_code == 0, logged.output
    env = {"TUNNEL_ORIGIN_CERT": str(cert)}  # cloudflared's variable
    made = await cli("tunnel", "create", "--output", "json", "shared", env=env)
    assert made.exit_code == 0, made.output
    tid = json.loads(made.output)["id"]
    assert (
        await cli("tunnel", "route", "dns", "shared", "owner.localhost", env=env)
    ).exit_code == 0
    tok = await cli("tunnel", "token", "shared", env=env)
    assert tok.exit_code == 0, tok.output
    token = tok.output.strip()

    owner_home = tmp_path / "owner"  # no cert.pem, no credentials file
    owner_home.mkdir()
    async with run_connector(
        "--url", f"http://127.0.0.1:{origin_port}", "--token", token, home=owner_home
    ) as proc:
        await wait_connected(edge, proc, tid)
        status, body = await fetch(edge, "owner.localhost")
        assert status == 200 and json.loads(body)["host"] == "owner.localhost"
        # the operator can also see it across accounts
        listed = await cli("tunnel", "list", "--output", "json", env=env)
        assert json.loads(listed.output)[0]["connections"]
        cleaned = await cli("tunnel", "cleanup", "shared", env=env)
        assert cleaned.exit_code == 0, cleaned.output
        forced = await cli("tunnel", "delete", "--force", "shared", env=env)
        assert forced.exit_code == 0, forced.output
        # the deleted tunnel's connections are closed and its hostname no longer served
        assert not any(c.accepting for c in edge.registry.connections(uuid.UUID(tid)))
        status, _ = await fetch(edge, "owner.localhost")
        assert status != 200


async def test_cross_account_cli(edge: EdgeServer, tmp_path: Path) -> None:
    assert edge.store is not None
    certs = {}
    for name in ("a", "b"):
        acct = await edge.store.create_account(name)
        _, tok = await edge.store.create_api_token(acct.id, ["account:admin"])
        certs[name] = tmp_path / name / "cert.pem"
        r = await cli(
            "tunnel",
            "login",
            "--edge",
            admin_url(edge),
            "--api-token",
            tok,
            "--origincert",
            str(certs[name]),
        )
        assert r.exit_code == 0, r.output
    a = ["--origincert", str(certs["a"])]
    b = ["--origincert", str(certs["b"])]
    made = await cli("tunnel", "create", "--output", "json", "web", *a)
    tid_a = json.loads(made.output)["id"]
    assert (await cli("tunnel", "route", "dns", "web", "a.example.com", *a)).exit_code == 0
    assert (await cli("tunnel", "create", "mine", *b)).exit_code == 0

    # b cannot see, inspect, route, fetch a token for or delete a's tunnel, by name or id
    for args in (
        ["tunnel", "info", "web"],
        ["tunnel", "token", "web"],
        ["tunnel", "delete", "web"],
        ["tunnel", "route", "dns", "web", "x.example.com"],
    ):
        r = await cli(*args, *b)
        assert r.exit_code == 1 and "neither the ID nor the name" in r.output, (args, r.output)
    for args in (
        ["tunnel", "info", tid_a],
        ["tunnel", "token", tid_a],
        ["tunnel", "delete", tid_a],
        ["tunnel", "route", "dns", tid_a, "x.example.com"],
    ):
        r = await cli(*args, *b)
        assert r.exit_code == 1 and "not found in account" in r.output, (args, r.output)
    listed = await cli("tunnel", "list", "--output", "json", *b)
    assert [t["name"] for t in json.loads(listed.output)] == ["mine"]
    # b's tunnel cannot take a's hostname, even with --overwrite-dns
    r = await cli("tunnel", "route", "dns", "--overwrite-dns", "mine", "a.example.com", *b)
    assert r.exit_code == 1 and "another account" in r.output, r.output
    # a's own second tunnel: refused without --overwrite-dns, moved with it
    assert (await cli("tunnel", "create", "web2", *a)).exit_code == 0
    r = await cli("tunnel", "route", "dns", "web2", "a.example.com", *a)
    assert r.exit_code == 1 and "already routed" in r.output and "--overwrite-dns" in r.output
    r = await cli("tunnel", "route", "dns", "--overwrite-dns", "web2", "a.example.com", *a)
    assert r.exit_code == 0 and "updated" in r.output, r.output
    # b cannot run a's tunnel by name with its own cert.pem
    r = await cli("tunnel", "run", "web", *b)
    assert r.exit_code == 1 and "neither the ID nor the name" in r.output


async def test_bad_input_gives_clear_errors(edge: EdgeServer, tmp_path: Path) -> None:
    assert edge.store is not None
    acct = await edge.store.create_account("acme")
    _, tok = await edge.store.create_api_token(acct.id, ["account:admin"])
    cert = tmp_path / "cert.pem"
    assert (
        await cli(
            "tunnel",
            "login",
            "--edge",
            admin_url(edge),
            "--api-token",
            tok,
            "--origincert",
            str(cert),
        )
    ).exit_code == 0
    oc = ["--origincert", str(cert)]

    r = await cli("tunnel", "login", "--edge", admin_url(edge), "--api-token", tok, *oc)
    assert r.exit_code == 1 and "existing certificate" in r.output  # never overwritten
    other = tmp_path / "other.pem"
    r = await cli(
        "tunnel",
        "login",
        "--edge",
        admin_url(edge),
        "--api-token",
        "garbage",
        "--origincert",
        str(other),
    )
    assert r.exit_code == 1 and "malformed API token" in r.output and not other.exists()
    r = await cli(
        "tunnel",
        "login",
        "--edge",
        admin_url(edge),
        "--api-token",
        tok[:-3],
        "--origincert",
        str(other),
    )
    assert r.exit_code == 1 and "malformed API token" in r.output and not other.exists()
    r = await cli(
        "tunnel",
        "login",
        "--edge",
        "http://127.0.0.1:1",
        "--api-token",
        tok,
        "--origincert",
        str(other),
    )
    assert r.exit_code == 1 and "cannot reach" in r.output and not other.exists()

    r = await cli("tunnel", "info", "nosuch", *oc)
    assert r.exit_code == 1 and "nosuch is neither the ID nor the name" in r.output
    r = await cli("tunnel", "create", "web", *oc)
    assert r.exit_code == 0
    r = await cli("tunnel", "create", "web", *oc)
    assert r.exit_code == 1 and "already exists" in r.output
    r = await cli("tunnel", "route", "dns", "web", "bad host!", *oc)
    assert r.exit_code == 1 and "not a valid hostname" in r.output
    r = await cli("tunnel", "list", "--output", "xml", *oc)
    assert r.exit_code == 1 and "Unknown output format" in r.output

    truncated = tmp_path / "truncated.pem"
    truncated.write_bytes(cert.read_bytes()[:60])
    r = await cli("tunnel", "list", "--origincert", str(truncated))
    assert r.exit_code == 1 and "truncated" in r.output
    r = await cli("tunnel", "list", "--origincert", str(tmp_path / "missing.pem"))
    assert r.exit_code == 1 and "cannot find origin certificate" in r.output

    # a credentials file that cannot be written: the new tunnel is removed again
    blocked = tmp_path / "exists.json"
    blocked.write_text("{}")
    r = await cli("tunnel", "create", "--credentials-file", str(blocked), "web3", *oc)
    assert r.exit_code == 1 and "already exists" in r.output and "was deleted" in r.output
    assert [t.name for t in await edge.store.list_tunnels(acct.id)] == ["web"]

    # operator commands with a store that is unreachable or bad input
    r = await cli(
        "edge", "account", "list", "--store-url", "postgresql+asyncpg://u:p@127.0.0.1:1/x"
    )
    assert r.exit_code == 1 and "unreachable" in r.output
    r = await cli(
        "edge",
        "token",
        "create",
        "--account",
        "nosuch",
        "--scope",
        "tunnel:read",
        *store_args(edge),
    )
    assert r.exit_code == 1 and "no account 'nosuch'" in r.output
    r = await cli(
        "edge", "token", "create", "--account", "acme", "--scope", "root", *store_args(edge)
    )
    assert r.exit_code == 1 and "invalid token scope" in r.output
    r = await cli("edge", "login", "approve", "ZZZZ-ZZZZ", "--account", "acme", *store_args(edge))
    assert r.exit_code == 1 and "no login request" in r.output


async def test_operator_command_on_a_locked_database(tmp_path: Path) -> None:
    """Another process holds the SQLite write lock: a clear error and exit 1 after the busy
    timeout, and nothing written."""
    import sqlite3

    state = tmp_path / "state"
    first = await cli("edge", "account", "create", "first", "--state-dir", str(state))
    assert first.exit_code == 0, first.output
    holder = sqlite3.connect(state / "state.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        r = await cli("edge", "account", "create", "second", "--state-dir", str(state))
        assert r.exit_code == 1 and "locked" in r.output, r.output
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    listed = await cli("edge", "account", "list", "--state-dir", str(state), "--json")
    assert [a["name"] for a in json.loads(listed.output)] == ["first"]
