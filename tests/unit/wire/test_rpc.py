"""Cap'n Proto stream framing and the sans-IO RPC subset (burrow.wire.rpc)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from burrow.errors import RemoteProtocolError
from burrow.testing.conformance import load_conformance
from burrow.wire.capnp_schemas import rpc_schema, tunnelrpc_schema
from burrow.wire.rpc import (
    BootstrapResolved,
    CallReceived,
    ExceptionReturned,
    FrameDecoder,
    ImportedCap,
    PeerAborted,
    PromisedAnswer,
    ResultsReturned,
    RpcPeer,
    decode_message,
    encode_segments,
    split_frames,
)


@pytest.fixture(scope="module")
def recording() -> dict[str, Any]:
    data: dict[str, Any] = load_conformance("control-stream-http2.json")
    return data


def _frame(recording: dict[str, Any], i: int) -> bytes:
    return bytes.fromhex(recording["frames"][i]["hex"])


def _msg(data: bytes) -> Any:
    (segments,) = split_frames(data)
    return decode_message(segments)


def _messages(data: bytes) -> list[Any]:
    return [decode_message(s) for s in split_frames(data)]


# ------------------------------------------------------------------------------ framing


def test_framing_roundtrip_single_and_multi_segment() -> None:
    one = encode_segments([b"\x00" * 8])
    assert one == struct.pack("<II", 0, 1) + b"\x00" * 8
    two = encode_segments([b"a" * 16, b"b" * 8])
    # 2 segments: count-1, two sizes, padding to a word
    assert two[:16] == struct.pack("<IIII", 1, 2, 1, 0)
    assert split_frames(one + two) == [(b"\x00" * 8,), (b"a" * 16, b"b" * 8)]


def test_framing_incremental_byte_by_byte() -> None:
    data = encode_segments([b"x" * 24]) + encode_segments([b"y" * 8, b"z" * 8, b"w" * 8])
    dec = FrameDecoder()
    got = []
    for i in range(len(data)):
        got.extend(dec.feed(data[i : i + 1]))
    dec.eof()
    assert got == [(b"x" * 24,), (b"y" * 8, b"z" * 8, b"w" * 8)]
    assert dec.buffered == 0


def test_truncated_message_raises() -> None:
    data = encode_segments([b"x" * 24])
    for cut in (1, 3, 4, 7, 8, len(data) - 1):
        with pytest.raises(RemoteProtocolError):
            split_frames(data[:cut])
    dec = FrameDecoder()
    assert dec.feed(data[:-1]) == []
    with pytest.raises(RemoteProtocolError):
        dec.eof()


def test_huge_segment_count_raises() -> None:
    with pytest.raises(RemoteProtocolError, match="segments"):
        FrameDecoder().feed(struct.pack("<I", 0xFFFFFFFF))
    with pytest.raises(RemoteProtocolError):
        FrameDecoder(max_segments=4).feed(struct.pack("<I", 4))


def test_oversize_message_raises_before_buffering() -> None:
    with pytest.raises(RemoteProtocolError, match="too large"):
        FrameDecoder().feed(struct.pack("<II", 0, 0xFFFFFFFF))
    dec = FrameDecoder(max_message_size=64)
    with pytest.raises(RemoteProtocolError):
        dec.feed(struct.pack("<II", 0, 8))  # 8 + 64 bytes > 64
    assert len(split_frames(struct.pack("<II", 0, 7) + b"\0" * 56, max_message_size=64)) == 1


def test_invalid_message_content_raises() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message((b"",))
    # root pointer pointing far outside the segment
    bad = struct.pack("<Q", (0x0FFFFFFF << 2) | (1 << 32) | (1 << 48))
    peer = RpcPeer(serves_bootstrap=True)
    with pytest.raises(RemoteProtocolError):
        peer.receive_data(encode_segments([bad]))
    # the peer is told before the caller closes the stream
    (abort,) = _messages(peer.data_to_send())
    assert abort.which == "abort"
    assert peer.closed
    assert peer.receive_data(b"more") == []


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_framer_only_raises_remote_protocol_error(chunks: list[bytes]) -> None:
    dec = FrameDecoder(max_message_size=4096, max_segments=16)
    try:
        for chunk in chunks:
            for segments in dec.feed(chunk):
                assert all(len(s) % 8 == 0 for s in segments)
        dec.eof()
    except RemoteProtocolError:
        pass


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.lists(
        st.binary(min_size=8, max_size=64).map(lambda b: b[: len(b) // 8 * 8]),
        min_size=1,
        max_size=3,
    )
)
def test_fuzz_rpc_peer_with_framed_garbage(segments: list[bytes]) -> None:
    # Well-framed messages with random content reach pycapnp: still only RemoteProtocolError.
    for serves in (True, False):
        peer = RpcPeer(serves_bootstrap=serves)
        try:
            peer.receive_data(encode_segments(segments))
        except RemoteProtocolError:
            pass
        peer.data_to_send()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256))
def test_fuzz_rpc_peer_with_raw_bytes(data: bytes) -> None:
    peer = RpcPeer(serves_bootstrap=True)
    try:
        peer.receive_data(data)
    except RemoteProtocolError:
        pass


# ------------------------------------------------------------------------------ RPC


def test_bootstrap_answer_matches_recorded_edge_bytes(recording: dict[str, Any]) -> None:
    edge = RpcPeer(serves_bootstrap=True)
    assert edge.receive_data(_frame(recording, 0)) == []
    out = edge.data_to_send()
    assert out == _frame(recording, 2)
    ret = getattr(_msg(out), "return")
    assert ret.answerId == 0
    assert [c.senderHosted for c in ret.results.capTable] == [0]


def test_client_bootstrap_and_finish_match_cloudflared_bytes(recording: dict[str, Any]) -> None:
    client = RpcPeer(serves_bootstrap=False)
    assert client.bootstrap() == 0
    assert client.data_to_send() == _frame(recording, 0)
    events = client.receive_data(_frame(recording, 2))
    assert events == [BootstrapResolved(question_id=0, import_id=0)]
    assert client.data_to_send() == _frame(recording, 4)  # Finish(0), cloudflared's flags
    assert client.imports() == {0: 1}
    client.release_imports()
    client.abort("rpc: shutdown")
    data = client.data_to_send()
    assert data.startswith(_frame(recording, 12))  # Release(id 0, count 1), byte-identical
    abort = _msg(data[len(_frame(recording, 12)) :])
    # Abort: same content; pycapnp's newer rpc.capnp lays Exception out with one more pointer
    recorded_abort = _msg(_frame(recording, 13)).abort
    assert (abort.abort.reason, abort.abort.type) == (recorded_abort.reason, recorded_abort.type)


def test_recorded_cloudflared_frames_decode(recording: dict[str, Any]) -> None:
    for frame in recording["frames"]:
        msg = _msg(bytes.fromhex(frame["hex"]))
        assert str(msg.which) == frame["which"]


def _pair() -> tuple[RpcPeer, RpcPeer]:
    return RpcPeer(serves_bootstrap=False), RpcPeer(serves_bootstrap=True)


def _config_params(config: bytes) -> Any:
    schema = tunnelrpc_schema().RegistrationServer.schema.methods["updateLocalConfiguration"]

    def fill(content: Any) -> None:
        content.as_struct(schema.param_type).config = config

    return fill


def test_pipelined_call_then_imported_cap_and_question_reuse() -> None:
    client, server = _pair()
    bq = client.bootstrap()
    cq = client.call(PromisedAnswer(bq), 0x1234, 7, _config_params(b"abc"))
    assert (bq, cq) == (0, 1)
    events = server.receive_data(client.data_to_send())
    assert [type(e) for e in events] == [CallReceived]
    call = events[0]
    assert isinstance(call, CallReceived)
    assert (call.question_id, call.interface_id, call.method_id) == (1, 0x1234, 7)
    assert server.is_answer_pending(1)
    assert server.return_results(1, None)
    assert not server.return_results(1, None)  # only once
    events = client.receive_data(server.data_to_send())
    assert [type(e) for e in events] == [BootstrapResolved, ResultsReturned]
    # the client finished both questions
    finish_bytes = client.data_to_send()
    assert [m.finish.questionId for m in _messages(finish_bytes)] == [0, 1]
    assert server.receive_data(finish_bytes) == []
    # id 0 stays with the imported bootstrap capability (as in capnp-go); 1 is free again
    assert client.call(ImportedCap(0), 0x1234, 8, _config_params(b"")) == 1
    events = server.receive_data(client.data_to_send())
    assert isinstance(events[0], CallReceived) and events[0].method_id == 8


def test_call_on_unknown_capability_gets_exception() -> None:
    client, server = _pair()
    client.call(ImportedCap(5), 1, 0, _config_params(b""))
    assert server.receive_data(client.data_to_send()) == []
    events = client.receive_data(server.data_to_send())
    assert len(events) == 1 and isinstance(events[0], ExceptionReturned)
    assert "unknown capability" in events[0].reason


def test_bootstrap_to_client_side_gets_exception() -> None:
    a, b = RpcPeer(serves_bootstrap=False), RpcPeer(serves_bootstrap=False)
    a.bootstrap()
    assert b.receive_data(a.data_to_send()) == []
    events = a.receive_data(b.data_to_send())
    assert len(events) == 1 and isinstance(events[0], ExceptionReturned)


def test_finish_cancels_pending_answer() -> None:
    client, server = _pair()
    bq = client.bootstrap()
    client.call(PromisedAnswer(bq), 1, 0, _config_params(b""))
    server.receive_data(client.data_to_send())
    msg = rpc_schema().Message.new_message()
    msg.init("finish").questionId = 1
    server.receive_data(msg.to_bytes())
    assert not server.is_answer_pending(1)
    assert not server.return_exception(1, "late")


def test_question_id_reuse_before_finish_is_protocol_error() -> None:
    client, server = _pair()
    client.bootstrap()
    data = client.data_to_send()
    server.receive_data(data)
    with pytest.raises(RemoteProtocolError, match="reused"):
        server.receive_data(data)


def test_return_for_unknown_question_is_protocol_error() -> None:
    client = RpcPeer(serves_bootstrap=False)
    server = RpcPeer(serves_bootstrap=True)
    server.receive_data(encode_bootstrap(3))
    with pytest.raises(RemoteProtocolError):
        client.receive_data(server.data_to_send())


def encode_bootstrap(qid: int) -> bytes:
    msg = rpc_schema().Message.new_message()
    msg.init("bootstrap").questionId = qid
    data: bytes = msg.to_bytes()
    return data


def test_unknown_message_kinds() -> None:
    server = RpcPeer(serves_bootstrap=True)
    msg = rpc_schema().Message.new_message()
    msg.init("provide").questionId = 9
    assert server.receive_data(msg.to_bytes()) == []
    (reply,) = _messages(server.data_to_send())
    assert reply.which == "unimplemented"
    assert reply.unimplemented.which == "provide"
    # Resolve / Disembargo are ignored
    msg = rpc_schema().Message.new_message()
    msg.init("resolve").promiseId = 1
    assert server.receive_data(msg.to_bytes()) == []
    assert server.data_to_send() == b""
    # an 'unimplemented' echo of our call fails that question
    client = RpcPeer(serves_bootstrap=False)
    qid = client.bootstrap()
    echo = rpc_schema().Message.new_message()
    echo.unimplemented = _msg(client.data_to_send())
    events = client.receive_data(echo.to_bytes())
    assert events == [ExceptionReturned(qid, "peer does not implement bootstrap", "unimplemented")]


def test_release_drops_export_reference() -> None:
    client, server = _pair()
    client.bootstrap()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())  # Finish
    client.release_imports()
    server.receive_data(client.data_to_send())
    client.call(ImportedCap(0), 1, 0, _config_params(b""))
    assert server.receive_data(client.data_to_send()) == []  # export gone: exception return
    (ret,) = _messages(server.data_to_send())
    assert getattr(ret, "return").which == "exception"


def test_abort_both_ways() -> None:
    client, server = _pair()
    client.abort("bye")
    events = server.receive_data(client.data_to_send())
    assert events == [PeerAborted("bye")]
    assert server.closed and client.closed
    client.abort("again")  # idempotent
    assert client.data_to_send() == b""


def test_too_many_outstanding_questions() -> None:
    client, server = _pair()
    bq = client.bootstrap()
    for _ in range(80):
        client.call(PromisedAnswer(bq), 1, 0, _config_params(b""))
    with pytest.raises(RemoteProtocolError, match="outstanding"):
        server.receive_data(client.data_to_send())
