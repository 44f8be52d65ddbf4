"""Access tokens: RS256 JWTs with Cloudflare Access's claims, signing keys with rotation, and
the JWKS document published at `/cdn-cgi/access/certs`.

Verification is strict and explicit: only RS256 is accepted (no `none`, no HMAC with a public
key), the key is selected by `kid` among the published keys, and `iss`, `aud`, `exp`, `nbf` and
`type` are all checked. Verified tokens are cached by their raw value until they expire, because
the same cookie arrives with every request of a session.
"""

from __future__ import annotations

import collections
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from joserfc.jwk import RSAKey

# joserfc (with the cryptography bindings it loads) is imported where a key or token is
# handled, not with this module: an edge without Access applications never needs it.

from burrow.errors import BurrowError

ALGORITHM = "RS256"
CACHE_SIZE = 4096


class TokenError(BurrowError):
    """A token was refused; the message says why (never the token itself)."""

    status = 403


@dataclass(frozen=True)
class SigningKey:
    """An RSA key pair with its key id."""

    kid: str
    key: RSAKey = field(repr=False)
    created_at: float = 0.0

    @classmethod
    def generate(cls, bits: int = 2048, *, now: float | None = None) -> SigningKey:
        from joserfc.jwk import RSAKey

        kid = secrets.token_hex(32)
        key = RSAKey.generate_key(bits, parameters={"kid": kid, "alg": ALGORITHM, "use": "sig"})
        return cls(kid, key, time.time() if now is None else now)

    @classmethod
    def from_pem(cls, kid: str, pem: bytes, created_at: float = 0.0) -> SigningKey:
        from joserfc.jwk import RSAKey

        key = RSAKey.import_key(pem, parameters={"kid": kid, "alg": ALGORITHM, "use": "sig"})
        return cls(kid, key, created_at)

    def private_pem(self) -> bytes:
        return self.key.as_pem(private=True)

    def public_jwk(self) -> dict[str, Any]:
        return {**self.key.as_dict(private=False), "kid": self.kid, "alg": ALGORITHM, "use": "sig"}


class KeyRing:
    """The current signing key plus the previous one, still accepted while tokens signed with
    it can be alive (rotation without logging everyone out)."""

    def __init__(self, current: SigningKey, previous: SigningKey | None = None) -> None:
        from joserfc.jwk import KeySet, RSAKey

        self.current = current
        self.previous = previous
        keys = [current] + ([previous] if previous is not None else [])
        self._by_kid = {k.kid: k for k in keys}
        self._public = KeySet([RSAKey.import_key(k.public_jwk()) for k in keys])

    def rotated(self, new: SigningKey | None = None) -> KeyRing:
        return KeyRing(new or SigningKey.generate(), self.current)

    def public_key(self, kid: str) -> RSAKey | None:
        from joserfc.jwk import RSAKey

        key = self._by_kid.get(kid)
        return RSAKey.import_key(key.public_jwk()) if key is not None else None

    def jwks(self) -> dict[str, Any]:
        """The document at /cdn-cgi/access/certs (Cloudflare adds PEM forms of the keys)."""
        keys = [self.current] + ([self.previous] if self.previous is not None else [])
        certs = [{"kid": k.kid, "cert": k.key.as_pem(private=False).decode()} for k in keys]
        return {
            "keys": [k.public_jwk() for k in keys],
            "public_cert": certs[0],
            "public_certs": certs,
        }


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified claims burrow uses."""

    aud: tuple[str, ...]
    email: str
    sub: str
    type: str
    exp: int
    iat: int
    identity_nonce: str
    common_name: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict)


def issue(
    ring: KeyRing,
    *,
    issuer: str,
    audience: Sequence[str],
    email: str = "",
    subject: str = "",
    token_type: str = "app",
    lifetime: float,
    identity_nonce: str = "",
    common_name: str = "",
    extra: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """Sign a token. `token_type` is "app" (one application) or "org" (the team domain)."""
    t = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "aud": list(audience),
        "email": email,
        "exp": t + int(lifetime),
        "iat": t,
        "nbf": t,
        "iss": issuer,
        "type": token_type,
        "identity_nonce": identity_nonce or uuid.uuid4().hex,
        "sub": subject,
    }
    if common_name:
        claims["common_name"] = common_name
        claims["sub"] = ""
    if extra:
        claims.update({k: v for k, v in extra.items() if k not in claims})
    header = {"alg": ALGORITHM, "kid": ring.current.kid, "typ": "JWT"}
    from joserfc import jwt

    return jwt.encode(header, claims, ring.current.key, algorithms=[ALGORITHM])


class Verifier:
    """Checks tokens for one issuer; caches successes until they expire."""

    def __init__(self, ring: KeyRing, issuer: str, *, leeway: float = 30.0) -> None:
        self.ring = ring
        self.issuer = issuer
        self.leeway = leeway
        self._cache: collections.OrderedDict[str, Claims] = collections.OrderedDict()

    def replace_keys(self, ring: KeyRing) -> None:
        self.ring = ring
        self._cache.clear()

    def verify(
        self,
        token: str,
        *,
        audience: str | Iterable[str],
        token_type: str = "app",
        now: float | None = None,
    ) -> Claims:
        """The claims of a valid token for `audience` (an AUD tag, or any of several)."""
        t = time.time() if now is None else now
        claims = self._cache.get(token)
        if claims is None:
            claims = self._decode(token, t)
            self._cache[token] = claims
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        if claims.exp + self.leeway < t:
            self._cache.pop(token, None)
            raise TokenError("token expired")
        wanted = {audience} if isinstance(audience, str) else set(audience)
        if not wanted.intersection(claims.aud):
            raise TokenError("token is not for this application (aud)")
        if claims.type != token_type:
            raise TokenError(f"token type {claims.type!r} is not accepted here")
        return claims

    def _decode(self, token: str, now: float) -> Claims:
        from joserfc import jws, jwt
        from joserfc.errors import JoseError

        if not isinstance(token, str) or token.count(".") != 2 or len(token) > 16384:
            raise TokenError("malformed token")
        try:
            header = jws.extract_compact(token.encode()).protected
        except (JoseError, ValueError):
            raise TokenError("malformed token") from None
        kid = str(header.get("kid", ""))
        if header.get("alg") != ALGORITHM:
            raise TokenError("token algorithm is not RS256")
        key = self.ring.public_key(kid)
        if key is None:
            raise TokenError("token signed with an unknown key")
        try:
            decoded = jwt.decode(token, key, algorithms=[ALGORITHM])
        except (JoseError, ValueError) as exc:
            raise TokenError(f"invalid token: {type(exc).__name__}") from None
        c = decoded.claims
        try:
            aud = c.get("aud", [])
            claims = Claims(
                aud=tuple([aud] if isinstance(aud, str) else [str(a) for a in aud]),
                email=str(c.get("email", "")),
                sub=str(c.get("sub", "")),
                type=str(c.get("type", "")),
                exp=int(c["exp"]),
                iat=int(c.get("iat", 0)),
                identity_nonce=str(c.get("identity_nonce", "")),
                common_name=str(c.get("common_name", "")),
                raw=dict(c),
            )
            nbf = int(c.get("nbf", claims.iat))
        except (KeyError, TypeError, ValueError):
            raise TokenError("token claims are malformed") from None
        if c.get("iss") != self.issuer:
            raise TokenError("token issuer does not match this team domain")
        if nbf - self.leeway > now:
            raise TokenError("token not valid yet")
        if claims.exp + self.leeway < now:
            raise TokenError("token expired")
        return claims
