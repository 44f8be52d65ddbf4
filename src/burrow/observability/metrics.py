"""Every metric burrow exports, in one module.

Why plain integers plus a custom collector: the data path only does `n += 1` on attributes of
objects it already holds (no label lookup, no lock, no prometheus-client call per request); the
Prometheus view is built only when `/metrics` is scraped. Gauges that can be derived from live
state (concurrent requests, live connections, active streams) are computed at scrape time, so
they can never drift from the truth.

Each process object (an edge, a connector) owns its own `CollectorRegistry`, so tests can run
several of them in one interpreter.

Names: the connector uses cloudflared's (`connection/metrics.go`, `proxy/metrics.go`,
`supervisor/metrics.go`), so dashboards built for cloudflared work unchanged; the edge uses
`burrow_edge_*`.
"""

from __future__ import annotations

import bisect
import uuid
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class Histogram:
    """A histogram as a list of ints: `observe` is one bisect and two additions."""

    __slots__ = ("buckets", "counts", "sum", "total")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            running += n
            out.append((_fmt_bound(bound), float(running)))
        out.append(("+Inf", float(self.total)))
        return out


def _fmt_bound(bound: float) -> str:
    return repr(float(bound))


# --- connector ---------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class ProxyStats:
    """Counted by the connector's dispatcher and relays (plain ints; see the module doc)."""

    total_requests: int = 0
    request_errors: int = 0
    by_code: dict[int, int] = field(default_factory=dict)
    max_concurrent: int = 0

    def response(self, status: int) -> None:
        self.by_code[status] = self.by_code.get(status, 0) + 1

    def error(self) -> None:
        """The connector could not get a response from the origin (it answers 502 itself)."""
        self.request_errors += 1
        self.by_code[502] = self.by_code.get(502, 0) + 1


@dataclass(slots=True, eq=False)
class ConnectorStats:
    """Connection-level counters of one connector process."""

    register_success: int = 0
    register_fail: dict[str, int] = field(default_factory=dict)
    local_config_pushes: int = 0
    local_config_push_errors: int = 0

    def registration_failed(self, cause: str) -> None:
        self.register_fail[cause] = self.register_fail.get(cause, 0) + 1


class ConnectorView:
    """What the connector collector reads at scrape time (implemented by `Connector`)."""

    proxy_stats: ProxyStats
    stats: ConnectorStats

    def metric_connections(self) -> list[tuple[int, str, str, int]]:
        """(index, connection id, edge location, in-flight streams) per registered connection."""
        raise NotImplementedError

    def metric_concurrent(self) -> int:
        """Requests in flight on every connection, including ones being retired."""
        raise NotImplementedError

    def metric_tunnel_id(self) -> str:
        raise NotImplementedError


# --- edge --------------------------------------------------------------------------------------


class EdgeStats:
    """Request accounting at the edge, keyed by (tunnel, hostname, status).

    Hostnames are only those the edge routes (unknown hosts are counted under an empty label), so
    an eyeball cannot blow up label cardinality with random Host headers.
    """

    __slots__ = ("duration", "registration_fail", "registration_success", "requests", "ttfb")

    def __init__(self) -> None:
        self.requests: dict[tuple[uuid.UUID | None, str, int], int] = {}
        self.ttfb: dict[uuid.UUID | None, Histogram] = {}
        self.duration: dict[uuid.UUID | None, Histogram] = {}
        self.registration_fail: dict[str, int] = {}
        self.registration_success = 0

    def request(
        self, tunnel: uuid.UUID | None, host: str, status: int, ttfb: float | None, duration: float
    ) -> None:
        key = (tunnel, host, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.duration.get(tunnel)
        if hist is None:
            hist = self.duration[tunnel] = Histogram()
            self.ttfb[tunnel] = Histogram()
        hist.observe(duration)
        if ttfb is not None:
            self.ttfb[tunnel].observe(ttfb)

    def registration_failed(self, cause: str) -> None:
        self.registration_fail[cause] = self.registration_fail.get(cause, 0) + 1


class EdgeView:
    """What the edge collector reads at scrape time (implemented by `EdgeServer`)."""

    stats: EdgeStats

    def metric_connections(self) -> list[tuple[uuid.UUID, bool, int]]:
        """(tunnel id, accepting, streams in flight) for every tunnel connection of this edge."""
        raise NotImplementedError


# The Prometheus view lives in `burrow.observability.prometheus` and is imported on first use
# (a scrape, or a registry being built): prometheus_client, http.server and wsgiref cost a
# connector ~3 MB of RSS that an idle process without a metrics listener never needs.
_LAZY = frozenset({"connector_registry", "edge_registry", "render", "_Counter", "_FnCollector"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from burrow.observability import prometheus

        return getattr(prometheus, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
