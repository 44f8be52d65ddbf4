"""The Prometheus view of burrow's counters: registries and the text exposition.

Split from `burrow.observability.metrics` (which re-exports these names lazily) so that the
data path's plain counters do not import prometheus_client; it is loaded when a registry is
built or `/metrics` is scraped. See that module's docstring for the design.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from burrow.observability.metrics import ConnectorView, EdgeView

__all__ = ["connector_registry", "edge_registry", "render"]


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


def _counter(
    name: str,
    documentation: str,
    rows: Iterable[tuple[list[str], float]],
    labels: Iterable[str] = (),
) -> _Counter:
    """One counter family from (label values, value) rows."""
    family = _Counter(name, documentation, labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


class _FnCollector(Collector):
    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self._fn = fn

    def collect(self) -> Iterator[Metric]:
        yield from self._fn()


def _registry(collect: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    """A fresh registry built from `collect` at each scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FnCollector(collect))
    return registry


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
        yield _counter(
            "cloudflared_tunnel_total_requests",
            "Amount of requests proxied through all the tunnels",
            [([], proxy.total_requests)],
        )
        yield _counter(
            "cloudflared_tunnel_request_errors",
            "Count of error proxying to origin",
            [([], proxy.request_errors)],
        )
        yield _counter(
            "cloudflared_tunnel_response_by_code",
            "Count of responses by HTTP status code",
            [([str(code)], n) for code, n in sorted(proxy.by_code.items())],
            labels=["status_code"],
        )
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
        yield _counter(
            "cloudflared_tunnel_tunnel_register_success",
            "Count of successful tunnel registrations",
            [(["registerConnection"], stats.register_success)],
            labels=["rpcName"],
        )
        yield _counter(
            "cloudflared_tunnel_tunnel_register_fail",
            "Count of tunnel registration errors by type",
            [
                ([cause, "registerConnection"], n)
                for cause, n in sorted(stats.register_fail.items())
            ],
            labels=["error", "rpcName"],
        )
        yield _counter(
            "cloudflared_config_local_config_pushes",
            "Number of local configuration pushes to the edge",
            [([], stats.local_config_pushes)],
        )
        yield _counter(
            "cloudflared_config_local_config_pushes_errors",
            "Number of errors occurred during local configuration pushes",
            [([], stats.local_config_push_errors)],
        )

    return _registry(collect)


def _tunnel_label(tunnel: uuid.UUID | None) -> str:
    return "" if tunnel is None else str(tunnel)


def edge_registry(view: EdgeView) -> CollectorRegistry:
    def collect() -> Iterator[Metric]:
        stats = view.stats
        requests = sorted(
            stats.requests.items(), key=lambda kv: (_tunnel_label(kv[0][0]), kv[0][1], kv[0][2])
        )
        yield _counter(
            "burrow_edge_requests_total",
            "Eyeball requests by tunnel, hostname and response status",
            [([_tunnel_label(t), host, str(status)], n) for (t, host, status), n in requests],
            labels=["tunnel_id", "hostname", "status"],
        )
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
        for name, doc, values in (
            (
                "burrow_edge_tunnel_connections",
                "Registered, accepting tunnel connections on this edge, by tunnel",
                live,
            ),
            (
                "burrow_edge_active_streams",
                "Requests in flight through tunnel connections of this edge, by tunnel",
                streams,
            ),
        ):
            g = GaugeMetricFamily(name, doc, labels=["tunnel_id"])
            for label, n in sorted(values.items()):
                g.add_metric([label], n)
            yield g
        yield _counter(
            "burrow_edge_registrations_total",
            "Successful tunnel connection registrations",
            [([], stats.registration_success)],
        )
        yield _counter(
            "burrow_edge_registration_failures_total",
            "Refused tunnel connection registrations, by cause",
            [([cause], n) for cause, n in sorted(stats.registration_fail.items())],
            labels=["cause"],
        )

    return _registry(collect)


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
