"""The control-plane part of the store: API tokens, live connections, login requests, tenancy
of routes, and the 0001 -> 0002 migration keeping data. SQLite always; PostgreSQL when
BURROW_TEST_PG_URL is set."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

from burrow.errors import ConfigError, Conflict, NotFound
from burrow.store.journal import ConnectionJournal, node_id_for
from burrow.store.records import (
    SCOPE_ACCOUNT_ADMIN,
    SCOPE_OPERATOR,
    SCOPE_TUNNEL_READ,
    SCOPE_TUNNEL_RUN,
    ConnectionRecord,
)
from burrow.store.secrets import hash_secret, parse_api_token, verify_secret
from burrow.store.sqlalchemy_store import MIGRATIONS_DIR, SQLStore
from burrow.testing.pgdb import PG_URL, fresh_database

HASH = hash_secret(bytes(range(32)))


@contextlib.asynccontextmanager
async def _database(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
        return
    if not PG_URL:
        pytest.skip("BURROW_TEST_PG_URL not set")
    async with fresh_database("burrow_cp") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with _database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SQLStore]:
    s = await SQLStore.open(db_url)
    try:
        yield s
    finally:
        await s.close()


def _conn(tunnel_id: uuid.UUID, account_id: str, **kw: object) -> ConnectionRecord:
    base: dict[str, object] = {
        "id": uuid.uuid4(),
        "tunnel_id": tunnel_id,
        "account_id": account_id,
        "connector_id": uuid.uuid4(),
        "conn_index": 0,
        "edge_node": "node-a",
        "colo": "burrow",
        "client_version": "2025.5.0",
        "arch": "linux_amd64",
        "origin_ip": "127.0.0.1",
        "opened_at": datetime.now(UTC),
    }
    base.update(kw)
    return ConnectionRecord(**base)  # type: ignore[arg-type]


async def test_api_tokens(store: SQLStore) -> None:
    acct = await store.create_account("acme")
    token, text = await store.create_api_token(acct.id, [SCOPE_ACCOUNT_ADMIN], name="ci")
    assert text not in repr(token) and token.secret_hash not in repr(token)
    parsed = parse_api_token(text)
    assert parsed is not None and parsed.token_id == token.id
    got = await store.get_api_token(token.id)
    assert got.scopes == {SCOPE_ACCOUNT_ADMIN} and got.account_id == acct.id
    assert verify_secret(parsed.secret, got.secret_hash)
    assert [t.id for t in await store.list_api_tokens(acct.id)] == [token.id]
    await store.revoke_api_token(token.id)
    assert (await store.get_api_token(token.id)).revoked
    with pytest.raises(NotFound):
        await store.revoke_api_token(token.id)
    op, _ = await store.create_api_token(None, [SCOPE_OPERATOR])
    assert op.account_id is None


async def test_api_token_validation(store: SQLStore) -> None:
    acct = await store.create_account("acme")
    other = await store.create_account("other")
    t_other = await store.create_tunnel(other.id, "x", HASH)
    with pytest.raises(ConfigError, match="invalid token scope"):
        await store.create_api_token(acct.id, ["root"])
    with pytest.raises(ConfigError, match="invalid token scope"):
        await store.create_api_token(acct.id, [])
    with pytest.raises(ConfigError, match="operator"):
        await store.create_api_token(None, [SCOPE_TUNNEL_READ])
    with pytest.raises(ConfigError, match="operator"):
        await store.create_api_token(acct.id, [SCOPE_OPERATOR])
    with pytest.raises(NotFound):
        await store.create_api_token("f" * 32, [SCOPE_TUNNEL_READ])
    with pytest.raises(NotFound, match="not found in account"):
        await store.create_api_token(acct.id, [SCOPE_TUNNEL_RUN], tunnel_id=t_other.id)
    assert await store.list_api_tokens() == []  # nothing half-written
    assert parse_api_token("burrow_zz_short") is None and parse_api_token("") is None


async def test_tunnel_delete_revokes_bound_tokens_and_drops_connections(store: SQLStore) -> None:
    acct = await store.create_account("acme")
    t = await store.create_tunnel(acct.id, "web", HASH)
    bound, _ = await store.create_api_token(acct.id, [SCOPE_TUNNEL_RUN], tunnel_id=t.id)
    free, _ = await store.create_api_token(acct.id, [SCOPE_TUNNEL_READ])
    await store.add_connection(_conn(t.id, acct.id))
    await store.delete_tunnel(t.id)
    assert (await store.get_api_token(bound.id)).revoked
    assert not (await store.get_api_token(free.id)).revoked
    assert await store.list_connections(t.id) == []


async def test_connections(store: SQLStore) -> None:
    acct = await store.create_account("acme")
    t = await store.create_tunnel(acct.id, "web", HASH)
    before = await store.change_counter()
    c1 = _conn(t.id, acct.id, conn_index=0)
    c2 = _conn(t.id, acct.id, conn_index=1, connector_id=c1.connector_id, edge_node="node-b")
    c3 = _conn(t.id, acct.id, conn_index=0)
    for c in (c1, c2, c3):
        await store.add_connection(c)
    await store.add_connection(c1)  # a repeated report replaces, never duplicates
    assert await store.change_counter() == before  # routing untouched: no snapshot reload
    assert {c.id for c in await store.list_connections(t.id)} == {c1.id, c2.id, c3.id}
    assert await store.list_connections(account_id="0" * 32) == []
    gone = await store.delete_connections(tunnel_id=t.id, connector_id=c1.connector_id)
    assert {c.id for c in gone} == {c1.id, c2.id}
    await store.remove_connection(c3.id)
    await store.remove_connection(c3.id)  # idempotent
    assert await store.list_connections() == []
    with pytest.raises(ValueError):
        await store.delete_connections()
    # A report that lands after the tunnel was deleted is dropped.
    await store.delete_tunnel(t.id)
    await store.add_connection(_conn(t.id, acct.id))
    assert await store.list_connections() == []


async def test_connection_journal_orders_open_and_close(store: SQLStore, tmp_path: Path) -> None:
    acct = await store.create_account("acme")
    t = await store.create_tunnel(acct.id, "web", HASH)
    node = node_id_for(tmp_path)
    assert node == node_id_for(tmp_path)  # stable across restarts
    stale = _conn(t.id, acct.id, edge_node=node)
    await store.add_connection(stale)
    journal = ConnectionJournal(store, node)
    await journal.start()
    assert await store.list_connections() == []  # a restarted node forgets its old rows
    rec = _conn(t.id, acct.id, edge_node=node)
    journal.opened(rec)
    journal.closed(rec.id)  # before the open landed: must still end with no row
    kept = _conn(t.id, acct.id, edge_node=node)
    journal.opened(kept)
    await journal.flush()
    assert [c.id for c in await store.list_connections()] == [kept.id]
    await journal.stop()
    assert await store.list_connections() == []


async def test_route_tenancy(store: SQLStore) -> None:
    a = await store.create_account("a")
    b = await store.create_account("b")
    ta = await store.create_tunnel(a.id, "web", HASH)
    tb = await store.create_tunnel(b.id, "web", HASH)
    await store.add_route("app.example.com", ta.id, account_id=a.id)
    with pytest.raises(Conflict, match="another account") as info:
        await store.add_route("app.example.com", tb.id, account_id=b.id, overwrite=True)
    assert info.value.status == 403
    with pytest.raises(NotFound):
        await store.add_route("b.example.com", ta.id, account_id=b.id)  # not b's tunnel
    assert [(r.hostname, r.tunnel_id) for r in await store.list_routes()] == [
        ("app.example.com", ta.id)
    ]


async def test_login_requests(store: SQLStore) -> None:
    acct = await store.create_account("acme")
    req, poll = await store.create_login_request("laptop")
    assert len(req.code) == 9 and req.code[4] == "-"
    assert [r.code for r in await store.list_login_requests()] == [req.code]
    pending, text = await store.redeem_login_request(req.code, poll, scopes=[SCOPE_ACCOUNT_ADMIN])
    assert pending.status == "pending" and text is None
    with pytest.raises(NotFound):
        await store.redeem_login_request(req.code, "wrong", scopes=[SCOPE_ACCOUNT_ADMIN])
    with pytest.raises(NotFound):
        await store.decide_login_request("ZZZZ-ZZZZ", account_id=acct.id, approve=True)
    with pytest.raises(NotFound):
        await store.decide_login_request(req.code, account_id="f" * 32, approve=True)
    await store.decide_login_request(req.code.lower(), account_id=acct.id, approve=True)
    with pytest.raises(Conflict, match="already approved"):
        await store.decide_login_request(req.code, account_id=acct.id, approve=True)
    done, text = await store.redeem_login_request(req.code, poll, scopes=[SCOPE_ACCOUNT_ADMIN])
    assert done.account_id == acct.id and text is not None
    parsed = parse_api_token(text)
    assert parsed is not None
    token = await store.get_api_token(parsed.token_id)
    assert token.account_id == acct.id and token.scopes == {SCOPE_ACCOUNT_ADMIN}
    again, text2 = await store.redeem_login_request(req.code, poll, scopes=[SCOPE_ACCOUNT_ADMIN])
    assert again.status == "redeemed" and text2 is None  # issued exactly once
    denied, poll2 = await store.create_login_request("other")
    await store.decide_login_request(denied.code, account_id=None, approve=False)
    got, none = await store.redeem_login_request(denied.code, poll2, scopes=[SCOPE_ACCOUNT_ADMIN])
    assert got.status == "denied" and none is None
    expired, poll3 = await store.create_login_request("late", ttl_s=-1)
    with pytest.raises(Conflict, match="expired"):
        await store.redeem_login_request(expired.code, poll3, scopes=[SCOPE_ACCOUNT_ADMIN])
    with pytest.raises(Conflict, match="expired"):
        await store.decide_login_request(expired.code, account_id=acct.id, approve=True)


def _upgrade_to(sync_conn: sa.Connection, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, revision)


async def test_upgrade_from_0001_keeps_data(db_url: str) -> None:
    """A database written at revision 0001 (by Alembic, as an old burrow would have) is
    upgraded on open and keeps its accounts, tunnels and routes."""
    engine = create_async_engine(db_url)
    acct_id, tunnel_id = uuid.uuid4().hex, uuid.uuid4()
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_to, "0001")
            await conn.execute(
                sa.text("INSERT INTO accounts (id, name, created_at) VALUES (:i, 'old', :t)"),
                {"i": acct_id, "t": now},
            )
            tunnels = sa.table(
                "tunnels",
                sa.column("id", sa.Uuid),
                sa.column("account_id", sa.String),
                sa.column("name", sa.String),
                sa.column("secret_hash", sa.String),
                sa.column("created_at", sa.DateTime(timezone=True)),
            )
            await conn.execute(
                sa.insert(tunnels).values(
                    id=tunnel_id,
                    account_id=acct_id,
                    name="legacy",
                    secret_hash=HASH,
                    created_at=now,
                )
            )
            routes = sa.table(
                "routes",
                sa.column("hostname", sa.String),
                sa.column("tunnel_id", sa.Uuid),
                sa.column("account_id", sa.String),
                sa.column("created_at", sa.DateTime(timezone=True)),
            )
            await conn.execute(
                sa.insert(routes).values(
                    hostname="old.example.com",
                    tunnel_id=tunnel_id,
                    account_id=acct_id,
                    created_at=now,
                )
            )
            version = (
                await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            ).scalar()
            assert version == "0001"
    finally:
        await engine.dispose()

    store = await SQLStore.open(db_url)
    try:
        assert [a.id for a in await store.list_accounts()] == [acct_id]
        t = await store.get_tunnel(tunnel_id)
        assert t.name == "legacy" and t.secret_hash == HASH
        assert [r.hostname for r in await store.list_routes(tunnel_id)] == ["old.example.com"]
        snap = await store.snapshot()
        assert snap.lookup("old.example.com") == tunnel_id
        # and the new tables work on the upgraded database
        token, _ = await store.create_api_token(acct_id, [SCOPE_ACCOUNT_ADMIN])
        await store.add_connection(_conn(tunnel_id, acct_id))
        assert len(await store.list_connections(tunnel_id)) == 1
        assert (await store.get_api_token(token.id)).account_id == acct_id
    finally:
        await store.close()
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            version = (
                await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            ).scalar()
        assert version == ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    finally:
        await engine.dispose()
