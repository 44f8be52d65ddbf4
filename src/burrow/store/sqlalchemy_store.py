"""The state store on SQLAlchemy 2 Core (async, through `aio_engine`): SQLite via aiosqlite by
default, PostgreSQL via asyncpg for multi-node edges. The schema is created and upgraded by
Alembic migrations (``migrations/``) when the store is opened.

Transactions: every write runs in one transaction that first bumps ``meta.generation``; on
SQLite that transaction starts with ``BEGIN IMMEDIATE`` (it takes the write lock up front and
waits up to ``busy_timeout`` for it), and reads run in a deferred ``BEGIN`` so a snapshot is
consistent. The database file is created with mode 0600 and uses WAL journaling.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError

from burrow.errors import ConfigError, Conflict, NotFound, StoreError
from burrow.store.aio_engine import AioConnection, AioEngine, create_aio_engine
from burrow.store.records import (
    LOGIN_APPROVED,
    LOGIN_DENIED,
    LOGIN_PENDING,
    LOGIN_REDEEMED,
    SCOPE_OPERATOR,
    SCOPES,
    Account,
    ApiToken,
    ConnectionRecord,
    LoginRequest,
    Route,
    RoutingSnapshot,
    Tunnel,
    TunnelAuthRecord,
    from_row,
    normalize_hostname,
    utc,
)
from burrow.store.secrets import hash_secret, new_api_token, new_login_code, verify_secret

__all__ = ["SQLStore"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 0x62757272  # "burr": serialises concurrent migrators on PostgreSQL

metadata = sa.MetaData()

meta_t = sa.Table(
    "meta",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("default_account_id", sa.String(32), nullable=True),
)
accounts_t = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
tunnels_t = sa.Table(
    "tunnels",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("secret_hash", sa.String(128), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("secret_sealed", sa.Text, nullable=True),
)
routes_t = sa.Table(
    "routes",
    metadata,
    sa.Column("hostname", sa.String(255), primary_key=True),
    sa.Column("tunnel_id", sa.Uuid, sa.ForeignKey("tunnels.id"), nullable=False),
    sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
api_tokens_t = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("scopes", sa.String(255), nullable=False),
    sa.Column("tunnel_id", sa.Uuid, sa.ForeignKey("tunnels.id"), nullable=True),
    sa.Column("secret_hash", sa.String(128), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)
connections_t = sa.Table(
    "connections",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("tunnel_id", sa.Uuid, sa.ForeignKey("tunnels.id"), nullable=False),
    sa.Column("account_id", sa.String(32), nullable=False),
    sa.Column("connector_id", sa.Uuid, nullable=False),
    sa.Column("conn_index", sa.Integer, nullable=False),
    sa.Column("edge_node", sa.String(255), nullable=False),
    sa.Column("colo", sa.String(255), nullable=False),
    sa.Column("client_version", sa.String(255), nullable=False),
    sa.Column("arch", sa.String(64), nullable=False),
    sa.Column("origin_ip", sa.String(64), nullable=False),
    sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
)
login_requests_t = sa.Table(
    "login_requests",
    metadata,
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("poll_hash", sa.String(128), nullable=False),
    sa.Column("client_name", sa.String(255), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=True),
)


def _now() -> datetime:
    return datetime.now(UTC)


def _account(row: Any) -> Account:
    return from_row(Account, row)


def _tunnel(row: Any) -> Tunnel:
    return from_row(Tunnel, row)


def _route(row: Any) -> Route:
    return from_row(Route, row)


def _api_token(row: Any) -> ApiToken:
    return from_row(ApiToken, row, scopes=frozenset(x for x in row.scopes.split(",") if x))


def _connection(row: Any) -> ConnectionRecord:
    return from_row(ConnectionRecord, row)


def _login(row: Any) -> LoginRequest:
    return from_row(LoginRequest, row)


def _prepare_sqlite_file(url: URL) -> None:
    """Create the database file (and its directory, 0700) so that it is 0600 from the start.
    SQLite gives its -wal and -shm files the permissions of the database file."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create state database directory {path.parent}: {exc.strerror or exc}"
        ) from None
    if path.exists() and not path.is_file():
        raise StoreError(f"cannot open state store {path}: not a regular file", retryable=False)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot create state database {path}: {exc.strerror or exc}") from None
    os.close(fd)


_REVISION_RE = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.M)


def _head_revision() -> str | None:
    """The single head of the migration scripts, read from their `revision`/`down_revision`
    lines without importing alembic; None when that is not clear-cut (alembic decides)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        fields: dict[str, str] = {
            str(m.group(1)): str(m.group(2)) for m in _REVISION_RE.finditer(path.read_text())
        }
        rev, down = fields.get("revision", ""), fields.get("down_revision", "")
        if not (rev[:1] in "'\"" and rev[-1:] == rev[:1] and len(rev) > 2):
            return None
        revisions.add(rev[1:-1])
        if down != "None":
            if not (down[:1] in "'\"" and down[-1:] == down[:1] and len(down) > 2):
                return None
            parents.add(down[1:-1])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _at_head(sync_conn: sa.Connection) -> bool:
    """Whether the database is already at the latest revision: then alembic (and the ~10 MB
    it brings into a long-running edge: mako, pygments) is not imported at all."""
    head = _head_revision()
    if head is None or not sa.inspect(sync_conn).has_table("alembic_version"):
        return False
    rows = sync_conn.execute(sa.text("SELECT version_num FROM alembic_version")).fetchall()
    return [r[0] for r in rows] == [head]


def _is_sqlite_file(url: URL) -> bool:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return False
    return Path(database).is_file()


async def at_head(url: str) -> bool:
    """Whether the store at `url` exists and is at the latest revision: a read-only check that
    neither creates the database nor imports alembic. Any failure answers False (the caller
    then opens the store normally, which reports it)."""
    try:
        sa_url = make_url(url)
        if sa_url.get_backend_name() == "sqlite" and not _is_sqlite_file(sa_url):
            return False
        connect_args = {"timeout": 5.0} if sa_url.get_backend_name() == "postgresql" else {}
        engine = create_aio_engine(sa_url, connect_args=connect_args)
    except Exception:
        return False
    try:
        async with engine.connect() as conn:
            return bool(await conn.run_sync(_at_head))
    except Exception:
        return False
    finally:
        await engine.dispose()


def _run_migrations(sync_conn: sa.Connection) -> None:
    if sync_conn.dialect.name == "postgresql":
        sync_conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
    if _at_head(sync_conn):
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


class SQLStore:
    """:class:`burrow.store.interface.Store` on SQLAlchemy Core (async)."""

    def __init__(self, engine: AioEngine, *, url: URL, busy_timeout_s: float) -> None:
        self._engine = engine
        self._url = url
        self._busy_timeout_s = busy_timeout_s
        self._sqlite = url.get_backend_name() == "sqlite"

    @property
    def url(self) -> str:
        """The database URL with any password masked."""
        return self._url.render_as_string(hide_password=True)

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, busy_timeout_s: float = 5.0, echo: bool = False) -> SQLStore:
        """Open (creating and migrating as needed) the store at ``url``, for example
        ``sqlite+aiosqlite:////var/lib/burrow/state.db`` or
        ``postgresql+asyncpg://user:pw@db/burrow``."""
        try:
            sa_url = make_url(url)
        except ArgumentError as exc:
            raise StoreError(f"invalid state store URL: {exc}", retryable=False) from None
        backend = sa_url.get_backend_name()
        connect_args: dict[str, Any] = {}
        if backend == "sqlite":
            _prepare_sqlite_file(sa_url)
            connect_args["timeout"] = busy_timeout_s
        elif backend == "postgresql":
            connect_args["timeout"] = max(busy_timeout_s, 1.0)  # connect timeout
        try:
            engine = create_aio_engine(
                sa_url, echo=echo, connect_args=connect_args, pool_pre_ping=not backend == "sqlite"
            )
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise StoreError(
                f"unsupported state store URL {sa_url.render_as_string(hide_password=True)}: {exc}",
                retryable=False,
            ) from None
        if backend == "sqlite":
            _install_sqlite_hooks(engine, busy_timeout_s)
        store = cls(engine, url=sa_url, busy_timeout_s=busy_timeout_s)
        try:
            async with store._tx(write=True, bump=False) as conn:
                await conn.run_sync(_run_migrations)
        except BaseException:
            await engine.dispose()
            if backend == "sqlite":
                # aiosqlite stops its worker thread without awaiting it when a connect fails;
                # give it a moment so it does not outlive the event loop.
                await asyncio.sleep(0.05)
            raise
        return store

    async def close(self) -> None:
        await self._engine.dispose()

    # -- transactions and error mapping -----------------------------------------------------

    @contextlib.asynccontextmanager
    async def _tx(self, *, write: bool, bump: bool = True) -> AsyncIterator[AioConnection]:
        try:
            async with self._engine.connect() as conn:
                if write and self._sqlite:
                    await conn.execution_options(burrow_begin="BEGIN IMMEDIATE")
                async with conn.begin():
                    if write and bump:
                        await conn.execute(
                            sa.update(meta_t)
                            .where(meta_t.c.id == 1)
                            .values(generation=meta_t.c.generation + 1)
                        )
                    yield conn
        except IntegrityError as exc:
            raise Conflict(f"state store constraint violated: {exc.orig}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(self._describe(exc)) from exc
        except (OSError, TimeoutError) as exc:
            raise StoreError(self._describe(exc)) from exc

    def _describe(self, exc: BaseException) -> str:
        orig = getattr(exc, "orig", None) or exc
        detail = str(orig).strip() or type(orig).__name__
        where = self.url
        if self._sqlite:
            where = self._url.database or ":memory:"
            low = detail.lower()
            if "locked" in low or "busy" in low:
                return (
                    f"state store {where} is locked by another process or connection "
                    f"(waited {self._busy_timeout_s:g}s): {detail}"
                )
            if "unable to open" in low or "readonly" in low or "read-only" in low:
                return f"cannot open state store {where}: {detail}"
        return f"state store {where} is unreachable or failed: {detail}"

    # -- accounts ---------------------------------------------------------------------------

    async def create_account(self, name: str) -> Account:
        account = Account(id=uuid.uuid4().hex, name=name, created_at=_now())
        async with self._tx(write=True) as conn:
            await conn.execute(
                sa.insert(accounts_t).values(
                    id=account.id, name=account.name, created_at=account.created_at
                )
            )
        return account

    async def get_account(self, account_id: str) -> Account:
        async with self._tx(write=False) as conn:
            row = (
                await conn.execute(sa.select(accounts_t).where(accounts_t.c.id == account_id))
            ).first()
        if row is None:
            raise NotFound(f"account {account_id} not found")
        return _account(row)

    async def get_or_create_default_account(self) -> Account:
        found = await self._default_account()
        if found is not None:
            return found
        async with self._tx(write=True) as conn:
            # Re-check under the write lock: another process may have won the race.
            row = await self._default_account_in(conn)
            if row is not None:
                return _account(row)
            account = Account(id=uuid.uuid4().hex, name="default", created_at=_now())
            await conn.execute(
                sa.insert(accounts_t).values(
                    id=account.id, name=account.name, created_at=account.created_at
                )
            )
            await conn.execute(
                sa.update(meta_t).where(meta_t.c.id == 1).values(default_account_id=account.id)
            )
        return account

    async def _default_account(self) -> Account | None:
        async with self._tx(write=False) as conn:
            row = await self._default_account_in(conn)
        return None if row is None else _account(row)

    @staticmethod
    async def _default_account_in(conn: AioConnection) -> Any:
        query = sa.select(accounts_t).join(meta_t, meta_t.c.default_account_id == accounts_t.c.id)
        return (await conn.execute(query.where(meta_t.c.id == 1))).first()

    async def list_accounts(self) -> list[Account]:
        async with self._tx(write=False) as conn:
            rows = await conn.execute(
                sa.select(accounts_t).order_by(accounts_t.c.created_at, accounts_t.c.id)
            )
            return [_account(r) for r in rows]

    # -- tunnels ----------------------------------------------------------------------------

    async def create_tunnel(
        self,
        account_id: str,
        name: str,
        secret_hash: str,
        *,
        tunnel_id: uuid.UUID | None = None,
        secret_sealed: str | None = None,
    ) -> Tunnel:
        if not name or not name.strip():
            raise ConfigError("a tunnel needs a name", status=400)
        tunnel = Tunnel(
            id=tunnel_id or uuid.uuid4(),
            account_id=account_id,
            name=name,
            secret_hash=secret_hash,
            created_at=_now(),
            secret_sealed=secret_sealed,
        )
        async with self._tx(write=True) as conn:
            acct = await conn.execute(
                sa.select(accounts_t.c.id).where(accounts_t.c.id == account_id)
            )
            if acct.first() is None:
                raise NotFound(f"account {account_id} not found")
            clash = await conn.execute(
                sa.select(tunnels_t.c.id).where(
                    tunnels_t.c.account_id == account_id,
                    tunnels_t.c.name == name,
                    tunnels_t.c.deleted_at.is_(None),
                )
            )
            existing = clash.scalar()
            if existing is not None:
                raise Conflict(f"a tunnel named {name!r} already exists ({existing})")
            await conn.execute(
                sa.insert(tunnels_t).values(
                    id=tunnel.id,
                    account_id=account_id,
                    name=name,
                    secret_hash=secret_hash,
                    created_at=tunnel.created_at,
                    deleted_at=None,
                    secret_sealed=secret_sealed,
                )
            )
        return tunnel

    async def get_tunnel(self, tunnel_id: uuid.UUID) -> Tunnel:
        async with self._tx(write=False) as conn:
            row = (
                await conn.execute(sa.select(tunnels_t).where(tunnels_t.c.id == tunnel_id))
            ).first()
        if row is None:
            raise NotFound(f"tunnel {tunnel_id} not found")
        return _tunnel(row)

    async def find_tunnel(self, account_id: str, name: str) -> Tunnel | None:
        async with self._tx(write=False) as conn:
            row = (
                await conn.execute(
                    sa.select(tunnels_t).where(
                        tunnels_t.c.account_id == account_id,
                        tunnels_t.c.name == name,
                        tunnels_t.c.deleted_at.is_(None),
                    )
                )
            ).first()
        return None if row is None else _tunnel(row)

    async def list_tunnels(
        self, account_id: str | None = None, include_deleted: bool = False
    ) -> list[Tunnel]:
        query = sa.select(tunnels_t).order_by(
            tunnels_t.c.created_at, tunnels_t.c.name, tunnels_t.c.id
        )
        if account_id is not None:
            query = query.where(tunnels_t.c.account_id == account_id)
        if not include_deleted:
            query = query.where(tunnels_t.c.deleted_at.is_(None))
        async with self._tx(write=False) as conn:
            return [_tunnel(r) for r in await conn.execute(query)]

    async def delete_tunnel(self, tunnel_id: uuid.UUID) -> Tunnel:
        now = _now()
        async with self._tx(write=True) as conn:
            row = (
                await conn.execute(
                    sa.select(tunnels_t).where(
                        tunnels_t.c.id == tunnel_id, tunnels_t.c.deleted_at.is_(None)
                    )
                )
            ).first()
            if row is None:
                raise NotFound(f"tunnel {tunnel_id} not found")
            await conn.execute(sa.delete(routes_t).where(routes_t.c.tunnel_id == tunnel_id))
            await conn.execute(
                sa.delete(connections_t).where(connections_t.c.tunnel_id == tunnel_id)
            )
            # A token bound to this tunnel has nothing left to do.
            await conn.execute(
                sa.update(api_tokens_t)
                .where(api_tokens_t.c.tunnel_id == tunnel_id, api_tokens_t.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            await conn.execute(
                sa.update(tunnels_t).where(tunnels_t.c.id == tunnel_id).values(deleted_at=now)
            )
        return from_row(Tunnel, row, deleted_at=now)

    # -- routes -----------------------------------------------------------------------------

    async def add_route(
        self,
        hostname: str,
        tunnel_id: uuid.UUID,
        *,
        overwrite: bool = False,
        account_id: str | None = None,
    ) -> Route:
        """See :meth:`Store.add_route`. With ``account_id`` (a tenant acting), the tunnel must
        belong to that account and a hostname routed by another account is refused even with
        ``overwrite``."""
        host = normalize_hostname(hostname)
        async with self._tx(write=True) as conn:
            trow = (
                await conn.execute(
                    sa.select(tunnels_t.c.account_id).where(
                        tunnels_t.c.id == tunnel_id, tunnels_t.c.deleted_at.is_(None)
                    )
                )
            ).first()
            if trow is None or (account_id is not None and trow.account_id != account_id):
                raise NotFound(f"tunnel {tunnel_id} not found")
            existing = (
                await conn.execute(sa.select(routes_t).where(routes_t.c.hostname == host))
            ).first()
            if (
                account_id is not None
                and existing is not None
                and existing.account_id != account_id
            ):
                raise Conflict(f"{host} is routed by another account", status=403)
            route = Route(
                hostname=host, tunnel_id=tunnel_id, account_id=trow.account_id, created_at=_now()
            )
            values = {
                "tunnel_id": route.tunnel_id,
                "account_id": route.account_id,
                "created_at": route.created_at,
            }
            if existing is None:
                await conn.execute(sa.insert(routes_t).values(hostname=host, **values))
            elif existing.tunnel_id == tunnel_id:
                return _route(existing)
            elif not overwrite:
                raise Conflict(f"{host} is already routed to tunnel {existing.tunnel_id}")
            else:
                await conn.execute(
                    sa.update(routes_t).where(routes_t.c.hostname == host).values(**values)
                )
        return route

    async def delete_route(self, hostname: str) -> None:
        host = normalize_hostname(hostname)
        async with self._tx(write=True) as conn:
            result = await conn.execute(sa.delete(routes_t).where(routes_t.c.hostname == host))
            if result.rowcount == 0:
                raise NotFound(f"no route for {host}")

    async def list_routes(self, tunnel_id: uuid.UUID | None = None) -> list[Route]:
        query = sa.select(routes_t).order_by(routes_t.c.hostname)
        if tunnel_id is not None:
            query = query.where(routes_t.c.tunnel_id == tunnel_id)
        async with self._tx(write=False) as conn:
            return [_route(r) for r in await conn.execute(query)]

    # -- API tokens -------------------------------------------------------------------------

    async def create_api_token(
        self,
        account_id: str | None,
        scopes: Collection[str],
        *,
        name: str = "",
        tunnel_id: uuid.UUID | None = None,
    ) -> tuple[ApiToken, str]:
        """A new token and its text (shown once; only its hash is kept)."""
        async with self._tx(write=True, bump=False) as conn:
            return await self._create_api_token_in(conn, account_id, scopes, name, tunnel_id)

    async def _create_api_token_in(
        self,
        conn: AioConnection,
        account_id: str | None,
        scopes: Collection[str],
        name: str,
        tunnel_id: uuid.UUID | None,
    ) -> tuple[ApiToken, str]:
        wanted = frozenset(scopes)
        unknown = wanted - set(SCOPES)
        if not wanted or unknown:
            raise ConfigError(
                f"invalid token scope(s) {', '.join(sorted(unknown)) or '(none)'}; "
                f"choose from {', '.join(SCOPES)}",
                status=400,
            )
        if account_id is None and wanted != {SCOPE_OPERATOR}:
            raise ConfigError("a token without an account must have the operator scope", status=400)
        if account_id is not None and SCOPE_OPERATOR in wanted:
            raise ConfigError("the operator scope is not tied to an account", status=400)
        if account_id is not None:
            acct = await conn.execute(
                sa.select(accounts_t.c.id).where(accounts_t.c.id == account_id)
            )
            if acct.first() is None:
                raise NotFound(f"account {account_id} not found")
        if tunnel_id is not None:
            trow = (
                await conn.execute(
                    sa.select(tunnels_t.c.account_id).where(
                        tunnels_t.c.id == tunnel_id, tunnels_t.c.deleted_at.is_(None)
                    )
                )
            ).first()
            if trow is None or trow.account_id != account_id:
                raise NotFound(f"tunnel {tunnel_id} not found in account {account_id}")
        token_id, text, digest = new_api_token()
        token = ApiToken(
            id=token_id,
            account_id=account_id,
            name=name,
            scopes=wanted,
            tunnel_id=tunnel_id,
            secret_hash=digest,
            created_at=_now(),
        )
        await conn.execute(
            sa.insert(api_tokens_t).values(
                id=token.id,
                account_id=account_id,
                name=name,
                scopes=",".join(sorted(wanted)),
                tunnel_id=tunnel_id,
                secret_hash=digest,
                created_at=token.created_at,
                revoked_at=None,
            )
        )
        return token, text

    async def get_api_token(self, token_id: str) -> ApiToken:
        async with self._tx(write=False) as conn:
            row = (
                await conn.execute(sa.select(api_tokens_t).where(api_tokens_t.c.id == token_id))
            ).first()
        if row is None:
            raise NotFound(f"API token {token_id} not found")
        return _api_token(row)

    async def list_api_tokens(self, account_id: str | None = None) -> list[ApiToken]:
        query = sa.select(api_tokens_t).order_by(api_tokens_t.c.created_at, api_tokens_t.c.id)
        if account_id is not None:
            query = query.where(api_tokens_t.c.account_id == account_id)
        async with self._tx(write=False) as conn:
            return [_api_token(r) for r in await conn.execute(query)]

    async def revoke_api_token(self, token_id: str) -> None:
        async with self._tx(write=True, bump=False) as conn:
            result = await conn.execute(
                sa.update(api_tokens_t)
                .where(api_tokens_t.c.id == token_id, api_tokens_t.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
            if result.rowcount == 0:
                raise NotFound(f"no live API token {token_id}")

    # -- live connections (no generation bump: routing does not depend on them) ------------

    async def add_connection(self, record: ConnectionRecord) -> None:
        values = {
            "tunnel_id": record.tunnel_id,
            "account_id": record.account_id,
            "connector_id": record.connector_id,
            "conn_index": record.conn_index,
            "edge_node": record.edge_node,
            "colo": record.colo,
            "client_version": record.client_version,
            "arch": record.arch,
            "origin_ip": record.origin_ip,
            "opened_at": record.opened_at,
        }
        async with self._tx(write=True, bump=False) as conn:
            live = (
                await conn.execute(
                    sa.select(tunnels_t.c.id).where(
                        tunnels_t.c.id == record.tunnel_id, tunnels_t.c.deleted_at.is_(None)
                    )
                )
            ).first()
            if live is None:
                return  # deleted meanwhile: the edge is closing the connection anyway
            await conn.execute(sa.delete(connections_t).where(connections_t.c.id == record.id))
            await conn.execute(sa.insert(connections_t).values(id=record.id, **values))

    async def remove_connection(self, connection_id: uuid.UUID) -> None:
        """Idempotent."""
        async with self._tx(write=True, bump=False) as conn:
            await conn.execute(sa.delete(connections_t).where(connections_t.c.id == connection_id))

    async def list_connections(
        self, tunnel_id: uuid.UUID | None = None, *, account_id: str | None = None
    ) -> list[ConnectionRecord]:
        query = sa.select(connections_t).order_by(
            connections_t.c.opened_at, connections_t.c.conn_index
        )
        if tunnel_id is not None:
            query = query.where(connections_t.c.tunnel_id == tunnel_id)
        if account_id is not None:
            query = query.where(connections_t.c.account_id == account_id)
        async with self._tx(write=False) as conn:
            return [_connection(r) for r in await conn.execute(query)]

    async def delete_connections(
        self,
        *,
        tunnel_id: uuid.UUID | None = None,
        connector_id: uuid.UUID | None = None,
        edge_node: str | None = None,
    ) -> list[ConnectionRecord]:
        """Remove and return the matching rows (at least one filter is required)."""
        if tunnel_id is None and connector_id is None and edge_node is None:
            raise ValueError("delete_connections needs a filter")
        cond = []
        if tunnel_id is not None:
            cond.append(connections_t.c.tunnel_id == tunnel_id)
        if connector_id is not None:
            cond.append(connections_t.c.connector_id == connector_id)
        if edge_node is not None:
            cond.append(connections_t.c.edge_node == edge_node)
        async with self._tx(write=True, bump=False) as conn:
            rows = [
                _connection(r) for r in await conn.execute(sa.select(connections_t).where(*cond))
            ]
            await conn.execute(sa.delete(connections_t).where(*cond))
        return rows

    # -- login requests -------------------------------------------------------------------------

    async def create_login_request(
        self, client_name: str, *, ttl_s: float = 600.0
    ) -> tuple[LoginRequest, str]:
        """A pending request and the poll secret only its creator knows."""
        poll_secret = secrets.token_urlsafe(32)
        now = _now()
        async with self._tx(write=True, bump=False) as conn:
            # Forget requests that expired long ago, so the table stays small.
            await conn.execute(
                sa.delete(login_requests_t).where(
                    login_requests_t.c.expires_at < now - timedelta(days=1)
                )
            )
            for _ in range(5):
                code = new_login_code()
                taken = await conn.execute(
                    sa.select(login_requests_t.c.code).where(login_requests_t.c.code == code)
                )
                if taken.first() is None:
                    break
            else:  # pragma: no cover - 2^34 codes
                raise Conflict("could not allocate a login code, try again")
            request = LoginRequest(
                code=code,
                client_name=client_name[:255],
                created_at=now,
                expires_at=now + timedelta(seconds=ttl_s),
                status=LOGIN_PENDING,
                account_id=None,
                poll_hash=hash_secret(poll_secret.encode()),
            )
            await conn.execute(
                sa.insert(login_requests_t).values(
                    code=request.code,
                    poll_hash=request.poll_hash,
                    client_name=request.client_name,
                    created_at=request.created_at,
                    expires_at=request.expires_at,
                    status=request.status,
                    account_id=None,
                )
            )
        return request, poll_secret

    async def get_login_request(self, code: str) -> LoginRequest:
        code = code.strip().upper()
        async with self._tx(write=False) as conn:
            row = (
                await conn.execute(
                    sa.select(login_requests_t).where(login_requests_t.c.code == code)
                )
            ).first()
        if row is None:
            raise NotFound(f"no login request with code {code}")
        return _login(row)

    async def list_login_requests(self) -> list[LoginRequest]:
        """Pending requests that have not expired."""
        async with self._tx(write=False) as conn:
            rows = await conn.execute(
                sa.select(login_requests_t)
                .where(
                    login_requests_t.c.status == LOGIN_PENDING,
                    login_requests_t.c.expires_at > _now(),
                )
                .order_by(login_requests_t.c.created_at)
            )
            return [_login(r) for r in rows]

    async def decide_login_request(
        self, code: str, *, account_id: str | None, approve: bool
    ) -> LoginRequest:
        """Approve (for ``account_id``) or deny a pending, unexpired request."""
        code = code.strip().upper()
        async with self._tx(write=True, bump=False) as conn:
            row = (
                await conn.execute(
                    sa.select(login_requests_t).where(login_requests_t.c.code == code)
                )
            ).first()
            if row is None:
                raise NotFound(f"no login request with code {code}")
            if row.status != LOGIN_PENDING:
                raise Conflict(f"login request {code} is already {row.status}")
            if utc(row.expires_at) <= _now():
                raise Conflict(f"login request {code} has expired", status=410)
            if approve:
                if account_id is None:
                    raise ConfigError("approving a login needs an account", status=400)
                acct = await conn.execute(
                    sa.select(accounts_t.c.id).where(accounts_t.c.id == account_id)
                )
                if acct.first() is None:
                    raise NotFound(f"account {account_id} not found")
            status = LOGIN_APPROVED if approve else LOGIN_DENIED
            await conn.execute(
                sa.update(login_requests_t)
                .where(login_requests_t.c.code == code)
                .values(status=status, account_id=account_id if approve else None)
            )
        return LoginRequest(
            code=row.code,
            client_name=row.client_name,
            created_at=utc(row.created_at),
            expires_at=utc(row.expires_at),
            status=status,
            account_id=account_id if approve else None,
        )

    async def redeem_login_request(
        self, code: str, poll_secret: str, *, scopes: Collection[str]
    ) -> tuple[LoginRequest, str | None]:
        """The request as it stands and, once approved, a fresh account token (issued exactly
        once, in the same transaction that marks the request redeemed). NotFound when the code
        or the poll secret is wrong (indistinguishably)."""
        code = code.strip().upper()
        async with self._tx(write=True, bump=False) as conn:
            row = (
                await conn.execute(
                    sa.select(login_requests_t).where(login_requests_t.c.code == code)
                )
            ).first()
            if row is None or not verify_secret(poll_secret.encode(), row.poll_hash):
                raise NotFound("no such login request")
            request = _login(row)
            if request.status == LOGIN_PENDING and request.expires_at <= _now():
                raise Conflict(f"login request {code} has expired", status=410)
            if request.status != LOGIN_APPROVED:
                return request, None
            _, text = await self._create_api_token_in(
                conn, request.account_id, scopes, f"login {code} ({request.client_name})", None
            )
            await conn.execute(
                sa.update(login_requests_t)
                .where(login_requests_t.c.code == code)
                .values(status=LOGIN_REDEEMED)
            )
        return request, text

    # -- the data path's view ---------------------------------------------------------------

    async def snapshot(self) -> RoutingSnapshot:
        routes: dict[str, uuid.UUID] = {}
        wildcards: dict[str, uuid.UUID] = {}
        tunnels: dict[uuid.UUID, TunnelAuthRecord] = {}
        async with self._tx(write=False) as conn:
            generation = (
                await conn.execute(sa.select(meta_t.c.generation).where(meta_t.c.id == 1))
            ).scalar_one()
            for t in await conn.execute(
                sa.select(
                    tunnels_t.c.id,
                    tunnels_t.c.account_id,
                    tunnels_t.c.name,
                    tunnels_t.c.secret_hash,
                ).where(tunnels_t.c.deleted_at.is_(None))
            ):
                tunnels[t.id] = TunnelAuthRecord(
                    id=t.id, account_id=t.account_id, name=t.name, secret_hash=t.secret_hash
                )
            for r in await conn.execute(sa.select(routes_t.c.hostname, routes_t.c.tunnel_id)):
                if r.hostname.startswith("*."):
                    wildcards[r.hostname[2:]] = r.tunnel_id
                else:
                    routes[r.hostname] = r.tunnel_id
        return RoutingSnapshot(
            routes=routes, wildcards=wildcards, tunnels=tunnels, generation=int(generation)
        )

    async def change_counter(self) -> int:
        async with self._tx(write=False) as conn:
            value = (
                await conn.execute(sa.select(meta_t.c.generation).where(meta_t.c.id == 1))
            ).scalar_one()
        return int(value)


def _install_sqlite_hooks(engine: AioEngine, busy_timeout_s: float) -> None:
    """Take transaction control away from the sqlite3 module (which would not BEGIN before
    SELECTs) and set WAL, busy_timeout and foreign keys on every new connection."""
    busy_ms = max(int(busy_timeout_s * 1000), 0)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        try:
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
                cursor.execute("PRAGMA foreign_keys = ON")
            finally:
                cursor.close()
        except BaseException:
            # The pool does not close a connection whose connect hook failed (e.g. the file
            # is not a database); left open, aiosqlite's worker thread would outlive the loop.
            dbapi_conn.close()
            raise

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("burrow_begin", "BEGIN"))
