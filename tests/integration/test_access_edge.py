"""Access through a real edge, connector and origin on loopback (ACCESS.md "What must be
tested"): login redirects, service tokens, one-time PIN through a real SMTP server, cookies
across app hosts, logout, redirect targets, hosts, paths and WebSocket upgrades."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
from email import message_from_bytes
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from access_fixtures import AccessStack, access_stack, cookie_of, raw_request

from burrow.access.service import COOKIE
from burrow.testing.conformance import require_shared_file

HOSTS = ("app.localhost", "other.localhost", "open.localhost")


@pytest.fixture
async def stack(tmp_path) -> AccessStack:  # type: ignore[misc]
    async with access_stack(tmp_path, HOSTS) as s:
        st = s.access
        app = await st.create_app("app", "app.localhost")
        await st.create_policy(app.id, "alice", "allow", [("email", "alice@example.com", "")])
        admin = await st.create_app("admin", "other.localhost/admin")
        await st.create_policy(admin.id, "nobody", "allow", [("email", "root@example.com", "")])
        otp = await st.create_idp("Email", "onetimepin", {"smtp_host": "127.0.0.1", "smtp_port": 1})
        s.edge.access.snapshot  # noqa: B018
        await s.sync()
        s.__dict__["otp_id"] = otp.id
        s.__dict__["app"] = app
        yield s


async def test_unauthenticated_browser_is_redirected_xhr_gets_401(stack: AccessStack) -> None:
    r = await stack.get("/private?x=1")
    assert r.status == 302
    loc = urlsplit(r.header("location"))
    assert (loc.hostname, loc.port, loc.path) == (
        "app.localhost",
        stack.port,
        "/cdn-cgi/access/login",
    )
    q = parse_qs(loc.query)
    assert q["kid"] == [stack.__dict__["app"].aud] and q["redirect_url"] == ["/private?x=1"]
    r = await stack.get("/private", headers={"X-Requested-With": "XMLHttpRequest"})
    assert r.status == 401
    assert stack.origin.seen == []  # nothing reached the origin
    # a host without an application is not affected
    r = await stack.get("/x", host="open.localhost")
    assert r.status == 200 and r.json()["target"] == "/x"


async def test_certs_published_on_app_host_and_team_domain(stack: AccessStack) -> None:
    for host in ("app.localhost", "auth.localhost"):
        r = await stack.get("/cdn-cgi/access/certs", host=host)
        assert r.status == 200
        doc = r.json()
        assert (
            doc["keys"][0]["alg"] == "RS256" and doc["public_cert"]["kid"] == doc["keys"][0]["kid"]
        )


async def test_service_token_passes_service_auth_then_deletion_and_expiry_refuse(
    stack: AccessStack,
) -> None:
    st = stack.access
    app = stack.__dict__["app"]
    tok, secret = await st.create_service_token("ci")
    short, short_secret = await st.create_service_token("short", duration=60)
    await st.create_policy(app.id, "machines", "non_identity", [("service_token", tok.id, "")])
    await st.create_policy(app.id, "short", "non_identity", [("service_token", "short", "")])
    await stack.sync()
    h = {"CF-Access-Client-Id": tok.client_id, "CF-Access-Client-Secret": secret}
    r = await stack.get("/api", headers=h)
    assert r.status == 200, r.body
    seen = r.json()["headers"]
    assert "cf-access-client-secret" not in seen  # the secret never reaches the origin
    jwt = seen["cf-access-jwt-assertion"]
    certs = (await stack.get("/cdn-cgi/access/certs")).json()
    from joserfc import jwt as jose_jwt
    from joserfc.jwk import KeySet

    from burrow.access.tokens import KeyRing, Verifier  # noqa: F401 - verify with the JWKS

    claims = jose_jwt.decode(jwt, KeySet.import_key_set({"keys": certs["keys"]})).claims
    assert claims["common_name"] == tok.client_id and claims["aud"] == [app.aud]
    # as Cloudflare: the app token comes back as the CF_Authorization cookie, and it works alone
    assert cookie_of(r) == jwt and "HttpOnly" in r.header("set-cookie")
    again = await stack.get("/api", headers={**h, "Cookie": f"{COOKIE}={jwt}"})
    assert again.status == 200 and not again.all("set-cookie")  # already has it
    assert (await stack.get("/api", headers={"Cookie": f"{COOKIE}={jwt}"})).status == 200
    assert not (await stack.get("/x", host="open.localhost")).all("set-cookie")
    # wrong secret, no headers: 403 (never a login page for a machine)
    bad = await stack.get("/api", headers={**h, "CF-Access-Client-Secret": "x" * 64})
    assert bad.status == 403
    assert (await stack.get("/api", headers={"X-Requested-With": "XMLHttpRequest"})).status == 401
    # deletion revokes at the next snapshot
    await st.delete_service_token(tok.id)
    await stack.sync()
    assert (await stack.get("/api", headers=h)).status == 403
    # the JWT it had been given is refused too
    assert (await stack.get("/api", headers={"cf-access-token": jwt})).status == 302
    # expiry (fake clock)
    h2 = {"CF-Access-Client-Id": short.client_id, "CF-Access-Client-Secret": short_secret}
    assert (await stack.get("/api", headers=h2)).status == 200
    real = stack.edge.access.clock
    stack.edge.access.clock = lambda: real() + 61
    assert (await stack.get("/api", headers=h2)).status == 403


async def test_bypass_policy_and_block_by_ip(stack: AccessStack) -> None:
    st = stack.access
    pub = await st.create_app("public", "app.localhost/public")
    await st.create_policy(pub.id, "all", "bypass", [("everyone", "", "")])
    blk = await st.create_app("blocked", "app.localhost/blocked")
    await st.create_policy(blk.id, "lo", "block", [("ip", "127.0.0.0/8", "")])
    await st.create_policy(blk.id, "alice", "allow", [("email", "alice@example.com", "")])
    await stack.sync()
    r = await stack.get("/public/page")
    assert r.status == 200 and "cf-access-jwt-assertion" not in r.json()["headers"]
    assert (await stack.get("/blocked/x")).status == 403


async def test_paths_are_normalised_and_the_origin_sees_the_checked_path(
    stack: AccessStack,
) -> None:
    # app "admin" protects other.localhost/admin; the rest of other.localhost is open
    for target in (
        "/admin",
        "/Admin",
        "//admin",
        "/%61dmin",
        "/x/../admin",
        "/%2e%2e/admin",
        "/./admin/",
        "/ADMIN/x",
    ):
        r = await stack.get(target, host="other.localhost")
        assert r.status == 302, target
    for target in ("/admin%2fx", "/a%5cb", "/a\\b", "/%2e%2e%2fadmin"):
        r = await stack.get(target, host="other.localhost")
        assert r.status == 400, target
    r = await stack.get("/x/./y/../z?q=1", host="other.localhost")
    assert r.status == 200 and r.json()["target"] == "/x/z?q=1"
    r = await stack.get("/administrator", host="other.localhost")
    assert r.status == 200 and r.json()["target"] == "/administrator"


async def test_host_forms_cannot_reach_another_app(stack: AccessStack) -> None:
    # case, trailing dot and port all normalise to the protected host
    for host in ("APP.localhost", "app.localhost.", f"app.localhost:{stack.port}"):
        r = await raw_request(stack.port, "/", host)
        assert r.status == 302, host
    # absolute-form whose authority disagrees with Host is refused
    r = await raw_request(stack.port, "http://open.localhost/", "app.localhost")
    assert r.status == 400
    r = await raw_request(stack.port, "http://app.localhost/", "open.localhost")
    assert r.status == 400
    # absolute-form agreeing with Host is checked like the Host
    r = await raw_request(stack.port, "http://app.localhost/x", "app.localhost")
    assert r.status == 302


async def test_websocket_upgrade_passes_the_same_check(stack: AccessStack) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    ws = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13",
    }
    r = await stack.get("/ws", headers=ws)
    assert r.status == 302 and stack.origin.seen == []
    tok, secret = await stack.access.create_service_token("tcp")
    await stack.access.create_policy(
        stack.__dict__["app"].id, "m", "non_identity", [("any_valid_service_token", "", "")]
    )
    await stack.sync()
    rd, wr = await asyncio.open_connection("127.0.0.1", stack.port)
    lines = [
        "GET /ws HTTP/1.1",
        "Host: app.localhost",
        *(f"{k}: {v}" for k, v in ws.items()),
        f"CF-Access-Client-Id: {tok.client_id}",
        f"CF-Access-Client-Secret: {secret}",
    ]
    wr.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(rd.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    wr.write(b"raw bytes over the upgraded stream")
    got = await asyncio.wait_for(rd.readexactly(34), 10)
    assert got == b"raw bytes over the upgraded stream"
    wr.close()
    assert stack.origin.seen[-1][1]["cf-access-jwt-assertion"]


@pytest.fixture
async def smtp_sink():  # type: ignore[no-untyped-def]
    aiosmtpd = pytest.importorskip("aiosmtpd.controller", reason="aiosmtpd (pip) is missing")

    class Sink:
        def __init__(self) -> None:
            self.messages: asyncio.Queue[bytes] = asyncio.Queue()
            self.loop = asyncio.get_running_loop()

        async def handle_DATA(self, server, session, envelope):
            self.loop.call_soon_threadsafe(self.messages.put_nowait, envelope.content)
            return "250 OK"

    sink = Sink()
    with socket.socket() as probe:  # aiosmtpd's start-up self-check needs a real port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ctl = aiosmtpd.Controller(sink, hostname="127.0.0.1", port=port)
    await asyncio.to_thread(ctl.start)
    sink.port = port  # type: ignore[attr-defined]
    try:
        yield sink
    finally:
        await asyncio.to_thread(ctl.stop)


async def _otp_request(stack: AccessStack, email: str) -> tuple[str, str]:
    """Start a one-time PIN login for app.localhost; (attempt id, answer page)."""
    app = stack.__dict__["app"]
    r = await stack.get(f"/cdn-cgi/access/login?kid={app.aud}&redirect_url=/after")
    assert r.status == 302
    team = urlsplit(r.header("location"))
    assert team.hostname == "auth.localhost"
    page = await stack.get(f"{team.path}?{team.query}", host="auth.localhost")
    assert page.status == 200 and b"Send me a code" in page.body
    fields = dict(re.findall(rb'name="(\w+)" value="([^"]*)"', page.body))
    form = "&".join(f"{k.decode()}={quote(v.decode())}" for k, v in fields.items())
    form += "&email=" + quote(email)
    r = await stack.get(
        "/cdn-cgi/access/otp",
        host="auth.localhost",
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body=form.encode(),
    )
    assert r.status == 200
    attempt = re.search(rb'name="attempt" value="([^"]+)"', r.body)
    assert attempt is not None
    return attempt.group(1).decode(), r.body.decode().replace(email, "EMAIL")


async def _otp_verify(stack: AccessStack, attempt: str, code: str):  # type: ignore[no-untyped-def]
    return await stack.get(
        "/cdn-cgi/access/otp/verify",
        host="auth.localhost",
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body=f"attempt={attempt}&code={code}".encode(),
    )


async def _use_sink(stack: AccessStack, sink) -> None:  # type: ignore[no-untyped-def]
    otp = await stack.access.find_idp(stack.__dict__["otp_id"])
    await stack.access.delete_idp(otp.id)
    new = await stack.access.create_idp(
        "Email", "onetimepin", {"smtp_host": "127.0.0.1", "smtp_port": sink.port}
    )
    stack.__dict__["otp_id"] = new.id
    await stack.sync()


def _code(raw: bytes) -> str:
    msg = message_from_bytes(raw)
    m = re.search(r"\b(\d{6})\b", msg.get_payload(decode=True).decode())
    assert m is not None
    return m.group(1)


async def test_one_time_pin_login_cookie_logout(stack: AccessStack, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    await _use_sink(stack, smtp_sink)
    attempt, page_allowed = await _otp_request(stack, "alice@example.com")
    raw = await asyncio.wait_for(smtp_sink.messages.get(), 10)
    code = _code(raw)
    # no enumeration: a not-allowed address gets the same page, and no mail
    _, page_denied = await _otp_request(stack, "mallory@example.com")
    strip = lambda s: re.sub(r'value="[^"]+"', "", s)  # noqa: E731
    assert strip(page_allowed) == strip(page_denied)
    await stack.edge.access.mail_sent()
    assert smtp_sink.messages.empty()
    r = await _otp_verify(stack, attempt, code)
    assert r.status == 302
    org_cookie = cookie_of(r)
    assert org_cookie
    loc = urlsplit(r.header("location"))
    assert loc.hostname == "app.localhost" and loc.path == "/cdn-cgi/access/authorized"
    # the code works once
    assert (await _otp_verify(stack, attempt, code)).status == 403
    r = await stack.get(f"{loc.path}?{loc.query}")
    assert r.status == 302 and r.header("location") == f"http://app.localhost:{stack.port}/after"
    set_cookie = next(v for v in r.all("set-cookie") if v.startswith("CF_Authorization="))
    for attr in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/"):
        assert attr in set_cookie
    token = cookie_of(r)
    # the one-time authorisation code cannot be replayed
    assert (await stack.get(f"{loc.path}?{loc.query}")).status == 400
    r = await stack.get("/after", headers={"Cookie": f"{COOKIE}={token}"})
    assert r.status == 200
    seen = r.json()["headers"]
    assert seen["cf-access-jwt-assertion"] == token
    assert seen["cf-access-authenticated-user-email"] == "alice@example.com"
    # the same token as a header works like the cookie
    assert (await stack.get("/after", headers={"cf-access-token": token})).status == 200
    ident = (
        await stack.get("/cdn-cgi/access/get-identity", headers={"Cookie": f"{COOKIE}={token}"})
    ).json()
    assert ident["email"] == "alice@example.com"
    # a cookie for one app host does not authorise another app
    r = await stack.get("/admin", host="other.localhost", headers={"Cookie": f"{COOKIE}={token}"})
    assert r.status == 302
    # the org cookie is not an app token
    assert (await stack.get("/after", headers={"Cookie": f"{COOKIE}={org_cookie}"})).status == 302
    # logout ends the session everywhere: app cookie and the team domain's cookie
    r = await stack.get("/cdn-cgi/access/logout", headers={"Cookie": f"{COOKIE}={token}"})
    assert r.status == 200 and "Max-Age=0" in r.header("set-cookie")
    assert (await stack.get("/after", headers={"Cookie": f"{COOKIE}={token}"})).status == 302
    app = stack.__dict__["app"]
    r = await stack.get(
        f"/cdn-cgi/access/login/app.localhost?kid={app.aud}&redirect_url=/",
        host="auth.localhost",
        headers={"Cookie": f"{COOKIE}={org_cookie}"},
    )
    assert r.status == 200 and b"Send me a code" in r.body  # asked to log in again


async def test_one_time_pin_expiry_and_attempt_lock(stack: AccessStack, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    await _use_sink(stack, smtp_sink)
    attempt, _ = await _otp_request(stack, "alice@example.com")
    code = _code(await asyncio.wait_for(smtp_sink.messages.get(), 10))
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(4):
        assert (await _otp_verify(stack, attempt, wrong)).status == 403
    assert (await _otp_verify(stack, attempt, wrong)).status == 429  # fifth: locked
    assert (await _otp_verify(stack, attempt, code)).status == 429  # even the right code
    # expiry after 10 minutes (fake clock)
    attempt, _ = await _otp_request(stack, "alice@example.com")
    code = _code(await asyncio.wait_for(smtp_sink.messages.get(), 10))
    real = stack.edge.access.clock
    stack.edge.access.clock = lambda: real() + 601
    assert (await _otp_verify(stack, attempt, code)).status == 403
    stack.edge.access.clock = lambda: real() + 599
    assert (await _otp_verify(stack, attempt, code)).status == 302


def _corpus() -> list[str]:
    corpus = require_shared_file("corpora", "open-redirects.txt")
    out = []
    for line in corpus.read_text().splitlines():
        if line:
            out.append(
                line.replace("www.whitelisteddomain.tld", "app.localhost").replace(
                    "whitelisteddomain.tld", "app.localhost"
                )
            )
    return out


async def test_open_redirect_corpus_is_refused_by_the_edge(stack: AccessStack) -> None:
    app = stack.__dict__["app"]
    payloads = _corpus()
    assert len(payloads) > 500
    sem = asyncio.Semaphore(16)

    async def one(p: str) -> tuple[str, int]:
        async with sem:
            r = await stack.get(
                f"/cdn-cgi/access/login?kid={app.aud}&redirect_url={quote(p, safe='')}"
            )
            return p, r.status

    results = await asyncio.gather(*(one(p) for p in payloads))
    accepted = [p for p, status in results if status != 400]
    assert accepted == []
    # the /authorized step refuses them too (before looking at the code)
    for p in payloads[:50]:
        r = await stack.get(f"/cdn-cgi/access/authorized?code=x&redirect_url={quote(p, safe='')}")
        assert r.status == 400


async def test_one_time_pin_mails_at_most_three_codes_per_address(  # type: ignore[no-untyped-def]
    stack: AccessStack, smtp_sink
) -> None:
    await _use_sink(stack, smtp_sink)
    pages = [await _otp_request(stack, "alice@example.com") for _ in range(4)]
    await stack.edge.access.mail_sent()
    assert smtp_sink.messages.qsize() == 3  # the fourth request mailed nothing
    strip = lambda s: re.sub(r'value="[^"]+"', "", s)  # noqa: E731
    assert len({strip(page) for _, page in pages}) == 1  # ... and looked the same


async def test_cors_preflight_is_answered_from_the_app_settings(stack: AccessStack) -> None:
    st = stack.access
    api = await st.create_app(
        "api",
        "app.localhost/api",
        cors={
            "allowed_origins": ["http://web.localhost"],
            "allowed_methods": ["GET", "PUT"],
            "allowed_headers": ["X-Token"],
            "allow_credentials": True,
            "max_age": 600,
        },
    )
    await st.create_policy(api.id, "alice", "allow", [("email", "alice@example.com", "")])
    bypass = await st.create_app(
        "api2", "app.localhost/api2", cors={"options_preflight_bypass": True}
    )
    await st.create_policy(bypass.id, "alice", "allow", [("email", "alice@example.com", "")])
    await stack.sync()
    pre = {
        "Origin": "http://web.localhost",
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "x-token",
    }
    r = await stack.get("/api/x", method="OPTIONS", headers=pre)
    assert r.status == 200
    assert r.header("access-control-allow-origin") == "http://web.localhost"
    assert r.header("access-control-allow-methods") == "PUT"
    assert r.header("access-control-allow-headers") == "x-token"
    assert r.header("access-control-allow-credentials") == "true"
    assert r.header("access-control-max-age") == "600"
    for bad in (
        {**pre, "Origin": "http://evil.localhost"},
        {**pre, "Access-Control-Request-Method": "DELETE"},
        {**pre, "Access-Control-Request-Headers": "x-token, x-other"},
    ):
        r = await stack.get("/api/x", method="OPTIONS", headers=bad)
        assert r.status == 403 and not r.header("access-control-allow-origin")
    assert stack.origin.seen == []
    # a plain request (or an OPTIONS that is not a preflight) still needs a login
    assert (await stack.get("/api/x")).status == 302
    assert (await stack.get("/api/x", method="OPTIONS")).status == 302
    # bypass: the origin answers the preflight
    r = await stack.get("/api2/x", method="OPTIONS", headers=pre)
    assert r.status == 200 and r.json()["target"] == "/api2/x"
    # every decision is counted in the edge's metrics
    from burrow.observability.metrics import render

    text = render(stack.edge.metrics)
    text = text.decode() if isinstance(text, bytes) else text
    assert 'burrow_access_decisions_total{app="api",outcome="deny"} 3.0' in text
    assert 'burrow_access_decisions_total{app="api2",outcome="bypass"} 1.0' in text
