"""id_token verification of the generic OIDC provider (burrow.access.oidc): every claim that
must be checked is checked, and only asymmetric algorithms with the IdP's keys are accepted."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from burrow.access.oidc import PKCE, OIDCCache, OIDCError, OIDCProvider, _Cached
from burrow.access.transfer import ClientKey, TransferError, seal, transfer_id

ISSUER = "https://idp.example"
JWKS_URI = ISSUER + "/jwks"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
OTHER = RSAKey.generate_key(2048, parameters={"kid": "k1"})


def provider() -> OIDCProvider:
    cache = OIDCCache()
    cache.jwks[JWKS_URI] = _Cached({"keys": [KEY.as_dict(private=False)]}, time.monotonic())
    return OIDCProvider("idp", {"issuer": ISSUER, "client_id": "cid"}, cache)


def token(
    claims: dict[str, Any] | None = None, *, key: Any = KEY, alg: str = "RS256", **drop: Any
) -> str:
    now = int(time.time())
    c = {"iss": ISSUER, "aud": "cid", "sub": "u1", "exp": now + 300, "iat": now, "nonce": "n1"}
    c.update(claims or {})
    for k in drop:
        c.pop(k, None)
    return jwt.encode({"alg": alg, "kid": "k1"}, c, key, algorithms=[alg])


def verify(tok: str, nonce: str = "n1") -> dict[str, Any]:
    return asyncio.run(provider()._verify(None, JWKS_URI, tok, nonce))  # type: ignore[arg-type]


def test_valid_token_is_accepted() -> None:
    assert verify(token({"email": "a@example.com"}))["email"] == "a@example.com"


@pytest.mark.parametrize(
    ("tok", "why"),
    [
        (lambda: token({"iss": "https://evil.example"}), "issuer"),
        (lambda: token({"aud": "other"}), "aud"),
        (lambda: token({"aud": ["cid", "other"]}), "azp"),
        (lambda: token({"exp": int(time.time()) - 3600}), "expired"),
        (lambda: token({"iat": int(time.time()) + 3600}), "future"),
        (lambda: token({"nbf": int(time.time()) + 3600}), "not valid yet"),
        (lambda: token({"nonce": "other"}), "nonce"),
        (lambda: token(nonce=None), "nonce"),
        (lambda: token(key=OTHER), "invalid"),
        (lambda: token(key=OctKey.import_key(b"k" * 32), alg="HS256"), "algorithm"),
    ],
)
def test_bad_tokens_are_refused(tok: Any, why: str) -> None:
    with pytest.raises(OIDCError, match=why):
        verify(tok())


def test_alg_none_and_tampering_are_refused() -> None:
    good = token()
    head, payload, sig = good.split(".")
    import base64
    import json

    none_head = base64.urlsafe_b64encode(json.dumps({"alg": "none"}).encode()).rstrip(b"=").decode()
    with pytest.raises(OIDCError, match="algorithm"):
        verify(f"{none_head}.{payload}.")
    evil = (
        base64.urlsafe_b64encode(
            json.dumps(
                {"iss": ISSUER, "aud": "cid", "sub": "admin", "exp": 2**31, "nonce": "n1"}
            ).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    with pytest.raises(OIDCError, match="invalid"):
        verify(f"{head}.{evil}.{sig}")


def test_pkce_challenge_is_s256_of_the_verifier() -> None:
    import base64
    import hashlib

    p = PKCE.new()
    assert 43 <= len(p.verifier) <= 128
    digest = hashlib.sha256(p.verifier.encode()).digest()
    assert p.challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert p.verifier not in repr(p)


def test_token_transfer_opens_only_with_the_cli_key() -> None:
    cli = ClientKey.generate()
    box = seal(cli.public, b"header.payload.sig")
    assert cli.open(box) == b"header.payload.sig"
    with pytest.raises(TransferError):
        ClientKey.generate().open(box)
    tampered = dict(box, ct=box["ct"][:-2] + ("AA" if box["ct"][-2:] != "AA" else "BB"))
    with pytest.raises(TransferError):
        cli.open(tampered)
    assert len(transfer_id(cli.public)) == 64
