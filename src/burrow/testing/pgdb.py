"""Throw-away PostgreSQL databases for tests, on the server named by BURROW_TEST_PG_URL (see
scripts/pg-test-cluster.sh). Without that variable, tests use SQLite."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

from sqlalchemy.engine import make_url

__all__ = [
    "PG_URL",
    "create_database",
    "edges_use_postgres",
    "fresh_database",
    "store_url_or_none",
]

PG_URL = os.environ.get("BURROW_TEST_PG_URL", "")


async def create_database(prefix: str = "burrow_test") -> str:
    """A new, empty database that lives as long as the test cluster; returns its URL."""
    import asyncpg

    base = make_url(PG_URL)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(
        host=base.host,
        port=base.port,
        user=base.username,
        password=base.password,
        database=base.database,
    )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return base.set(database=name).render_as_string(hide_password=False)


def edges_use_postgres() -> bool:
    """True when the suite runs its edges on PostgreSQL (`BURROW_TEST_STORE=postgres`)."""
    return bool(PG_URL) and os.environ.get("BURROW_TEST_STORE") == "postgres"


@contextlib.asynccontextmanager
async def fresh_database(prefix: str = "burrow_test") -> AsyncIterator[str]:
    """A new, empty database, dropped afterwards; yields its SQLAlchemy URL."""
    import asyncpg

    url = await create_database(prefix)
    try:
        yield url
    finally:
        base = make_url(PG_URL)
        admin = await asyncpg.connect(
            host=base.host,
            port=base.port,
            user=base.username,
            password=base.password,
            database=base.database,
        )
        try:
            name = make_url(url).database
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def store_url_or_none() -> AsyncIterator[str | None]:
    """A fresh PostgreSQL database when BURROW_TEST_PG_URL is set, else None (SQLite)."""
    if not PG_URL:
        yield None
        return
    async with fresh_database() as url:
        yield url
