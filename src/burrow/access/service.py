"""Access at the edge: the per-request check (`check`, synchronous, snapshot only) and the
`/cdn-cgi/access/*` endpoints (`endpoint`, asynchronous: they may write login state).

Protocol-independent: the HTTP listeners hand in an `AccessRequest` and write back what they
get (`Forward`: go on to the tunnel with this path and these headers; `Reply`: answer from the
edge; `ENDPOINT`: read the body, then `await endpoint()`).

Login flow (ACCESS.md): a protected app without a valid token answers 302 to
`<app>/cdn-cgi/access/login?kid=<AUD>&redirect_url=<path>` (401 for XHR); that sends the
browser to the team domain's login page, which lists the app's identity providers. After a
login the team domain sets the global `CF_Authorization` cookie (an `org` token) and redirects
to `<app>/cdn-cgi/access/authorized?code=...`, which exchanges the one-time code for the app
token and sets the app cookie. Tokens carry the identity (email, IdP, groups, amr), so each
request is decided from the snapshot alone.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from burrow.access import mail
from burrow.access.apps import Application, normalize_path
from burrow.access.oidc import PKCE, OIDCCache, OIDCError, OIDCProvider
from burrow.access.policy import Decision, Identity, Outcome, RequestFacts, evaluate
from burrow.access.redirects import safe_redirect
from burrow.access.snapshot import AccessSnapshot, compile_snapshot, identity_claims
from burrow.access.tokens import Claims, SigningKey, TokenError, issue
from burrow.access.transfer import TransferError, fingerprint, parse_public_key, seal, transfer_id
from burrow.errors import HTTPRequestError
from burrow.store.access_store import AccessStore

log = logging.getLogger("burrow.access")
audit = logging.getLogger("burrow.access.audit")

PREFIX = "/cdn-cgi/access/"
COOKIE = "CF_Authorization"
ORG_LIFETIME = 24 * 3600.0
OTP_TTL = 600.0
OTP_MAX_ATTEMPTS = 5
OTP_SENDS_PER_ADDRESS = 3  # codes mailed to one address per OTP_TTL (this edge node)
CODE_TTL = 60.0
TRANSFER_TTL = 300.0  # the CLI polls for its token this long at most
OIDC_TTL = 600.0  # a login at the IdP must finish within 10 minutes
OIDC_STATE_COOKIE = "CF_Access_OIDC_"  # + a digest of the state: binds the login to the browser
MAX_BODY = 16 * 1024
_STRIP = frozenset(
    {b"cf-access-jwt-assertion", b"cf-access-client-secret", b"cf-access-authenticated-user-email"}
)


@dataclass(slots=True)
class AccessRequest:
    method: str
    host: str  # normalised (lower-case, no port, no trailing dot)
    authority: str  # as the client sent it, with the port: for URLs back to this host
    scheme: str  # "http" or "https"
    target: str  # path and query as received
    headers: list[tuple[bytes, bytes]]  # lower-case names
    ip: str
    body: bytes = b""

    def header(self, name: bytes) -> str:
        for k, v in self.headers:
            if k == name:
                return v.decode("latin-1")
        return ""

    def cookie(self, name: str) -> str:
        for k, v in self.headers:
            if k == b"cookie":
                for part in v.decode("latin-1").split(";"):
                    key, _, value = part.strip().partition("=")
                    if key == name:
                        return value.strip()
        return ""

    def query(self) -> dict[str, str]:
        _, _, q = self.target.partition("?")
        return dict(parse_qsl(q, keep_blank_values=True))

    def form(self) -> dict[str, str]:
        try:
            return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            return {}


@dataclass(slots=True)
class Forward:
    """Go on to the tunnel with `path` (normalised) and these header changes."""

    path: bytes
    add: list[tuple[bytes, bytes]] = field(default_factory=list)
    strip: frozenset[bytes] = _STRIP
    respond: list[tuple[bytes, bytes]] = field(default_factory=list)  # added to the response


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @classmethod
    def page(
        cls, status: int, title: str, body_html: str, headers: list[tuple[str, str]] | None = None
    ) -> Reply:
        doc = (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title></head>\n<body><h1>{html.escape(title)}</h1>\n"
            f"{body_html}\n<p>burrow access</p></body></html>\n"
        ).encode()
        return cls(
            status,
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Cache-Control", "no-store"),
                *(headers or []),
            ],
            doc,
        )

    @classmethod
    def json(cls, status: int, value: Any, headers: list[tuple[str, str]] | None = None) -> Reply:
        return cls(
            status,
            [("Content-Type", "application/json"), ("Cache-Control", "no-store"), *(headers or [])],
            json.dumps(value).encode(),
        )

    @classmethod
    def redirect(cls, location: str, headers: list[tuple[str, str]] | None = None) -> Reply:
        return cls(
            302, [("Location", location), ("Cache-Control", "no-store"), *(headers or [])], b""
        )


ENDPOINT = object()  # the request is for /cdn-cgi/access/*: read its body, then endpoint()


def _hash_code(attempt: str, code: str) -> str:
    return hashlib.sha256(f"{attempt}:{code}".encode()).hexdigest()


class AccessService:
    def __init__(
        self,
        store: AccessStore | None,
        *,
        team_domain: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.team_domain = team_domain.lower().rstrip(".")
        self.issuer = f"https://{self.team_domain or 'burrow-access.invalid'}"
        self.team_aud = hashlib.sha256(self.issuer.encode()).hexdigest()
        self.clock = clock
        self.snapshot = AccessSnapshot.empty(self.issuer)
        self._service_jwts: dict[tuple[str, str], tuple[str, float]] = {}
        self._mail_tasks: set[asyncio.Task[None]] = set()
        self.decisions: dict[tuple[str, str], int] = {}  # (app name, outcome) -> count
        self.oidc_cache = OIDCCache()
        self._otp_sends: dict[str, list[float]] = {}  # address -> times a code was mailed
        # token -> the identity its (verified) claims carry, for this snapshot: the same cookie
        # comes with every request of a session.
        self._identities: dict[str, Identity | None] = {}

    # -- snapshot ---------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Recompile from the store (called when the store's generation moved)."""
        if self.store is None:
            return
        st = self.store
        apps = await st.list_apps()
        keys = await st.live_keys()
        if not keys and (apps or self.team_domain):
            # Created on first use: an edge without Access never pays for RSA key generation.
            key = SigningKey.generate()
            await st.add_key(key.kid, key.private_pem())
            keys = await st.live_keys()
        snap = compile_snapshot(
            issuer=self.issuer,
            team_aud=self.team_aud,
            apps=apps,
            policies=await st.list_policies(),
            tokens=await st.list_service_tokens(),
            idps=await st.list_idps(),
            keys=keys,
            revocations=await st.list_revocations(),
            previous=self.snapshot,
        )
        for warning in snap.warnings:
            if warning not in self.snapshot.warnings:
                log.warning("access: %s", warning)
        self.snapshot = snap
        self._service_jwts.clear()
        self._identities.clear()

    # -- per request ------------------------------------------------------------------------

    def check(self, req: AccessRequest) -> Forward | Reply | object | None:
        """None: no application here, carry on unchanged."""
        snap = self.snapshot
        host = req.host
        target = req.target
        if target.startswith(PREFIX) and (host == self.team_domain or snap.apps.covers_host(host)):
            return ENDPOINT
        if not snap.apps or not snap.apps.covers_host(host):
            return None
        raw_path, qmark, query = target.partition("?")
        try:
            path = normalize_path(raw_path)
        except HTTPRequestError as exc:
            return Reply.page(exc.status, "Bad request", f"<p>{html.escape(str(exc))}</p>")
        forward_path = (path + qmark + query).encode()
        app = snap.apps.find(host, path)
        if app is None:
            return Forward(forward_path)
        if (
            app.cors
            and req.method == "OPTIONS"
            and req.header(b"origin")
            and req.header(b"access-control-request-method")
        ):
            return self._preflight(req, app, forward_path)
        now = self.clock()
        facts_ip = _ip(req.ip)
        client_id = req.header(b"cf-access-client-id")
        service = None
        if client_id:
            service = snap.service_token(client_id, req.header(b"cf-access-client-secret"), now)
            if service is None:
                self._audit(app, "deny", None, req, "invalid service token")
                return self._denied(req, app)
        facts = RequestFacts(facts_ip, service.id if service is not None else "")
        token = req.cookie(COOKIE) or req.header(b"cf-access-token")
        identity: Identity | None = None
        claims: Claims | None = None
        if token and service is None and snap.verifier is not None:
            try:
                claims = snap.verifier.verify(token, audience=app.aud, now=now)
            except TokenError:
                claims = None
            if claims is not None and not snap.revoked(claims):
                identity = self._identities.get(token, _UNKNOWN)
                if identity is _UNKNOWN:
                    identity = snap.identity(claims, now)
                    # A service token's identity depends on its expiry: decided every time.
                    if not claims.common_name:
                        if len(self._identities) > 4096:
                            self._identities.clear()
                        self._identities[token] = identity
            if identity is None:
                claims = None
        decision = evaluate(app.policies, identity, facts)
        self._audit(app, decision.outcome.value, decision, req, identity.email if identity else "")
        outcome = decision.outcome
        if outcome is Outcome.BYPASS:
            return Forward(forward_path)
        if outcome is Outcome.ALLOW:
            add: list[tuple[bytes, bytes]] = []
            if service is not None:
                jwt = self._service_jwt(app, service.client_id, now)
                add.append((b"cf-access-jwt-assertion", jwt.encode()))
                if req.cookie(COOKIE) != jwt:
                    # As Cloudflare: the app token comes back as the CF_Authorization cookie.
                    lifetime = min(app.session_duration, ORG_LIFETIME)
                    cookie = _cookie(jwt, lifetime).encode()
                    return Forward(forward_path, add, respond=[(b"set-cookie", cookie)])
            elif claims is not None and token:
                add.append((b"cf-access-jwt-assertion", token.encode()))
                if claims.email:
                    add.append((b"cf-access-authenticated-user-email", claims.email.encode()))
            return Forward(forward_path, add)
        if outcome is Outcome.LOGIN:
            if req.header(b"x-requested-with").lower() == "xmlhttprequest":
                return Reply.json(
                    401,
                    {
                        "error": "authentication required",
                        "login": self._login_url(req, app, forward_path.decode()),
                    },
                )
            return Reply.redirect(self._login_url(req, app, forward_path.decode()))
        return self._denied(req, app)

    def _preflight(
        self, req: AccessRequest, app: Application, forward_path: bytes
    ) -> Forward | Reply:
        """A CORS preflight (browsers send it without cookies, so it could never pass a login):
        answered from the app's CORS settings (Cloudflare's names: allowed_origins,
        allowed_methods, allowed_headers, allow_all_origins, allow_all_methods,
        allow_all_headers, allow_credentials, max_age), or passed to the origin when
        `options_preflight_bypass` is set."""
        cors = app.cors
        if cors.get("options_preflight_bypass"):
            self._audit(app, "bypass", None, req, "cors-preflight")
            return Forward(forward_path)
        origin = req.header(b"origin").strip()
        method = req.header(b"access-control-request-method").strip().upper()
        wanted = [
            h.strip().lower()
            for h in req.header(b"access-control-request-headers").split(",")
            if h.strip()
        ]

        def listed(key: str) -> list[str]:
            value = cors.get(key) or []
            return [str(v) for v in value] if isinstance(value, list) else []

        ok_origin = bool(cors.get("allow_all_origins")) or origin in listed("allowed_origins")
        ok_method = bool(cors.get("allow_all_methods")) or method in [
            m.upper() for m in listed("allowed_methods")
        ]
        allowed_headers = {h.lower() for h in listed("allowed_headers")}
        ok_headers = bool(cors.get("allow_all_headers")) or all(
            h in allowed_headers for h in wanted
        )
        if not (ok_origin and ok_method and ok_headers):
            self._audit(app, "deny", None, req, "cors-preflight")
            return Reply(403, [("Vary", "Origin"), ("Cache-Control", "no-store")], b"")
        credentials = bool(cors.get("allow_credentials"))
        headers = [
            (
                "Access-Control-Allow-Origin",
                "*" if cors.get("allow_all_origins") and not credentials else origin,
            ),
            ("Access-Control-Allow-Methods", method),
            ("Vary", "Origin"),
        ]
        if wanted:
            headers.append(("Access-Control-Allow-Headers", ", ".join(wanted)))
        if credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        max_age = cors.get("max_age")
        if isinstance(max_age, int) and 0 < max_age <= 86400:
            headers.append(("Access-Control-Max-Age", str(max_age)))
        self._audit(app, "bypass", None, req, "cors-preflight")
        return Reply(200, headers, b"")

    def _denied(self, req: AccessRequest, app: Application) -> Reply:
        return Reply.page(
            403,
            "Access denied",
            f"<p>You do not have access to {html.escape(req.host)} ({html.escape(app.name)}).</p>",
        )

    def _login_url(self, req: AccessRequest, app: Application, redirect: str) -> str:
        q = urlencode({"kid": app.aud, "redirect_url": redirect})
        return f"{req.scheme}://{req.authority}{PREFIX}login?{q}"

    def _service_jwt(self, app: Application, client_id: str, now: float) -> str:
        """An app token for a service token, cached: RSA signing costs about a millisecond."""
        key = (client_id, app.aud)
        cached = self._service_jwts.get(key)
        if cached is not None and cached[1] - 60 > now:
            return cached[0]
        ring = self.snapshot.ring
        assert ring is not None
        lifetime = min(app.session_duration, ORG_LIFETIME)
        jwt = issue(
            ring,
            issuer=self.issuer,
            audience=[app.aud],
            common_name=client_id,
            lifetime=lifetime,
            now=now,
        )
        self._service_jwts[key] = (jwt, now + lifetime)
        return jwt

    def _audit(
        self,
        app: Application,
        outcome: str,
        decision: Decision | None,
        req: AccessRequest,
        who: str,
    ) -> None:
        key = (app.name, outcome)
        self.decisions[key] = self.decisions.get(key, 0) + 1
        if audit.isEnabledFor(logging.INFO):
            policy = decision.policy.name if decision is not None and decision.policy else "-"
            audit.info(
                "access decision=%s app=%s policy=%s who=%s ip=%s host=%s",
                outcome,
                app.name,
                policy,
                who or "-",
                req.ip,
                req.host,
            )

    # -- endpoints --------------------------------------------------------------------------

    async def endpoint(self, req: AccessRequest) -> Reply:
        name = req.target.partition("?")[0][len(PREFIX) :]
        try:
            if name == "certs":
                return self._certs()
            if name == "login":
                return self._login_start(req)
            if name.startswith("login/"):
                return await self._login_page(req, name[len("login/") :])
            if name.startswith("oidc/"):
                return await self._oidc_start(req, name[len("oidc/") :])
            if name == "cli":
                return await self._cli(req)
            if name.startswith("transfer/"):
                return await self._transfer(name[len("transfer/") :])
            if name == "callback":
                return await self._oidc_callback(req)
            if name == "otp" and req.method == "POST":
                return await self._otp_start(req)
            if name == "otp/verify" and req.method == "POST":
                return await self._otp_verify(req)
            if name == "authorized":
                return await self._authorized(req)
            if name == "logout":
                return await self._logout(req)
            if name == "get-identity":
                return self._get_identity(req)
        except Exception:
            log.exception("access endpoint %s failed", name)
            return Reply.page(500, "Access error", "<p>The login service failed; try again.</p>")
        return Reply.page(404, "Not found", "<p>No such access endpoint.</p>")

    def _certs(self) -> Reply:
        ring = self.snapshot.ring
        if ring is None:
            return Reply.json(503, {"error": "no signing keys yet"})
        return Reply.json(200, ring.jwks())

    def _team_origin(self, req: AccessRequest) -> str:
        if not self.team_domain:
            return f"{req.scheme}://{req.authority}"
        _, colon, port = req.authority.rpartition(":")
        suffix = ":" + port if colon and port.isdigit() and "]" not in port else ""
        return f"{req.scheme}://{self.team_domain}{suffix}"

    def _app_for(self, kid: str, host: str) -> Application | None:
        app = self.snapshot.by_aud.get(kid)
        if app is None or not self.snapshot.apps.covers_host(host):
            return None
        if app.host == host or (app.host.startswith("*.") and host.endswith(app.host[1:])):
            return app
        return None

    def _login_start(self, req: AccessRequest) -> Reply:
        q = req.query()
        app = self._app_for(q.get("kid", ""), req.host)
        if app is None:
            return Reply.page(400, "Bad login request", "<p>Unknown application.</p>")
        redirect = safe_redirect(q.get("redirect_url", "/"), req.host)
        if redirect is None:
            return _bad_redirect()
        params = urlencode({"kid": app.aud, "redirect_url": redirect, "port": _port(req.authority)})
        return Reply.redirect(f"{self._team_origin(req)}{PREFIX}login/{req.host}?{params}")

    def _flow(
        self, req: AccessRequest, fields: dict[str, str]
    ) -> tuple[Application, str, str, str] | Reply:
        """(app, app host, redirect path, app origin) from the login form/query, re-validated."""
        host = fields.get("host", "").lower()
        app = self._app_for(fields.get("kid", ""), host)
        if app is None:
            return Reply.page(400, "Bad login request", "<p>Unknown application.</p>")
        redirect = safe_redirect(fields.get("redirect_url", "/"), host)
        if redirect is None:
            return _bad_redirect()
        port = fields.get("port", "")
        origin = f"{req.scheme}://{host}" + (f":{port}" if port.isdigit() and port else "")
        return app, host, redirect, origin

    async def _login_page(self, req: AccessRequest, host: str) -> Reply:
        fields = {**req.query(), "host": host}
        flow = self._flow(req, fields)
        if isinstance(flow, Reply):
            return flow
        app, host, redirect, origin = flow
        org = self._org_claims(req)
        if org is not None:
            identity = self.snapshot.identity(org, self.clock())
            if identity is not None:
                return await self._finish_login(
                    req, app, origin, redirect, identity, org.identity_nonce, set_org=False
                )
        hidden = "".join(
            f'<input type="hidden" name="{k}" value="{html.escape(v)}">'
            for k, v in (
                ("kid", app.aud),
                ("host", host),
                ("redirect_url", redirect),
                ("port", fields.get("port", "")),
            )
        )
        parts = []
        for idp in self._idps_for(app):
            if idp.type == "onetimepin":
                parts.append(
                    f'<form method="post" action="{PREFIX}otp"><h2>{html.escape(idp.name)}</h2>'
                    f'{hidden}<input type="hidden" name="idp" value="{idp.id}">'
                    '<label>Email <input type="email" name="email" required></label>'
                    '<button type="submit">Send me a code</button></form>'
                )
            elif idp.type == "oidc":
                q = urlencode(
                    {
                        "kid": app.aud,
                        "host": host,
                        "redirect_url": redirect,
                        "port": fields.get("port", ""),
                    }
                )
                parts.append(
                    f'<p><a href="{PREFIX}oidc/{idp.id}?{html.escape(q)}">Log in with {html.escape(idp.name)}</a></p>'
                )
        if not parts:
            parts.append("<p>No identity provider is configured for this application.</p>")
        return Reply.page(200, f"Log in to {app.name}", "\n".join(parts))

    def _idps_for(self, app: Application) -> list[Any]:
        idps = self.snapshot.idps
        if app.allowed_idps:
            return [idps[i] for i in app.allowed_idps if i in idps]
        return list(idps.values())

    def _org_claims(self, req: AccessRequest) -> Claims | None:
        token = req.cookie(COOKIE)
        verifier = self.snapshot.verifier
        if not token or verifier is None:
            return None
        try:
            claims = verifier.verify(
                token, audience=self.team_aud, token_type="org", now=self.clock()
            )
        except TokenError:
            return None
        return None if self.snapshot.revoked(claims) else claims

    async def _finish_login(
        self,
        req: AccessRequest,
        app: Application,
        origin: str,
        redirect: str,
        identity: Identity,
        nonce: str,
        *,
        set_org: bool,
    ) -> Reply:
        decision = evaluate(app.policies, identity, RequestFacts(_ip(req.ip)))
        self._audit(app, "login-" + decision.outcome.value, decision, req, identity.email)
        if not decision.allowed:
            return Reply.page(
                403,
                "Access denied",
                f"<p>{html.escape(identity.email)} may not use {html.escape(app.name)}.</p>",
            )
        ring = self.snapshot.ring
        assert ring is not None and self.store is not None
        now = self.clock()
        subject = str(uuid.uuid5(uuid.NAMESPACE_URL, "mailto:" + identity.email))
        extra = identity_claims(identity)
        headers: list[tuple[str, str]] = []
        if set_org:
            org = issue(
                ring,
                issuer=self.issuer,
                audience=[self.team_aud],
                email=identity.email,
                subject=subject,
                token_type="org",
                lifetime=ORG_LIFETIME,
                identity_nonce=nonce,
                extra=extra,
                now=now,
            )
            headers.append(("Set-Cookie", _cookie(org, ORG_LIFETIME)))
        app_token = issue(
            ring,
            issuer=self.issuer,
            audience=[app.aud],
            email=identity.email,
            subject=subject,
            token_type="app",
            lifetime=app.session_duration,
            identity_nonce=nonce,
            extra=extra,
            now=now,
        )
        code = await self.store.put_pending(
            "code", {"token": app_token, "aud": app.aud}, ttl=CODE_TTL, now=now
        )
        q = urlencode({"code": code, "redirect_url": redirect})
        return Reply.redirect(f"{origin}{PREFIX}authorized?{q}", headers)

    async def _authorized(self, req: AccessRequest) -> Reply:
        assert self.store is not None
        q = req.query()
        redirect = safe_redirect(q.get("redirect_url", "/"), req.host)
        if redirect is None:
            return _bad_redirect()
        pending = await self.store.take_pending("code", q.get("code", ""), now=self.clock())
        app = self._app_for(str(pending.data.get("aud", "")), req.host) if pending else None
        if pending is None or app is None:
            return Reply.page(
                400,
                "Login expired",
                "<p>This login link is invalid or was used already; open the application again.</p>",
            )
        token = str(pending.data["token"])
        location = f"{req.scheme}://{req.authority}{redirect}"
        return Reply.redirect(location, [("Set-Cookie", _cookie(token, app.session_duration))])

    async def _logout(self, req: AccessRequest) -> Reply:
        claims = self._any_claims(req)
        if claims is not None and self.store is not None:
            ttl = max([ORG_LIFETIME, *(a.session_duration for a in self.snapshot.by_aud.values())])
            await self.store.revoke(
                "session", claims.identity_nonce, ttl=ttl + 60, now=self.clock()
            )
            await self.refresh()
            audit.info(
                "access logout who=%s ip=%s", claims.email or claims.common_name or "-", req.ip
            )
        return Reply.page(
            200,
            "Logged out",
            "<p>You have been logged out.</p>",
            [("Set-Cookie", f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax")],
        )

    def _any_claims(self, req: AccessRequest) -> Claims | None:
        """A valid app token (for any app) or org token from the cookie or header."""
        verifier = self.snapshot.verifier
        token = req.cookie(COOKIE) or req.header(b"cf-access-token")
        if not token or verifier is None:
            return None
        for audience, kind in ((list(self.snapshot.by_aud), "app"), (self.team_aud, "org")):
            try:
                claims = verifier.verify(
                    token, audience=audience, token_type=kind, now=self.clock()
                )
            except TokenError:
                continue
            return None if self.snapshot.revoked(claims) else claims
        return None

    def _get_identity(self, req: AccessRequest) -> Reply:
        claims = self._any_claims(req)
        if claims is None:
            return Reply.json(401, {"err": "no valid access session"})
        raw = claims.raw
        if claims.common_name:
            return Reply.json(200, {"common_name": claims.common_name, "iat": claims.iat})
        return Reply.json(
            200,
            {
                "email": claims.email,
                "idp": raw.get("idp", {}),
                "groups": raw.get("groups", []),
                "amr": raw.get("amr", []),
                "user_uuid": claims.sub,
                "identity_nonce": claims.identity_nonce,
                "iat": claims.iat,
                "custom": raw.get("custom", {}),
            },
        )

    # -- command-line login (`burrow access login`) -------------------------------------------

    async def _cli(self, req: AccessRequest) -> Reply:
        """On the app host. Without a valid app session: log in first, then come back here.
        With one: GET shows a confirmation page (with the fingerprint the CLI printed); the
        POST (a SameSite=Lax cookie is not sent on a cross-site POST, so another site cannot
        submit it for the user) encrypts the app token to the CLI's key for the transfer
        endpoint."""
        assert self.store is not None
        fields = req.form() if req.method == "POST" else req.query()
        try:
            key = parse_public_key(fields.get("key", ""))
            path = normalize_path(fields.get("path", "/") or "/")
        except (TransferError, HTTPRequestError):
            return Reply.page(400, "Bad request", "<p>This command-line login link is invalid.</p>")
        app = self.snapshot.apps.find(req.host, path)
        if app is None:
            return Reply.page(404, "Not found", "<p>No application here.</p>")
        token = req.cookie(COOKIE)
        claims = None
        verifier = self.snapshot.verifier
        if token and verifier is not None:
            try:
                claims = verifier.verify(token, audience=app.aud, now=self.clock())
            except TokenError:
                claims = None
        identity = self.snapshot.identity(claims, self.clock()) if claims else None
        if claims is None or identity is None or self.snapshot.revoked(claims):
            if req.method == "POST":
                return Reply.page(403, "Access denied", "<p>Log in first.</p>")
            back = f"{PREFIX}cli?" + urlencode({"key": fields["key"], "path": path})
            return Reply.redirect(self._login_url(req, app, back))
        decision = evaluate(app.policies, identity, RequestFacts(_ip(req.ip)))
        if not decision.allowed:
            return self._denied(req, app)
        code = fingerprint(key)
        if req.method != "POST":
            return Reply.page(
                200,
                "Authorize the command line",
                f"<p>A command-line client asks for access to {html.escape(app.name)} as "
                f"{html.escape(identity.email or claims.common_name)}. Allow it only if your "
                f"terminal shows the code <strong>{code}</strong>.</p>"
                f'<form method="post" action="{PREFIX}cli">'
                f'<input type="hidden" name="key" value="{html.escape(fields["key"])}">'
                f'<input type="hidden" name="path" value="{html.escape(path)}">'
                '<button type="submit">Allow</button></form>',
            )
        tid = transfer_id(key)
        await self.store.delete_pending(tid)
        await self.store.put_pending(
            "transfer",
            {"box": seal(key, token.encode()), "host": req.host},
            ttl=TRANSFER_TTL,
            now=self.clock(),
            pending_id=tid,
        )
        self._audit(app, "cli-token", decision, req, identity.email)
        return Reply.page(
            200,
            "Logged in",
            f"<p>The command line has its token for {html.escape(app.name)}; you can close this "
            "window.</p>",
        )

    async def _transfer(self, tid: str) -> Reply:
        """Polled by the CLI: the sealed token once (then gone), 404 until then."""
        assert self.store is not None
        if len(tid) != 64 or any(c not in "0123456789abcdef" for c in tid):
            return Reply.json(400, {"error": "bad transfer id"})
        pending = await self.store.take_pending("transfer", tid, now=self.clock())
        if pending is None:
            return Reply.json(404, {"status": "pending"})
        return Reply.json(200, pending.data["box"])

    # -- generic OIDC -------------------------------------------------------------------------

    def _oidc_provider(self, idp_id: str) -> OIDCProvider | None:
        idp = self.snapshot.idps.get(idp_id)
        if idp is None or idp.type != "oidc":
            return None
        try:
            return OIDCProvider(idp.id, idp.config, self.oidc_cache)
        except OIDCError:
            return None

    async def _oidc_start(self, req: AccessRequest, idp_id: str) -> Reply:
        """Team domain: remember the login (state, nonce, PKCE verifier, where to return) and
        send the browser to the IdP. A cookie named after the state binds the callback to this
        browser, so a callback URL planted in someone else's browser logs nobody in."""
        assert self.store is not None
        flow = self._flow(req, req.query())
        if isinstance(flow, Reply):
            return flow
        app, host, redirect, origin = flow
        provider = self._oidc_provider(idp_id)
        if provider is None or self.snapshot.idps[idp_id] not in self._idps_for(app):
            return Reply.page(400, "Bad login request", "<p>Unknown identity provider.</p>")
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        binding = secrets.token_urlsafe(32)
        pkce = PKCE.new()
        redirect_uri = f"{self._team_origin(req)}{PREFIX}callback"
        try:
            url = await provider.authorization_url(
                redirect_uri=redirect_uri, state=state, nonce=nonce, pkce=pkce
            )
        except OIDCError as exc:
            log.warning("access: OIDC provider %s: %s", provider.issuer, exc)
            return Reply.page(
                502, "Login unavailable", "<p>The identity provider cannot be reached.</p>"
            )
        await self.store.put_pending(
            "oidc",
            {
                "idp": idp_id,
                "nonce": nonce,
                "verifier": pkce.verifier,
                "binding": hashlib.sha256(binding.encode()).hexdigest(),
                "redirect_uri": redirect_uri,
                "kid": app.aud,
                "host": host,
                "redirect_url": redirect,
                "origin": origin,
            },
            ttl=OIDC_TTL,
            now=self.clock(),
            pending_id=state,
        )
        cookie = (
            f"{_state_cookie(state)}={binding}; Path={PREFIX}callback; Max-Age={int(OIDC_TTL)}; "
            "HttpOnly; Secure; SameSite=Lax"
        )
        return Reply.redirect(url, [("Set-Cookie", cookie)])

    async def _oidc_callback(self, req: AccessRequest) -> Reply:
        assert self.store is not None
        q = req.query()
        state = q.get("state", "")
        failed = Reply.page(
            400,
            "Login failed",
            "<p>This login is invalid, expired or was used already; open the application again.</p>",
        )
        if not state or len(state) > 64:
            return failed
        pending = await self.store.take_pending("oidc", state, now=self.clock())
        if pending is None:
            return failed
        data = pending.data
        clear = (
            "Set-Cookie",
            f"{_state_cookie(state)}=; Path={PREFIX}callback; Max-Age=0; HttpOnly; Secure; "
            "SameSite=Lax",
        )
        binding = req.cookie(_state_cookie(state))
        if not binding or not hmac.compare_digest(
            hashlib.sha256(binding.encode()).hexdigest(), str(data.get("binding", ""))
        ):
            return Reply.page(
                400,
                "Login failed",
                "<p>This login was started in another browser; start again here.</p>",
                [clear],
            )
        if "error" in q:
            return Reply.page(
                403,
                "Login refused",
                f"<p>The identity provider refused the login: {html.escape(q['error'][:100])}.</p>",
                [clear],
            )
        app = self.snapshot.by_aud.get(str(data.get("kid", "")))
        provider = self._oidc_provider(str(data.get("idp", "")))
        if app is None or provider is None or not q.get("code"):
            return Reply.page(failed.status, "Login failed", "<p>Start again.</p>", [clear])
        try:
            who = await provider.exchange(
                code=q["code"],
                redirect_uri=str(data["redirect_uri"]),
                verifier=str(data["verifier"]),
                nonce=str(data["nonce"]),
            )
        except OIDCError as exc:
            log.warning("access: OIDC login with %s refused: %s", provider.issuer, exc)
            audit.info("access login-refused idp=%s ip=%s reason=%s", provider.id, req.ip, exc)
            return Reply.page(
                403, "Login failed", "<p>The identity provider's answer was refused.</p>", [clear]
            )
        identity = Identity(
            email=who.email, groups=who.groups, idp=provider.id, amr=who.amr, claims=who.claims
        )
        reply = await self._finish_login(
            req,
            app,
            str(data["origin"]),
            str(data["redirect_url"]),
            identity,
            uuid.uuid4().hex,
            set_org=True,
        )
        reply.headers.append(clear)
        return reply

    # -- one-time PIN -------------------------------------------------------------------------

    async def _otp_start(self, req: AccessRequest) -> Reply:
        """Always the same answer, whether or not the address may log in (no enumeration):
        the code is mailed only to allowed addresses, in the background so the answer takes
        the same time either way."""
        assert self.store is not None
        form = req.form()
        flow = self._flow(req, form)
        if isinstance(flow, Reply):
            return flow
        app, host, redirect, origin = flow
        idp = self.snapshot.idps.get(form.get("idp", ""))
        if idp is None or idp.type != "onetimepin" or idp not in self._idps_for(app):
            return Reply.page(400, "Bad login request", "<p>Unknown identity provider.</p>")
        email = form.get("email", "").strip().lower()
        if "@" not in email or len(email) > 254 or any(c in email for c in "\r\n<>\"' "):
            return Reply.page(400, "Bad login request", "<p>Enter an email address.</p>")
        now = self.clock()
        attempt = secrets.token_urlsafe(24)
        identity = Identity(email=email, idp=idp.id, amr=("email",))
        decision = evaluate(app.policies, identity, RequestFacts(_ip(req.ip)))
        code_hash = ""
        if decision.allowed and self._may_mail(email, now):
            code = f"{secrets.randbelow(10**6):06d}"
            code_hash = _hash_code(attempt, code)
            task = asyncio.get_running_loop().create_task(
                mail.send_code(idp.config, email, code, app.name)
            )
            self._mail_tasks.add(task)
            task.add_done_callback(self._mail_tasks.discard)
        await self.store.put_pending(
            "otp",
            {
                "email": email,
                "code_hash": code_hash,
                "kid": app.aud,
                "host": host,
                "redirect_url": redirect,
                "origin": origin,
                "idp": idp.id,
            },
            ttl=OTP_TTL,
            now=now,
            pending_id=attempt,
        )
        return Reply.page(
            200,
            "Check your email",
            f"<p>If {html.escape(email)} may use {html.escape(app.name)}, a code has been emailed "
            "to it. It is valid for 10 minutes.</p>"
            f'<form method="post" action="{PREFIX}otp/verify">'
            f'<input type="hidden" name="attempt" value="{attempt}">'
            '<label>Code <input name="code" inputmode="numeric" autocomplete="one-time-code" required></label>'
            '<button type="submit">Log in</button></form>',
        )

    def _may_mail(self, email: str, now: float) -> bool:
        """At most OTP_SENDS_PER_ADDRESS codes per address per 10 minutes: the login form must
        not be a way to flood someone's mailbox. Over the limit the answer page is the same
        (no enumeration) and no mail goes out."""
        sends = self._otp_sends
        if len(sends) > 10000:
            for addr in [a for a, ts in sends.items() if ts[-1] <= now - OTP_TTL]:
                del sends[addr]
        recent = [t for t in sends.get(email, ()) if t > now - OTP_TTL]
        if len(recent) >= OTP_SENDS_PER_ADDRESS:
            sends[email] = recent
            audit.info("access otp-rate-limited who=%s", email)
            return False
        recent.append(now)
        sends[email] = recent
        return True

    async def mail_sent(self) -> None:
        """Wait for the codes being mailed (tests, shutdown)."""
        if self._mail_tasks:
            await asyncio.gather(*list(self._mail_tasks), return_exceptions=True)

    async def _otp_verify(self, req: AccessRequest) -> Reply:
        assert self.store is not None
        form = req.form()
        attempt = form.get("attempt", "")
        code = form.get("code", "").strip()
        now = self.clock()
        pending = await self.store.get_pending("otp", attempt, now=now)
        invalid = Reply.page(
            403, "Invalid code", "<p>That code is wrong or has expired. Request a new code.</p>"
        )
        if pending is None:
            return invalid
        if pending.attempts >= OTP_MAX_ATTEMPTS:
            return _locked()
        data = pending.data
        ok = bool(data.get("code_hash")) and hmac.compare_digest(
            _hash_code(attempt, code), str(data.get("code_hash"))
        )
        if not ok:
            if await self.store.count_attempt(attempt) >= OTP_MAX_ATTEMPTS:
                return _locked()
            return invalid
        if await self.store.take_pending("otp", attempt, now=now) is None:
            return invalid  # redeemed concurrently
        app = self.snapshot.by_aud.get(str(data["kid"]))
        if app is None:
            return invalid
        identity = Identity(email=str(data["email"]), idp=str(data["idp"]), amr=("email",))
        return await self._finish_login(
            req,
            app,
            str(data["origin"]),
            str(data["redirect_url"]),
            identity,
            uuid.uuid4().hex,
            set_org=True,
        )


def _state_cookie(state: str) -> str:
    return OIDC_STATE_COOKIE + hashlib.sha256(state.encode()).hexdigest()[:16]


def _locked() -> Reply:
    return Reply.page(
        429,
        "Too many attempts",
        "<p>Too many wrong codes: this code is locked. Request a new code.</p>",
    )


def _bad_redirect() -> Reply:
    return Reply.page(
        400, "Bad redirect", "<p>The return address is not part of this application.</p>"
    )


def _cookie(token: str, max_age: float) -> str:
    # Secure always: browsers treat http://localhost and *.localhost as secure contexts, and
    # Access over plain HTTP elsewhere would leak the session (docs/access.md).
    return f"{COOKIE}={token}; Path=/; Max-Age={int(max_age)}; HttpOnly; Secure; SameSite=Lax"


def _port(authority: str) -> str:
    if authority.endswith("]"):
        return ""
    _, colon, port = authority.rpartition(":")
    return port if colon and port.isdigit() else ""


_UNKNOWN: Any = object()


@functools.lru_cache(maxsize=4096)
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return ipaddress.ip_address("0.0.0.0")
