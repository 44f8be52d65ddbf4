"""Control-stream registration sessions (burrow.wire.registration), incl. conformance replay."""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from burrow.errors import LocalProtocolError, RemoteProtocolError
from burrow.testing.conformance import load_conformance
from burrow.wire.capnp_schemas import tunnelrpc_schema
from burrow.wire.registration import (
    REGISTRATION_SERVER_ID,
    CallFailed,
    ClientInfo,
    ConfigurationAcknowledged,
    ConfigurationReceived,
    ConnectionDetails,
    ConnectorControlSession,
    EdgeControlSession,
    Registered,
    RegisterRequested,
    RegistrationRefused,
    RegistrationRequest,
    SessionAborted,
    Unregistered,
    UnregisterRequested,
)
from burrow.wire.rpc import ImportedCap, PromisedAnswer, RpcPeer, decode_message, split_frames

RECORDED_CONNECTION_UUID = uuid.UUID("a66a37cd-79c6-44d2-b440-b9f55534cac1")


@pytest.fixture(scope="module")
def recording() -> dict[str, Any]:
    data: dict[str, Any] = load_conformance("control-stream-http2.json")
    return data


def _frames(recording: dict[str, Any], direction: str) -> list[bytes]:
    return [bytes.fromhex(f["hex"]) for f in recording["frames"] if f["dir"] == direction]


def _decoded(req: RegistrationRequest) -> dict[str, Any]:
    """A RegistrationRequest in the shape of the recording's ``decoded_registration``."""
    return {
        "auth.accountTag": req.account_tag,
        "auth.tunnelSecret_b64": base64.b64encode(req.tunnel_secret).decode(),
        "tunnelId": str(req.tunnel_id),
        "connIndex": req.conn_index,
        "options.client.clientId": str(uuid.UUID(bytes=req.client.client_id)),
        "options.client.features": list(req.client.features),
        "options.client.version": req.client.version,
        "options.client.arch": req.client.arch,
        "options.originLocalIp": _go_ip(req.origin_local_ip),
        "options.replaceExisting": req.replace_existing,
        "options.compressionQuality": req.compression_quality,
        "options.numPreviousAttempts": req.num_previous_attempts,
    }


def _go_ip(raw: bytes) -> str:
    """Go's net.IP.String(): IPv4-mapped addresses print as ::ffff:a.b.c.d."""
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    addr = ipaddress.IPv6Address(raw)
    return f"::ffff:{addr.ipv4_mapped}" if addr.ipv4_mapped else str(addr)


def _request_from_recording(recording: dict[str, Any]) -> RegistrationRequest:
    d = recording["decoded_registration"]
    return RegistrationRequest(
        account_tag=d["auth.accountTag"],
        tunnel_secret=base64.b64decode(d["auth.tunnelSecret_b64"]),
        tunnel_id=uuid.UUID(d["tunnelId"]),
        conn_index=d["connIndex"],
        client=ClientInfo(
            client_id=uuid.UUID(d["options.client.clientId"]).bytes,
            features=tuple(d["options.client.features"]),
            version=d["options.client.version"],
            arch=d["options.client.arch"],
        ),
        origin_local_ip=ipaddress.IPv6Address(d["options.originLocalIp"]).packed,
        replace_existing=d["options.replaceExisting"],
        compression_quality=d["options.compressionQuality"],
        num_previous_attempts=d["options.numPreviousAttempts"],
    )


def _credentials_ok(recording: dict[str, Any], req: RegistrationRequest) -> bool:
    creds = recording["credentials"]
    return (
        req.account_tag == creds["AccountTag"]
        and req.tunnel_id == uuid.UUID(creds["TunnelID"])
        and hmac.compare_digest(req.tunnel_secret, base64.b64decode(creds["TunnelSecret"]))
    )


def _messages(data: bytes) -> list[Any]:
    return [decode_message(s) for s in split_frames(data)]


DETAILS = ConnectionDetails(
    uuid=RECORDED_CONNECTION_UUID, location_name="LAB1", remotely_managed=False
)


# --------------------------------------------------------------------- conformance: edge


def test_replay_cloudflared_frames_into_edge(recording: dict[str, Any]) -> None:
    edge = EdgeControlSession()
    events: list[Any] = []
    for frame in _frames(recording, "cloudflared->edge"):
        new = edge.receive_data(frame)
        events.extend(new)
        for ev in new:  # what the edge logic does, in order
            if isinstance(ev, RegisterRequested):
                assert _decoded(ev.request) == recording["decoded_registration"]
                assert _credentials_ok(recording, ev.request)
                assert edge.accept_registration(ev.question_id, DETAILS)
                assert edge.state == "registered"
            elif isinstance(ev, ConfigurationReceived | UnregisterRequested):
                assert edge.acknowledge(ev.question_id)
        out = edge.data_to_send()
        if frame == _frames(recording, "cloudflared->edge")[0]:
            # the bootstrap answer is byte-identical to the recorded one cloudflared accepted
            assert out == bytes.fromhex(recording["frames"][2]["hex"])
    assert [type(e) for e in events] == [
        RegisterRequested,
        ConfigurationReceived,
        UnregisterRequested,
        SessionAborted,
    ]
    assert events[-1] == SessionAborted("rpc: shutdown")
    assert edge.state == "unregistered"
    assert edge.config is not None
    config = json.loads(edge.config)
    assert config["ingress"][0]["hostname"] == "app.example.com"
    assert "secret" not in repr(events[0]).lower()
    assert base64.b64decode(recording["credentials"]["TunnelSecret"]).hex() not in repr(events[0])


def _edge_answers_for(
    recording: dict[str, Any], chunks: list[bytes]
) -> tuple[EdgeControlSession, list[Any], bytes]:
    edge = EdgeControlSession()
    events: list[Any] = []
    for chunk in chunks:
        events.extend(edge.receive_data(chunk))
    return edge, events, edge.data_to_send()


@pytest.mark.parametrize("mode", ["concatenated", "byte-by-byte", "chunks-of-7"])
def test_replay_cloudflared_bytes_any_chunking(recording: dict[str, Any], mode: str) -> None:
    data = b"".join(_frames(recording, "cloudflared->edge"))
    if mode == "concatenated":
        chunks = [data]
    elif mode == "byte-by-byte":
        chunks = [data[i : i + 1] for i in range(len(data))]
    else:
        chunks = [data[i : i + 7] for i in range(0, len(data), 7)]
    edge, events, _ = _edge_answers_for(recording, chunks)
    assert [type(e) for e in events] == [
        RegisterRequested,
        ConfigurationReceived,
        UnregisterRequested,
        SessionAborted,
    ]
    assert isinstance(events[0], RegisterRequested)
    assert _decoded(events[0].request) == recording["decoded_registration"]
    assert edge.state == "unregistered"
    assert edge.config is not None and edge.config.startswith(b"{")
    # cloudflared finished (cancelled) the registration and aborted before we answered
    assert edge.accept_registration(events[0].question_id, DETAILS) is False
    assert edge.data_to_send() == b""


def test_edge_refuses_wrong_secret(recording: dict[str, Any]) -> None:
    frames = _frames(recording, "cloudflared->edge")
    edge = EdgeControlSession()
    edge.receive_data(frames[0])
    (ev,) = edge.receive_data(frames[1])
    assert isinstance(ev, RegisterRequested)
    tampered = RegistrationRequest(
        account_tag=ev.request.account_tag,
        tunnel_secret=b"wrong" * 8,
        tunnel_id=ev.request.tunnel_id,
        conn_index=0,
        client=ev.request.client,
    )
    assert not _credentials_ok(recording, tampered)
    edge.data_to_send()
    assert edge.refuse_registration(
        ev.question_id, "tunnel credentials rejected", should_retry=False
    )
    assert edge.state == "new"
    (msg,) = _messages(edge.data_to_send())
    ret = getattr(msg, "return")
    assert ret.answerId == ev.question_id
    assert ret.which == "results"
    result_type = (
        tunnelrpc_schema().RegistrationServer.schema.methods["registerConnection"].result_type
    )
    response = ret.results.content.as_struct(result_type).result.result
    assert response.which == "error"
    assert response.error.cause == "tunnel credentials rejected"
    assert response.error.shouldRetry is False
    # the recorded cloudflared side decodes it as a permanent refusal
    connector = ConnectorControlSession()
    connector.register(_request_from_recording(recording))
    connector.receive_data(bytes.fromhex(recording["frames"][2]["hex"]))
    ret_bytes = msg.as_builder().to_bytes()
    assert connector.receive_data(ret_bytes) == [
        RegistrationRefused("tunnel credentials rejected", False, 0)
    ]


def test_refusal_cause_must_not_trigger_instant_retry() -> None:
    edge = EdgeControlSession()
    with pytest.raises(LocalProtocolError):
        edge.refuse_registration(1, "Unauthorized: bad secret", should_retry=False)


# ---------------------------------------------------------------- conformance: connector


def test_connector_decodes_recorded_edge_frames(recording: dict[str, Any]) -> None:
    frames = [bytes.fromhex(f["hex"]) for f in recording["frames"]]
    connector = ConnectorControlSession()
    request = _request_from_recording(recording)
    connector.register(request)
    out = connector.data_to_send()
    assert out.startswith(frames[0])  # Bootstrap(0), byte-identical to cloudflared
    # the pipelined call carries the same registration cloudflared sent
    edge = EdgeControlSession()
    events = edge.receive_data(out)
    assert isinstance(events[0], RegisterRequested)
    assert events[0].request == request
    assert _decoded(events[0].request) == recording["decoded_registration"]

    events = connector.receive_data(frames[2] + frames[3])
    assert events == [
        Registered(ConnectionDetails(RECORDED_CONNECTION_UUID, "LOCAL-LOOPBACK", False))
    ]
    assert connector.state == "registered"
    assert connector.data_to_send() == frames[4] + frames[5]  # Finish(0), Finish(1)

    connector.update_local_configuration(b'{"ingress":[]}')
    (call,) = _messages(connector.data_to_send())
    assert call.call.target.importedCap == 0 and call.call.methodId == 2
    assert call.call.interfaceId == REGISTRATION_SERVER_ID
    assert connector.receive_data(frames[7]) == [ConfigurationAcknowledged()]
    assert connector.data_to_send() == frames[8]

    connector.unregister()
    connector.data_to_send()
    assert connector.receive_data(frames[10]) == [Unregistered()]
    assert connector.data_to_send() == frames[11]
    assert connector.state == "unregistered"
    connector.abort("rpc: shutdown")
    release_and_abort = connector.data_to_send()
    assert release_and_abort.startswith(frames[12])
    assert [m.which for m in _messages(release_and_abort)] == ["release", "abort"]
    assert connector.receive_data(frames[14]) == []  # already closed


# ------------------------------------------------------------------------- round trips


def _request(secret: bytes = b"s" * 32) -> RegistrationRequest:
    return RegistrationRequest(
        account_tag="acct",
        tunnel_secret=secret,
        tunnel_id=uuid.uuid4(),
        conn_index=2,
        client=ClientInfo(uuid.uuid4().bytes, ("serialized_headers",), "burrow-0.1", "linux_amd64"),
        origin_local_ip=bytes([10, 0, 0, 1]),
        replace_existing=True,
        compression_quality=3,
        num_previous_attempts=4,
    )


def _pump(src: Any, dst: Any) -> list[Any]:
    events: list[Any] = dst.receive_data(src.data_to_send())
    return events


def test_round_trip_register_config_unregister() -> None:
    connector, edge = ConnectorControlSession(), EdgeControlSession()
    req = _request()
    connector.register(req)
    (ev,) = _pump(connector, edge)
    assert ev == RegisterRequested(ev.question_id, req)
    assert "s" * 32 not in repr(ev)
    details = ConnectionDetails(uuid.uuid4(), "AMS", True)
    # pipelining: a config call may go out before the registration returns
    connector.update_local_configuration(b"{}")
    (cfg,) = _pump(connector, edge)
    assert isinstance(cfg, ConfigurationReceived) and cfg.config == b"{}"
    assert edge.accept_registration(ev.question_id, details)
    assert edge.acknowledge(cfg.question_id)
    assert _pump(edge, connector) == [Registered(details), ConfigurationAcknowledged()]
    assert _pump(connector, edge) == []  # Finishes
    assert connector.details == details and edge.state == "registered"

    connector.unregister()
    (unreg,) = _pump(connector, edge)
    assert isinstance(unreg, UnregisterRequested) and edge.state == "unregistered"
    with pytest.raises(LocalProtocolError):
        edge.accept_registration(unreg.question_id, details)  # wrong method for that question
    assert edge.acknowledge(unreg.question_id)
    assert _pump(edge, connector) == [Unregistered()]
    connector.abort("shutdown")
    assert _pump(connector, edge) == [SessionAborted("shutdown")]
    assert edge.state == "unregistered"
    assert edge.config == b"{}"


def test_round_trip_refused() -> None:
    connector, edge = ConnectorControlSession(), EdgeControlSession()
    connector.register(_request())
    (ev,) = _pump(connector, edge)
    assert edge.refuse_registration(
        ev.question_id, "EDUPCONN", should_retry=True, retry_after_ns=5_000_000_000
    )
    assert not edge.refuse_registration(ev.question_id, "again", should_retry=True)
    assert _pump(edge, connector) == [RegistrationRefused("EDUPCONN", True, 5_000_000_000)]
    assert connector.state == "refused"


def test_edge_abort() -> None:
    connector, edge = ConnectorControlSession(), EdgeControlSession()
    connector.register(_request())
    (ev,) = _pump(connector, edge)
    edge.abort("edge shutting down")
    assert edge.state == "aborted"
    assert not edge.accept_registration(ev.question_id, DETAILS)
    assert _pump(edge, connector) == [SessionAborted("edge shutting down")]
    assert connector.state == "aborted"
    with pytest.raises(LocalProtocolError):
        connector.unregister()


def test_unknown_method_and_interface_get_exception_returns() -> None:
    client = RpcPeer(serves_bootstrap=False)
    edge = EdgeControlSession()
    qb = client.bootstrap()
    client.call(PromisedAnswer(qb), REGISTRATION_SERVER_ID, 9, lambda c: None)
    client.call(PromisedAnswer(qb), 0xEA58385C65416035, 0, lambda c: None)
    assert edge.receive_data(client.data_to_send()) == []
    events = client.receive_data(edge.data_to_send())
    assert [getattr(e, "type", None) for e in events[1:]] == ["unimplemented", "unimplemented"]
    # malformed params: exception return, session continues
    assert edge.receive_data(client.data_to_send()) == []  # Finishes
    client.call(ImportedCap(0), REGISTRATION_SERVER_ID, 0, lambda c: c.set_as_text("nope"))
    assert edge.receive_data(client.data_to_send()) == []
    (bad,) = client.receive_data(edge.data_to_send())
    assert "invalid registerConnection parameters" in bad.reason
    assert edge.state == "new"


def test_connector_call_failed_event() -> None:
    connector, edge = ConnectorControlSession(), EdgeControlSession()
    connector.register(_request())
    (ev,) = _pump(connector, edge)
    edge.accept_registration(ev.question_id, DETAILS)
    _pump(edge, connector)
    _pump(connector, edge)
    connector.unregister()
    (unreg,) = _pump(connector, edge)
    edge._rpc.return_exception(unreg.question_id, "boom")
    assert _pump(edge, connector) == [CallFailed("unregisterConnection", "boom")]


def test_connector_register_twice_is_local_error() -> None:
    connector = ConnectorControlSession()
    connector.register(_request())
    with pytest.raises(LocalProtocolError):
        connector.register(_request())


# ---------------------------------------------------------------------------- malformed


def test_malformed_bytes_raise_remote_protocol_error() -> None:
    for data in (b"\xff\xff\xff\xff", b"\x00\x00\x00\x00\xff\xff\xff\x7f"):
        with pytest.raises(RemoteProtocolError):
            EdgeControlSession().receive_data(data)
    edge = EdgeControlSession()
    with pytest.raises(RemoteProtocolError):
        edge.receive_data(b"\x00\x00\x00\x00\x01\x00\x00\x00" + b"\xff" * 8)
    assert [m.which for m in _messages(edge.data_to_send())] == ["abort"]


def test_garbage_results_for_registration_raise() -> None:
    connector = ConnectorControlSession()
    connector.register(_request())
    server = RpcPeer(serves_bootstrap=True)
    server.receive_data(connector.data_to_send())
    server.return_results(1, lambda c: c.set_as_text("not a struct"))
    with pytest.raises(RemoteProtocolError):
        connector.receive_data(server.data_to_send())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_sessions_only_raise_remote_protocol_error(data: bytes) -> None:
    for session in (EdgeControlSession(), ConnectorControlSession()):
        try:
            session.receive_data(data)
        except RemoteProtocolError:
            pass
