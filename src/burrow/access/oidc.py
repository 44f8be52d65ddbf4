"""Generic OpenID Connect login for Access: authorization code flow with PKCE (S256), `state`
and `nonce`, and strict id_token verification.

The relying-party half only; the edge's `AccessService` owns the pages and the login state:

- `OIDCProvider.authorization_url(...)` builds the redirect to the IdP from its discovery
  document (`<issuer>/.well-known/openid-configuration`, cached for an hour).
- `OIDCProvider.exchange(...)` redeems the code at the token endpoint (with the PKCE verifier
  and the client secret, `client_secret_basic` by default) and verifies the id_token: signature
  with the IdP's JWKS (selected by `kid`, re-fetched once when an unknown `kid` appears: IdPs
  rotate keys), `iss`, `aud` (and `azp` when there are several audiences), `exp`, `iat`, `nonce`.
  Only asymmetric algorithms are accepted: an HMAC id_token would be signed with the client
  secret, which the edge would then have to treat as a verification key.

Settings (the IdP record's `config`): `issuer`, `client_id`, `client_secret` (sealed at rest;
empty for a public client), `scopes` (default "openid email profile"), `email_claim` (default
"email"), `groups_claim` (default "groups"), `claims` (comma-separated extra claims kept for
`oidc_claim` policy rules), `ca_file` (PEM CA bundle for a private IdP; TLS is always
verified), `token_auth` (`client_secret_basic` or `client_secret_post`).

Outbound HTTP uses aiohttp with short timeouts and bounded response sizes: the IdP is a remote
party, and a login must not be able to hang or bloat the edge.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus, urlencode, urlsplit

if TYPE_CHECKING:
    import aiohttp
    from joserfc.jwk import KeySet

# aiohttp and joserfc are imported by the methods that talk to an IdP or check its tokens:
# an edge without an OIDC identity provider never loads them (~8 MB of RSS).

from burrow.errors import BurrowError

DISCOVERY_TTL = 3600.0
JWKS_MIN_REFRESH = 30.0  # an unknown kid triggers at most one JWKS fetch per this interval
HTTP_TIMEOUT = 10.0
MAX_RESPONSE = 1 << 20
LEEWAY = 60.0
ALGORITHMS = [
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
]
DEFAULT_SCOPES = "openid email profile"


class OIDCError(BurrowError):
    """The IdP could not be used or its answer was refused; the message says why (it never
    contains a token, code or secret)."""

    status = 502


@dataclass(frozen=True, slots=True)
class PKCE:
    verifier: str = field(repr=False)
    challenge: str

    @classmethod
    def new(cls) -> PKCE:
        verifier = secrets.token_urlsafe(64)  # 86 characters (RFC 7636: 43 to 128)
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        return cls(verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii"))


@dataclass(frozen=True, slots=True)
class OIDCIdentity:
    email: str
    groups: tuple[str, ...]
    subject: str
    amr: tuple[str, ...]
    claims: dict[str, Any]


@dataclass
class _Cached:
    value: dict[str, Any]
    at: float


def _ssl_context(ca_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise OIDCError(f"cannot load the IdP CA file {ca_file}: {exc}") from None
    return ctx


class OIDCProvider:
    """One configured IdP. Instances are cheap; discovery and JWKS are cached per issuer in
    `OIDCCache`, shared by the edge's access service."""

    def __init__(self, idp_id: str, config: Mapping[str, Any], cache: OIDCCache) -> None:
        self.id = idp_id
        self.issuer = str(config.get("issuer", "")).rstrip("/")
        self.client_id = str(config.get("client_id", ""))
        self._secret = str(config.get("client_secret", "") or "")
        self.scopes = str(config.get("scopes") or DEFAULT_SCOPES)
        if "openid" not in self.scopes.split():
            self.scopes = "openid " + self.scopes
        self.email_claim = str(config.get("email_claim") or "email")
        self.groups_claim = str(config.get("groups_claim") or "groups")
        extra = config.get("claims") or ()
        if isinstance(extra, str):
            extra = [c.strip() for c in extra.split(",")]
        self.extra_claims = tuple(str(c) for c in extra if c)
        self.ca_file = str(config.get("ca_file") or "")
        self.token_auth = str(config.get("token_auth") or "client_secret_basic")
        self.cache = cache
        if not self.issuer or not self.client_id:
            raise OIDCError("the OIDC provider needs an issuer and a client_id")
        scheme = urlsplit(self.issuer).scheme
        if scheme not in ("https", "http"):
            raise OIDCError("the OIDC issuer must be an http(s) URL")

    def __repr__(self) -> str:
        return f"OIDCProvider(id={self.id!r}, issuer={self.issuer!r}, client_id={self.client_id!r})"

    # -- HTTP -------------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        import aiohttp

        connector = aiohttp.TCPConnector(ssl=_ssl_context(self.ca_file), limit=4)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT),
            headers={"User-Agent": "burrow-access", "Accept": "application/json"},
        )

    @staticmethod
    async def _json(resp: aiohttp.ClientResponse, what: str) -> dict[str, Any]:
        body = await resp.content.read(MAX_RESPONSE + 1)
        if len(body) > MAX_RESPONSE:
            raise OIDCError(f"the IdP's {what} answer is too large")
        if resp.status != 200:
            detail = ""
            try:
                err = json.loads(body)
                if isinstance(err, dict) and isinstance(err.get("error"), str):
                    detail = f": {err['error'][:100]}"
            except ValueError:
                pass
            raise OIDCError(f"the IdP's {what} answered {resp.status}{detail}")
        try:
            value = json.loads(body)
        except ValueError:
            raise OIDCError(f"the IdP's {what} answer is not JSON") from None
        if not isinstance(value, dict):
            raise OIDCError(f"the IdP's {what} answer is not a JSON object")
        return value

    async def _get(self, session: aiohttp.ClientSession, url: str, what: str) -> dict[str, Any]:
        import aiohttp

        try:
            async with session.get(url, allow_redirects=False) as resp:
                return await self._json(resp, what)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OIDCError(f"cannot reach the IdP ({what}): {type(exc).__name__}") from None

    async def discovery(self, session: aiohttp.ClientSession | None = None) -> dict[str, Any]:
        now = time.monotonic()
        cached = self.cache.discovery.get(self.issuer)
        if cached is not None and now - cached.at < DISCOVERY_TTL:
            return cached.value
        own = session is None
        session = session or self._session()
        try:
            doc = await self._get(
                session, self.issuer + "/.well-known/openid-configuration", "discovery document"
            )
        finally:
            if own:
                await session.close()
        # OpenID Connect Discovery 1.0 section 4.3: the issuer must be exactly the one asked for.
        if str(doc.get("issuer", "")).rstrip("/") != self.issuer:
            raise OIDCError("the IdP's discovery document names another issuer")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(doc.get(key), str) or urlsplit(doc[key]).scheme not in (
                "https",
                "http",
            ):
                raise OIDCError(f"the IdP's discovery document has no valid {key}")
        methods = doc.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise OIDCError("the IdP does not support PKCE with S256")
        self.cache.discovery[self.issuer] = _Cached(doc, now)
        return doc

    async def _jwks(
        self, session: aiohttp.ClientSession, uri: str, *, refresh: bool = False
    ) -> KeySet:
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        now = time.monotonic()
        cached = self.cache.jwks.get(uri)
        fresh = cached is not None and now - cached.at < DISCOVERY_TTL
        if cached is not None and ((fresh and not refresh) or now - cached.at < JWKS_MIN_REFRESH):
            return KeySet.import_key_set(cached.value)  # type: ignore[arg-type]
        doc = await self._get(session, uri, "JWKS")
        keys = doc.get("keys")
        if not isinstance(keys, list):
            raise OIDCError("the IdP's JWKS has no keys")
        usable = {"keys": [k for k in keys if isinstance(k, dict) and k.get("kty") != "oct"]}
        try:
            keyset = KeySet.import_key_set(usable)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError):
            raise OIDCError("the IdP's JWKS cannot be read") from None
        self.cache.jwks[uri] = _Cached(usable, now)
        return keyset

    # -- the flow ---------------------------------------------------------------------------

    async def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, pkce: PKCE
    ) -> str:
        doc = await self.discovery()
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": self.scopes,
            "state": state,
            "nonce": nonce,
            "code_challenge": pkce.challenge,
            "code_challenge_method": "S256",
        }
        endpoint = str(doc["authorization_endpoint"])
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

    async def exchange(
        self, *, code: str, redirect_uri: str, verifier: str, nonce: str
    ) -> OIDCIdentity:
        """Redeem the code and verify the id_token; the identity it proves."""
        import aiohttp

        async with self._session() as session:
            doc = await self.discovery(session)
            form = {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            }
            headers: dict[str, str] = {}
            if self._secret and self.token_auth == "client_secret_post":
                form.update(client_id=self.client_id, client_secret=self._secret)
            elif self._secret:
                # RFC 6749 2.3.1: both parts form-encoded before the Basic encoding.
                pair = f"{quote_plus(self.client_id)}:{quote_plus(self._secret)}"
                headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
            else:
                form["client_id"] = self.client_id
            try:
                async with session.post(
                    str(doc["token_endpoint"]), data=form, headers=headers, allow_redirects=False
                ) as resp:
                    tokens = await self._json(resp, "token endpoint")
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise OIDCError(f"cannot reach the IdP (token): {type(exc).__name__}") from None
            id_token = tokens.get("id_token")
            if not isinstance(id_token, str):
                raise OIDCError("the IdP returned no id_token")
            claims = await self._verify(session, str(doc["jwks_uri"]), id_token, nonce)
            email = claims.get(self.email_claim)
            access_token = tokens.get("access_token")
            userinfo_url = doc.get("userinfo_endpoint")
            if (
                not isinstance(email, str)
                and isinstance(access_token, str)
                and isinstance(userinfo_url, str)
            ):
                # Some IdPs put profile claims only in userinfo (OIDC Core 5.4).
                claims = {
                    **(await self._userinfo(session, userinfo_url, access_token, claims)),
                    **claims,
                }
                email = claims.get(self.email_claim)
        if not isinstance(email, str) or "@" not in email:
            raise OIDCError(f"the IdP gave no {self.email_claim!r} claim with an email address")
        groups_raw = claims.get(self.groups_claim, ())
        if isinstance(groups_raw, str):
            groups_raw = [groups_raw]
        groups = tuple(str(g) for g in groups_raw if isinstance(g, (str, int)))[:256]
        amr = claims.get("amr")
        kept = {c: claims[c] for c in self.extra_claims if c in claims}
        return OIDCIdentity(
            email=email.strip().lower(),
            groups=groups,
            subject=str(claims.get("sub", "")),
            amr=tuple(str(a) for a in amr) if isinstance(amr, list) else ("oidc",),
            claims=kept,
        )

    async def _userinfo(
        self,
        session: aiohttp.ClientSession,
        url: str,
        access_token: str,
        id_claims: Mapping[str, Any],
    ) -> dict[str, Any]:
        import aiohttp

        try:
            async with session.get(
                url,
                headers={"Authorization": f"Bearer {access_token}"},
                allow_redirects=False,
            ) as resp:
                info = await self._json(resp, "userinfo endpoint")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OIDCError(f"cannot reach the IdP (userinfo): {type(exc).__name__}") from None
        if info.get("sub") != id_claims.get("sub"):  # OIDC Core 5.3.2
            raise OIDCError("the IdP's userinfo is for another subject")
        return info

    async def _verify(
        self, session: aiohttp.ClientSession, jwks_uri: str, token: str, nonce: str
    ) -> dict[str, Any]:
        from joserfc import jwt
        from joserfc.errors import JoseError

        if token.count(".") != 2 or len(token) > 32768:
            raise OIDCError("the id_token is malformed")
        try:
            header = json.loads(_b64(token.split(".", 1)[0]))
        except ValueError:
            raise OIDCError("the id_token is malformed") from None
        if not isinstance(header, dict) or header.get("alg") not in ALGORITHMS:
            raise OIDCError("the id_token's algorithm is not accepted")
        kid = header.get("kid")
        keyset = await self._jwks(session, jwks_uri)
        if isinstance(kid, str) and not _has_kid(keyset, kid):
            keyset = await self._jwks(session, jwks_uri, refresh=True)  # the IdP rotated keys
        try:
            decoded = jwt.decode(token, keyset, algorithms=ALGORITHMS)
        except (JoseError, ValueError) as exc:
            raise OIDCError(f"the id_token is invalid: {type(exc).__name__}") from None
        c = dict(decoded.claims)
        now = time.time()
        if str(c.get("iss", "")).rstrip("/") != self.issuer:
            raise OIDCError("the id_token's issuer does not match")
        aud = c.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self.client_id not in auds:
            raise OIDCError("the id_token is not for this client (aud)")
        if len(auds) > 1 and c.get("azp") != self.client_id:
            raise OIDCError("the id_token's azp is not this client")
        try:
            exp = float(c["exp"])
            iat = float(c.get("iat", now))
        except (KeyError, TypeError, ValueError):
            raise OIDCError("the id_token has no valid exp") from None
        if exp + LEEWAY < now:
            raise OIDCError("the id_token has expired")
        if iat - LEEWAY > now:
            raise OIDCError("the id_token was issued in the future")
        if "nbf" in c and float(c["nbf"]) - LEEWAY > now:
            raise OIDCError("the id_token is not valid yet")
        got = c.get("nonce")
        if not isinstance(got, str) or not secrets.compare_digest(got, nonce):
            raise OIDCError("the id_token's nonce does not match this login")
        return c


def _has_kid(keyset: KeySet, kid: str) -> bool:
    return any(k.kid == kid for k in keyset.keys)


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@dataclass
class OIDCCache:
    """Discovery documents and JWKS by issuer / URI (monotonic fetch times)."""

    discovery: dict[str, _Cached] = field(default_factory=dict)
    jwks: dict[str, _Cached] = field(default_factory=dict)
