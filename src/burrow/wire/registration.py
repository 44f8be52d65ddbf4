"""The HTTP/2 control stream: tunnel registration over Cap'n Proto RPC, sans-IO, both roles.

The connector is the RPC client; the edge serves the bootstrap ``RegistrationServer``
(interface ``0xf71695ec7fe85497``): ``registerConnection`` (0), ``unregisterConnection`` (1),
``updateLocalConfiguration`` (2). See PROTOCOL.md section 3.1.

Both sessions take bytes (``receive_data``) and return events; outbound bytes accumulate until
``data_to_send()``. Event ``question_id`` values are the wire question ids: the edge answers a
request by passing the id back. Answering a question that is no longer pending (the peer
cancelled it with a Finish, or the session was aborted) is a no-op and returns ``False``.

Causes sent in registration errors must never contain the word cloudflared treats as
"retry immediately" (see PROTOCOL.md); :meth:`EdgeControlSession.refuse_registration`
rejects it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from burrow.errors import LocalProtocolError, RemoteProtocolError
from burrow.wire.capnp_schemas import tunnelrpc_schema
from burrow.wire.rpc import (
    DEFAULT_MAX_MESSAGE_SIZE,
    EXC_UNIMPLEMENTED,
    BootstrapResolved,
    CallReceived,
    CallTarget,
    ExceptionReturned,
    ImportedCap,
    PeerAborted,
    PromisedAnswer,
    ResultsReturned,
    RpcEvent,
    RpcPeer,
)

__all__ = [
    "METHOD_REGISTER",
    "METHOD_UNREGISTER",
    "METHOD_UPDATE_LOCAL_CONFIGURATION",
    "REGISTRATION_SERVER_ID",
    "CallFailed",
    "ClientInfo",
    "ConfigurationAcknowledged",
    "ConfigurationReceived",
    "ConnectionDetails",
    "ConnectorControlSession",
    "EdgeControlSession",
    "Event",
    "RegisterRequested",
    "Registered",
    "RegistrationRefused",
    "RegistrationRequest",
    "SessionAborted",
    "UnregisterRequested",
    "Unregistered",
]

REGISTRATION_SERVER_ID = 0xF71695EC7FE85497
METHOD_REGISTER = 0
METHOD_UNREGISTER = 1
METHOD_UPDATE_LOCAL_CONFIGURATION = 2
_METHOD_NAMES = {
    METHOD_REGISTER: "registerConnection",
    METHOD_UNREGISTER: "unregisterConnection",
    METHOD_UPDATE_LOCAL_CONFIGURATION: "updateLocalConfiguration",
}
_FORBIDDEN_CAUSE_WORD = "unauthorized"  # cloudflared retries at once when it sees this word


# ------------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class ClientInfo:
    client_id: bytes
    features: tuple[str, ...]
    version: str
    arch: str


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    account_tag: str
    tunnel_secret: bytes = field(repr=False)  # never in reprs or logs
    tunnel_id: uuid.UUID
    conn_index: int
    client: ClientInfo
    origin_local_ip: bytes = b""
    replace_existing: bool = False
    compression_quality: int = 0
    num_previous_attempts: int = 0


@dataclass(frozen=True, slots=True)
class ConnectionDetails:
    uuid: uuid.UUID
    location_name: str
    remotely_managed: bool


# ------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class RegisterRequested:
    question_id: int
    request: RegistrationRequest


@dataclass(frozen=True, slots=True)
class UnregisterRequested:
    question_id: int


@dataclass(frozen=True, slots=True)
class ConfigurationReceived:
    question_id: int
    config: bytes


@dataclass(frozen=True, slots=True)
class Registered:
    details: ConnectionDetails


@dataclass(frozen=True, slots=True)
class RegistrationRefused:
    cause: str
    should_retry: bool
    retry_after_ns: int


@dataclass(frozen=True, slots=True)
class Unregistered:
    pass


@dataclass(frozen=True, slots=True)
class ConfigurationAcknowledged:
    pass


@dataclass(frozen=True, slots=True)
class CallFailed:
    """Connector side: unregister / updateLocalConfiguration answered with an exception."""

    method: str
    reason: str


@dataclass(frozen=True, slots=True)
class SessionAborted:
    reason: str


Event = (
    RegisterRequested
    | UnregisterRequested
    | ConfigurationReceived
    | Registered
    | RegistrationRefused
    | Unregistered
    | ConfigurationAcknowledged
    | CallFailed
    | SessionAborted
)


# ------------------------------------------------------------------ pycapnp boundary


def _method_schema(method: int) -> Any:
    return tunnelrpc_schema().RegistrationServer.schema.methods[_METHOD_NAMES[method]]


def _decode_registration(params: Any) -> RegistrationRequest:
    p = params.as_struct(_method_schema(METHOD_REGISTER).param_type)
    auth = p.auth
    options = p.options
    client = options.client
    return RegistrationRequest(
        account_tag=str(auth.accountTag),
        tunnel_secret=bytes(auth.tunnelSecret),
        tunnel_id=uuid.UUID(bytes=bytes(p.tunnelId)),
        conn_index=int(p.connIndex),
        client=ClientInfo(
            client_id=bytes(client.clientId),
            features=tuple(str(f) for f in client.features),
            version=str(client.version),
            arch=str(client.arch),
        ),
        origin_local_ip=bytes(options.originLocalIp),
        replace_existing=bool(options.replaceExisting),
        compression_quality=int(options.compressionQuality),
        num_previous_attempts=int(options.numPreviousAttempts),
    )


def _encode_registration(content: Any, req: RegistrationRequest) -> None:
    p = content.as_struct(_method_schema(METHOD_REGISTER).param_type)
    auth = p.init("auth")
    auth.accountTag = req.account_tag
    auth.tunnelSecret = req.tunnel_secret
    p.tunnelId = req.tunnel_id.bytes
    p.connIndex = req.conn_index
    options = p.init("options")
    client = options.init("client")
    client.clientId = req.client.client_id
    features = client.init("features", len(req.client.features))
    for i, feature in enumerate(req.client.features):
        features[i] = feature
    client.version = req.client.version
    client.arch = req.client.arch
    options.originLocalIp = req.origin_local_ip
    options.replaceExisting = req.replace_existing
    options.compressionQuality = req.compression_quality
    options.numPreviousAttempts = req.num_previous_attempts


def _decode_config(params: Any) -> bytes:
    p = params.as_struct(_method_schema(METHOD_UPDATE_LOCAL_CONFIGURATION).param_type)
    return bytes(p.config)


def _encode_config(content: Any, config: bytes) -> None:
    p = content.as_struct(_method_schema(METHOD_UPDATE_LOCAL_CONFIGURATION).param_type)
    p.config = config


def _encode_empty(method: int) -> Any:
    def fill(content: Any) -> None:
        content.as_struct(_method_schema(method).param_type)

    return fill


def _encode_response_details(content: Any, details: ConnectionDetails) -> None:
    r = content.as_struct(_method_schema(METHOD_REGISTER).result_type)
    d = r.init("result").result.init("connectionDetails")
    d.uuid = details.uuid.bytes
    d.locationName = details.location_name
    d.tunnelIsRemotelyManaged = details.remotely_managed


def _encode_response_error(
    content: Any, cause: str, should_retry: bool, retry_after_ns: int
) -> None:
    r = content.as_struct(_method_schema(METHOD_REGISTER).result_type)
    e = r.init("result").result.init("error")
    e.cause = cause
    e.retryAfter = retry_after_ns
    e.shouldRetry = should_retry


def _decode_response(content: Any) -> Registered | RegistrationRefused:
    r = content.as_struct(_method_schema(METHOD_REGISTER).result_type).result.result
    kind = str(r.which)
    if kind == "connectionDetails":
        d = r.connectionDetails
        return Registered(
            ConnectionDetails(
                uuid=uuid.UUID(bytes=bytes(d.uuid)),
                location_name=str(d.locationName),
                remotely_managed=bool(d.tunnelIsRemotelyManaged),
            )
        )
    e = r.error
    return RegistrationRefused(
        cause=str(e.cause), should_retry=bool(e.shouldRetry), retry_after_ns=int(e.retryAfter)
    )


# ------------------------------------------------------------------------------ edge


class EdgeControlSession:
    """Edge side: serves the bootstrap RegistrationServer capability."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._rpc = RpcPeer(serves_bootstrap=True, max_message_size=max_message_size)
        self._pending: dict[int, int] = {}  # question id -> method id
        self.state = "new"
        self.config: bytes | None = None

    def receive_data(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for ev in self._rpc.receive_data(data):
            if isinstance(ev, CallReceived):
                self._on_call(ev, events)
            elif isinstance(ev, PeerAborted):
                self._pending.clear()
                if self.state != "unregistered":
                    self.state = "aborted"
                events.append(SessionAborted(ev.reason))
            # The edge asks no questions: no results/exceptions/bootstrap answers to handle.
        return events

    def _on_call(self, ev: CallReceived, events: list[Event]) -> None:
        qid = ev.question_id
        if ev.interface_id != REGISTRATION_SERVER_ID or ev.method_id not in _METHOD_NAMES:
            self._rpc.return_exception(
                qid,
                f"method not implemented: interface {ev.interface_id:#x} method {ev.method_id}",
                EXC_UNIMPLEMENTED,
            )
            return
        try:
            if ev.method_id == METHOD_REGISTER:
                request = _decode_registration(ev.params)
            elif ev.method_id == METHOD_UPDATE_LOCAL_CONFIGURATION:
                config = _decode_config(ev.params)
        except Exception as exc:  # malformed params: answer with an exception, keep the session
            name = _METHOD_NAMES[ev.method_id]
            self._rpc.return_exception(qid, f"invalid {name} parameters: {exc}")
            return
        if len(self._pending) >= 16:  # drop entries the peer cancelled with a Finish
            self._pending = {
                q: m for q, m in self._pending.items() if self._rpc.is_answer_pending(q)
            }
        self._pending[qid] = ev.method_id
        if ev.method_id == METHOD_REGISTER:
            events.append(RegisterRequested(qid, request))
        elif ev.method_id == METHOD_UPDATE_LOCAL_CONFIGURATION:
            self.config = config
            events.append(ConfigurationReceived(qid, config))
        else:
            self.state = "unregistered"
            events.append(UnregisterRequested(qid))

    def _claim(self, question_id: int, methods: tuple[int, ...]) -> bool:
        method = self._pending.get(question_id)
        if method is None or not self._rpc.is_answer_pending(question_id):
            self._pending.pop(question_id, None)
            return False  # cancelled by the peer or session over: nothing to answer
        if method not in methods:
            raise LocalProtocolError(
                f"question {question_id} is a {_METHOD_NAMES[method]} call, not "
                + "/".join(_METHOD_NAMES[m] for m in methods)
            )
        del self._pending[question_id]
        return True

    def accept_registration(self, question_id: int, details: ConnectionDetails) -> bool:
        if not self._claim(question_id, (METHOD_REGISTER,)):
            return False
        self._rpc.return_results(question_id, lambda c: _encode_response_details(c, details))
        if self.state == "new":
            self.state = "registered"
        return True

    def refuse_registration(
        self, question_id: int, cause: str, *, should_retry: bool, retry_after_ns: int = 0
    ) -> bool:
        if _FORBIDDEN_CAUSE_WORD in cause.lower():
            raise LocalProtocolError("registration cause must not contain that word")
        if not self._claim(question_id, (METHOD_REGISTER,)):
            return False
        self._rpc.return_results(
            question_id,
            lambda c: _encode_response_error(c, cause, should_retry, retry_after_ns),
        )
        return True

    def acknowledge(self, question_id: int) -> bool:
        """Empty Return for unregisterConnection / updateLocalConfiguration."""
        if not self._claim(question_id, (METHOD_UNREGISTER, METHOD_UPDATE_LOCAL_CONFIGURATION)):
            return False
        self._rpc.return_results(question_id, _encode_empty(METHOD_UNREGISTER))
        return True

    def abort(self, reason: str) -> None:
        if not self._rpc.closed:
            self._rpc.abort(reason)
            self._pending.clear()
            self.state = "aborted"

    def data_to_send(self) -> bytes:
        return self._rpc.data_to_send()


# ------------------------------------------------------------------------------ connector


class ConnectorControlSession:
    """Connector side: the RPC client of the edge's RegistrationServer.

    ``state``: "new" | "registering" | "registered" | "refused" | "unregistering" |
    "unregistered" | "aborted".
    """

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._rpc = RpcPeer(serves_bootstrap=False, max_message_size=max_message_size)
        self._bootstrap_qid: int | None = None
        self._import_id: int | None = None
        self._calls: dict[int, int] = {}  # question id -> method id
        self.state = "new"
        self.details: ConnectionDetails | None = None

    def _target(self) -> CallTarget:
        if self._import_id is not None:
            return ImportedCap(self._import_id)
        if self._bootstrap_qid is not None and self._rpc.is_question_pending(self._bootstrap_qid):
            return PromisedAnswer(self._bootstrap_qid)
        raise LocalProtocolError("no RegistrationServer capability: call register() first")

    def register(self, request: RegistrationRequest) -> None:
        if self.state != "new":
            raise LocalProtocolError(f"register() in state {self.state}")
        self._bootstrap_qid = self._rpc.bootstrap()
        qid = self._rpc.call(
            PromisedAnswer(self._bootstrap_qid),
            REGISTRATION_SERVER_ID,
            METHOD_REGISTER,
            lambda c: _encode_registration(c, request),
        )
        self._calls[qid] = METHOD_REGISTER
        self.state = "registering"

    def update_local_configuration(self, config: bytes) -> None:
        qid = self._rpc.call(
            self._target(),
            REGISTRATION_SERVER_ID,
            METHOD_UPDATE_LOCAL_CONFIGURATION,
            lambda c: _encode_config(c, config),
        )
        self._calls[qid] = METHOD_UPDATE_LOCAL_CONFIGURATION

    def unregister(self) -> None:
        qid = self._rpc.call(
            self._target(),
            REGISTRATION_SERVER_ID,
            METHOD_UNREGISTER,
            _encode_empty(METHOD_UNREGISTER),
        )
        self._calls[qid] = METHOD_UNREGISTER
        self.state = "unregistering"

    def abort(self, reason: str) -> None:
        """Release the capability and abort, as cloudflared does at shutdown."""
        if not self._rpc.closed:
            self._rpc.release_imports()
            self._rpc.abort(reason)
            self.state = "aborted"

    def data_to_send(self) -> bytes:
        return self._rpc.data_to_send()

    def receive_data(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for ev in self._rpc.receive_data(data):
            self._on_rpc_event(ev, events)
        return events

    def _on_rpc_event(self, ev: RpcEvent, events: list[Event]) -> None:
        if isinstance(ev, BootstrapResolved):
            self._import_id = ev.import_id
        elif isinstance(ev, PeerAborted):
            self.state = "aborted"
            events.append(SessionAborted(ev.reason))
        elif isinstance(ev, ResultsReturned | ExceptionReturned):
            method = self._calls.pop(ev.question_id, None)
            if method is None:
                return  # the bootstrap question failing: the pipelined call fails too
            if isinstance(ev, ResultsReturned):
                self._on_results(method, ev, events)
            elif method == METHOD_REGISTER:
                self.state = "refused"
                events.append(RegistrationRefused(f"edge error: {ev.reason}", True, 0))
            else:
                events.append(CallFailed(_METHOD_NAMES[method], ev.reason))
        elif isinstance(ev, CallReceived):  # pragma: no cover - RpcPeer rejects these itself
            return

    def _on_results(self, method: int, ev: ResultsReturned, events: list[Event]) -> None:
        if method == METHOD_REGISTER:
            try:
                result = _decode_response(ev.content)
            except Exception as exc:
                self._rpc.abort("invalid registerConnection results")
                self.state = "aborted"
                raise RemoteProtocolError(f"invalid registerConnection results: {exc}") from exc
            if isinstance(result, Registered):
                self.details = result.details
                self.state = "registered"
            else:
                self.state = "refused"
            events.append(result)
        elif method == METHOD_UNREGISTER:
            self.state = "unregistered"
            events.append(Unregistered())
        else:
            events.append(ConfigurationAcknowledged())
