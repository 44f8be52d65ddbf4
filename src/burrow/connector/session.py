"""One tunnel connection from the connector's side: TLS client, HTTP/2 *server*.

The edge opens the control stream; we answer 200 and register over Cap'n Proto RPC. Every other
stream is a request that `dispatch` hands to an origin.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from burrow.errors import RegistrationError
from burrow.net.h2conn import DataPiece, H2Endpoint, H2Stream, Headers
from burrow.wire.registration import (
    ConnectionDetails,
    ConnectorControlSession,
    Registered,
    RegistrationRefused,
    RegistrationRequest,
    SessionAborted,
    Unregistered,
)
from burrow.wire.tunnel_h2 import StreamType, classify

log = logging.getLogger("burrow.connector")

Dispatch = Callable[["ConnectorSession", H2Stream, Headers, bool, StreamType], None]
MAX_CONFIG_BODY = 1 << 20


class _ControlHandler:
    def __init__(self, session: ConnectorSession) -> None:
        self.session = session
        self.rpc = ConnectorControlSession()
        self.stream: H2Stream | None = None

    def send_pending(self) -> None:
        out = self.rpc.data_to_send()
        if out and self.stream is not None:
            self.stream.write(out)

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        pass

    def on_data(self, stream: H2Stream, data: DataPiece, end_stream: bool) -> None:
        stream.consumed(len(data))
        try:
            events = self.rpc.receive_data(bytes(data))
        except Exception as exc:
            self.session.registration_failed(
                RegistrationError(f"bad control stream from edge: {exc}", retryable=True)
            )
            self.session.close()
            return
        for event in events:
            if isinstance(event, Registered):
                self.session.registration_succeeded(event.details)
            elif isinstance(event, RegistrationRefused):
                self.session.registration_failed(
                    RegistrationError(
                        event.cause,
                        retryable=event.should_retry,
                        retry_after_s=event.retry_after_ns / 1e9,
                    )
                )
            elif isinstance(event, (Unregistered, SessionAborted)):
                self.session.unregister_done.set()
            # ConfigurationAcknowledged needs no action: the edge stored our local config.
        self.send_pending()

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None:
        pass

    def on_end(self, stream: H2Stream) -> None:
        self.session.unregister_done.set()

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        self.session.unregister_done.set()
        self.session.registration_failed(
            RegistrationError("control stream reset by the edge", retryable=True)
        )

    def on_writable(self, stream: H2Stream) -> None:
        pass


class _ConfigHandler:
    """Remote configuration push (PROTOCOL.md 3.4): collect the JSON body, apply, answer."""

    def __init__(self, session: ConnectorSession) -> None:
        self.session = session
        self.body = bytearray()

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        pass

    def on_data(self, stream: H2Stream, data: DataPiece, end_stream: bool) -> None:
        stream.consumed(len(data))
        self.body += data
        if len(self.body) > MAX_CONFIG_BODY:
            stream.send_headers([(b":status", b"413")], end_stream=True)
            stream.handler = None
            return
        if end_stream:
            self.on_end(stream)

    def on_end(self, stream: H2Stream) -> None:
        apply = self.session.apply_remote_config
        version, err = (
            apply(bytes(self.body)) if apply else (-1, "remote configuration unsupported")
        )
        body = json.dumps({"lastAppliedVersion": version, "err": err}).encode()
        stream.send_headers(
            [(b":status", b"200"), (b"content-type", b"application/json")], end_stream=False
        )
        stream.write(body)
        stream.end()

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None:
        self.on_end(stream)

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        pass

    def on_writable(self, stream: H2Stream) -> None:
        pass


class ConnectorSession(H2Endpoint):
    def __init__(
        self,
        request: RegistrationRequest,
        dispatch: Dispatch,
        *,
        local_config: bytes | None = None,
        apply_remote_config: Callable[[bytes], tuple[int, str | None]] | None = None,
    ) -> None:
        super().__init__(client_side=False, validate_inbound_headers=False)
        self.request = request
        self.dispatch = dispatch
        self.local_config = local_config
        self.apply_remote_config = apply_remote_config
        self.registered: asyncio.Future[ConnectionDetails] = self._loop.create_future()
        self.closed_event = asyncio.Event()
        self.unregister_done = asyncio.Event()
        self.goaway_received = False
        self.goaway_event = asyncio.Event()  # the edge is draining us: reconnect elsewhere
        self.in_flight = 0
        self._control: _ControlHandler | None = None

    def on_request(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        kind = classify(headers)
        if kind is StreamType.CONTROL:
            control = _ControlHandler(self)
            self._control = control
            control.stream = self.adopt_stream(stream_id, control)
            control.stream.send_headers([(b":status", b"200")])
            control.rpc.register(self.request)
            control.send_pending()
            return
        if kind is StreamType.CONFIGURATION:
            stream = self.adopt_stream(stream_id, _ConfigHandler(self))
            if end_stream:
                stream.handler.on_end(stream)  # type: ignore[union-attr]
            return
        stream = self.adopt_stream(stream_id, None)
        self.dispatch(self, stream, headers, end_stream, kind)

    def registration_succeeded(self, details: ConnectionDetails) -> None:
        if not self.registered.done():
            self.registered.set_result(details)
            if self.local_config is not None and self._control is not None:
                self._control.rpc.update_local_configuration(self.local_config)
                self._control.send_pending()

    def registration_failed(self, exc: RegistrationError) -> None:
        if not self.registered.done():
            self.registered.set_exception(exc)

    async def unregister(self, wait_s: float = 2.0) -> None:
        """Tell the edge to schedule no new streams here (graceful shutdown)."""
        if self._control is None or self.closed:
            return
        self._control.rpc.unregister()
        self._control.send_pending()
        try:
            await asyncio.wait_for(self.unregister_done.wait(), wait_s)
        except TimeoutError:
            log.debug("edge did not acknowledge unregister within %ss", wait_s)

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        self.goaway_received = True
        self.goaway_event.set()

    def h2_closed(self, exc: Exception | None) -> None:
        self.registration_failed(
            RegistrationError("connection to the edge closed during registration", retryable=True)
        )
        self.closed_event.set()
