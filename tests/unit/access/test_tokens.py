"""Access token verification: every refusal case of ACCESS.md."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from burrow.access.tokens import KeyRing, SigningKey, TokenError, Verifier, issue

ISS = "https://team.example.com"
AUD_A = "a" * 64
AUD_B = "b" * 64


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing(SigningKey.generate())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(ring: KeyRing, **kw) -> str:
    args = {"issuer": ISS, "audience": [AUD_A], "email": "alice@example.com", "lifetime": 3600}
    args.update(kw)
    return issue(ring, **args)


def test_valid_app_token(ring: KeyRing) -> None:
    claims = Verifier(ring, ISS).verify(_token(ring), audience=AUD_A)
    assert claims.email == "alice@example.com" and claims.type == "app" and AUD_A in claims.aud


def test_alg_none_refused(ring: KeyRing) -> None:
    good = _token(ring)
    _, payload, _ = good.split(".")
    forged = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": ring.current.kid}).encode())
    with pytest.raises(TokenError, match="RS256"):
        Verifier(ring, ISS).verify(f"{forged}.{payload}.", audience=AUD_A)


def test_hs256_signed_with_public_key_refused(ring: KeyRing) -> None:
    good = _token(ring)
    _, payload, _ = good.split(".")
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": ring.current.kid}).encode())
    pub = ring.current.key.as_pem(private=False)
    sig = _b64(hmac.new(pub, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    with pytest.raises(TokenError, match="RS256"):
        Verifier(ring, ISS).verify(f"{header}.{payload}.{sig}", audience=AUD_A)


def test_unknown_kid_refused(ring: KeyRing) -> None:
    other = KeyRing(SigningKey.generate())
    with pytest.raises(TokenError, match="unknown key"):
        Verifier(ring, ISS).verify(_token(other), audience=AUD_A)


def test_expired_and_not_yet_valid(ring: KeyRing) -> None:
    v = Verifier(ring, ISS, leeway=0)
    with pytest.raises(TokenError, match="expired"):
        v.verify(_token(ring, now=1_000_000, lifetime=60), audience=AUD_A)
    import time

    with pytest.raises(TokenError, match="not valid yet"):
        v.verify(_token(ring, now=time.time() + 3600), audience=AUD_A)


def test_wrong_aud_wrong_iss_org_as_app_other_app(ring: KeyRing) -> None:
    v = Verifier(ring, ISS)
    with pytest.raises(TokenError, match="aud"):
        v.verify(_token(ring), audience=AUD_B)  # a token for app A used on app B
    with pytest.raises(TokenError, match="issuer"):
        v.verify(_token(ring, issuer="https://evil.example.com"), audience=AUD_A)
    with pytest.raises(TokenError, match="type"):
        v.verify(_token(ring, token_type="org"), audience=AUD_A)


def test_tampered_payload_refused(ring: KeyRing) -> None:
    header, payload, sig = _token(ring).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["email"] = "mallory@example.com"
    forged = _b64(json.dumps(claims).encode())
    with pytest.raises(TokenError, match="invalid token"):
        Verifier(ring, ISS).verify(f"{header}.{forged}.{sig}", audience=AUD_A)


@pytest.mark.parametrize("junk", ["", "abc", "a.b", "a.b.c.d", "x" * 20000, "....."])
def test_malformed_refused(ring: KeyRing, junk: str) -> None:
    with pytest.raises(TokenError):
        Verifier(ring, ISS).verify(junk, audience=AUD_A)


def test_rotation_keeps_previous_key_valid_then_drops_it(ring: KeyRing) -> None:
    old = _token(ring)
    rotated = ring.rotated()
    assert Verifier(rotated, ISS).verify(old, audience=AUD_A).email == "alice@example.com"
    twice = rotated.rotated()
    with pytest.raises(TokenError, match="unknown key"):
        Verifier(twice, ISS).verify(old, audience=AUD_A)
    jwks = rotated.jwks()
    assert {k["kid"] for k in jwks["keys"]} == {rotated.current.kid, ring.current.kid}
    assert all("d" not in k for k in jwks["keys"])  # no private parts published


def test_service_token_claims(ring: KeyRing) -> None:
    tok = _token(ring, email="", common_name="client-id.access", subject="x")
    claims = Verifier(ring, ISS).verify(tok, audience=AUD_A)
    assert claims.common_name == "client-id.access" and claims.sub == ""
