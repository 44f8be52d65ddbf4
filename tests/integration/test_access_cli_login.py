"""`burrow access login|token|curl` against a real edge, and `burrow access ssh` (real OpenSSH
through ProxyCommand) to an Access-protected SSH service with the token `access login` stored:
allowed with it, refused without it.

The browser step (`/cdn-cgi/access/cli`) is done by an HTTP client holding a valid app session
for alice (an app token signed with the edge's key, as the login flow would have set)."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from access_fixtures import raw_request
from test_access_tcp import _ssh_options, burrow_argv, sshd

from burrow.access.policy import Identity
from burrow.access.snapshot import identity_claims
from burrow.access.tokens import issue
from burrow.access.transfer import parse_public_key, transfer_id
from burrow.edge.server import EdgeServer
from burrow.ingress.rules import Ingress
from burrow.testing.harness import provision, start_connector, start_edge

pytestmark = pytest.mark.timeout(180)


@asynccontextmanager
async def ssh_access_stack(tmp: Path, ssh_port: int) -> AsyncIterator[tuple[EdgeServer, str]]:
    """Edge + connector with ssh.localhost -> sshd, protected by an app allowing alice; yields
    (edge, the app's AUD)."""
    edge = await start_edge(tmp / "edge", access_team_domain="auth.localhost")
    connector = None
    try:
        made = await provision(edge, hostnames=("ssh.localhost",))
        ingress = Ingress.parse(
            [
                {"hostname": "ssh.localhost", "service": f"ssh://127.0.0.1:{ssh_port}"},
                {"service": "http_status:404"},
            ]
        )
        connector = await start_connector(made, ingress)
        assert edge.access is not None and edge.access.store is not None
        st = edge.access.store
        app = await st.create_app("ssh", "ssh.localhost")
        await st.create_policy(app.id, "alice", "allow", [("email", "alice@example.com", "")])
        await edge.reload()
        yield edge, app.aud
    finally:
        if connector is not None:
            await connector.stop(grace=1.0)
        await edge.stop(grace=1.0)


def alice_session(edge: EdgeServer, aud: str) -> str:
    svc = edge.access
    assert svc is not None and svc.snapshot.ring is not None
    ident = Identity(email="alice@example.com", idp="otp", amr=("email",))
    return issue(
        svc.snapshot.ring,
        issuer=svc.issuer,
        audience=[aud],
        email=ident.email,
        subject="alice",
        lifetime=3600,
        extra=identity_claims(ident),
    )


async def run(*argv: str, env: dict[str, str], limit: float = 60) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_access_login_token_curl_and_ssh_with_the_stored_token(tmp_path: Path) -> None:
    keys = tmp_path / "ssh"
    keys.mkdir()
    tokens = tmp_path / "tokens"
    empty = tmp_path / "no-tokens"
    env = {**os.environ, "BURROW_ACCESS_TOKEN_DIR": str(tokens), "BROWSER": "true"}
    async with sshd(keys) as ssh_port, ssh_access_stack(tmp_path, ssh_port) as (edge, aud):
        port = edge.http_addresses[0][1]
        app_url = f"http://ssh.localhost:{port}"
        user = __import__("pwd").getpwuid(os.geteuid()).pw_name
        opts = _ssh_options(keys, port)

        # without a token, ssh through `burrow access ssh` is refused at the edge
        rc, _, err = await run(
            "ssh", *opts, f"{user}@ssh.localhost", "echo hi",
            env={**env, "BURROW_ACCESS_TOKEN_DIR": str(empty)},
        )  # fmt: skip
        assert rc == 255 and b"burrow access login" in err, err

        login = await asyncio.create_subprocess_exec(
            *burrow_argv(), "access", "login", app_url, "--no-browser", "--timeout", "60",
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert login.stderr is not None and login.stdout is not None
            said = b""
            while b"shows the code" not in said:
                line = await asyncio.wait_for(login.stderr.readline(), 30)
                assert line, said
                said += line
            link = re.search(rb"(http://\S+/cdn-cgi/access/cli\?\S+)", said)
            code = re.search(rb"shows the code ([0-9A-F]{4}-[0-9A-F]{4})", said)
            assert link is not None and code is not None
            cli = urlsplit(link.group(1).decode())
            target = f"{cli.path}?{cli.query}"
            host = f"ssh.localhost:{port}"
            # no session yet: off to the login page, and back to this page afterwards
            r = await raw_request(port, target, host)
            assert r.status == 302
            loc = urlsplit(r.header("location"))
            assert loc.path == "/cdn-cgi/access/login"
            assert parse_qs(loc.query)["redirect_url"][0].startswith("/cdn-cgi/access/cli?key=")
            # with a session: a confirmation page showing the CLI's code
            cookie = {"Cookie": f"CF_Authorization={alice_session(edge, aud)}"}
            r = await raw_request(port, target, host, headers=cookie)
            assert r.status == 200 and code.group(1) in r.body
            form = "&".join(f"{k}={v[0]}" for k, v in parse_qs(cli.query).items())
            form_h = {"Content-Type": "application/x-www-form-urlencoded"}
            # the POST without the session cookie (a cross-site form) does nothing
            r = await raw_request(
                port, "/cdn-cgi/access/cli", host, method="POST", headers=form_h,
                body=form.encode(),
            )  # fmt: skip
            assert r.status == 403
            r = await raw_request(
                port, "/cdn-cgi/access/cli", host, method="POST",
                headers={**form_h, **cookie}, body=form.encode(),
            )  # fmt: skip
            assert r.status == 200, r.body
            out = await asyncio.wait_for(login.stdout.read(), 30)
            assert await asyncio.wait_for(login.wait(), 30) == 0
        finally:
            if login.returncode is None:
                login.kill()
                await login.wait()
        token = out.decode().strip()
        assert token == cookie["Cookie"].split("=", 1)[1]
        stored = tokens / "ssh.localhost-token"
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        assert stored.read_text().strip() == token
        # the transfer was one-time
        key = parse_public_key(parse_qs(cli.query)["key"][0])
        r = await raw_request(port, f"/cdn-cgi/access/transfer/{transfer_id(key)}", host)
        assert r.status == 404

        # `access token -app` prints it; `access curl` sends it
        rc, out, err = await run(*burrow_argv(), "access", "token", "-app", app_url, env=env)
        assert rc == 0 and out.decode().strip() == token, err
        rc, out, err = await run(
            *burrow_argv(), "access", "curl", f"{app_url}/cdn-cgi/access/get-identity", "-s",
            env=env,
        )  # fmt: skip
        assert rc == 0, err
        assert b'"email": "alice@example.com"' in out

        # ssh through the ProxyCommand now carries the stored token
        rc, out, err = await run(
            "ssh", *opts, f"{user}@ssh.localhost", "echo via-$((6*7))", env=env
        )
        assert rc == 0, err.decode(errors="replace")
        assert out == b"via-42\n"
