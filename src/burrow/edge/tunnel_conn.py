"""One tunnel connection at the edge: the TLS connection a connector dialled, on which the edge is
the HTTP/2 client. It opens the control stream, serves the registration RPC, and then carries one
h2 stream per proxied request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from burrow.errors import RegistrationError
from burrow.net.h2conn import DataPiece, H2Endpoint, H2Stream, Headers
from burrow.wire.registration import (
    ConfigurationReceived,
    ConnectionDetails,
    EdgeControlSession,
    RegisterRequested,
    RegistrationRequest,
    SessionAborted,
    UnregisterRequested,
)

log = logging.getLogger("burrow.edge.tunnel")

CONTROL_HEADERS: Headers = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"cftunnel.com"),
    (b":path", b"/"),
    (b"cf-cloudflared-proxy-connection-upgrade", b"control-stream"),
]

# A connection whose PINGs go unanswered for PING_TIMEOUT is dropped: checked every
# PING_INTERVAL, so a frozen connector is gone within PING_INTERVAL + PING_TIMEOUT (15 s).
PING_INTERVAL = 5.0
PING_TIMEOUT = 10.0
# After a refused registration or an unregister with nothing in flight, the edge closes the
# connection this long after its last RPC answer (time for the connector's Finish to arrive).
# cloudflared's HTTP/2 connection ends only when the edge closes it: without this a refused
# cloudflared never reports the error (nor retries), and an unregistered one waits out its
# whole --grace-period (30 s) before exiting.
IDLE_CLOSE_DELAY = 0.25


@dataclass(frozen=True, slots=True)
class Accepted:
    tunnel_id: uuid.UUID
    account_id: str
    tunnel_name: str
    remotely_managed: bool = False


Authenticator = Callable[["EdgeTunnelConnection", RegistrationRequest], Awaitable[Accepted]]


class _ControlStream:
    """The StreamHandler of the control stream: bytes in both directions are Cap'n Proto RPC."""

    def __init__(self, conn: EdgeTunnelConnection) -> None:
        self.conn = conn
        self.session = EdgeControlSession()
        self.stream: H2Stream | None = None

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        status = dict(headers).get(b":status")
        if status != b"200":
            log.warning("connector refused the control stream (status %r)", status)
            self.conn.close()

    def on_data(self, stream: H2Stream, data: DataPiece, end_stream: bool) -> None:
        stream.consumed(len(data))
        try:
            events = self.session.receive_data(bytes(data))
        except Exception as exc:  # malformed RPC from the connector: drop the connection
            log.warning("bad control stream from %s: %s", self.conn.peer, exc)
            self.conn.close()
            return
        for event in events:
            if isinstance(event, RegisterRequested):
                self.conn.start_registration(event.question_id, event.request)
            elif isinstance(event, UnregisterRequested):
                self.conn.unregistered()
                self.session.acknowledge(event.question_id)
            elif isinstance(event, ConfigurationReceived):
                self.conn.local_config = event.config
                self.session.acknowledge(event.question_id)
            elif isinstance(event, SessionAborted):
                self.conn.unregistered()
        self.send_pending()
        if end_stream:
            self.conn.unregistered()

    def send_pending(self) -> None:
        out = self.session.data_to_send()
        if out and self.stream is not None:
            self.stream.write(out)

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None:
        self.conn.unregistered()

    def on_end(self, stream: H2Stream) -> None:
        self.conn.unregistered()

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        self.conn.unregistered()

    def on_writable(self, stream: H2Stream) -> None:
        pass


class EdgeTunnelConnection(H2Endpoint):
    """A connector's TLS connection, seen from the edge (which is the h2 client)."""

    def __init__(
        self,
        *,
        authenticate: Authenticator,
        on_registered: Callable[[EdgeTunnelConnection], None],
        on_gone: Callable[[EdgeTunnelConnection], None],
        location: str,
        peer: str,
        on_closed: Callable[[EdgeTunnelConnection], None] | None = None,
    ) -> None:
        super().__init__(client_side=True, validate_inbound_headers=False)
        self._authenticate = authenticate
        self._on_registered = on_registered
        self._on_gone = on_gone
        self._on_closed = on_closed
        self.location = location
        self.peer = peer
        self.connection_id = uuid.uuid4()
        self.tunnel_id: uuid.UUID = uuid.UUID(int=0)
        self.account_id = ""
        self.conn_index = -1
        self.client_id = b""
        self.client_version = ""
        self.client_arch = ""
        self.since = 0.0
        self.registered = False
        self.draining = False
        self.in_flight = 0
        self.local_config: bytes | None = None
        self._control = _ControlStream(self)
        self._ping_task: asyncio.Task[None] | None = None
        self._last_ack = time.monotonic()
        self._gone_reported = False
        self._idle_close = False
        self._idle_timer: asyncio.TimerHandle | None = None

    @property
    def accepting(self) -> bool:
        # is_closing: an aborted transport reports connection_lost only on the next loop
        # iteration; no stream may be scheduled on it in between.
        transport = self.transport
        return (
            self.registered
            and not self.draining
            and not self.closed
            and transport is not None
            and not transport.is_closing()
        )

    # --- lifecycle ----------------------------------------------------------------------------

    def h2_ready(self) -> None:
        self._control.stream = self.open_stream(CONTROL_HEADERS, self._control)
        self._ping_task = self._loop.create_task(self._keepalive())

    def h2_closed(self, exc: Exception | None) -> None:
        if self._ping_task is not None:
            self._ping_task.cancel()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self.unregistered()
        if self._on_closed is not None:
            self._on_closed(self)

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        self.draining = True
        self._report_gone()

    def on_ping_ack(self, data: bytes) -> None:
        self._last_ack = time.monotonic()

    async def _keepalive(self) -> None:
        """PING the connector; a connection silent for PING_TIMEOUT is dropped."""
        while not self.closed:
            await asyncio.sleep(PING_INTERVAL)
            if time.monotonic() - self._last_ack > PING_TIMEOUT:
                log.warning(
                    "tunnel connection %s (tunnel %s) silent, dropping", self.peer, self.tunnel_id
                )
                self._abort()
                return
            self.ping()

    def start_registration(self, question_id: int, request: RegistrationRequest) -> None:
        self._loop.create_task(self._register(question_id, request))

    async def _register(self, question_id: int, request: RegistrationRequest) -> None:
        session = self._control.session
        try:
            accepted = await self._authenticate(self, request)
        except RegistrationError as exc:
            log.warning(
                "registration refused: tunnel=%s index=%d peer=%s cause=%s",
                request.tunnel_id,
                request.conn_index,
                self.peer,
                exc.cause,
            )
            session.refuse_registration(
                question_id,
                exc.cause,
                should_retry=exc.retryable,
                retry_after_ns=int(exc.retry_after_s * 1e9),
            )
            self._control.send_pending()
            self._close_when_idle()
            return
        self.tunnel_id = accepted.tunnel_id
        self.account_id = accepted.account_id
        self.conn_index = request.conn_index
        self.client_id = request.client.client_id
        self.client_version = request.client.version
        self.client_arch = request.client.arch
        self.since = time.time()
        session.accept_registration(
            question_id,
            ConnectionDetails(
                uuid=self.connection_id,
                location_name=self.location,
                remotely_managed=accepted.remotely_managed,
            ),
        )
        self._control.send_pending()
        self.registered = True
        log.info(
            "tunnel connection registered: tunnel=%s name=%s index=%d connector=%s version=%s peer=%s",
            self.tunnel_id,
            accepted.tunnel_name,
            self.conn_index,
            uuid.UUID(bytes=self.client_id) if len(self.client_id) == 16 else self.client_id.hex(),
            self.client_version,
            self.peer,
        )
        self._on_registered(self)

    def unregistered(self) -> None:
        """The connector unregistered or the control stream ended: no new streams here."""
        if self.registered and not self.draining:
            log.info(
                "tunnel connection unregistered: tunnel=%s index=%d",
                self.tunnel_id,
                self.conn_index,
            )
        self.draining = True
        self._report_gone()
        self._close_when_idle()

    def _close_when_idle(self) -> None:
        """No new streams go here any more: close once the streams in flight are done."""
        self.draining = True
        self._idle_close = True
        if self.in_flight == 0 and not self.closed and self._idle_timer is None:
            self._flush_now()  # the RPC answer leaves before the close
            self._idle_timer = self._loop.call_later(IDLE_CLOSE_DELAY, self.close)

    def stream_finished(self) -> None:
        """A proxied stream is over (counted out of `in_flight`)."""
        self.in_flight -= 1
        if self._idle_close:
            self._close_when_idle()

    def _report_gone(self) -> None:
        if not self._gone_reported:
            self._gone_reported = True
            self._on_gone(self)

    def shutdown(self) -> None:
        """Edge shutdown: GOAWAY, then let in-flight streams finish."""
        self.draining = True
        self._report_gone()
        self.goaway()
