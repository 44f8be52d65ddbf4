"""Lifecycle with real processes: edges and connectors started as `burrow` CLI subprocesses,
killed, stopped and frozen with signals while a bounded steady load runs through them."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from burrow.edge import tunnel_conn
from burrow.edge.tunnel_conn import EdgeTunnelConnection
from burrow.testing.harness import provision, start_edge
from burrow.testing.origins import start_test_origin
from burrow.testing.pgdb import PG_URL, edges_use_postgres, fresh_database

HOST = "app.localhost"
BURROW = [sys.executable, "-c", "from burrow.cli.main import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(predicate: Callable[[], object], within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


async def until_async(predicate: Callable[[], object], within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await predicate():  # type: ignore[misc]
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.1)


class Proc:
    """A burrow subprocess whose output goes to a log file (read on failure)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._fh = log.open("wb")
        self.p = subprocess.Popen(
            [*BURROW, *args], stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True
        )

    def signal(self, sig: int) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, sig)

    async def wait(self, within: float) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.p.poll() is None:
            if loop.time() > deadline:
                raise AssertionError(f"process did not exit in {within}s:\n{self.output()}")
            await asyncio.sleep(0.05)
        return self.p.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGCONT)
            os.kill(self.p.pid, signal.SIGKILL)
            self.p.wait(10)
        self._fh.close()


@dataclass
class Edge:
    state: Path
    tunnel: int = field(default_factory=free_port)
    http: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)
    store_url: str | None = None
    proc: Proc | None = None

    def start(self, log: Path, grace: float = 10.0) -> None:
        self.proc = Proc(
            [
                "edge", "serve", "--state-dir", str(self.state),
                "--tunnel-listen", f"127.0.0.1:{self.tunnel}",
                "--http-listen", f"127.0.0.1:{self.http}",
                "--admin-listen", f"127.0.0.1:{self.admin}",
                "--grace-period", str(grace),
                *(["--store-url", self.store_url] if self.store_url else []),
            ],
            log,
        )  # fmt: skip

    async def ready(self, session: aiohttp.ClientSession) -> None:
        async def up() -> bool:
            try:
                async with session.get(f"http://127.0.0.1:{self.admin}/healthz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await until_async(up, 20, f"edge on {self.admin}")

    async def connections(self, session: aiohttp.ClientSession) -> int:
        try:
            async with session.get(f"http://127.0.0.1:{self.admin}/metrics") as r:
                text = await r.text()
        except aiohttp.ClientError:
            return -1
        return int(
            sum(
                float(line.rpartition(" ")[2])
                for line in text.splitlines()
                if line.startswith("burrow_edge_tunnel_connections{")
            )
        )


@dataclass
class Load:
    """Bounded steady load of GET /echo; `ports()` says which edge(s) to send to."""

    ports: Callable[[], list[int]]
    workers: int = 3
    limit: int = 50000
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]
        return self

    async def _worker(self, i: int) -> None:
        n = i
        while not self._stop.is_set() and self.ok + len(self.failures) < self.limit:
            ports = self.ports()
            port = ports[n % len(ports)]
            n += 1
            try:
                async with self._session.get(
                    f"http://127.0.0.1:{port}/echo", headers={"Host": HOST}
                ) as r:
                    await r.read()
                    if r.status == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{port}: status {r.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(f"{port}: {exc!r}")

    async def wait_ok(self, n: int, within: float = 20.0) -> None:
        target = self.ok + n
        await until(
            lambda: self.ok >= target,
            within,
            f"{n} more successful requests (ok={self.ok}, failures={self.failures[-5:]})",
        )

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()


@pytest.fixture
async def origin_port() -> AsyncIterator[int]:
    runner, port = await start_test_origin()
    try:
        yield port
    finally:
        await runner.cleanup()


def create_tunnel(state: Path, store_url: str | None = None) -> str:
    store = ["--store-url", store_url] if store_url else []
    out = subprocess.run(
        [*BURROW, "edge", "tunnel", "create", "t1", "--hostname", HOST, "--state-dir", str(state),
         "--json", *store],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return str(json.loads(out.stdout)["token"])


def connector_args(token: str, origin_port: int, edges: list[int], *extra: str) -> list[str]:
    args = ["tunnel", "run", "--token", token, "--url", f"http://127.0.0.1:{origin_port}"]
    for port in edges:
        args += ["--edge", f"127.0.0.1:{port}"]
    return [*args, *extra]


@pytest.fixture(params=["sqlite", "postgres"])
async def shared_store(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """What two edge processes share: one SQLite file in one state directory, or one
    PostgreSQL database (when BURROW_TEST_PG_URL names a server)."""
    if request.param == "sqlite":
        if edges_use_postgres():
            pytest.skip("the PostgreSQL pass: the shared SQLite file is tested in the SQLite pass")
        yield None
        return
    if not PG_URL:
        pytest.skip("BURROW_TEST_PG_URL is not set (PostgreSQL server for tests)")
    async with fresh_database("burrow_ha") as url:
        yield url


@pytest.fixture
async def edge_store() -> AsyncIterator[str | None]:
    """The store of a single-edge test: the SQLite file in its state directory, or a fresh
    PostgreSQL database on the PostgreSQL pass (`BURROW_TEST_STORE=postgres`)."""
    if not edges_use_postgres():
        yield None
        return
    async with fresh_database("burrow_e2e") as url:
        yield url


async def test_edge_killed_under_load_then_back(
    tmp_path: Path, origin_port: int, shared_store: str | None
) -> None:
    """Two edge processes sharing one store; a connector with --edge A --edge B."""
    state = tmp_path / "state"
    token = create_tunnel(state, shared_store)
    a, b = Edge(state, store_url=shared_store), Edge(state, store_url=shared_store)
    procs: list[Proc] = []
    try:
        async with aiohttp.ClientSession() as s:
            a.start(tmp_path / "edge-a.log")
            procs.append(a.proc)  # type: ignore[arg-type]
            await a.ready(s)
            b.start(tmp_path / "edge-b.log")
            procs.append(b.proc)  # type: ignore[arg-type]
            await b.ready(s)
            conn = Proc(
                connector_args(
                    token, origin_port, [a.tunnel, b.tunnel],
                    "--ha-connections", "2", "--rehome-interval", "1",
                ),
                tmp_path / "connector.log",
            )  # fmt: skip
            procs.append(conn)

            async def spread(na: int, nb: int) -> bool:
                return (await a.connections(s), await b.connections(s)) == (na, nb)

            await until_async(lambda: spread(1, 1), 20, "one connection on each edge")
            alive = {a.http, b.http}
            async with Load(lambda: sorted(alive)) as load:
                await load.wait_ok(100)
                assert load.failures == []
                # Kill edge B: eyeballs stop using it (as a load balancer would) and its
                # connection moves to edge A.
                alive.discard(b.http)
                b.proc.signal(signal.SIGKILL)  # type: ignore[union-attr]
                await b.proc.wait(10)  # type: ignore[union-attr]
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                failures_at_kill = len(load.failures)
                await until_async(lambda: spread(2, -1), 5, "both connections on edge A")
                assert loop.time() - t0 < 5
                await load.wait_ok(100)
                # Requests through the surviving edge never failed.
                assert [f for f in load.failures if f.startswith(f"{a.http}:")] == []
                assert len(load.failures) == failures_at_kill
                # Edge B comes back on the same addresses: the connection goes home.
                b.start(tmp_path / "edge-b2.log")
                procs.append(b.proc)  # type: ignore[arg-type]
                await b.ready(s)
                await until_async(lambda: spread(1, 1), 15, "connections rebalanced")
                alive.add(b.http)
                await load.wait_ok(100)
            assert [f for f in load.failures if f.startswith(f"{a.http}:")] == []
    finally:
        for p in procs:
            p.stop()


async def test_replica_sigterm_under_load_loses_nothing(
    tmp_path: Path, origin_port: int, edge_store: str | None
) -> None:
    state = tmp_path / "state"
    token = create_tunnel(state, edge_store)
    edge = Edge(state, store_url=edge_store)
    procs: list[Proc] = []
    try:
        async with aiohttp.ClientSession() as s:
            edge.start(tmp_path / "edge.log")
            procs.append(edge.proc)  # type: ignore[arg-type]
            await edge.ready(s)
            r1 = Proc(
                connector_args(token, origin_port, [edge.tunnel], "--ha-connections", "2"),
                tmp_path / "r1.log",
            )
            r2_log = tmp_path / "r2.json"
            r2 = Proc(
                connector_args(
                    token, origin_port, [edge.tunnel], "--ha-connections", "2",
                    "--output", "json", "--loglevel", "debug", "--logfile", str(r2_log),
                ),
                tmp_path / "r2.log",
            )  # fmt: skip
            procs += [r1, r2]

            async def four() -> bool:
                return await edge.connections(s) == 4

            await until_async(four, 20, "2 replicas x 2 connections")
            async with Load(lambda: [edge.http], workers=4) as load:
                await load.wait_ok(200)
                r1.signal(signal.SIGTERM)
                assert await r1.wait(15) == 0, r1.output()
                await load.wait_ok(200)
            assert load.failures == [], load.failures
            assert await edge.connections(s) == 2
            assert "unregistering 2 connection(s)" in r1.output()
            # --output json --logfile: one JSON object per line, and never a secret.
            records = [json.loads(line) for line in r2_log.read_text().splitlines()]
            assert any("registered tunnel connection" in r["message"] for r in records)
            assert {"time", "level", "logger", "message"} <= set(records[0])
            secret = json.loads(base64.b64decode(token))["s"]
            for text in (r1.output(), r2_log.read_text(), r2.output()):
                assert token not in text and secret not in text
    finally:
        for p in procs:
            p.stop()


async def test_edge_sigterm_lets_a_long_download_finish(
    tmp_path: Path, origin_port: int, edge_store: str | None
) -> None:
    state = tmp_path / "state"
    token = create_tunnel(state, edge_store)
    edge = Edge(state, store_url=edge_store)
    procs: list[Proc] = []
    try:
        async with aiohttp.ClientSession() as s:
            edge.start(tmp_path / "edge.log", grace=15)
            procs.append(edge.proc)  # type: ignore[arg-type]
            await edge.ready(s)
            procs.append(
                Proc(connector_args(token, origin_port, [edge.tunnel]), tmp_path / "c.log")
            )

            async def up() -> bool:
                return await edge.connections(s) == 4

            await until_async(up, 20, "4 connections")
            url = f"http://127.0.0.1:{edge.http}/sse?n=20&interval=0.15"
            loop = asyncio.get_running_loop()
            async with s.get(url, headers={"Host": HOST}) as r:
                assert r.status == 200
                first = await r.content.readline()
                assert first.startswith(b"data: ")
                t0 = loop.time()
                edge.proc.signal(signal.SIGTERM)  # type: ignore[union-attr]
                rest = await r.content.read()
            events = [first, *[ln for ln in rest.split(b"\n") if ln.startswith(b"data: ")]]
            assert len(events) == 20  # every event of the ~3 s stream arrived
            assert loop.time() - t0 < 15
            # The edge stopped taking new requests, and exits once the stream is done.
            assert await edge.proc.wait(10) == 0, edge.proc.output()  # type: ignore[union-attr]
            assert loop.time() - t0 < 15
    finally:
        for p in procs:
            p.stop()


async def test_frozen_connector_is_dropped_and_requests_move(
    tmp_path: Path, origin_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGSTOP one replica: the edge's PINGs go unanswered, it drops that replica's
    connections, and requests go to the other replica."""
    monkeypatch.setattr(tunnel_conn, "PING_INTERVAL", 0.5)
    monkeypatch.setattr(tunnel_conn, "PING_TIMEOUT", 2.0)
    edge = await start_edge(tmp_path / "edge")
    procs: list[Proc] = []
    try:
        made = await provision(edge, hostnames=(HOST,))
        port = edge.tunnel_addresses[0][1]
        for name in ("r1", "r2"):
            procs.append(
                Proc(
                    connector_args(made.token, origin_port, [port], "--ha-connections", "1"),
                    tmp_path / f"{name}.log",
                )
            )

        def conns() -> list[EdgeTunnelConnection]:
            return [c for c in edge.registry.all() if isinstance(c, EdgeTunnelConnection)]

        await until(lambda: len(conns()) == 2, 20, "two replicas")
        procs[0].signal(signal.SIGSTOP)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await until(lambda: len(conns()) == 1, 10, "the frozen replica to be dropped")
        assert loop.time() - t0 < 0.5 + 2.0 + 1.0
        async with aiohttp.ClientSession() as s:
            for _ in range(20):
                async with s.get(
                    f"http://127.0.0.1:{edge.http_addresses[0][1]}/echo", headers={"Host": HOST}
                ) as r:
                    assert r.status == 200
    finally:
        for p in procs:
            p.stop()
        await edge.stop(grace=0.5)


async def test_connector_sigterm_waits_for_in_flight_and_second_signal_forces(
    tmp_path: Path, origin_port: int, edge_store: str | None
) -> None:
    state = tmp_path / "state"
    token = create_tunnel(state, edge_store)
    edge = Edge(state, store_url=edge_store)
    procs: list[Proc] = []
    try:
        async with aiohttp.ClientSession() as s:
            edge.start(tmp_path / "edge.log")
            procs.append(edge.proc)  # type: ignore[arg-type]
            await edge.ready(s)
            conn = Proc(
                connector_args(token, origin_port, [edge.tunnel], "--ha-connections", "1",
                               "--grace-period", "30s"),
                tmp_path / "c.log",
            )  # fmt: skip
            procs.append(conn)

            async def up() -> bool:
                return await edge.connections(s) == 1

            await until_async(up, 20, "the connection")
            url = f"http://127.0.0.1:{edge.http}/slow?delay=1.5"
            slow = asyncio.create_task(s.get(url, headers={"Host": HOST}))
            await until(lambda: "registered" in conn.output(), 5, "connector log")
            await asyncio.sleep(0.3)  # let the request reach the origin
            conn.signal(signal.SIGTERM)
            r = await slow
            assert r.status == 200 and await r.text() == "slow\n"  # finished in the grace period
            assert await conn.wait(10) == 0, conn.output()

            # A second signal does not wait for the grace period.
            conn2 = Proc(
                connector_args(token, origin_port, [edge.tunnel], "--ha-connections", "1",
                               "--grace-period", "30s"),
                tmp_path / "c2.log",
            )  # fmt: skip
            procs.append(conn2)
            await until_async(up, 20, "the second connector")
            stuck = asyncio.create_task(
                s.get(
                    f"http://127.0.0.1:{edge.http}/sse?n=600&interval=0.1", headers={"Host": HOST}
                )
            )
            await asyncio.sleep(0.3)
            conn2.signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            assert conn2.p.poll() is None  # still draining the 60 s stream
            conn2.signal(signal.SIGTERM)
            assert await conn2.wait(5) == 130
            stuck.cancel()
    finally:
        for p in procs:
            p.stop()
