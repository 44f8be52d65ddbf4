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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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


class _Counter(Metric):
    """A counter whose samples carry exactly its name, as Go's client exposes them.

    prometheus-client would expose `x` as `x_total`; cloudflared's counters have no such suffix
    (`cloudflared_tunnel_total_requests`), and dashboards query those exact names.
    """

    def __init__(self, name: str, documentation: str, labels: Iterable[str] = ()) -> None:
        super().__init__(name, documentation, "counter")
        self._labelnames = tuple(labels)

    def add_metric(self, values: Iterable[str], value: float) -> None:
        self.add_sample(self.name, dict(zip(self._labelnames, values, strict=True)), value)


class _FnCollector(Collector):
    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self._fn = fn

    def collect(self) -> Iterator[Metric]:
        yield from self._fn()


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


def connector_registry(view: ConnectorView) -> CollectorRegistry:
    """A fresh registry exposing cloudflared's metric names for one connector."""

    def collect() -> Iterator[Metric]:
        proxy = view.proxy_stats
        stats = view.stats
        conns = view.metric_connections()
        tunnel_id = view.metric_tunnel_id()
        concurrent = view.metric_concurrent()
        if concurrent > proxy.max_concurrent:
            proxy.max_concurrent = concurrent

        yield GaugeMetricFamily(
            "cloudflared_tunnel_ha_connections", "Number of active ha connections", len(conns)
        )
        c = _Counter(
            "cloudflared_tunnel_total_requests",
            "Amount of requests proxied through all the tunnels",
        )
        c.add_metric([], proxy.total_requests)
        yield c
        c = _Counter("cloudflared_tunnel_request_errors", "Count of error proxying to origin")
        c.add_metric([], proxy.request_errors)
        yield c
        c = _Counter(
            "cloudflared_tunnel_response_by_code",
            "Count of responses by HTTP status code",
            labels=["status_code"],
        )
        for code, n in sorted(proxy.by_code.items()):
            c.add_metric([str(code)], n)
        yield c
        yield GaugeMetricFamily(
            "cloudflared_tunnel_concurrent_requests_per_tunnel",
            "Concurrent requests proxied through each tunnel",
            concurrent,
        )
        g = GaugeMetricFamily(
            "cloudflared_tunnel_max_concurrent_requests_per_tunnel",
            "Largest number of concurrent requests proxied through each tunnel so far "
            "(as seen by scrapes)",
            labels=["connection_id"],
        )
        g.add_metric([""], proxy.max_concurrent)
        yield g
        g = GaugeMetricFamily(
            "cloudflared_tunnel_server_locations",
            "Where each tunnel is connected to. 1 means current location, 0 means previous "
            "locations.",
            labels=["connection_id", "edge_location"],
        )
        for index, _cid, location, _n in conns:
            g.add_metric([str(index), location], 1)
        yield g
        g = GaugeMetricFamily(
            "tunnel_ids",
            "The ID of all tunnels (and their corresponding HA connection ID) running in this "
            "instance of cloudflared.",
            labels=["tunnel_id", "ha_conn_id"],
        )
        for index, _cid, _loc, _n in conns:
            g.add_metric([tunnel_id, str(index)], 1)
        yield g
        c = _Counter(
            "cloudflared_tunnel_tunnel_register_success",
            "Count of successful tunnel registrations",
            labels=["rpcName"],
        )
        c.add_metric(["registerConnection"], stats.register_success)
        yield c
        c = _Counter(
            "cloudflared_tunnel_tunnel_register_fail",
            "Count of tunnel registration errors by type",
            labels=["error", "rpcName"],
        )
        for cause, n in sorted(stats.register_fail.items()):
            c.add_metric([cause, "registerConnection"], n)
        yield c
        c = _Counter(
            "cloudflared_config_local_config_pushes",
            "Number of local configuration pushes to the edge",
        )
        c.add_metric([], stats.local_config_pushes)
        yield c
        c = _Counter(
            "cloudflared_config_local_config_pushes_errors",
            "Number of errors occurred during local configuration pushes",
        )
        c.add_metric([], stats.local_config_push_errors)
        yield c

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FnCollector(collect))
    return registry


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


def _tunnel_label(tunnel: uuid.UUID | None) -> str:
    return "" if tunnel is None else str(tunnel)


def edge_registry(view: EdgeView) -> CollectorRegistry:
    def collect() -> Iterator[Metric]:
        stats = view.stats
        c = _Counter(
            "burrow_edge_requests_total",
            "Eyeball requests by tunnel, hostname and response status",
            labels=["tunnel_id", "hostname", "status"],
        )
        for (tunnel, host, status), n in sorted(
            stats.requests.items(), key=lambda kv: (_tunnel_label(kv[0][0]), kv[0][1], kv[0][2])
        ):
            c.add_metric([_tunnel_label(tunnel), host, str(status)], n)
        yield c
        for name, doc, hists in (
            (
                "burrow_edge_response_latency_seconds",
                "Time from the request head to the response head, by tunnel",
                stats.ttfb,
            ),
            (
                "burrow_edge_request_duration_seconds",
                "Time from the request head to the end of the response, by tunnel",
                stats.duration,
            ),
        ):
            h = HistogramMetricFamily(name, doc, labels=["tunnel_id"])
            for tunnel, hist in hists.items():
                h.add_metric([_tunnel_label(tunnel)], hist.cumulative(), hist.sum)
            yield h
        live: dict[str, int] = {}
        streams: dict[str, int] = {}
        for tunnel, accepting, in_flight in view.metric_connections():
            label = str(tunnel)
            if accepting:
                live[label] = live.get(label, 0) + 1
            streams[label] = streams.get(label, 0) + in_flight
        g = GaugeMetricFamily(
            "burrow_edge_tunnel_connections",
            "Registered, accepting tunnel connections on this edge, by tunnel",
            labels=["tunnel_id"],
        )
        for label, n in sorted(live.items()):
            g.add_metric([label], n)
        yield g
        g = GaugeMetricFamily(
            "burrow_edge_active_streams",
            "Requests in flight through tunnel connections of this edge, by tunnel",
            labels=["tunnel_id"],
        )
        for label, n in sorted(streams.items()):
            g.add_metric([label], n)
        yield g
        c = _Counter(
            "burrow_edge_registrations_total", "Successful tunnel connection registrations"
        )
        c.add_metric([], stats.registration_success)
        yield c
        c = _Counter(
            "burrow_edge_registration_failures_total",
            "Refused tunnel connection registrations, by cause",
            labels=["cause"],
        )
        for cause, n in sorted(stats.registration_fail.items()):
            c.add_metric([cause], n)
        yield c

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FnCollector(collect))
    return registry


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of one registry, names kept verbatim."""
    out: list[str] = []
    for metric in registry.collect():
        doc = metric.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        mtype = {"unknown": "untyped", "info": "gauge", "stateset": "gauge"}.get(
            metric.type, metric.type
        )
        out.append(f"# HELP {metric.name} {doc}\n# TYPE {metric.name} {mtype}\n")
        for sample in metric.samples:
            labels = ""
            if sample.labels:
                labels = (
                    "{"
                    + ",".join(
                        f'{k}="{_escape_label(v)}"' for k, v in sorted(sample.labels.items())
                    )
                    + "}"
                )
            out.append(f"{sample.name}{labels} {floatToGoString(sample.value)}\n")  # type: ignore[no-untyped-call]
    return "".join(out).encode()
