"""High availability in one process: several connections, a cut socket under load, several
edges, /ready and the metrics (real edge, connector and origin on loopback)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from burrow.connector.supervisor import Connector, ConnectorConfig
from burrow.edge.server import EdgeServer
from burrow.edge.tunnel_conn import EdgeTunnelConnection
from burrow.ingress.rules import Ingress
from burrow.net.listen import format_hostport
from burrow.testing.harness import provision, start_edge

HOST = {"Host": "app.localhost"}


def _ingress(origin_port: int) -> Ingress:
    return Ingress.parse(
        [
            {"hostname": "app.localhost", "service": f"http://127.0.0.1:{origin_port}"},
            {"hostname": "down.localhost", "service": "http://127.0.0.1:1"},
            {"service": "http_status:404"},
        ]
    )


async def _until(predicate: Callable[[], bool], within: float, what: str) -> None:
    """Poll a condition on live state (there is no event for 'the edge sees N connections')."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


def _edge_conns(edge: EdgeServer) -> list[EdgeTunnelConnection]:
    return [c for c in edge.registry.all() if isinstance(c, EdgeTunnelConnection)]


@dataclass
class Load:
    """Bounded steady load: `workers` clients each sending GETs until stopped (or `limit`)."""

    url: str
    workers: int = 4
    limit: int = 20000
    ok: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        return self

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set() and self.ok + len(self.failures) < self.limit:
            try:
                async with self._session.get(self.url, headers=HOST) as r:
                    await r.read()
                    if r.status == 200:
                        self.ok += 1
                    else:
                        self.failures.append((loop.time(), f"status {r.status}"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append((loop.time(), repr(exc)))

    async def wait_ok(self, n: int, within: float = 10.0) -> None:
        target = self.ok + n
        await _until(lambda: self.ok >= target, within, f"{n} more successful requests")

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[EdgeServer]:
    edge = await start_edge(
        tmp_path / "edge", tunnel_listen=["127.0.0.1:0", "127.0.0.1:0"], admin_listen="127.0.0.1:0"
    )
    try:
        yield edge
    finally:
        await edge.stop(grace=1.0)


def _connector(made, origin_port: int, edges: list[str], **kw: object) -> Connector:  # type: ignore[no-untyped-def]
    conf = ConnectorConfig(
        credentials=made.credentials,
        ingress=_ingress(origin_port),
        edges=edges,
        grace_period=5.0,
        metrics_address="127.0.0.1:0",
        **kw,  # type: ignore[arg-type]
    )
    return Connector(conf)


async def test_four_connections_survive_a_cut_socket(edge: EdgeServer, origin_port: int) -> None:
    made = await provision(edge)
    edges = [format_hostport(*a) for a in edge.tunnel_addresses]
    connector = _connector(made, origin_port, edges, ha_connections=4)
    await connector.start()
    try:
        await _until(
            lambda: len(_edge_conns(edge)) == 4 and connector.ready_connections == 4,
            10,
            "4 registered connections",
        )
        conns = _edge_conns(edge)
        assert sorted(c.conn_index for c in conns) == [0, 1, 2, 3]
        assert {c.client_id for c in conns} == {connector.connector_id.bytes}
        # spread over both tunnel listeners (2 addresses, 4 connections)
        assert connector.placement[0][:2] != connector.placement[1][:2]
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://{format_hostport(*connector.metrics_address)}/ready") as r:
                assert r.status == 200
                body = await r.json()
        assert body == {
            "status": 200,
            "readyConnections": 4,
            "connectorId": str(connector.connector_id),
        }

        url = f"http://127.0.0.1:{edge.http_addresses[0][1]}/echo"
        async with Load(url) as load:
            await load.wait_ok(200)
            victim = next(c for c in _edge_conns(edge) if c.conn_index == 2)
            in_flight_at_cut = victim.in_flight
            assert victim.transport is not None
            victim.transport.abort()  # the socket, not the process
            await load.wait_ok(100)
            await _until(
                lambda: sorted(c.conn_index for c in _edge_conns(edge)) == [0, 1, 2, 3],
                10,
                "connection 2 to come back",
            )
            cut_failures = list(load.failures)
            await load.wait_ok(300)
        # Only the requests in flight on the cut connection may fail, nothing after.
        assert len(cut_failures) <= in_flight_at_cut, cut_failures
        assert load.failures == cut_failures
        assert load.ok >= 600
    finally:
        await connector.stop(grace=1.0)


async def test_load_is_balanced_least_in_flight(edge: EdgeServer, origin_port: int) -> None:
    """Slow requests in parallel spread over every connection (and so over replicas)."""
    made = await provision(edge)
    edges = [format_hostport(*a) for a in edge.tunnel_addresses]
    a = _connector(made, origin_port, edges, ha_connections=2)
    b = _connector(made, origin_port, edges, ha_connections=2)
    await a.start()
    await b.start()
    try:
        await _until(lambda: len(_edge_conns(edge)) == 4, 10, "2 replicas x 2 connections")
        assert len({c.client_id for c in _edge_conns(edge)}) == 2
        url = f"http://127.0.0.1:{edge.http_addresses[0][1]}/slow?delay=0.5"
        peak: dict[int, int] = {}

        async def one(s: aiohttp.ClientSession) -> int:
            async with s.get(url, headers=HOST) as r:
                await r.read()
                return r.status

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            tasks = [asyncio.create_task(one(s)) for _ in range(16)]
            await _until(
                lambda: sum(c.in_flight for c in _edge_conns(edge)) == 16, 5, "16 in flight"
            )
            for c in _edge_conns(edge):
                peak[id(c)] = c.in_flight
            assert await asyncio.gather(*tasks) == [200] * 16
        assert sorted(peak.values()) == [4, 4, 4, 4]
        served = [a.proxy_stats.total_requests, b.proxy_stats.total_requests]
        assert served == [8, 8]
    finally:
        await a.stop(grace=1.0)
        await b.stop(grace=1.0)


def _samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, labels as written (sorted by the renderer)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


async def test_ready_follows_connections_and_metrics_match_traffic(
    tmp_path: Path, origin_port: int
) -> None:
    state = tmp_path / "edge"
    edge = await start_edge(state, admin_listen="127.0.0.1:0")
    made = await provision(edge, hostnames=("app.localhost", "down.localhost"))
    tunnel_addr = format_hostport(*edge.tunnel_addresses[0])
    http_port = edge.http_addresses[0][1]
    await edge.stop(grace=0)  # the connector starts with no edge to talk to

    connector = _connector(made, origin_port, [tunnel_addr], ha_connections=2, retries=100)
    await connector.start()
    edge2: EdgeServer | None = None
    try:
        base = f"http://{format_hostport(*connector.metrics_address)}"
        async with aiohttp.ClientSession() as s:

            async def ready() -> tuple[int, dict[str, object]]:
                async with s.get(base + "/ready") as r:
                    return r.status, await r.json()

            status, body = await ready()
            assert (status, body["status"], body["readyConnections"]) == (503, 503, 0)
            async with s.get(base + "/healthcheck") as r:
                assert r.status == 200 and (await r.text()).strip() == "OK"
            async with s.get(base + "/config") as r:
                conf = await r.json()
            assert set(conf) == {"version", "config"}
            assert conf["config"]["ingress"][0]["hostname"] == "app.localhost"

            edge2 = await start_edge(
                state,
                tunnel_listen=[tunnel_addr],
                http_listen=[f"127.0.0.1:{http_port}"],
                admin_listen="127.0.0.1:0",
            )
            await _until(lambda: connector.ready_connections == 2, 15, "both connections")
            status, body = await ready()
            assert (status, body["readyConnections"]) == (200, 2)

            edge_url = f"http://127.0.0.1:{http_port}"
            sent = {"/status/200": 5, "/status/404": 3, "/status/503": 2}
            for path, n in sent.items():
                for _ in range(n):
                    async with s.get(edge_url + path, headers=HOST) as r:
                        assert r.status == int(path.rsplit("/", 1)[1])
            for _ in range(2):  # the origin is down: the connector answers 502 itself
                async with s.get(edge_url + "/", headers={"Host": "down.localhost"}) as r:
                    assert r.status == 502
            async with s.get(edge_url + "/", headers={"Host": "nowhere.localhost"}) as r:
                assert r.status == 404

            async with s.get(base + "/metrics") as r:
                assert r.headers["Content-Type"].startswith("text/plain")
                m = _samples(await r.text())
            assert m["cloudflared_tunnel_ha_connections"] == 2
            assert m["cloudflared_tunnel_total_requests"] == 12
            assert m["cloudflared_tunnel_request_errors"] == 2
            assert m['cloudflared_tunnel_response_by_code{status_code="200"}'] == 5
            assert m['cloudflared_tunnel_response_by_code{status_code="404"}'] == 3
            assert m['cloudflared_tunnel_response_by_code{status_code="503"}'] == 2
            assert m['cloudflared_tunnel_response_by_code{status_code="502"}'] == 2
            assert m["cloudflared_tunnel_concurrent_requests_per_tunnel"] == 0
            assert (
                m['cloudflared_tunnel_tunnel_register_success{rpcName="registerConnection"}'] >= 2
            )

            assert edge2.admin_address is not None
            async with s.get(f"http://{format_hostport(*edge2.admin_address)}/metrics") as r:
                e = _samples(await r.text())
            tid = str(made.tunnel.id)

            def req(host: str, status: int, tunnel: str = tid) -> float:
                key = f'burrow_edge_requests_total{{hostname="{host}",status="{status}",tunnel_id="{tunnel}"}}'
                return e.get(key, 0)

            assert req("app.localhost", 200) == 5
            assert req("app.localhost", 404) == 3
            assert req("app.localhost", 503) == 2
            assert req("down.localhost", 502) == 2
            assert req("", 404, "") == 1
            assert e[f'burrow_edge_tunnel_connections{{tunnel_id="{tid}"}}'] == 2
            assert e[f'burrow_edge_active_streams{{tunnel_id="{tid}"}}'] == 0
            assert e["burrow_edge_registrations_total"] >= 2
            count = e[f'burrow_edge_request_duration_seconds_count{{tunnel_id="{tid}"}}']
            assert count == 12
            assert any(re.match(r"burrow_edge_response_latency_seconds_bucket", k) for k in e)

            await edge2.stop(grace=1.0)
            edge2 = None
            await _until(lambda: connector.ready_connections == 0, 10, "connections gone")
            status, body = await ready()
            assert (status, body["readyConnections"]) == (503, 0)
    finally:
        await connector.stop(grace=0.5)
        if edge2 is not None:
            await edge2.stop(grace=0.5)


async def test_refused_registrations_are_counted(edge: EdgeServer, origin_port: int) -> None:
    made = await provision(edge)
    edges = [format_hostport(*a) for a in edge.tunnel_addresses]
    bad = dataclasses.replace(made.credentials, tunnel_secret=b"x" * 32)
    connector = Connector(
        ConnectorConfig(credentials=bad, ingress=_ingress(origin_port), edges=edges)
    )
    with pytest.raises(Exception, match="credentials rejected"):
        await asyncio.wait_for(connector.run(), 10)
    await connector.stop(grace=0)
    assert edge.stats.registration_fail == {"bad_credentials": 1}


async def test_a_name_with_several_addresses_spreads_connections(
    tmp_path: Path, origin_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--edge NAME:PORT` where NAME resolves to several addresses (here ::1 and 127.0.0.1,
    from a resolver stub: the sockets behind them are real)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        edge = await start_edge(
            tmp_path / "edge", tunnel_listen=[f"127.0.0.1:{port}", f"[::1]:{port}"]
        )
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback or port taken: {exc}")
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def resolver(host, port_, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host == "edge.test":
            return [
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port_, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port_)),
            ]
        return await real(host, port_, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", resolver)
    connector = None
    try:
        made = await provision(edge)
        connector = _connector(made, origin_port, [f"edge.test:{port}"], ha_connections=4)
        await connector.start()
        assert connector.addresses == [("::1", port), ("127.0.0.1", port)]
        await _until(lambda: connector.ready_connections == 4, 10, "4 connections")
        hosts = [connector.placement[i][0] for i in range(4)]
        assert hosts == ["::1", "127.0.0.1", "::1", "127.0.0.1"]
        peers = sorted(c.peer for c in _edge_conns(edge))
        assert peers == ["127.0.0.1", "127.0.0.1", "::1", "::1"]
    finally:
        if connector is not None:
            await connector.stop(grace=0.5)
        await edge.stop(grace=0.5)


async def test_retries_bound_the_first_connection(edge: EdgeServer, origin_port: int) -> None:
    """`--retries N`: with no edge reachable at start-up the connector gives up after N+1
    attempts (backoff 0.25-0.5 s, 0.5-1 s, ...) instead of retrying for ever."""
    import socket

    made = await provision(edge)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"  # nothing listens once closed
    connector = _connector(made, origin_port, [dead], retries=2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(Exception, match="after 3 attempt"):
        await asyncio.wait_for(connector.run(), 10)
    assert loop.time() - t0 < 4
    await connector.stop(grace=0)
