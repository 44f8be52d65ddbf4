"""Generic OIDC login through a real edge, connector and origin, against a real OpenID Connect
provider (npm's oidc-provider on loopback, tests/browser/oidc_server.mjs) and a real browser
(Debian's chromium driven by playwright-core, tests/browser/oidc_login.mjs).

The node packages come from tests/browser/package.json (`npm ci` in scripts/test.sh); without
them, or without /usr/bin/chromium, the tests skip and say which is missing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from access_fixtures import AccessStack, access_stack, cookie_of
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet
from yarl import URL

pytestmark = pytest.mark.timeout(180)

BROWSER_DIR = Path(__file__).resolve().parents[1] / "browser"
CHROMIUM = "/usr/bin/chromium"
CLIENT_ID = "burrow-edge"
CLIENT_SECRET = "s3cret-for-tests"


def _need_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (Debian package nodejs)")
    if not (BROWSER_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.skip(
            "tests/browser/node_modules is missing: run `npm ci` in tests/browser "
            "(scripts/test.sh does it when node and npm exist)"
        )
    return node


@asynccontextmanager
async def oidc_server(redirect_uri: str) -> AsyncIterator[str]:
    """oidc-provider on 127.0.0.1; yields its issuer URL."""
    node = _need_node()
    env = {
        **os.environ,
        "OIDC_PORT": "0",
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "OIDC_REDIRECT_URI": redirect_uri,
    }
    proc = await asyncio.create_subprocess_exec(
        node, str(BROWSER_DIR / "oidc_server.mjs"),
        cwd=BROWSER_DIR, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line:
            err = await proc.stderr.read()
            pytest.fail(f"oidc-provider did not start: {err.decode(errors='replace')}")
        drain = asyncio.create_task(proc.stderr.read())
        yield json.loads(line)["issuer"]
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@asynccontextmanager
async def oidc_stack(tmp_path: Path) -> AsyncIterator[tuple[AccessStack, str, str]]:
    """Edge (team domain auth.localhost) + an app on app.localhost allowing alice@example.com
    (and the group `staff` on group.localhost), with the OIDC provider; (stack, idp id, issuer)."""
    async with access_stack(tmp_path, ("app.localhost", "group.localhost")) as stack:
        redirect_uri = f"http://auth.localhost:{stack.port}/cdn-cgi/access/callback"
        async with oidc_server(redirect_uri) as issuer:
            st = stack.access
            idp = await st.create_idp(
                "Test IdP",
                "oidc",
                {
                    "issuer": issuer,
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "claims": "email_verified",
                },
            )
            app = await st.create_app("app", "app.localhost")
            await st.create_policy(app.id, "alice", "allow", [("email", "alice@example.com", "")])
            grp = await st.create_app("group", "group.localhost")
            await st.create_policy(grp.id, "staff", "allow", [("group", "staff", "")])
            await stack.sync()
            stack.__dict__["app"] = app
            yield stack, idp.id, issuer


async def test_browser_login_with_oidc_reaches_app_and_logout_asks_again(
    tmp_path: Path,
) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)")
    node = _need_node()
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.skip("tests/browser/node_modules/playwright-core is missing: run `npm ci`")
    async with oidc_stack(tmp_path) as (stack, _idp, _issuer):
        cfg = {
            "app_url": f"http://app.localhost:{stack.port}",
            "login": "alice",
            "password": "any",
            "user_data_dir": str(tmp_path / "chromium-profile"),
            "chromium": CHROMIUM,
        }
        proc = await asyncio.create_subprocess_exec(
            node, str(BROWSER_DIR / "oidc_login.mjs"), json.dumps(cfg),
            cwd=BROWSER_DIR, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 120)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err.decode(errors="replace")
        result = json.loads(out.decode().strip().splitlines()[-1])
        assert "error" not in result, result
        steps = {s["name"]: s for s in result["steps"]}
        login = urlsplit(steps["login page"]["url"])
        assert login.hostname == "auth.localhost"
        assert login.path == "/cdn-cgi/access/login/app.localhost"
        assert result["idp_links"] == 1
        assert urlsplit(steps["idp login form"]["url"]).hostname == "127.0.0.1"
        app_url = urlsplit(steps["app"]["url"])
        assert (app_url.hostname, app_url.path, app_url.query) == (
            "app.localhost",
            "/private",
            "x=1",
        )
        # the origin received the app token with the user's email
        seen = result["app"]["headers"]
        assert seen["cf-access-authenticated-user-email"] == "alice@example.com"
        token = seen["cf-access-jwt-assertion"]
        certs = (await stack.get("/cdn-cgi/access/certs")).json()
        claims = jose_jwt.decode(token, KeySet.import_key_set({"keys": certs["keys"]})).claims
        app = stack.__dict__["app"]
        assert claims["email"] == "alice@example.com" and claims["aud"] == [app.aud]
        assert claims["type"] == "app" and claims["iss"] == "https://auth.localhost"
        assert claims["groups"] == ["staff", "wiki-editors"]
        assert claims["custom"] == {"email_verified": True}
        cookies = {(c["name"], c["domain"]) for c in result["cookies"]}
        assert ("CF_Authorization", "app.localhost") in cookies
        assert ("CF_Authorization", "auth.localhost") in cookies
        assert all(
            c["httpOnly"] and c["secure"]
            for c in result["cookies"]
            if c["name"] == "CF_Authorization"
        )
        # logout, then the app asks for a login again
        assert steps["logout"]["title"] == "Logged out"
        again = urlsplit(steps["after logout"]["url"])
        assert (again.hostname, again.path) == (
            "auth.localhost",
            "/cdn-cgi/access/login/app.localhost",
        )
        assert result["after_logout_idp_links"] == 1
        assert (await stack.get("/private", headers={"cf-access-token": token})).status == 302


# --- the same flow with an HTTP client: refusals ---------------------------------------------


async def _idp_login(stack: AccessStack, idp_id: str, host: str, login: str) -> tuple[str, str]:
    """Start an OIDC login for `host` at the edge and sign in at the IdP with an HTTP client;
    (the callback URL the IdP sends the browser to, the state-binding cookie)."""
    import aiohttp

    assert stack.edge.access is not None
    app = next(a for a in stack.edge.access.snapshot.by_aud.values() if a.domain == host)
    q = f"kid={app.aud}&host={host}&redirect_url=/after&port={stack.port}"
    r = await stack.get(f"/cdn-cgi/access/oidc/{idp_id}?{q}", host="auth.localhost")
    assert r.status == 302, r.body
    binding = next(v for v in r.all("set-cookie") if v.startswith("CF_Access_OIDC_"))
    assert "HttpOnly" in binding and "Path=/cdn-cgi/access/callback" in binding
    auth = urlsplit(r.header("location"))
    params = {k: v[0] for k, v in parse_qs(auth.query).items()}
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert params["state"] and params["nonce"] and params["state"] != params["nonce"]
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        url = r.header("location")
        for _ in range(10):
            async with http.get(url, allow_redirects=False) as resp:
                if resp.status in (302, 303):
                    url = str(resp.url.join(URL(resp.headers["location"])))
                    if url.startswith(f"http://auth.localhost:{stack.port}/"):
                        return url, binding.split(";", 1)[0]
                    continue
                page = await resp.text()
            action = re.search(r'action="([^"]+)"', page)
            assert action is not None, page
            form = {"prompt": "login", "login": login, "password": "x"}
            async with http.post(
                str(resp.url.join(URL(action.group(1)))),
                data=form,
                allow_redirects=False,
            ) as resp2:
                assert resp2.status in (302, 303), await resp2.text()
                url = str(resp2.url.join(URL(resp2.headers["location"])))
    raise AssertionError("the IdP never sent the browser back")


async def test_oidc_callback_checks_binding_state_and_policy(tmp_path: Path) -> None:
    async with oidc_stack(tmp_path) as (stack, idp_id, _issuer):
        # a callback without the browser's state cookie (login CSRF) is refused
        url, cookie = await _idp_login(stack, idp_id, "app.localhost", "alice")
        cb = urlsplit(url)
        r = await stack.get(f"{cb.path}?{cb.query}", host="auth.localhost")
        assert r.status == 400 and b"another browser" in r.body
        # ... and that state is spent: replaying it with the cookie fails too
        r = await stack.get(
            f"{cb.path}?{cb.query}", host="auth.localhost", headers={"Cookie": cookie}
        )
        assert r.status == 400
        # a forged code with a valid state: the IdP refuses it, so does the edge
        url, cookie = await _idp_login(stack, idp_id, "app.localhost", "alice")
        cb = urlsplit(url)
        forged = re.sub(r"code=[^&]+", "code=forged", cb.query)
        r = await stack.get(
            f"{cb.path}?{forged}", host="auth.localhost", headers={"Cookie": cookie}
        )
        assert r.status == 403
        # the real thing: org cookie on the team domain, then the app's /authorized
        url, cookie = await _idp_login(stack, idp_id, "app.localhost", "alice")
        cb = urlsplit(url)
        r = await stack.get(
            f"{cb.path}?{cb.query}", host="auth.localhost", headers={"Cookie": cookie}
        )
        assert r.status == 302, r.body
        assert cookie_of(r)  # the org token
        loc = urlsplit(r.header("location"))
        assert (loc.hostname, loc.path) == ("app.localhost", "/cdn-cgi/access/authorized")
        r = await stack.get(f"{loc.path}?{loc.query}")
        token = cookie_of(r)
        r = await stack.get("/after", headers={"Cookie": f"CF_Authorization={token}"})
        assert r.status == 200 and r.json()["headers"]["cf-access-authenticated-user-email"] == (
            "alice@example.com"
        )
        # the group selector uses the IdP's groups claim: bob is not staff
        url, cookie = await _idp_login(stack, idp_id, "group.localhost", "bob")
        cb = urlsplit(url)
        r = await stack.get(
            f"{cb.path}?{cb.query}", host="auth.localhost", headers={"Cookie": cookie}
        )
        assert r.status == 403 and b"bob@example.com may not use group" in r.body
        url, cookie = await _idp_login(stack, idp_id, "group.localhost", "alice")
        cb = urlsplit(url)
        r = await stack.get(
            f"{cb.path}?{cb.query}", host="auth.localhost", headers={"Cookie": cookie}
        )
        assert r.status == 302
        # an IdP that is not allowed for the app, and an unknown one, are refused at the start
        app = stack.__dict__["app"]
        q = f"kid={app.aud}&host=app.localhost&redirect_url=/"
        r = await stack.get(f"/cdn-cgi/access/oidc/nope?{q}", host="auth.localhost")
        assert r.status == 400
