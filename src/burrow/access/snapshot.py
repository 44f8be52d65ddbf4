"""The edge's in-memory view of Access: applications with their compiled policies, service
tokens, signing keys and revocations, built from the store once per store generation and then
read per request without touching the store.

Also the pure per-request checks that need nothing but the snapshot: service-token headers,
revocation of a verified token, and turning token claims back into an `Identity`.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from burrow.access.apps import AppIndex, Application
from burrow.access.policy import Action, Identity, Policy, Selector
from burrow.access.tokens import Claims, KeyRing, SigningKey, Verifier
from burrow.store.access_store import (
    AppRecord,
    IdpRecord,
    KeyRecord,
    PolicyRecord,
    RevocationRecord,
    ServiceTokenRecord,
    hash_service_secret,
)


@dataclass(frozen=True, slots=True)
class ServiceTokenEntry:
    id: str
    name: str
    client_id: str
    secret_hash: str = field(repr=False)
    expires_at: float | None


@dataclass
class AccessSnapshot:
    apps: AppIndex
    by_aud: dict[str, Application]
    ring: KeyRing | None
    verifier: Verifier | None
    issuer: str
    team_aud: str
    service_tokens: dict[str, ServiceTokenEntry]  # by client id
    token_ids: dict[str, ServiceTokenEntry]  # by id
    idps: dict[str, IdpRecord]
    revoked_sessions: frozenset[str] = frozenset()
    revoked_users: dict[str, float] = field(default_factory=dict)  # email -> revoked at
    revoked_apps: dict[str, float] = field(default_factory=dict)  # aud -> revoked at
    warnings: tuple[str, ...] = ()

    @classmethod
    def empty(cls, issuer: str = "") -> AccessSnapshot:
        return cls(AppIndex(()), {}, None, None, issuer, "", {}, {}, {})

    # -- per-request checks --------------------------------------------------------------

    def service_token(self, client_id: str, secret: str, now: float) -> ServiceTokenEntry | None:
        """The token these headers prove, or None (unknown, wrong secret or expired)."""
        entry = self.service_tokens.get(client_id.strip())
        if entry is None:
            return None
        if not hmac.compare_digest(hash_service_secret(secret.strip()), entry.secret_hash):
            return None
        if entry.expires_at is not None and entry.expires_at <= now:
            return None
        return entry

    def revoked(self, claims: Claims) -> bool:
        if claims.identity_nonce in self.revoked_sessions:
            return True
        at = self.revoked_users.get(claims.email.lower()) if claims.email else None
        if at is not None and claims.iat <= at:
            return True
        for aud in claims.aud:
            at = self.revoked_apps.get(aud)
            if at is not None and claims.iat <= at:
                return True
        return False

    def identity(self, claims: Claims, now: float) -> Identity | None:
        """The identity a verified token carries; None for a service token that was deleted or
        has expired since the token was issued."""
        if claims.common_name:
            entry = self.service_tokens.get(claims.common_name)
            if entry is None or (entry.expires_at is not None and entry.expires_at <= now):
                return None
            return Identity(service_token_id=entry.id)
        raw = claims.raw
        idp = raw.get("idp")
        custom = raw.get("custom")
        return Identity(
            email=claims.email.lower(),
            groups=tuple(str(g) for g in raw.get("groups", ()) or ()),
            idp=str(idp.get("id", "")) if isinstance(idp, dict) else "",
            amr=tuple(str(a) for a in raw.get("amr", ()) or ()),
            claims=custom if isinstance(custom, dict) else {},
        )


def compile_snapshot(
    *,
    issuer: str,
    team_aud: str,
    apps: Iterable[AppRecord],
    policies: Iterable[PolicyRecord],
    tokens: Iterable[ServiceTokenRecord],
    idps: Iterable[IdpRecord],
    keys: list[KeyRecord],
    revocations: Iterable[RevocationRecord],
    previous: AccessSnapshot | None = None,
) -> AccessSnapshot:
    """Compile store records. Keys are reused from `previous` when unchanged (parsing PEM and
    building a verifier costs milliseconds and empties the verified-token cache)."""
    token_list = list(tokens)
    entries = {
        t.client_id: ServiceTokenEntry(
            t.id,
            t.name,
            t.client_id,
            t.secret_hash,
            t.expires_at.timestamp() if t.expires_at else None,
        )
        for t in token_list
    }
    token_ref = {}
    for t in token_list:
        token_ref.update({t.id: t.id, t.client_id: t.id, t.name: t.id})
    by_app: dict[str, list[PolicyRecord]] = {}
    for p in policies:
        by_app.setdefault(p.app_id, []).append(p)
    warnings: list[str] = []
    compiled: list[Application] = []
    for a in apps:
        pols = []
        for p in sorted(by_app.get(a.id, []), key=lambda r: r.precedence):

            def sel(spec: tuple[str, str, str]) -> Selector:
                kind, value, claim = spec
                if kind == "service_token":
                    value = token_ref.get(value, value)
                return Selector.parse(kind, value, claim)

            policy = Policy(
                name=p.name,
                action=Action(p.action),
                include=tuple(sel(s) for s in p.include),
                require=tuple(sel(s) for s in p.require),
                exclude=tuple(sel(s) for s in p.exclude),
                id=p.id,
            )
            if policy.lets_anyone_in:
                warnings.append(f"policy {p.name!r} of app {a.name!r} lets anyone in")
            pols.append(policy)
        compiled.append(
            Application(
                id=a.id,
                name=a.name,
                domain=a.domain,
                aud=a.aud,
                policies=tuple(pols),
                session_duration=a.session_duration,
                allowed_idps=a.allowed_idps,
                cors=a.cors,
            )
        )
    ring: KeyRing | None = None
    verifier: Verifier | None = None
    if keys:
        kids = [k.kid for k in keys]
        if previous is not None and previous.ring is not None and previous.verifier is not None:
            old = [previous.ring.current.kid] + (
                [previous.ring.previous.kid] if previous.ring.previous else []
            )
            if old == kids and previous.issuer == issuer:
                ring, verifier = previous.ring, previous.verifier
        if ring is None:
            current = SigningKey.from_pem(
                keys[0].kid, keys[0].private_pem, keys[0].created_at.timestamp()
            )
            prev = (
                SigningKey.from_pem(
                    keys[1].kid, keys[1].private_pem, keys[1].created_at.timestamp()
                )
                if len(keys) > 1
                else None
            )
            ring = KeyRing(current, prev)
            verifier = Verifier(ring, issuer)
    sessions: set[str] = set()
    users: dict[str, float] = {}
    revoked_apps: dict[str, float] = {}
    now = time.time()
    for r in revocations:
        if r.expires_at.timestamp() < now:
            continue
        at = r.created_at.timestamp()
        if r.kind == "session":
            sessions.add(r.value)
        elif r.kind == "user":
            users[r.value.lower()] = max(at, users.get(r.value.lower(), 0.0))
        elif r.kind == "app":
            revoked_apps[r.value] = max(at, revoked_apps.get(r.value, 0.0))
    return AccessSnapshot(
        apps=AppIndex(compiled),
        by_aud={a.aud: a for a in compiled},
        ring=ring,
        verifier=verifier,
        issuer=issuer,
        team_aud=team_aud,
        service_tokens=entries,
        token_ids={e.id: e for e in entries.values()},
        idps={i.id: i for i in idps},
        revoked_sessions=frozenset(sessions),
        revoked_users=users,
        revoked_apps=revoked_apps,
        warnings=tuple(warnings),
    )


def identity_claims(identity: Identity) -> dict[str, Any]:
    """The custom claims that carry an identity inside burrow's tokens (read back by
    `AccessSnapshot.identity`), so the data path decides without a session lookup."""
    out: dict[str, Any] = {"idp": {"id": identity.idp}, "amr": list(identity.amr)}
    if identity.groups:
        out["groups"] = list(identity.groups)
    if identity.claims:
        out["custom"] = dict(identity.claims)
    return out
