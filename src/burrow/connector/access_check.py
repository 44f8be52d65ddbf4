"""The connector's own Access check: `originRequest.access: {required: true, teamName, audTag}`
(cloudflared's semantics). A request whose `Cf-Access-Jwt-Assertion` is missing, not signed by
the team's keys, of another issuer, expired, or for none of the `audTag`s gets 403 from the
connector and never reaches the origin: a defence against anything that reaches the tunnel
without passing Access (a misconfigured application, a hostname added later).

Where the keys are: cloudflared fetches `https://<teamName>.cloudflareaccess.com/cdn-cgi/
access/certs` and expects that issuer. A burrow edge's team domain is its own, so a `teamName`
with a dot is taken as the team domain itself (issuer `https://<teamName>`, keys at
`https://<teamName>/cdn-cgi/access/certs`), and burrow's `certsUrl` option names another place
to fetch the keys from (the edge's public listener, for example), with the issuer unchanged.

The JWKS is fetched once and cached (re-fetched every `REFRESH` seconds, and when a token names
an unknown `kid`: the edge rotated its keys, at most once per `MIN_REFETCH`). A request that
arrives while the keys are being fetched waits for them with its stream events buffered.
Verified tokens are cached until they expire, as at the edge.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from burrow.access.loopback import loopback_resolver
from burrow.ingress.config import AccessConfig
from burrow.net.h2conn import DataPiece, H2Stream, Headers

log = logging.getLogger("burrow.connector.access")

ASSERTION = b"cf-access-jwt-assertion"
REFRESH = 300.0
MIN_REFETCH = 10.0
LEEWAY = 30.0
CACHE_SIZE = 4096

OK, DENY, FETCH = "ok", "deny", "fetch"


def team_issuer(team_name: str) -> str:
    name = team_name.strip().lower().rstrip(".")
    if name.startswith(("https://", "http://")):
        return name.rstrip("/")
    return f"https://{name}" if "." in name else f"https://{name}.cloudflareaccess.com"


def certs_url(cfg: AccessConfig) -> str:
    return cfg.certs_url or team_issuer(cfg.team_name) + "/cdn-cgi/access/certs"


class TeamKeys:
    """The signing keys of one team (one certs URL and issuer)."""

    def __init__(self, url: str, issuer: str, ca_file: str | None = None) -> None:
        self.url = url
        self.issuer = issuer
        self.ca_file = ca_file
        self.keys: KeySet | None = None
        self.kids: frozenset[str] = frozenset()
        self.fetched_at = -1e18
        self._fetch: asyncio.Task[None] | None = None
        self._verified: collections.OrderedDict[str, tuple[float, tuple[str, ...]]] = (
            collections.OrderedDict()
        )

    def check(self, token: str, audiences: tuple[str, ...], now: float) -> str:
        """OK, DENY, or FETCH (the keys are needed first: call `refresh()` and check again)."""
        hit = self._verified.get(token)
        if hit is not None:
            exp, aud = hit
            if exp + LEEWAY < now:
                self._verified.pop(token, None)
                return DENY
            return OK if not audiences or set(audiences).intersection(aud) else DENY
        if self.keys is None or now - self.fetched_at > REFRESH:
            return FETCH
        if token.count(".") != 2 or len(token) > 16384:
            return DENY
        try:
            header = jws.extract_compact(token.encode()).protected
        except (JoseError, ValueError):
            return DENY
        if header.get("alg") != "RS256":
            return DENY
        if header.get("kid") not in self.kids:
            return FETCH if now - self.fetched_at > MIN_REFETCH else DENY
        try:
            claims = jwt.decode(token, self.keys, algorithms=["RS256"]).claims
            exp = float(claims["exp"])
            nbf = float(claims.get("nbf") or claims.get("iat") or 0)
        except (JoseError, ValueError, KeyError, TypeError):
            return DENY
        if claims.get("iss") != self.issuer or exp + LEEWAY < now or nbf - LEEWAY > now:
            return DENY
        aud = claims.get("aud", [])
        auds = tuple([aud] if isinstance(aud, str) else [str(a) for a in aud])
        self._verified[token] = (exp, auds)
        if len(self._verified) > CACHE_SIZE:
            self._verified.popitem(last=False)
        return OK if not audiences or set(audiences).intersection(auds) else DENY

    async def refresh(self) -> None:
        """Fetch the JWKS (one fetch at a time; concurrent callers wait for it)."""
        if self._fetch is None or self._fetch.done():
            self._fetch = asyncio.get_running_loop().create_task(self._get())
        await asyncio.shield(self._fetch)

    async def _get(self) -> None:
        ctx = ssl.create_default_context()
        if self.ca_file:
            ctx.load_verify_locations(cafile=self.ca_file)
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx, resolver=loopback_resolver()),
                timeout=aiohttp.ClientTimeout(total=10),
            ) as http:
                async with http.get(self.url, allow_redirects=False) as resp:
                    body = await resp.content.read(1 << 20)
                    if resp.status != 200:
                        raise ValueError(f"HTTP {resp.status}")
            doc = json.loads(body)
            keys = [k for k in doc["keys"] if isinstance(k, dict) and k.get("kty") == "RSA"]
            keyset = KeySet.import_key_set({"keys": keys})
        except (
            aiohttp.ClientError,
            TimeoutError,
            ValueError,
            KeyError,
            TypeError,
            JoseError,
        ) as exc:
            log.warning("access: cannot fetch the team's keys from %s: %s", self.url, exc)
            self.fetched_at = time.time()  # retry after MIN_REFETCH, not on every request
            return
        self.keys = keyset
        self.kids = frozenset(str(k.get("kid", "")) for k in keys)
        self.fetched_at = time.time()


class _Held:
    """Stands in as a stream's handler while the keys are fetched: keeps the request's events
    (the body is bounded by the stream's flow-control window, which it does not open) and hands
    them to the real handler afterwards."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        self.events.append(("headers", (headers, end_stream)))

    def on_data(self, stream: H2Stream, data: DataPiece, end_stream: bool) -> None:
        self.events.append(("data", (data, end_stream)))

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None:
        self.events.append(("trailers", headers))

    def on_end(self, stream: H2Stream) -> None:
        self.events.append(("end", None))

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        self.events.append(("reset", error_code))

    def on_writable(self, stream: H2Stream) -> None:
        pass

    def replay(self, stream: H2Stream) -> None:
        for kind, value in self.events:
            handler = stream.handler
            if handler is None or handler is self:
                if kind == "data":
                    stream.consumed(len(value[0]))
                continue
            if kind == "headers":
                handler.on_headers(stream, *value)
            elif kind == "data":
                handler.on_data(stream, *value)
            elif kind == "trailers":
                handler.on_trailers(stream, value)
            elif kind == "end":
                handler.on_end(stream)
            elif kind == "reset":
                handler.on_reset(stream, value)


class AccessChecker:
    """All teams' keys, by (certs URL, issuer)."""

    def __init__(self) -> None:
        self._teams: dict[tuple[str, str], TeamKeys] = {}
        self.denied = 0

    def team(self, cfg: AccessConfig) -> TeamKeys:
        key = (certs_url(cfg), team_issuer(cfg.team_name))
        team = self._teams.get(key)
        if team is None:
            team = self._teams[key] = TeamKeys(*key)
        return team

    def gate(
        self,
        cfg: AccessConfig,
        stream: H2Stream,
        headers: Headers,
        deny: Callable[[H2Stream], None],
        proceed: Callable[[], None],
    ) -> bool:
        """True when the request may go on now; otherwise the checker answers it (403) or
        resumes it (`proceed()`) once the keys are in."""
        token = ""
        for name, value in headers:
            if name == ASSERTION:
                token = value.decode("latin-1").strip()
                break
        if not token:
            self.denied += 1
            deny(stream)
            return False
        team = self.team(cfg)
        verdict = team.check(token, cfg.aud_tag, time.time())
        if verdict == OK:
            return True
        if verdict == DENY:
            self.denied += 1
            deny(stream)
            return False
        held = _Held()
        stream.handler = held

        async def later() -> None:
            await team.refresh()
            if stream.closed:
                return
            if team.check(token, cfg.aud_tag, time.time()) == OK:
                stream.handler = None
                proceed()
                held.replay(stream)
            else:
                self.denied += 1
                stream.handler = None
                deny(stream)

        asyncio.get_running_loop().create_task(later())
        return False
