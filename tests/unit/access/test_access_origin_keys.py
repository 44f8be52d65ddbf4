"""The connector's originRequest.access pieces without a network: burrow's `certsUrl` option,
the issuer a team name stands for, and token decisions against a loaded key set."""

from __future__ import annotations

import time

from joserfc.jwk import KeySet, RSAKey

from burrow.access.tokens import KeyRing, SigningKey, issue
from burrow.connector.access_check import DENY, FETCH, OK, TeamKeys, certs_url, team_issuer
from burrow.ingress.config import AccessConfig
from burrow.ingress.rules import Ingress


def test_certs_url_option_and_team_issuer() -> None:
    ing = Ingress.parse(
        [
            {
                "hostname": "a.example.com",
                "service": "http://127.0.0.1:1",
                "originRequest": {
                    "access": {
                        "required": True,
                        "teamName": "auth.example.com",
                        "audTag": ["x"],
                        "certsUrl": "http://127.0.0.1:9/cdn-cgi/access/certs",
                    }
                },
            },
            {"service": "http_status:404"},
        ]
    )
    cfg = ing.rules[0].origin_request.access
    assert cfg.certs_url == "http://127.0.0.1:9/cdn-cgi/access/certs" and cfg.aud_tag == ("x",)
    assert team_issuer("myteam") == "https://myteam.cloudflareaccess.com"
    assert team_issuer("auth.example.com") == "https://auth.example.com"
    assert certs_url(AccessConfig(team_name="myteam")) == (
        "https://myteam.cloudflareaccess.com/cdn-cgi/access/certs"
    )


def _team(ring: KeyRing) -> TeamKeys:
    team = TeamKeys("http://unused", "https://auth.example.com")
    keys = [ring.current.public_jwk()]
    team.keys = KeySet([RSAKey.import_key(k) for k in keys])
    team.kids = frozenset(k["kid"] for k in keys)
    team.fetched_at = time.time()
    return team


def test_token_decisions() -> None:
    ring = KeyRing(SigningKey.generate())
    team = _team(ring)
    now = time.time()
    good = issue(ring, issuer="https://auth.example.com", audience=["aud1"], lifetime=300)
    assert team.check(good, ("aud1",), now) == OK
    assert team.check(good, ("aud1",), now) == OK  # cached
    assert team.check(good, ("aud2",), now) == DENY
    assert team.check(good, ("aud1",), now + 3600) == DENY  # expired
    other_iss = issue(ring, issuer="https://evil.example.com", audience=["aud1"], lifetime=300)
    assert team.check(other_iss, ("aud1",), now) == DENY
    stranger = issue(
        KeyRing(SigningKey.generate()),
        issuer="https://auth.example.com",
        audience=["aud1"],
        lifetime=300,
    )
    # an unknown kid: fetch again (the edge may have rotated), but not more often than allowed
    team.fetched_at = now - 60
    assert team.check(stranger, ("aud1",), now) == FETCH
    team.fetched_at = now
    assert team.check(stranger, ("aud1",), now) == DENY
    assert team.check("not.a.token", ("aud1",), now) == DENY
