"""Records kept in the state store (immutable values; the store returns fresh ones)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from burrow.errors import ConfigError

__all__ = [
    "Account",
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
