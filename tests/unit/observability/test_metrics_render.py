"""The metrics module: cloudflared's exact names, histogram buckets, one registry per object."""

from __future__ import annotations

import uuid

from burrow.observability.metrics import (
    ConnectorStats,
    ConnectorView,
    EdgeStats,
    EdgeView,
    Histogram,
    ProxyStats,
    connector_registry,
    edge_registry,
    render,
)


class FakeConnector(ConnectorView):
    def __init__(self) -> None:
        self.proxy_stats = ProxyStats()
        self.stats = ConnectorStats()
        self.conns = [(0, "", "lab", 2), (1, "", "lab", 1)]

    def metric_connections(self) -> list[tuple[int, str, str, int]]:
        return self.conns

    def metric_concurrent(self) -> int:
        return sum(c[3] for c in self.conns)

    def metric_tunnel_id(self) -> str:
        return "t-1"


def _lines(text: bytes) -> list[str]:
    return text.decode().splitlines()


def test_connector_names_match_cloudflared() -> None:
    view = FakeConnector()
    view.proxy_stats.total_requests = 7
    view.proxy_stats.response(200)
    view.proxy_stats.response(200)
    view.proxy_stats.error()
    out = _lines(render(connector_registry(view)))
    assert "# TYPE cloudflared_tunnel_total_requests counter" in out
    assert "cloudflared_tunnel_total_requests 7.0" in out
    assert "cloudflared_tunnel_request_errors 1.0" in out
    assert 'cloudflared_tunnel_response_by_code{status_code="200"} 2.0' in out
    assert 'cloudflared_tunnel_response_by_code{status_code="502"} 1.0' in out
    assert "cloudflared_tunnel_ha_connections 2.0" in out
    assert "cloudflared_tunnel_concurrent_requests_per_tunnel 3.0" in out
    assert 'tunnel_ids{ha_conn_id="1",tunnel_id="t-1"} 1.0' in out
    assert not any(line.startswith("cloudflared_tunnel_total_requests_total") for line in out)


def test_registries_are_independent() -> None:
    a, b = FakeConnector(), FakeConnector()
    a.proxy_stats.total_requests = 1
    b.proxy_stats.total_requests = 2
    assert "cloudflared_tunnel_total_requests 1.0" in _lines(render(connector_registry(a)))
    assert "cloudflared_tunnel_total_requests 2.0" in _lines(render(connector_registry(b)))


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert h.total == 4 and abs(h.sum - 3.65) < 1e-9


class FakeEdge(EdgeView):
    def __init__(self, tunnel: uuid.UUID) -> None:
        self.stats = EdgeStats()
        self.tunnel = tunnel

    def metric_connections(self) -> list[tuple[uuid.UUID, bool, int]]:
        return [(self.tunnel, True, 2), (self.tunnel, False, 1)]


def test_edge_requests_latency_connections() -> None:
    t = uuid.UUID(int=1)
    view = FakeEdge(t)
    view.stats.request(t, "a.example", 200, 0.02, 0.03)
    view.stats.request(t, "a.example", 200, 0.02, 0.5)
    view.stats.request(None, "", 404, None, 0.0)
    view.stats.registration_failed("bad_credentials")
    out = _lines(render(edge_registry(view)))
    tid = str(t)
    assert (
        f'burrow_edge_requests_total{{hostname="a.example",status="200",tunnel_id="{tid}"}} 2.0'
        in out
    )
    assert 'burrow_edge_requests_total{hostname="",status="404",tunnel_id=""} 1.0' in out
    assert f'burrow_edge_request_duration_seconds_count{{tunnel_id="{tid}"}} 2.0' in out
    assert f'burrow_edge_response_latency_seconds_bucket{{le="0.025",tunnel_id="{tid}"}} 2.0' in out
    assert f'burrow_edge_tunnel_connections{{tunnel_id="{tid}"}} 1.0' in out
    assert f'burrow_edge_active_streams{{tunnel_id="{tid}"}} 3.0' in out
    assert 'burrow_edge_registration_failures_total{cause="bad_credentials"} 1.0' in out
