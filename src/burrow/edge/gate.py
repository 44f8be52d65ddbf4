"""The checks every eyeball request passes before it may use a tunnel, shared by the HTTP/1.1
and the HTTP/2 listeners: connections per IP, per-IP and per-hostname request rates, WAF custom
rules, body size per hostname, concurrent streams per tunnel.

All state is in memory and O(1) per request; nothing here touches the store.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from burrow.edge import pages
from burrow.edge.registry import LiveConnection, Registry
from burrow.net.ratelimit import KeyedRateLimiter
from burrow.waf.rules import WafEngine

RATE_LIMITED = pages.EdgeError(
    429, 1015, "You are being rate limited", "Too many requests; retry after a short while."
)
WAF_BLOCKED = pages.EdgeError(
    403, 1020, "Access denied", "This request was blocked by the site's firewall rules."
)
TOO_LARGE = pages.EdgeError(
    413, 413, "Payload too large", "The request body is larger than this hostname accepts."
)
TUNNEL_BUSY = pages.EdgeError(
    503, 1200, "Tunnel busy", "The tunnel has too many requests in flight; retry shortly."
)
TOO_MANY_CONNECTIONS = pages.EdgeError(
    429, 1015, "Too many connections", "Too many open connections from this address."
)


@dataclass
class LimitSettings:
    """Operator-tunable limits of the public listeners (0 means unlimited / off)."""

    header_timeout: float = 30.0  # seconds to send a complete request head (slowloris)
    idle_timeout: float = 120.0  # keep-alive connection without a request
    max_conns_per_ip: int = 512
    ip_rate: float = 0.0  # requests per second per source address
    ip_burst: float = 0.0  # bucket size; 0 = 2 x rate
    host_rate: float = 0.0  # requests per second per hostname
    host_burst: float = 0.0
    max_body_bytes: int = 0  # default request body limit
    body_limits: Mapping[str, int] = field(default_factory=dict)  # per hostname
    max_streams_per_tunnel: int = 0
    max_h2_streams: int = 128  # concurrent streams per eyeball HTTP/2 connection


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer from the edge instead of the tunnel."""

    error: pages.EdgeError
    retry_after: int | None = None
    detail: str | None = None

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after is None:
            return []
        return [(b"Retry-After", str(self.retry_after).encode())]


class Gate:
    def __init__(self, settings: LimitSettings, waf: WafEngine | None = None) -> None:
        self.settings = settings
        self.waf = waf
        self._conns: dict[str, int] = {}
        s = settings
        self._ip = (
            KeyedRateLimiter(s.ip_rate, s.ip_burst or 2 * s.ip_rate) if s.ip_rate > 0 else None
        )
        self._host = (
            KeyedRateLimiter(s.host_rate, s.host_burst or 2 * s.host_rate)
            if s.host_rate > 0
            else None
        )

    # --- connections ----------------------------------------------------------------------

    def connection_opened(self, ip: str) -> bool:
        """Count a new connection; False (not counted) when the address is over its limit."""
        n = self._conns.get(ip, 0)
        limit = self.settings.max_conns_per_ip
        if limit and n >= limit:
            return False
        self._conns[ip] = n + 1
        return True

    def connection_closed(self, ip: str) -> None:
        n = self._conns.get(ip, 0) - 1
        if n <= 0:
            self._conns.pop(ip, None)
        else:
            self._conns[ip] = n

    def connections(self, ip: str) -> int:
        return self._conns.get(ip, 0)

    # --- requests -------------------------------------------------------------------------

    def check_request(
        self,
        *,
        ip: str,
        host: str,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        content_length: int | None,
        ssl: bool,
        ray: str,
    ) -> Refusal | None:
        """Rate limits, then WAF rules, then the body limit. None = go ahead."""
        if self._ip is not None and not self._ip.allow(ip):
            return Refusal(RATE_LIMITED, _ceil(self._ip.retry_after(ip)))
        if self._host is not None and not self._host.allow(host):
            return Refusal(RATE_LIMITED, _ceil(self._host.retry_after(host)))
        waf = self.waf
        if waf is not None:
            rule = waf.check(
                host=host, target=target, method=method, ip=ip, headers=headers, ssl=ssl, ray=ray
            )
            if rule is not None:
                return Refusal(WAF_BLOCKED)
        limit = self.body_limit(host)
        if limit and content_length is not None and content_length > limit:
            return Refusal(TOO_LARGE, detail=f"The request body is limited to {limit} bytes.")
        return None

    def body_limit(self, host: str) -> int:
        s = self.settings
        if s.body_limits:
            return s.body_limits.get(host, s.max_body_bytes)
        return s.max_body_bytes

    def pick(self, registry: Registry, tunnel_id: uuid.UUID) -> LiveConnection | Refusal | None:
        """A tunnel connection for a new stream, TUNNEL_BUSY when the tunnel is at its limit."""
        conn = registry.pick(tunnel_id)
        limit = self.settings.max_streams_per_tunnel
        if conn is not None and limit:
            total = sum(c.in_flight for c in registry.connections(tunnel_id))
            if total >= limit:
                return Refusal(TUNNEL_BUSY, 1)
        return conn


def _ceil(seconds: float) -> int:
    return max(1, math.ceil(seconds))
