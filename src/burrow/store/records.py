"""Records kept in the state store (immutable values; the store returns fresh ones)."""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from burrow.errors import ConfigError

R = TypeVar("R")


def utc(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime: everything is stored in UTC, and SQLite hands
    datetimes back naive."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def from_row(cls: type[R], row: Any, **converted: Any) -> R:
    """A record (a dataclass) from a row whose columns carry its field names, datetimes made
    aware (`utc`). `converted` gives the fields a column does not hold as they are (JSON
    text, comma lists, numbers some drivers return as strings)."""
    values = dict(converted)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in values:
            value = getattr(row, f.name)
            values[f.name] = utc(value) if isinstance(value, datetime) else value
    return cls(**values)


__all__ = [
    "SCOPES",
    "SCOPE_ACCOUNT_ADMIN",
    "SCOPE_OPERATOR",
    "SCOPE_TUNNEL_READ",
    "SCOPE_TUNNEL_RUN",
    "Account",
    "ApiToken",
    "ConnectionRecord",
    "LoginRequest",
    "Route",
    "RoutingSnapshot",
    "Tunnel",
    "TunnelAuthRecord",
    "normalize_hostname",
]

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def normalize_hostname(hostname: str) -> str:
    """The canonical form of a route hostname: lower-case ASCII (IDNA), no trailing dot.

    A single leading ``*.`` label makes a wildcard route (``*.example.com``). Raises
    :class:`ConfigError` (HTTP status 400) for anything that is not a DNS name.
    """
    text = hostname.strip().rstrip(".").lower()
    try:
        text.encode("ascii")
    except UnicodeEncodeError:
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:
            raise ConfigError(f"invalid hostname {hostname!r}", status=400) from None
    if not text or len(text) > 253:
        raise ConfigError(f"invalid hostname {hostname!r}", status=400)
    labels = text.split(".")
    rest = labels[1:] if labels[0] == "*" else labels
    if not rest or not all(_LABEL.match(label) for label in rest):
        raise ConfigError(f"invalid hostname {hostname!r}", status=400)
    if labels[0] == "*" and len(rest) < 2:
        raise ConfigError(f"wildcard {hostname!r} is too broad", status=400)
    return text


@dataclass(frozen=True, slots=True)
class Account:
    id: str  # 32 lower-case hex digits: cloudflared's "account tag"
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Tunnel:
    id: uuid.UUID
    account_id: str
    name: str
    secret_hash: str = field(repr=False)
    created_at: datetime
    deleted_at: datetime | None = None
    secret_sealed: str | None = field(default=None, repr=False)

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None


@dataclass(frozen=True, slots=True)
class Route:
    hostname: str  # normalised; may be a wildcard "*.example.com"
    tunnel_id: uuid.UUID
    account_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TunnelAuthRecord:
    """What the tunnel listener needs to authenticate a registration."""

    id: uuid.UUID
    account_id: str
    name: str
    secret_hash: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class RoutingSnapshot:
    """An immutable view of the routing state, swapped atomically when the store changes.

    ``routes`` maps exact hostnames, ``wildcards`` maps the suffix of a wildcard route
    (``"example.com"`` for ``*.example.com``), ``tunnels`` holds the live (not deleted) tunnels.
    """

    routes: Mapping[str, uuid.UUID]
    wildcards: Mapping[str, uuid.UUID]
    tunnels: Mapping[uuid.UUID, TunnelAuthRecord]
    generation: int = 0

    @classmethod
    def empty(cls) -> RoutingSnapshot:
        return cls(routes={}, wildcards={}, tunnels={})

    def lookup(self, host: str) -> uuid.UUID | None:
        """The tunnel serving ``host`` (no port): an exact route first, then the longest
        matching wildcard suffix. A wildcard never matches its apex."""
        host = host.lower()
        if host.endswith("."):
            host = host[:-1]
        hit = self.routes.get(host)
        if hit is not None:
            return hit
        if not self.wildcards:
            return None
        dot = host.find(".")
        while dot != -1:
            hit = self.wildcards.get(host[dot + 1 :])
            if hit is not None:
                return hit
            dot = host.find(".", dot + 1)
        return None


# -- API tokens ---------------------------------------------------------------------------------

SCOPE_OPERATOR = "operator"  # every account; only for tokens without an account
SCOPE_ACCOUNT_ADMIN = "account:admin"  # everything in one account
SCOPE_TUNNEL_READ = "tunnel:read"  # list and inspect the account's tunnels and connections
SCOPE_TUNNEL_RUN = "tunnel:run"  # fetch the run token of a tunnel (of one, when tunnel_id is set)
SCOPES = (SCOPE_OPERATOR, SCOPE_ACCOUNT_ADMIN, SCOPE_TUNNEL_READ, SCOPE_TUNNEL_RUN)


@dataclass(frozen=True, slots=True)
class ApiToken:
    """An API token as stored: its public id, what it may do, and a hash of its secret."""

    id: str
    account_id: str | None
    name: str
    scopes: frozenset[str]
    tunnel_id: uuid.UUID | None
    secret_hash: str = field(repr=False)
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """One registered tunnel connection, as an edge node reported it."""

    id: uuid.UUID  # the edge's connection id
    tunnel_id: uuid.UUID
    account_id: str
    connector_id: uuid.UUID  # cloudflared's client id: one per connector process
    conn_index: int
    edge_node: str
    colo: str
    client_version: str
    arch: str
    origin_ip: str
    opened_at: datetime


LOGIN_PENDING = "pending"
LOGIN_APPROVED = "approved"
LOGIN_DENIED = "denied"
LOGIN_REDEEMED = "redeemed"


@dataclass(frozen=True, slots=True)
class LoginRequest:
    code: str
    client_name: str
    created_at: datetime
    expires_at: datetime
    status: str
    account_id: str | None
    poll_hash: str = field(repr=False, default="")
