"""EdgeTunnelConnection closes connections that will carry no more streams.

cloudflared's HTTP/2 connection (Go's http2.Server.ServeConn) only ends when the edge closes
it: a refused registration is reported (and ends cloudflared, or triggers its retry) only then,
and after unregisterConnection cloudflared waits out its whole --grace-period unless the edge
closes the drained connection. Found with the real cloudflared (tests/interop); these tests
play the connector with h2 + burrow's connector-side RPC session, without sockets.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from burrow.edge.tunnel_conn import IDLE_CLOSE_DELAY, Accepted, EdgeTunnelConnection
from burrow.errors import RegistrationError
from burrow.wire.registration import (
    ClientInfo,
    ConnectorControlSession,
    Registered,
    RegistrationRefused,
    RegistrationRequest,
    Unregistered,
)

TUNNEL = uuid.uuid4()


class FakeTransport(asyncio.Transport):
    """Collects what the edge writes; close() ends the connection like a real transport."""

    def __init__(self, protocol: EdgeTunnelConnection) -> None:
        super().__init__()
        self.protocol = protocol
        self.out = bytearray()
        self.closed = asyncio.Event()

    def write(self, data: Any) -> None:
        assert not self.closed.is_set(), "write after close"
        self.out += data

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closed.is_set()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class FakeConnector:
    """The connector's side: h2 server + the RPC client of the registration server."""

    def __init__(self, conn: EdgeTunnelConnection, transport: FakeTransport) -> None:
        self.conn = conn
        self.transport = transport
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.h2.initiate_connection()
        self.rpc = ConnectorControlSession()
        self.control_id = 0
        self.rpc_events: list[Any] = []

    def pump(self) -> None:
        """Deliver edge -> connector bytes, answer the control stream, connector -> edge."""
        data = self.transport.take()
        if data:
            for ev in self.h2.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    headers = dict(ev.headers)
                    assert headers[b"cf-cloudflared-proxy-connection-upgrade"] == b"control-stream"
                    self.control_id = ev.stream_id
                    self.h2.send_headers(ev.stream_id, [(b":status", b"200")])
                elif isinstance(ev, h2.events.DataReceived):
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    self.rpc_events.extend(self.rpc.receive_data(ev.data))
        if self.control_id:
            rpc_out = self.rpc.data_to_send()
            if rpc_out:
                self.h2.send_data(self.control_id, rpc_out)
        out = self.h2.data_to_send()
        if out and not self.transport.closed.is_set():
            self.conn.data_received(out)

    async def until(self, predicate: Any, what: str, limit: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while not predicate():
            assert loop.time() < deadline, f"timed out waiting for {what}"
            self.pump()
            await asyncio.sleep(0.01)


def _request() -> RegistrationRequest:
    return RegistrationRequest(
        account_tag="a" * 32,
        tunnel_secret=b"s" * 32,
        tunnel_id=TUNNEL,
        conn_index=0,
        client=ClientInfo(uuid.uuid4().bytes, ("serialized_headers",), "2026.8.2", "linux_amd64"),
    )


async def _connect(outcome: Exception | None) -> tuple[EdgeTunnelConnection, FakeConnector]:
    async def authenticate(conn: EdgeTunnelConnection, req: RegistrationRequest) -> Accepted:
        if outcome is not None:
            raise outcome
        return Accepted(tunnel_id=req.tunnel_id, account_id=req.account_tag, tunnel_name="t")

    conn = EdgeTunnelConnection(
        authenticate=authenticate,
        on_registered=lambda c: None,
        on_gone=lambda c: None,
        location="test",
        peer="127.0.0.1",
    )
    transport = FakeTransport(conn)
    conn.connection_made(transport)
    peer = FakeConnector(conn, transport)
    await peer.until(lambda: peer.control_id != 0, "the control stream")
    peer.rpc.register(_request())
    return conn, peer


@pytest.mark.parametrize(
    "error",
    [
        RegistrationError("tunnel credentials rejected", retryable=False),
        RegistrationError("EDUPCONN", retryable=True),
    ],
    ids=["permanent", "retryable"],
)
async def test_refused_registration_answers_then_closes(error: RegistrationError) -> None:
    conn, peer = await _connect(error)
    await peer.until(lambda: peer.rpc_events, "the registration answer")
    assert isinstance(peer.rpc_events[0], RegistrationRefused)
    assert peer.rpc_events[0].cause == error.cause
    await asyncio.wait_for(peer.transport.closed.wait(), 10 * IDLE_CLOSE_DELAY + 2)
    assert not conn.accepting


async def test_registered_connection_stays_open() -> None:
    conn, peer = await _connect(None)
    await peer.until(lambda: peer.rpc_events, "the registration answer")
    assert isinstance(peer.rpc_events[0], Registered)
    assert conn.accepting
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(peer.transport.closed.wait(), 4 * IDLE_CLOSE_DELAY)
    conn.close()


async def test_unregister_closes_once_streams_in_flight_are_done() -> None:
    conn, peer = await _connect(None)
    await peer.until(lambda: peer.rpc_events, "the registration answer")
    conn.in_flight += 1  # a proxied request is still running (exchange.py counts it)
    peer.rpc.unregister()
    await peer.until(
        lambda: any(isinstance(e, Unregistered) for e in peer.rpc_events), "unregister answer"
    )
    assert not conn.accepting
    with pytest.raises(TimeoutError):  # the request in flight keeps the connection open
        await asyncio.wait_for(peer.transport.closed.wait(), 4 * IDLE_CLOSE_DELAY)
    conn.stream_finished()
    assert conn.in_flight == 0
    await asyncio.wait_for(peer.transport.closed.wait(), 10 * IDLE_CLOSE_DELAY + 2)
