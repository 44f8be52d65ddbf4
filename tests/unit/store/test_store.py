"""The SQL state store on real SQLite files (and PostgreSQL when BURROW_TEST_PG_URL is set)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from burrow.errors import ConfigError, Conflict, NotFound, StoreError
from burrow.store.interface import Store
from burrow.store.records import RoutingSnapshot, TunnelAuthRecord, normalize_hostname
from burrow.store.secrets import hash_secret, verify_secret
from burrow.store.sqlalchemy_store import SQLStore
from burrow.testing.pgdb import PG_URL, fresh_database

SECRET = bytes(range(32))
HASH = hash_secret(SECRET)


def _url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQLStore]:
    if request.param == "sqlite":
        s = await SQLStore.open(_url(tmp_path / "state.db"))
        try:
            yield s
        finally:
            await s.close()
        return
    if not PG_URL:
        pytest.skip("BURROW_TEST_PG_URL not set")
    async with fresh_database() as url:
        s = await SQLStore.open(url)
        try:
            yield s
        finally:
            await s.close()


def test_sqlstore_satisfies_protocol(tmp_path: Path) -> None:
    def takes(_: Store) -> None:
        pass

    takes(SQLStore.__new__(SQLStore))  # static check; mypy verifies the protocol


async def test_file_mode_and_wal(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = await SQLStore.open(_url(db))
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    await store.get_or_create_default_account()
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for extra in (tmp_path / "state.db-wal", tmp_path / "state.db-shm"):
        if extra.exists():
            assert stat.S_IMODE(extra.stat().st_mode) == 0o600
    await store.close()


async def test_creates_parent_directory(tmp_path: Path) -> None:
    s = await SQLStore.open(_url(tmp_path / "deep" / "er" / "state.db"))
    await s.close()
    assert stat.S_IMODE((tmp_path / "deep" / "er").stat().st_mode) == 0o700


async def test_accounts(store: SQLStore) -> None:
    default = await store.get_or_create_default_account()
    assert len(default.id) == 32 and int(default.id, 16) >= 0
    assert (await store.get_or_create_default_account()) == default
    other = await store.create_account("acme")
    assert other.id != default.id
    assert [a.id for a in await store.list_accounts()] == [default.id, other.id]
    assert await store.get_account(other.id) == other
    with pytest.raises(NotFound):
        await store.get_account("0" * 32)


async def test_tunnel_crud(store: SQLStore) -> None:
    acct = await store.get_or_create_default_account()
    t = await store.create_tunnel(acct.id, "web", HASH)
    assert "secret" not in repr(t) and HASH not in repr(t)
    assert t.deleted_at is None and t.created_at.tzinfo is not None
    assert await store.get_tunnel(t.id) == t
    assert await store.find_tunnel(acct.id, "web") == t
    assert await store.find_tunnel(acct.id, "nope") is None
    assert await store.list_tunnels() == [t]
    assert await store.list_tunnels(acct.id) == [t]
    assert await store.list_tunnels("f" * 32) == []
    with pytest.raises(NotFound):
        await store.get_tunnel(uuid.uuid4())
    with pytest.raises(NotFound):
        await store.create_tunnel("f" * 32, "x", HASH)
    with pytest.raises(ConfigError):
        await store.create_tunnel(acct.id, "", HASH)


async def test_tunnel_name_unique_per_account_among_live(store: SQLStore) -> None:
    a = await store.create_account("a")
    b = await store.create_account("b")
    t1 = await store.create_tunnel(a.id, "web", HASH)
    with pytest.raises(Conflict, match="web"):
        await store.create_tunnel(a.id, "web", HASH)
    await store.create_tunnel(b.id, "web", HASH)  # another account: fine
    await store.delete_tunnel(t1.id)
    t2 = await store.create_tunnel(a.id, "web", HASH)  # the name is free again
    assert t2.id != t1.id
    assert await store.find_tunnel(a.id, "web") == t2


async def test_soft_delete_removes_routes(store: SQLStore) -> None:
    acct = await store.get_or_create_default_account()
    t = await store.create_tunnel(acct.id, "web", HASH)
    keep = await store.create_tunnel(acct.id, "other", HASH)
    await store.add_route("a.example.com", t.id)
    await store.add_route("*.example.com", t.id)
    await store.add_route("b.example.com", keep.id)
    deleted = await store.delete_tunnel(t.id)
    assert deleted.deleted_at is not None
    assert (await store.get_tunnel(t.id)).deleted_at is not None
    assert [r.hostname for r in await store.list_routes()] == ["b.example.com"]
    assert await store.list_routes(t.id) == []
    assert [x.id for x in await store.list_tunnels()] == [keep.id]
    assert {x.id for x in await store.list_tunnels(include_deleted=True)} == {t.id, keep.id}
    snap = await store.snapshot()
    assert t.id not in snap.tunnels and keep.id in snap.tunnels
    with pytest.raises(NotFound):
        await store.delete_tunnel(t.id)
    with pytest.raises(NotFound):
        await store.add_route("c.example.com", t.id)


async def test_routes(store: SQLStore) -> None:
    acct = await store.get_or_create_default_account()
    t1 = await store.create_tunnel(acct.id, "one", HASH)
    t2 = await store.create_tunnel(acct.id, "two", HASH)
    r = await store.add_route("App.Example.COM.", t1.id)
    assert r.hostname == "app.example.com" and r.account_id == acct.id
    assert (await store.add_route("app.example.com", t1.id)).tunnel_id == t1.id  # idempotent
    with pytest.raises(Conflict, match=str(t1.id)):
        await store.add_route("app.example.com", t2.id)
    moved = await store.add_route("app.example.com", t2.id, overwrite=True)
    assert moved.tunnel_id == t2.id
    assert [x.tunnel_id for x in await store.list_routes()] == [t2.id]
    assert await store.list_routes(t1.id) == []
    await store.delete_route("APP.example.com")
    assert await store.list_routes() == []
    with pytest.raises(NotFound):
        await store.delete_route("app.example.com")
    with pytest.raises(NotFound):
        await store.add_route("x.example.com", uuid.uuid4())
    with pytest.raises(ConfigError):
        await store.add_route("bad host!", t1.id)


async def test_snapshot_and_lookup(store: SQLStore) -> None:
    acct = await store.get_or_create_default_account()
    apex = await store.create_tunnel(acct.id, "apex", HASH)
    wild = await store.create_tunnel(acct.id, "wild", HASH)
    deep = await store.create_tunnel(acct.id, "deep", HASH)
    exact = await store.create_tunnel(acct.id, "exact", HASH)
    await store.add_route("example.com", apex.id)
    await store.add_route("*.example.com", wild.id)
    await store.add_route("*.b.example.com", deep.id)
    await store.add_route("x.b.example.com", exact.id)
    snap = await store.snapshot()
    assert snap.routes == {"example.com": apex.id, "x.b.example.com": exact.id}
    assert snap.wildcards == {"example.com": wild.id, "b.example.com": deep.id}
    assert snap.tunnels[wild.id] == TunnelAuthRecord(wild.id, acct.id, "wild", HASH)
    assert snap.lookup("example.com") == apex.id
    assert snap.lookup("EXAMPLE.com.") == apex.id
    assert snap.lookup("a.example.com") == wild.id
    assert snap.lookup("a.c.example.com") == wild.id
    assert snap.lookup("b.example.com") == wild.id  # the apex of *.b is not matched by it
    assert snap.lookup("y.b.example.com") == deep.id  # longest wildcard suffix
    assert snap.lookup("x.b.example.com") == exact.id  # exact beats wildcard
    assert snap.lookup("example.org") is None
    assert snap.lookup("notexample.com") is None


def test_lookup_wildcard_never_matches_apex() -> None:
    tid = uuid.uuid4()
    snap = RoutingSnapshot(routes={}, wildcards={"example.com": tid}, tunnels={})
    assert snap.lookup("example.com") is None
    assert snap.lookup("www.example.com") == tid
    assert RoutingSnapshot.empty().lookup("anything") is None


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Example.COM.", "example.com"),
        ("*.Example.com", "*.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("a_b.example.com", "a_b.example.com"),
    ],
)
def test_normalize_hostname(raw: str, norm: str) -> None:
    assert normalize_hostname(raw) == norm


@pytest.mark.parametrize(
    "bad", ["", ".", "a..b", "-a.com", "a b.com", "*.com", "x.*.com", "a" * 64 + ".com", "*"]
)
def test_normalize_hostname_rejects(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        normalize_hostname(bad)
    assert info.value.status == 400


async def test_change_counter_bumps_on_every_write(store: SQLStore) -> None:
    c0 = await store.change_counter()
    acct = await store.get_or_create_default_account()
    c1 = await store.change_counter()
    assert c1 > c0
    await store.get_or_create_default_account()  # existing: no write
    assert await store.change_counter() == c1
    t = await store.create_tunnel(acct.id, "web", HASH)
    c2 = await store.change_counter()
    await store.add_route("a.example.com", t.id)
    c3 = await store.change_counter()
    await store.delete_route("a.example.com")
    c4 = await store.change_counter()
    await store.delete_tunnel(t.id)
    c5 = await store.change_counter()
    assert c1 < c2 < c3 < c4 < c5
    assert (await store.snapshot()).generation == c5
    # A failed write does not bump.
    with pytest.raises(NotFound):
        await store.delete_tunnel(t.id)
    assert await store.change_counter() == c5


async def test_change_counter_seen_by_another_store(tmp_path: Path) -> None:
    url = _url(tmp_path / "state.db")
    a = await SQLStore.open(url)
    b = await SQLStore.open(url)
    try:
        before = await b.change_counter()
        await a.create_account("x")
        assert await b.change_counter() == before + 1
    finally:
        await a.close()
        await b.close()


async def test_concurrent_writers(tmp_path: Path) -> None:
    url = _url(tmp_path / "state.db")
    a = await SQLStore.open(url)
    b = await SQLStore.open(url)
    try:
        acct = await a.get_or_create_default_account()
        await asyncio.gather(
            *(
                s.create_tunnel(acct.id, f"t{i}", HASH)
                for i in range(20)
                for s in (a, b)[i % 2 :][:1]
            )
        )
        assert len(await b.list_tunnels()) == 20
        results = await asyncio.gather(
            *(s.create_tunnel(acct.id, "same", HASH) for s in (a, b, a, b)), return_exceptions=True
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 1
        assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException))
    finally:
        await a.close()
        await b.close()


async def test_reopen_keeps_data(tmp_path: Path) -> None:
    url = _url(tmp_path / "state.db")
    s = await SQLStore.open(url)
    acct = await s.get_or_create_default_account()
    t = await s.create_tunnel(acct.id, "web", HASH)
    await s.add_route("*.example.com", t.id)
    counter = await s.change_counter()
    await s.close()

    s = await SQLStore.open(url)  # migrations already applied: a no-op
    try:
        assert await s.get_or_create_default_account() == acct
        assert await s.get_tunnel(t.id) == t
        assert [r.hostname for r in await s.list_routes()] == ["*.example.com"]
        assert await s.change_counter() == counter
        snap = await s.snapshot()
        assert verify_secret(SECRET, snap.tunnels[t.id].secret_hash)
    finally:
        await s.close()


async def test_locked_database_gives_store_error(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    s = await SQLStore.open(_url(db), busy_timeout_s=0.2)
    try:
        await s.get_or_create_default_account()
        holder = sqlite3.connect(db, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            with pytest.raises(StoreError, match="locked") as info:
                await s.create_account("blocked")
            assert str(db) in str(info.value)
            assert info.value.retryable
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        await s.create_account("unblocked")  # works again once the lock is gone
    finally:
        await s.close()


async def test_unopenable_database_gives_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create state database"):
        await SQLStore.open(_url(blocker / "state.db"))
    adir = tmp_path / "adir"
    adir.mkdir()
    with pytest.raises(StoreError, match="cannot open state store"):
        await SQLStore.open(_url(adir))


async def test_not_a_database_gives_store_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(StoreError, match=r"junk\.db"):
        await SQLStore.open(_url(junk))


async def test_unreachable_postgres_gives_store_error() -> None:
    pytest.importorskip("asyncpg")
    url = "postgresql+asyncpg://burrow:hunter2@127.0.0.1:1/burrow"
    with pytest.raises(StoreError, match="unreachable") as info:
        await SQLStore.open(url, busy_timeout_s=2)
    assert "hunter2" not in str(info.value)


async def test_bad_url_gives_store_error() -> None:
    with pytest.raises(StoreError, match="URL"):
        await SQLStore.open("not a url")
    with pytest.raises(StoreError, match="unsupported"):
        await SQLStore.open("nosuchdb+driver://x/y")


@pytest.mark.skipif(not os.environ.get("BURROW_TEST_PG_URL"), reason="BURROW_TEST_PG_URL not set")
async def test_postgres_roundtrip() -> None:
    async with fresh_database() as url:
        await _pg_roundtrip(url)


async def _pg_roundtrip(url: str) -> None:
    s = await SQLStore.open(url)
    try:
        acct = await s.create_account(f"pg-{uuid.uuid4().hex[:8]}")
        t = await s.create_tunnel(acct.id, "web", HASH)
        with pytest.raises(Conflict):
            await s.create_tunnel(acct.id, "web", HASH)
        host = f"{uuid.uuid4().hex[:8]}.example.com"
        await s.add_route(host, t.id)
        await s.add_route(f"*.{host}", t.id)
        snap = await s.snapshot()
        assert snap.lookup(host) == t.id and snap.lookup(f"x.{host}") == t.id
        assert (await s.get_tunnel(t.id)).created_at == t.created_at
        await s.delete_tunnel(t.id)
        assert await s.list_routes(t.id) == []
    finally:
        await s.close()


def test_secret_hashing() -> None:
    stored = hash_secret(SECRET)
    assert stored.startswith("sha256$") and len(stored) == 7 + 64
    assert verify_secret(SECRET, stored)
    assert not verify_secret(SECRET[:-1] + b"\x00", stored)
    assert not verify_secret(SECRET, "md5$" + stored[7:])
    assert not verify_secret(SECRET, "sha256$ü")
    with pytest.raises(ValueError):
        hash_secret(b"short")
