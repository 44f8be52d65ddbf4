"""Access records in the state store: applications, policies, service tokens, identity
providers, signing keys, revocations and short-lived login state (migration 0005).

Operates on the same engine and transactions as :class:`SQLStore`. Writes that change what the
edge enforces (apps, policies, tokens, IdPs, keys, revocations) bump the store's generation, so
every edge node polling ``change_counter()`` recompiles its access snapshot within a poll
interval: that is how a deleted service token or a logout takes effect "within seconds".
Login state (one-time PIN attempts, OIDC state, authorisation codes) does not bump it: the
data path never reads it.

Secrets at rest: service-token secrets are stored as SHA-256 hashes (32 CSPRNG bytes, as tunnel
secrets); signing-key private keys, the OIDC client secret and the SMTP password are sealed with
AES-256-GCM under the edge's ``seal.key`` (state directory, 0600, not in the database).
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from burrow.errors import ConfigError, Conflict, NotFound
from burrow.store.records import from_row, utc
from burrow.store.sealing import SecretBox
from burrow.store.secrets import hash_secret
from burrow.store.sqlalchemy_store import SQLStore

__all__ = [
    "AccessStore",
    "AppRecord",
    "IdpRecord",
    "KeyRecord",
    "PendingRecord",
    "PolicyRecord",
    "RevocationRecord",
    "ServiceTokenRecord",
]

metadata = sa.MetaData()
apps_t = sa.Table(
    "access_apps",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("domain", sa.String(512), nullable=False),
    sa.Column("aud", sa.String(64), nullable=False),
    sa.Column("session_duration", sa.Float, nullable=False),
    sa.Column("allowed_idps", sa.Text, nullable=False),
    sa.Column("cors", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
policies_t = sa.Table(
    "access_policies",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("app_id", sa.String(32), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("precedence", sa.Integer, nullable=False),
    sa.Column("include", sa.Text, nullable=False),
    sa.Column("require", sa.Text, nullable=False),
    sa.Column("exclude", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
service_tokens_t = sa.Table(
    "access_service_tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("secret_hash", sa.String(128), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
)
idps_t = sa.Table(
    "access_idps",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
keys_t = sa.Table(
    "access_keys",
    metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("seal_id", sa.Uuid, nullable=False),
    sa.Column("private_sealed", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
)
revocations_t = sa.Table(
    "access_revocations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("value", sa.String(255), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)
pending_t = sa.Table(
    "access_pending",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

ACTIONS = ("allow", "block", "bypass", "non_identity")
IDP_TYPES = ("oidc", "onetimepin")
SECRET_CONFIG_KEYS = ("client_secret", "smtp_password")  # sealed at rest
REVOCATION_KINDS = ("session", "user", "app")


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


# -- records --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppRecord:
    id: str
    name: str
    domain: str
    aud: str
    session_duration: float
    allowed_idps: tuple[str, ...]
    cors: dict[str, Any]
    created_at: datetime


SelectorSpec = tuple[str, str, str]  # (kind, value, claim)


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    id: str
    app_id: str
    name: str
    action: str
    precedence: int
    include: tuple[SelectorSpec, ...]
    require: tuple[SelectorSpec, ...]
    exclude: tuple[SelectorSpec, ...]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ServiceTokenRecord:
    id: str
    name: str
    client_id: str
    secret_hash: str = field(repr=False)
    created_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class IdpRecord:
    id: str
    name: str
    type: str
    config: dict[str, Any] = field(repr=False)  # secrets unsealed (edge memory only)
    created_at: datetime

    def public(self) -> dict[str, Any]:
        """The settings without secrets (API answers, CLI output)."""
        cfg = {k: ("<set>" if k in SECRET_CONFIG_KEYS and v else v) for k, v in self.config.items()}
        return {"id": self.id, "name": self.name, "type": self.type, "config": cfg}


@dataclass(frozen=True, slots=True)
class KeyRecord:
    kid: str
    private_pem: bytes = field(repr=False)
    created_at: datetime
    retired_at: datetime | None


@dataclass(frozen=True, slots=True)
class RevocationRecord:
    kind: str
    value: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class PendingRecord:
    id: str
    kind: str
    data: dict[str, Any] = field(repr=False)
    attempts: int
    expires_at: datetime


def _specs(text: str) -> tuple[SelectorSpec, ...]:
    return tuple((str(k), str(v), str(c)) for k, v, c in json.loads(text))


def _app(row: Any) -> AppRecord:
    return from_row(
        AppRecord,
        row,
        session_duration=float(row.session_duration),
        allowed_idps=tuple(json.loads(row.allowed_idps)),
        cors=json.loads(row.cors),
    )


def _policy(row: Any) -> PolicyRecord:
    return from_row(
        PolicyRecord,
        row,
        precedence=int(row.precedence),
        include=_specs(row.include),
        require=_specs(row.require),
        exclude=_specs(row.exclude),
    )


def _service_token(row: Any) -> ServiceTokenRecord:
    return from_row(ServiceTokenRecord, row)


def new_service_token_secret() -> tuple[str, str]:
    """``(client_id, client_secret)``: Cloudflare's shapes (``<32 hex>.access``, 64 hex)."""
    return secrets.token_hex(16) + ".access", secrets.token_hex(32)


def hash_service_secret(secret: str) -> str:
    return hash_secret(secret.encode())


class AccessStore:
    """Access records on an open :class:`SQLStore` (same engine, same generation counter)."""

    def __init__(self, store: SQLStore, box: SecretBox) -> None:
        self.store = store
        self.box = box

    def __repr__(self) -> str:
        return f"AccessStore({self.store.url})"

    # -- applications ---------------------------------------------------------------------

    async def create_app(
        self,
        name: str,
        domain: str,
        *,
        session_duration: float = 24 * 3600.0,
        allowed_idps: Sequence[str] = (),
        cors: dict[str, Any] | None = None,
    ) -> AppRecord:
        domain = normalize_app_domain(domain)
        if session_duration <= 0:
            raise ConfigError("session duration must be positive", status=400)
        rec = AppRecord(
            id=uuid.uuid4().hex,
            name=name,
            domain=domain,
            aud=secrets.token_hex(32),
            session_duration=float(session_duration),
            allowed_idps=tuple(allowed_idps),
            cors=dict(cors or {}),
            created_at=datetime.now(UTC),
        )
        async with self.store._tx(write=True) as conn:
            existing = await conn.execute(sa.select(apps_t.c.id).where(apps_t.c.domain == domain))
            if existing.first() is not None:
                raise Conflict(f"an access application already protects {domain}")
            await conn.execute(
                apps_t.insert().values(
                    id=rec.id,
                    name=rec.name,
                    domain=rec.domain,
                    aud=rec.aud,
                    session_duration=rec.session_duration,
                    allowed_idps=json.dumps(list(rec.allowed_idps)),
                    cors=json.dumps(rec.cors),
                    created_at=rec.created_at,
                )
            )
        return rec

    async def list_apps(self) -> list[AppRecord]:
        async with self.store._tx(write=False) as conn:
            rows = await conn.execute(sa.select(apps_t).order_by(apps_t.c.created_at))
            return [_app(r) for r in rows]

    async def find_app(self, ref: str) -> AppRecord:
        """By id, AUD, name or domain."""
        for app in await self.list_apps():
            if ref in (app.id, app.aud, app.name, app.domain):
                return app
        raise NotFound(f"no access application {ref!r}")

    async def delete_app(self, app_id: str) -> None:
        async with self.store._tx(write=True) as conn:
            await conn.execute(policies_t.delete().where(policies_t.c.app_id == app_id))
            result = await conn.execute(apps_t.delete().where(apps_t.c.id == app_id))
            if result.rowcount == 0:
                raise NotFound(f"no access application {app_id!r}")

    # -- policies -------------------------------------------------------------------------

    async def create_policy(
        self,
        app_id: str,
        name: str,
        action: str,
        include: Sequence[SelectorSpec],
        require: Sequence[SelectorSpec] = (),
        exclude: Sequence[SelectorSpec] = (),
        *,
        precedence: int | None = None,
    ) -> PolicyRecord:
        if action not in ACTIONS:
            raise ConfigError(f"policy action must be one of {', '.join(ACTIONS)}", status=400)
        if not include:
            raise ConfigError("a policy needs at least one include rule", status=400)
        from burrow.access.policy import Selector  # validation only

        for kind, value, claim in (*include, *require, *exclude):
            try:
                Selector.parse(kind, value, claim)
            except ValueError as exc:
                raise ConfigError(str(exc), status=400) from None
        async with self.store._tx(write=True) as conn:
            app = (await conn.execute(sa.select(apps_t.c.id).where(apps_t.c.id == app_id))).first()
            if app is None:
                raise NotFound(f"no access application {app_id!r}")
            if precedence is None:
                top = await conn.execute(
                    sa.select(sa.func.max(policies_t.c.precedence)).where(
                        policies_t.c.app_id == app_id
                    )
                )
                precedence = int(top.scalar() or 0) + 1
            rec = PolicyRecord(
                id=uuid.uuid4().hex,
                app_id=app_id,
                name=name,
                action=action,
                precedence=precedence,
                include=tuple(include),
                require=tuple(require),
                exclude=tuple(exclude),
                created_at=datetime.now(UTC),
            )
            await conn.execute(
                policies_t.insert().values(
                    id=rec.id,
                    app_id=app_id,
                    name=name,
                    action=action,
                    precedence=precedence,
                    include=json.dumps([list(s) for s in rec.include]),
                    require=json.dumps([list(s) for s in rec.require]),
                    exclude=json.dumps([list(s) for s in rec.exclude]),
                    created_at=rec.created_at,
                )
            )
        return rec

    async def list_policies(self, app_id: str | None = None) -> list[PolicyRecord]:
        q = sa.select(policies_t).order_by(policies_t.c.precedence, policies_t.c.created_at)
        if app_id is not None:
            q = q.where(policies_t.c.app_id == app_id)
        async with self.store._tx(write=False) as conn:
            return [_policy(r) for r in await conn.execute(q)]

    async def delete_policy(self, policy_id: str) -> None:
        async with self.store._tx(write=True) as conn:
            result = await conn.execute(policies_t.delete().where(policies_t.c.id == policy_id))
            if result.rowcount == 0:
                raise NotFound(f"no access policy {policy_id!r}")

    # -- service tokens -------------------------------------------------------------------

    async def create_service_token(
        self, name: str, *, duration: float | None = None, now: float | None = None
    ) -> tuple[ServiceTokenRecord, str]:
        """A new token and its secret (shown once; only its hash is stored)."""
        client_id, secret = new_service_token_secret()
        created = datetime.now(UTC) if now is None else _ts(now)
        rec = ServiceTokenRecord(
            id=uuid.uuid4().hex,
            name=name,
            client_id=client_id,
            secret_hash=hash_service_secret(secret),
            created_at=created,
            expires_at=created + timedelta(seconds=duration) if duration else None,
        )
        async with self.store._tx(write=True) as conn:
            await conn.execute(
                service_tokens_t.insert().values(
                    id=rec.id,
                    name=name,
                    client_id=client_id,
                    secret_hash=rec.secret_hash,
                    created_at=rec.created_at,
                    expires_at=rec.expires_at,
                )
            )
        return rec, secret

    async def list_service_tokens(self) -> list[ServiceTokenRecord]:
        async with self.store._tx(write=False) as conn:
            rows = await conn.execute(
                sa.select(service_tokens_t).order_by(service_tokens_t.c.created_at)
            )
            return [_service_token(r) for r in rows]

    async def find_service_token(self, ref: str) -> ServiceTokenRecord:
        for tok in await self.list_service_tokens():
            if ref in (tok.id, tok.name, tok.client_id):
                return tok
        raise NotFound(f"no service token {ref!r}")

    async def delete_service_token(self, token_id: str) -> None:
        async with self.store._tx(write=True) as conn:
            result = await conn.execute(
                service_tokens_t.delete().where(service_tokens_t.c.id == token_id)
            )
            if result.rowcount == 0:
                raise NotFound(f"no service token {token_id!r}")

    # -- identity providers ---------------------------------------------------------------

    def _seal_config(self, idp_id: str, config: dict[str, Any]) -> str:
        out = dict(config)
        for key in SECRET_CONFIG_KEYS:
            if out.get(key):
                out[key] = self.box.seal(uuid.UUID(idp_id), str(out[key]).encode())
        return json.dumps(out)

    def _open_config(self, idp_id: str, text: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(text)
        for key in SECRET_CONFIG_KEYS:
            if out.get(key):
                out[key] = self.box.open(uuid.UUID(idp_id), out[key]).decode()
        return out

    async def create_idp(self, name: str, type_: str, config: dict[str, Any]) -> IdpRecord:
        if type_ not in IDP_TYPES:
            raise ConfigError(
                f"identity provider type must be one of {', '.join(IDP_TYPES)}", status=400
            )
        if type_ == "oidc":
            missing = [k for k in ("issuer", "client_id") if not config.get(k)]
            if missing:
                raise ConfigError(f"an OIDC provider needs {', '.join(missing)}", status=400)
        rec = IdpRecord(uuid.uuid4().hex, name, type_, dict(config), datetime.now(UTC))
        async with self.store._tx(write=True) as conn:
            await conn.execute(
                idps_t.insert().values(
                    id=rec.id,
                    name=name,
                    type=type_,
                    config=self._seal_config(rec.id, rec.config),
                    created_at=rec.created_at,
                )
            )
        return rec

    async def list_idps(self) -> list[IdpRecord]:
        async with self.store._tx(write=False) as conn:
            rows = await conn.execute(sa.select(idps_t).order_by(idps_t.c.created_at))
            return [
                IdpRecord(
                    r.id, r.name, r.type, self._open_config(r.id, r.config), utc(r.created_at)
                )
                for r in rows
            ]

    async def find_idp(self, ref: str) -> IdpRecord:
        for idp in await self.list_idps():
            if ref in (idp.id, idp.name):
                return idp
        raise NotFound(f"no identity provider {ref!r}")

    async def delete_idp(self, idp_id: str) -> None:
        async with self.store._tx(write=True) as conn:
            result = await conn.execute(idps_t.delete().where(idps_t.c.id == idp_id))
            if result.rowcount == 0:
                raise NotFound(f"no identity provider {idp_id!r}")

    # -- signing keys -----------------------------------------------------------------------

    async def add_key(self, kid: str, private_pem: bytes, *, now: float | None = None) -> None:
        """Store a new current key; the previous current key stays published (rotation), any
        older one is retired."""
        seal_id = uuid.uuid4()
        created = datetime.now(UTC) if now is None else _ts(now)
        async with self.store._tx(write=True) as conn:
            live = await conn.execute(
                sa.select(keys_t.c.kid)
                .where(keys_t.c.retired_at.is_(None))
                .order_by(keys_t.c.created_at.desc())
            )
            older = [r.kid for r in live][1:]
            if older:
                await conn.execute(
                    keys_t.update().where(keys_t.c.kid.in_(older)).values(retired_at=created)
                )
            await conn.execute(
                keys_t.insert().values(
                    kid=kid,
                    seal_id=seal_id,
                    private_sealed=self.box.seal(seal_id, base64.b64encode(private_pem)),
                    created_at=created,
                    retired_at=None,
                )
            )

    async def live_keys(self) -> list[KeyRecord]:
        """Current key first, then the previous one."""
        async with self.store._tx(write=False) as conn:
            rows = await conn.execute(
                sa.select(keys_t)
                .where(keys_t.c.retired_at.is_(None))
                .order_by(keys_t.c.created_at.desc())
                .limit(2)
            )
            return [
                KeyRecord(
                    r.kid,
                    base64.b64decode(self.box.open(r.seal_id, r.private_sealed)),
                    utc(r.created_at),
                    None,
                )
                for r in rows
            ]

    # -- revocations ----------------------------------------------------------------------

    async def revoke(self, kind: str, value: str, *, ttl: float, now: float | None = None) -> None:
        """Refuse tokens of a session (identity nonce), a user (email) or an app (AUD) issued
        before now. Kept for `ttl` seconds: the longest a token it refuses can live."""
        if kind not in REVOCATION_KINDS:
            raise ConfigError(f"revocation kind must be one of {', '.join(REVOCATION_KINDS)}")
        created = datetime.now(UTC) if now is None else _ts(now)
        async with self.store._tx(write=True) as conn:
            await conn.execute(revocations_t.delete().where(revocations_t.c.expires_at < created))
            await conn.execute(
                revocations_t.insert().values(
                    kind=kind,
                    value=value[:255],
                    created_at=created,
                    expires_at=created + timedelta(seconds=ttl),
                )
            )

    async def list_revocations(self) -> list[RevocationRecord]:
        async with self.store._tx(write=False) as conn:
            rows = await conn.execute(sa.select(revocations_t))
            return [
                RevocationRecord(r.kind, r.value, utc(r.created_at), utc(r.expires_at))
                for r in rows
            ]

    # -- short-lived login state (no generation bump) ---------------------------------------

    async def put_pending(
        self, kind: str, data: dict[str, Any], *, ttl: float, now: float, pending_id: str = ""
    ) -> str:
        pending_id = pending_id or secrets.token_urlsafe(32)
        async with self.store._tx(write=True, bump=False) as conn:
            await conn.execute(pending_t.delete().where(pending_t.c.expires_at < _ts(now)))
            await conn.execute(
                pending_t.insert().values(
                    id=pending_id,
                    kind=kind,
                    data=json.dumps(data),
                    attempts=0,
                    expires_at=_ts(now + ttl),
                )
            )
        return pending_id

    async def get_pending(self, kind: str, pending_id: str, *, now: float) -> PendingRecord | None:
        """The live record, or None when unknown, of another kind or expired."""
        async with self.store._tx(write=False) as conn:
            row = (
                await conn.execute(sa.select(pending_t).where(pending_t.c.id == pending_id[:64]))
            ).first()
        if row is None or row.kind != kind or utc(row.expires_at) <= _ts(now):
            return None
        return PendingRecord(
            row.id, row.kind, json.loads(row.data), int(row.attempts), utc(row.expires_at)
        )

    async def take_pending(self, kind: str, pending_id: str, *, now: float) -> PendingRecord | None:
        """Get and delete in one transaction: a one-time value can be redeemed once."""
        async with self.store._tx(write=True, bump=False) as conn:
            row = (
                await conn.execute(sa.select(pending_t).where(pending_t.c.id == pending_id[:64]))
            ).first()
            if row is None or row.kind != kind:
                return None
            await conn.execute(pending_t.delete().where(pending_t.c.id == row.id))
        if utc(row.expires_at) <= _ts(now):
            return None
        return PendingRecord(
            row.id, row.kind, json.loads(row.data), int(row.attempts), utc(row.expires_at)
        )

    async def count_attempt(self, pending_id: str) -> int:
        """Add one failed attempt; the new count."""
        async with self.store._tx(write=True, bump=False) as conn:
            await conn.execute(
                pending_t.update()
                .where(pending_t.c.id == pending_id)
                .values(attempts=pending_t.c.attempts + 1)
            )
            row = (
                await conn.execute(
                    sa.select(pending_t.c.attempts).where(pending_t.c.id == pending_id)
                )
            ).first()
        return int(row.attempts) if row is not None else 1 << 30

    async def delete_pending(self, pending_id: str) -> None:
        async with self.store._tx(write=True, bump=False) as conn:
            await conn.execute(pending_t.delete().where(pending_t.c.id == pending_id))


def normalize_app_domain(domain: str) -> str:
    """``host[/path]`` with the host in canonical form (wildcards allowed) and the path
    normalised; refuses schemes, ports and queries so what is stored is what is matched."""
    from burrow.access.apps import normalize_path
    from burrow.errors import HTTPRequestError
    from burrow.store.records import normalize_hostname

    text = domain.strip()
    if "://" in text or "?" in text or "#" in text:
        raise ConfigError(
            f"application domain {domain!r}: give host[/path], no scheme or query", status=400
        )
    host, sep, path = text.partition("/")
    if ":" in host:
        raise ConfigError(f"application domain {domain!r}: no port", status=400)
    host = normalize_hostname(host)
    if not sep:
        return host
    star = path.endswith("*")
    try:
        norm = normalize_path("/" + (path[:-1] if star else path))
    except HTTPRequestError as exc:
        raise ConfigError(f"application path {path!r}: {exc}", status=400) from None
    norm = norm.rstrip("/").lower()  # app paths match case-insensitively (docs/access.md)
    return host + (norm or "") + ("/*" if star else "")
