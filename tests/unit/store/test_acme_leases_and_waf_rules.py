"""ACME order leases (one holder at a time, expiry, release, races) and WAF rule storage
(validation with the position, order, ids, generation bump), on SQLite and, when
BURROW_TEST_PG_URL is set, PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from burrow.errors import ConfigError, Conflict, NotFound
from burrow.store.acme_leases import acquire_lease, lease_holder, release_lease
from burrow.store.sqlalchemy_store import SQLStore
from burrow.store.waf_rules import (
    compile_records,
    create_waf_rule,
    delete_waf_rule,
    list_waf_rules,
)
from burrow.testing.pgdb import PG_URL, fresh_database
from burrow.waf.parse import RuleSyntaxError

MINUTE = timedelta(minutes=1)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQLStore]:
    if request.param == "postgresql":
        if not PG_URL:
            pytest.skip("needs BURROW_TEST_PG_URL (PostgreSQL)")
        async with fresh_database() as url:
            s = await SQLStore.open(url)
            try:
                yield s
            finally:
                await s.close()
        return
    s = await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    try:
        yield s
    finally:
        await s.close()


async def test_lease_one_holder_expiry_and_release(store: SQLStore) -> None:
    assert await acquire_lease(store, "a.example", "node-1", MINUTE)
    assert not await acquire_lease(store, "a.example", "node-2", MINUTE)
    assert await acquire_lease(store, "a.example", "node-1", MINUTE)  # extending is fine
    assert await acquire_lease(store, "b.example", "node-2", MINUTE)  # per hostname
    assert await lease_holder(store, "a.example") == "node-1"
    await release_lease(store, "a.example", "node-2")  # not the holder: no effect
    assert await lease_holder(store, "a.example") == "node-1"
    await release_lease(store, "a.example", "node-1")
    assert await lease_holder(store, "a.example") is None
    assert await acquire_lease(store, "a.example", "node-2", timedelta(seconds=-1))  # expired
    assert await acquire_lease(store, "a.example", "node-3", MINUTE)  # taken over


async def test_lease_race_has_one_winner(store: SQLStore) -> None:
    won = await asyncio.gather(
        *(acquire_lease(store, "race.example", f"node-{i}", MINUTE) for i in range(8))
    )
    assert sum(won) == 1


async def test_waf_rules_stored_validated_and_ordered(store: SQLStore) -> None:
    g0 = await store.change_counter()
    first = await create_waf_rule(
        store, 'http.request.uri.path eq "/a"', "block", hostnames=["A.Example."]
    )
    assert first.hostnames == ("a.example",) and first.position == 1
    assert await store.change_counter() > g0  # edges reload
    await create_waf_rule(store, "ssl", "log", rule_id="tls", enabled=False)
    with pytest.raises(RuleSyntaxError) as err:
        await create_waf_rule(store, 'http.host eq "x" and not', "block")
    assert err.value.column == 25
    with pytest.raises(ConfigError):
        await create_waf_rule(store, "ssl", "deny")
    with pytest.raises(Conflict):
        await create_waf_rule(store, "ssl", "log", rule_id="tls")
    records = await list_waf_rules(store)
    assert [r.id for r in records] == [first.id, "tls"]
    assert [r.id for r in compile_records(records)] == [first.id]  # disabled ones are not run
    await delete_waf_rule(store, "tls")
    with pytest.raises(NotFound):
        await delete_waf_rule(store, "tls")
