"""TLS certificates of routed hostnames in the state store (table `certificates`, migration
0006), so that every edge node sharing the store serves them.

The private key is sealed with the edge's `SecretBox` (the key file lives in the state
directory, not in the database), with the hostname as associated data; a stolen database does
not yield usable keys. Kept beside `SQLStore` like `tunnel_configs`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa

from burrow.store.records import utc
from burrow.store.sealing import SecretBox
from burrow.store.sqlalchemy_store import SQLStore

__all__ = ["StoredCertificate", "all_certificates", "delete_certificate", "put_certificate"]

certificates_t = sa.Table(
    "certificates",
    sa.MetaData(),
    sa.Column("hostname", sa.String(255), primary_key=True),
    sa.Column("cert_pem", sa.Text, nullable=False),
    sa.Column("key_sealed", sa.Text, nullable=False),
    sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def _aad(hostname: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_DNS, hostname)


@dataclass(frozen=True, slots=True)
class StoredCertificate:
    hostname: str
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    not_after: datetime
    source: str  # "acme", "upload"
    updated_at: datetime


async def put_certificate(
    store: SQLStore,
    box: SecretBox,
    hostname: str,
    cert_pem: bytes,
    key_pem: bytes,
    not_after: datetime,
    source: str = "acme",
) -> StoredCertificate:
    now = datetime.now(UTC)
    values = {
        "cert_pem": cert_pem.decode("ascii"),
        "key_sealed": box.seal(_aad(hostname), key_pem),
        "not_after": not_after,
        "source": source,
        "updated_at": now,
    }
    async with store._tx(write=True, bump=False) as conn:
        done = await conn.execute(
            sa.update(certificates_t).where(certificates_t.c.hostname == hostname).values(**values)
        )
        if done.rowcount == 0:
            await conn.execute(sa.insert(certificates_t).values(hostname=hostname, **values))
    return StoredCertificate(hostname, cert_pem, key_pem, not_after, source, now)


async def all_certificates(store: SQLStore, box: SecretBox) -> dict[str, StoredCertificate]:
    async with store._tx(write=False) as conn:
        rows = (await conn.execute(sa.select(certificates_t))).all()
    out: dict[str, StoredCertificate] = {}
    for r in rows:
        out[r.hostname] = StoredCertificate(
            hostname=r.hostname,
            cert_pem=r.cert_pem.encode("ascii"),
            key_pem=box.open(_aad(r.hostname), r.key_sealed),
            not_after=utc(r.not_after),
            source=r.source,
            updated_at=utc(r.updated_at),
        )
    return out


async def delete_certificate(store: SQLStore, hostname: str) -> bool:
    async with store._tx(write=True, bump=False) as conn:
        done = await conn.execute(
            sa.delete(certificates_t).where(certificates_t.c.hostname == hostname)
        )
    return bool(done.rowcount)
