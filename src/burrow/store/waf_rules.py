"""WAF custom rules managed through the admin API and CLI (table `waf_rules`, migration 0007).

Every edge node sharing the store applies them: each write bumps the store's generation, the
edges re-read the table when it moves and compile the rules once per change (see
`burrow.waf.rules.WafEngine.set_managed`). An expression is parsed before it is stored, so the
table never holds a rule an edge could not compile. Kept beside `SQLStore` like
`tunnel_configs`.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from burrow.errors import ConfigError, Conflict, NotFound
from burrow.store.records import from_row
from burrow.store.sqlalchemy_store import SQLStore
from burrow.waf.rules import Rule, compile_rule, normalise_hostnames

__all__ = [
    "WafRuleRecord",
    "compile_records",
    "create_waf_rule",
    "delete_waf_rule",
    "get_waf_rule",
    "list_waf_rules",
]

waf_rules_t = sa.Table(
    "waf_rules",
    sa.MetaData(),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("expression", sa.Text, nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("hostnames", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

MAX_ID_LENGTH = 64


@dataclass(frozen=True, slots=True)
class WafRuleRecord:
    id: str
    position: int  # evaluation order among managed rules (creation order)
    expression: str
    action: str
    hostnames: tuple[str, ...]
    description: str
    enabled: bool
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "position": self.position,
            "expression": self.expression,
            "action": self.action,
            "hostnames": list(self.hostnames),
            "description": self.description,
            "enabled": self.enabled,
            "created_at": self.created_at,
        }


def _record(row: Any) -> WafRuleRecord:
    return from_row(
        WafRuleRecord,
        row,
        position=int(row.position),
        hostnames=tuple(json.loads(row.hostnames)),
        enabled=bool(row.enabled),
    )


async def create_waf_rule(
    store: SQLStore,
    expression: str,
    action: str,
    *,
    rule_id: str | None = None,
    hostnames: list[str] | tuple[str, ...] = (),
    description: str = "",
    enabled: bool = True,
) -> WafRuleRecord:
    """Validate (RuleSyntaxError with the position, ConfigError for a bad action) and store a
    rule after the existing ones; Conflict when the id is taken."""
    hosts = normalise_hostnames(hostnames)
    compile_rule(expression, action, id=rule_id or "new", hostnames=frozenset(hosts))
    rid = (rule_id or f"r-{secrets.token_hex(6)}").strip()
    if not rid or len(rid) > MAX_ID_LENGTH:
        raise ConfigError(f"rule id must be 1 to {MAX_ID_LENGTH} characters")
    now = datetime.now(UTC)
    async with store._tx(write=True) as conn:
        if (
            await conn.execute(sa.select(waf_rules_t.c.id).where(waf_rules_t.c.id == rid))
        ).first() is not None:
            raise Conflict(f"a WAF rule with id {rid!r} already exists")
        top = (await conn.execute(sa.select(sa.func.max(waf_rules_t.c.position)))).scalar()
        position = int(top or 0) + 1
        await conn.execute(
            sa.insert(waf_rules_t).values(
                id=rid,
                position=position,
                expression=expression,
                action=action,
                hostnames=json.dumps(list(hosts)),
                description=description,
                enabled=enabled,
                created_at=now,
            )
        )
    return WafRuleRecord(rid, position, expression, action, hosts, description, enabled, now)


async def list_waf_rules(store: SQLStore) -> list[WafRuleRecord]:
    """All managed rules in evaluation order."""
    async with store._tx(write=False) as conn:
        rows = await conn.execute(
            sa.select(waf_rules_t).order_by(waf_rules_t.c.position, waf_rules_t.c.id)
        )
        return [_record(r) for r in rows]


async def get_waf_rule(store: SQLStore, rule_id: str) -> WafRuleRecord:
    async with store._tx(write=False) as conn:
        row = (
            await conn.execute(sa.select(waf_rules_t).where(waf_rules_t.c.id == rule_id))
        ).first()
    if row is None:
        raise NotFound(f"WAF rule {rule_id!r} not found")
    return _record(row)


async def delete_waf_rule(store: SQLStore, rule_id: str) -> None:
    async with store._tx(write=True) as conn:
        done = await conn.execute(sa.delete(waf_rules_t).where(waf_rules_t.c.id == rule_id))
        if done.rowcount == 0:
            raise NotFound(f"WAF rule {rule_id!r} not found")


def compile_records(records: list[WafRuleRecord]) -> list[Rule]:
    """The enabled records as compiled rules (they were validated when stored)."""
    return [
        compile_rule(
            r.expression,
            r.action,
            id=r.id,
            hostnames=frozenset(r.hostnames),
            description=r.description,
        )
        for r in records
        if r.enabled
    ]
