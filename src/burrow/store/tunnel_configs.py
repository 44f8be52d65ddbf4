"""Remotely managed tunnel configurations in the state store (table `tunnel_configs`, migration
0003): the ingress an administrator set for a tunnel, as cloudflared's remote config JSON, with
a version that grows on every change.

Kept beside `SQLStore` rather than in it: the edge reads all of them when the store's generation
moves, and each write bumps that generation like every other write.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from burrow.errors import NotFound
from burrow.store.records import from_row
from burrow.store.sqlalchemy_store import SQLStore, tunnels_t

__all__ = [
    "TunnelConfig",
    "all_tunnel_configs",
    "delete_tunnel_config",
    "get_tunnel_config",
    "set_tunnel_config",
]

tunnel_configs_t = sa.Table(
    "tunnel_configs",
    sa.MetaData(),
    sa.Column("tunnel_id", sa.Uuid, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True, slots=True)
class TunnelConfig:
    tunnel_id: uuid.UUID
    version: int
    config: dict[str, Any]
    updated_at: datetime

    def push_body(self) -> bytes:
        """The body of an `update-configuration` stream."""
        return json.dumps({"version": self.version, "config": self.config}).encode()


def _record(row: Any) -> TunnelConfig:
    return from_row(TunnelConfig, row, version=int(row.version), config=json.loads(row.config))


async def set_tunnel_config(
    store: SQLStore, tunnel_id: uuid.UUID, config: dict[str, Any]
) -> TunnelConfig:
    """Store a (validated) config for a live tunnel; returns it with its new version."""
    text = json.dumps(config, separators=(",", ":"), sort_keys=True)
    now = datetime.now(UTC)
    async with store._tx(write=True) as conn:
        live = await conn.execute(
            sa.select(tunnels_t.c.id).where(
                tunnels_t.c.id == tunnel_id, tunnels_t.c.deleted_at.is_(None)
            )
        )
        if live.first() is None:
            raise NotFound(f"tunnel {tunnel_id} not found")
        row = (
            await conn.execute(
                sa.select(tunnel_configs_t.c.version).where(
                    tunnel_configs_t.c.tunnel_id == tunnel_id
                )
            )
        ).first()
        version = 1 if row is None else int(row.version) + 1
        values = {"version": version, "config": text, "updated_at": now}
        if row is None:
            await conn.execute(sa.insert(tunnel_configs_t).values(tunnel_id=tunnel_id, **values))
        else:
            await conn.execute(
                sa.update(tunnel_configs_t)
                .where(tunnel_configs_t.c.tunnel_id == tunnel_id)
                .values(**values)
            )
    return TunnelConfig(tunnel_id=tunnel_id, version=version, config=config, updated_at=now)


async def get_tunnel_config(store: SQLStore, tunnel_id: uuid.UUID) -> TunnelConfig | None:
    async with store._tx(write=False) as conn:
        row = (
            await conn.execute(
                sa.select(tunnel_configs_t).where(tunnel_configs_t.c.tunnel_id == tunnel_id)
            )
        ).first()
    return None if row is None else _record(row)


async def delete_tunnel_config(store: SQLStore, tunnel_id: uuid.UUID) -> None:
    """Back to locally managed; NotFound when the tunnel had no remote config."""
    async with store._tx(write=True) as conn:
        result = await conn.execute(
            sa.delete(tunnel_configs_t).where(tunnel_configs_t.c.tunnel_id == tunnel_id)
        )
        if result.rowcount == 0:
            raise NotFound(f"tunnel {tunnel_id} has no remote configuration")


async def all_tunnel_configs(store: SQLStore) -> dict[uuid.UUID, TunnelConfig]:
    async with store._tx(write=False) as conn:
        rows = await conn.execute(sa.select(tunnel_configs_t))
        return {r.tunnel_id: _record(r) for r in rows}
