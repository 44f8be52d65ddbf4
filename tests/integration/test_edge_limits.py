"""Limits and request-smuggling defences of the public listeners (HTTP/1.1, and HTTP/2 idle
connections), through a real edge, connector and origin on loopback."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import h2.events

from burrow.edge.gate import LimitSettings
from burrow.edge.server import EdgeServer
from burrow.testing.frontdoor import edge_stack, h2_eyeball, raw_exchange

HOST = {"Host": "app.localhost"}


def _url(edge: EdgeServer, path: str = "/echo") -> str:
    return f"http://127.0.0.1:{edge.http_addresses[0][1]}{path}"


# --- slowloris, connections per IP -------------------------------------------------------------


async def test_slowloris_connections_do_not_stop_normal_clients(tmp_path: Path) -> None:
    limits = LimitSettings(header_timeout=2.0, max_conns_per_ip=100)
    async with edge_stack(tmp_path, limits=limits) as (edge, _seen):
        port = edge.http_addresses[0][1]
        attackers: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            # 300 connections from another loopback address, each stuck in its request head.
            for _ in range(300):
                r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
                w.write(b"GET /echo HTTP/1.1\r\nHost: app.localhost\r\nX-Slow: 1")
                attackers.append((r, w))
            # A normal client is served promptly while they hang on.
            t0 = time.monotonic()
            async with aiohttp.ClientSession() as s:
                for _ in range(20):
                    async with s.get(_url(edge), headers=HOST) as r:
                        assert r.status == 200
            assert time.monotonic() - t0 < 5.0
            # Over the per-IP limit: refused at once with 429; the rest cut off at the deadline.
            answers = await asyncio.gather(*(asyncio.wait_for(r.read(), 10) for r, _w in attackers))
            refused = [a for a in answers if a.startswith(b"HTTP/1.1 429")]
            cut = [a for a in answers if a == b""]
            assert len(refused) == 200 and len(cut) == 100
            assert edge.gate.connections("127.0.0.2") == 0
        finally:
            for _r, w in attackers:
                w.close()


async def test_idle_keepalive_connection_is_closed(tmp_path: Path) -> None:
    limits = LimitSettings(idle_timeout=0.5)
    async with edge_stack(tmp_path, limits=limits) as (edge, _seen):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.http_addresses[0][1])
        writer.write(b"GET /echo HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
        t0 = time.monotonic()
        data = await asyncio.wait_for(reader.read(), 5)  # the response, then EOF when idle
        assert data.startswith(b"HTTP/1.1 200")
        assert 0.4 < time.monotonic() - t0 < 4
        writer.close()


async def test_header_deadline_also_applies_to_later_keepalive_requests(tmp_path: Path) -> None:
    limits = LimitSettings(header_timeout=0.5, idle_timeout=30.0)
    async with edge_stack(tmp_path, limits=limits) as (edge, _seen):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.http_addresses[0][1])
        writer.write(b"GET /echo HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
        got = b""
        while b"}" not in got:  # the JSON body of the first response
            got += await asyncio.wait_for(reader.read(65536), 5)
        assert got.startswith(b"HTTP/1.1 200")
        # The second request's head trickles in and never completes: cut off at the
        # header deadline, long before the idle timeout.
        t0 = time.monotonic()
        writer.write(b"GET /echo HTTP/1.1\r\nHost: app")
        for _ in range(3):
            await asyncio.sleep(0.2)
            writer.write(b".")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert time.monotonic() - t0 < 3
        writer.close()


# --- rate limits ---------------------------------------------------------------------------------


async def test_per_ip_rate_limit_answers_429_and_recovers(tmp_path: Path) -> None:
    limits = LimitSettings(ip_rate=2.0, ip_burst=5.0)
    async with edge_stack(tmp_path, limits=limits) as (edge, seen):
        async with aiohttp.ClientSession() as s:
            statuses = []
            for _ in range(6):
                async with s.get(_url(edge), headers=HOST) as r:
                    statuses.append(r.status)
                    retry = r.headers.get("Retry-After")
            assert statuses == [200] * 5 + [429]
            assert retry is not None and 1 <= int(retry) <= 2
            assert len(seen) == 5  # the refused request never reached the origin
            # Another address is not affected.
            got = await raw_exchange(
                edge.http_addresses[0][1],
                b"GET /echo HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n",
                local="127.0.0.3",
            )
            assert got[0][0] == 200
            await asyncio.sleep(int(retry))  # the bucket refills with time: nothing to await
            async with s.get(_url(edge), headers=HOST) as r:
                assert r.status == 200


async def test_per_hostname_rate_limit(tmp_path: Path) -> None:
    limits = LimitSettings(host_rate=1.0, host_burst=3.0)
    async with edge_stack(tmp_path, limits=limits) as (edge, _seen):
        port = edge.http_addresses[0][1]
        statuses = []
        for i in range(4):  # from four addresses: the hostname's bucket is what runs out
            got = await raw_exchange(
                port,
                b"GET /echo HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n",
                local=f"127.0.1.{i + 1}",
            )
            statuses.append(got[0][0])
        assert statuses == [200, 200, 200, 429]
        got = await raw_exchange(
            port, b"GET /echo HTTP/1.1\r\nHost: other.localhost\r\nConnection: close\r\n\r\n"
        )
        assert got[0][0] == 200


# --- body limits, tunnel concurrency -----------------------------------------------------------


async def test_body_limit_per_hostname(tmp_path: Path) -> None:
    limits = LimitSettings(max_body_bytes=0, body_limits={"app.localhost": 1000})
    async with edge_stack(tmp_path, limits=limits) as (edge, seen):
        async with aiohttp.ClientSession() as s:
            async with s.post(_url(edge), data=b"x" * 1000, headers=HOST) as r:
                assert r.status == 200
            async with s.post(_url(edge), data=b"x" * 1001, headers=HOST) as r:
                assert r.status == 413
            async with s.post(
                _url(edge), data=b"x" * 5000, headers={"Host": "other.localhost"}
            ) as r:
                assert r.status == 200  # no limit for the other hostname
        assert seen == ["/echo", "/echo"]
        port = edge.http_addresses[0][1]
        chunked = (
            b"POST /upload HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"200\r\n"
            + b"y" * 512
            + b"\r\n"
            + b"200\r\n"
            + b"y" * 512
            + b"\r\n0\r\n\r\n"
        )
        got = await raw_exchange(port, chunked)
        assert [g[0] for g in got] == [413]


async def test_concurrent_streams_per_tunnel(tmp_path: Path) -> None:
    limits = LimitSettings(max_streams_per_tunnel=2)
    async with edge_stack(tmp_path, limits=limits) as (edge, seen):
        async with aiohttp.ClientSession() as s:

            async def slow() -> int:
                async with s.get(_url(edge, "/slow?delay=1"), headers=HOST) as r:
                    await r.read()
                    return r.status

            tasks = [asyncio.create_task(slow()) for _ in range(2)]
            # Wait until both streams are really in flight at the edge.
            await asyncio.wait_for(seen.wait_for(2), 5)
            assert sum(c.in_flight for c in edge.registry.all()) == 2
            async with s.get(_url(edge), headers=HOST) as r:
                assert r.status == 503
                assert r.headers["Retry-After"] == "1"
            assert await asyncio.gather(*tasks) == [200, 200]
            async with s.get(_url(edge), headers=HOST) as r:
                assert r.status == 200


# --- request smuggling ----------------------------------------------------------------------------

_SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: app.localhost\r\n\r\n"

SMUGGLING_CORPUS: list[tuple[str, bytes]] = [
    (
        "CL.TE",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 6\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + _SMUGGLED,
    ),
    (
        "TE.CL",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 4\r\n\r\n5c\r\n" + _SMUGGLED + b"\r\n0\r\n\r\n",
    ),
    (
        "TE space before colon",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"
        + _SMUGGLED,
    ),
    (
        "TE xchunked",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
        + _SMUGGLED,
    ),
    (
        "TE chunked then identity",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
        + _SMUGGLED,
    ),
    (
        "TE twice",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + _SMUGGLED,
    ),
    (
        "TE obs-fold",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"
        + _SMUGGLED,
    ),
    (
        "TE vertical tab",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n"
        + _SMUGGLED,
    ),
    (
        "TE with CL, tab",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 4\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n"
        + _SMUGGLED,
    ),
    (
        "TE in HTTP/1.0",
        b"POST /echo HTTP/1.0\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + _SMUGGLED,
    ),
    (
        "TE bare LF",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + _SMUGGLED,
    ),
    (
        "duplicate CL",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n"
        + _SMUGGLED,
    ),
    (
        "duplicate CL equal",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"
        + _SMUGGLED,
    ),
    (
        "CL list",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 4, 4\r\n\r\nabcd"
        + _SMUGGLED,
    ),
    (
        "CL plus sign",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: +4\r\n\r\nabcd" + _SMUGGLED,
    ),
    (
        "CL negative",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: -1\r\n\r\n" + _SMUGGLED,
    ),
    (
        "chunk size hex prefix",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0x4\r\nabcd\r\n0\r\n\r\n"
        + _SMUGGLED,
    ),
    (
        "chunk size overflow",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n1"
        + b"0" * 17
        + b"\r\nabcd\r\n0\r\n\r\n"
        + _SMUGGLED,
    ),
    (
        "chunk size bare LF",
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n4\nabcd\r\n0\r\n\r\n"
        + _SMUGGLED,
    ),
    (
        "two Host headers",
        b"GET /echo HTTP/1.1\r\nHost: app.localhost\r\nHost: other.localhost\r\n\r\n" + _SMUGGLED,
    ),
    (
        "absolute-form host mismatch",
        b"GET http://other.localhost/echo HTTP/1.1\r\nHost: app.localhost\r\n\r\n" + _SMUGGLED,
    ),
]


async def test_request_smuggling_corpus_is_refused(tmp_path: Path) -> None:
    async with edge_stack(tmp_path) as (edge, seen):
        port = edge.http_addresses[0][1]
        for name, payload in SMUGGLING_CORPUS:
            got = await raw_exchange(port, payload)
            statuses = [g[0] for g in got]
            assert len(statuses) == 1 and statuses[0] in (400, 501), (name, statuses)
        # Nothing of any of them reached the origin; the edge still serves.
        assert seen == []
        async with aiohttp.ClientSession() as s, s.get(_url(edge), headers=HOST) as r:
            assert r.status == 200
        assert seen == ["/echo"]


async def test_h2_connection_lives_while_used_and_closes_when_idle(tmp_path: Path) -> None:
    # The idle deadline moves with every request (net/deadline): requests closer together than
    # the idle timeout keep the connection, and it ends with GOAWAY once they stop.
    limits = LimitSettings(idle_timeout=1.0)
    async with edge_stack(tmp_path, limits=limits, https_listen=["127.0.0.1:0"]) as (edge, _s):
        reader, writer, conn, headers = await h2_eyeball(edge)
        events: list[h2.events.Event] = []

        async def pump() -> bool:
            """Send what is due and handle what arrives; False at EOF."""
            writer.write(conn.data_to_send())
            data = await asyncio.wait_for(reader.read(65536), 5)
            if not data:
                return False
            events.extend(conn.receive_data(data))
            return True

        for _ in range(8):  # 8 x 0.3 s: over twice the idle timeout, in use throughout
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, headers, end_stream=True)
            while not any(
                isinstance(e, h2.events.StreamEnded) and e.stream_id == stream_id for e in events
            ):
                assert await pump(), "the edge closed a connection in use"
            await asyncio.sleep(0.3)
        assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
        t0 = time.monotonic()
        while await pump():
            pass
        writer.close()
        assert any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
        assert 0.2 < time.monotonic() - t0 < 4
