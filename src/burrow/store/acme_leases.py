"""Leases on ACME orders (table `acme_leases`, migration 0008): edge nodes sharing a store agree
that only one of them orders a certificate for a hostname at a time; the others install the
certificate from the store once it is there.

A lease is taken with one conditional statement (insert when absent, else update only when it
expired or is already ours), so two nodes racing for it cannot both win, on SQLite (writes are
serialised) or PostgreSQL (the row lock and the primary key decide). A node that dies holding a
lease only delays the order until the lease expires. No generation bump: routing does not
depend on leases.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from burrow.errors import Conflict
from burrow.store.sqlalchemy_store import SQLStore

__all__ = ["acquire_lease", "lease_holder", "release_lease"]

acme_leases_t = sa.Table(
    "acme_leases",
    sa.MetaData(),
    sa.Column("hostname", sa.String(255), primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)


async def acquire_lease(store: SQLStore, hostname: str, holder: str, ttl: timedelta) -> bool:
    """Take (or extend) the lease on ordering `hostname`; False when another node holds it."""
    now = datetime.now(UTC)
    expires = now + ttl
    t = acme_leases_t
    try:
        async with store._tx(write=True, bump=False) as conn:
            done = await conn.execute(
                sa.update(t)
                .where(t.c.hostname == hostname, sa.or_(t.c.holder == holder, t.c.expires_at < now))
                .values(holder=holder, expires_at=expires)
            )
            if done.rowcount == 1:
                return True
            present = await conn.execute(sa.select(t.c.holder).where(t.c.hostname == hostname))
            if present.first() is not None:
                return False
            await conn.execute(
                sa.insert(t).values(hostname=hostname, holder=holder, expires_at=expires)
            )
            return True
    except Conflict:  # another node inserted the row first (PostgreSQL: primary key)
        return False


async def release_lease(store: SQLStore, hostname: str, holder: str) -> None:
    t = acme_leases_t
    async with store._tx(write=True, bump=False) as conn:
        await conn.execute(sa.delete(t).where(t.c.hostname == hostname, t.c.holder == holder))


async def lease_holder(store: SQLStore, hostname: str) -> str | None:
    """The node holding an unexpired lease on `hostname`, if any."""
    t = acme_leases_t
    async with store._tx(write=False) as conn:
        row = (
            await conn.execute(
                sa.select(t.c.holder).where(
                    t.c.hostname == hostname, t.c.expires_at >= datetime.now(UTC)
                )
            )
        ).first()
    return None if row is None else str(row.holder)
