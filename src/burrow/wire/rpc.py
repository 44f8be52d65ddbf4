"""A small sans-IO Cap'n Proto RPC engine (two-party, level 0 subset) for the control stream.

Why a custom engine rather than pycapnp's RPC runtime
-----------------------------------------------------
pycapnp's RPC (``TwoPartyClient``/``TwoPartyServer``) runs on its own KJ event loop bridged to
asyncio and wants to own the transport (a socket or an ``AsyncIoStream``). On the tunnel the RPC
bytes travel in the body of one HTTP/2 stream that ``h2`` (also sans-IO) demultiplexes, and the
control session must be testable in memory, byte by byte, without sockets or an event loop.
The control stream needs only a handful of messages (Bootstrap, Call, Return, Finish, Release,
Abort), one capability (the edge's bootstrap ``RegistrationServer``) and no promise resolution,
embargoes or third-party handoff. So burrow implements that subset here as a sans-IO state
machine (bytes in -> events, bytes out), and uses pycapnp only to (de)serialise messages.

What it does
------------
- Stream framing (:class:`FrameDecoder`): standard Cap'n Proto stream framing (u32 segment count
  minus one, u32 segment sizes in words, padding to 8 bytes, segments), with a maximum message
  size and segment count. Violations raise :class:`burrow.errors.RemoteProtocolError`.
- :class:`RpcPeer`: question table (our outgoing Bootstrap/Call), answer table (their questions),
  one export (the bootstrap capability, if this side serves one), imports learnt from bootstrap
  answers. It answers Bootstrap itself, rejects calls to unknown capabilities with an exception
  Return, sends a Finish for every Return it receives (as cloudflared does), answers unknown
  message kinds with ``unimplemented`` and surfaces everything else as typed events.

All pycapnp objects are ``Any``; they never leave this module except as the opaque ``params`` /
``content`` of call and return events, which :mod:`burrow.wire.registration` reads through its
schema.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from burrow.errors import LocalProtocolError, RemoteProtocolError
from burrow.wire.capnp_schemas import rpc_schema

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_SEGMENTS",
    "BootstrapResolved",
    "CallReceived",
    "ExceptionReturned",
    "FrameDecoder",
    "ImportedCap",
    "PeerAborted",
    "PromisedAnswer",
    "ResultsReturned",
    "RpcEvent",
    "RpcPeer",
    "decode_message",
    "split_frames",
]

DEFAULT_MAX_MESSAGE_SIZE = 1 << 20  # 1 MiB, including the segment table
DEFAULT_MAX_SEGMENTS = 512
# Bound on words pycapnp may traverse while reading one message (amplification guard).
_TRAVERSAL_LIMIT_WORDS = 1 << 20

# Questions the peer may have open towards us at once (the control stream needs 2).
MAX_OUTSTANDING_ANSWERS = 64

# Exception.type in rpc.capnp
EXC_FAILED = "failed"
EXC_UNIMPLEMENTED = "unimplemented"
EXC_DISCONNECTED = "disconnected"

Segments = tuple[bytes, ...]


# --------------------------------------------------------------------------------- framing


class FrameDecoder:
    """Splits a byte stream into complete Cap'n Proto messages (tuples of segments)."""

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_segments: int = DEFAULT_MAX_SEGMENTS,
    ) -> None:
        self._buf = bytearray()
        self._max_size = max_message_size
        self._max_segments = max_segments

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Segments]:
        """Add bytes; return every message now complete, in order."""
        self._buf += data
        out: list[Segments] = []
        while True:
            msg = self._next()
            if msg is None:
                return out
            out.append(msg)

    def eof(self) -> None:
        """The stream ended: leftover bytes mean a truncated message."""
        if self._buf:
            raise RemoteProtocolError(
                f"capnp stream ended inside a message ({len(self._buf)} bytes left)"
            )

    def _next(self) -> Segments | None:
        buf = self._buf
        if len(buf) < 4:
            return None
        count = struct.unpack_from("<I", buf, 0)[0] + 1
        if count > self._max_segments:
            raise RemoteProtocolError(f"capnp message has too many segments ({count})")
        header = 4 + 4 * count
        header += header & 4  # pad the segment table to a whole word
        if header > self._max_size:
            raise RemoteProtocolError("capnp message too large")
        if len(buf) < 4 + 4 * count:
            return None
        sizes = struct.unpack_from(f"<{count}I", buf, 4)
        total = header + 8 * sum(sizes)
        if total > self._max_size:
            raise RemoteProtocolError(f"capnp message too large ({total} bytes > {self._max_size})")
        if len(buf) < total:
            return None
        segments: list[bytes] = []
        offset = header
        for size in sizes:
            end = offset + 8 * size
            segments.append(bytes(buf[offset:end]))
            offset = end
        del buf[:total]
        return tuple(segments)


def split_frames(data: bytes, **limits: int) -> list[Segments]:
    """Split ``data`` that must hold only whole messages (raises on a truncated tail)."""
    decoder = FrameDecoder(**limits)
    frames = decoder.feed(data)
    decoder.eof()
    return frames


def encode_segments(segments: Segments | list[bytes]) -> bytes:
    """Standard stream framing of already built segments."""
    count = len(segments)
    table = struct.pack(f"<{count + 1}I", count - 1, *(len(s) // 8 for s in segments))
    if len(table) % 8:
        table += b"\0\0\0\0"
    return table + b"".join(segments)


def decode_message(segments: Segments) -> Any:
    """An ``rpc.capnp`` ``Message`` reader over ``segments`` (RemoteProtocolError if invalid)."""
    if not segments or not segments[0]:
        raise RemoteProtocolError("capnp message has an empty first segment")
    try:
        return rpc_schema().Message.from_segments(
            list(segments), traversal_limit_in_words=_TRAVERSAL_LIMIT_WORDS
        )
    except Exception as exc:  # pycapnp raises KjException and friends
        raise RemoteProtocolError(f"invalid capnp message: {exc}") from exc


# ------------------------------------------------------------------------ typed RPC view


@dataclass(frozen=True, slots=True)
class ImportedCap:
    """Call target: a capability the peer exported to us (by export id)."""

    import_id: int


@dataclass(frozen=True, slots=True)
class PromisedAnswer:
    """Call target: the (capability) result of one of our questions, pipelined."""

    question_id: int


CallTarget = ImportedCap | PromisedAnswer


@dataclass(frozen=True, slots=True)
class CallReceived:
    """The peer called our bootstrap capability. Answer with return_results/return_exception."""

    question_id: int
    interface_id: int
    method_id: int
    params: Any = field(repr=False, compare=False)  # AnyPointer reader (keep within handler)


@dataclass(frozen=True, slots=True)
class ResultsReturned:
    """One of our questions returned results (a Finish was already queued)."""

    question_id: int
    content: Any = field(repr=False, compare=False)  # AnyPointer reader
    cap_table: tuple[tuple[str, int], ...] = ()  # (kind, id): ("senderHosted", 0), ...


@dataclass(frozen=True, slots=True)
class BootstrapResolved:
    """Our Bootstrap question returned a capability, now imported under ``import_id``."""

    question_id: int
    import_id: int


@dataclass(frozen=True, slots=True)
class ExceptionReturned:
    """One of our questions returned an exception (or was canceled / unimplemented)."""

    question_id: int
    reason: str
    type: str


@dataclass(frozen=True, slots=True)
class PeerAborted:
    reason: str


RpcEvent = CallReceived | ResultsReturned | BootstrapResolved | ExceptionReturned | PeerAborted

ParamsBuilder = Callable[[Any], None]
"""Fills a params/results struct: called with the pycapnp AnyPointer builder of the content."""


@dataclass(slots=True)
class _Question:
    kind: str  # "bootstrap" | "call"
    returned: bool = False


@dataclass(slots=True)
class _Answer:
    kind: str  # "bootstrap" | "call"
    returned: bool = False


def _read_text(value: Any) -> str:
    return str(value)


class RpcPeer:
    """One side of a two-party RPC connection (sans-IO).

    ``bootstrap_interface_id`` set: this side serves a bootstrap capability (export id 0) and
    surfaces calls on it as :class:`CallReceived`. Unset: Bootstrap is answered with an exception.
    """

    BOOTSTRAP_EXPORT_ID = 0

    def __init__(
        self,
        *,
        serves_bootstrap: bool,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_segments: int = DEFAULT_MAX_SEGMENTS,
    ) -> None:
        self._serves_bootstrap = serves_bootstrap
        self._decoder = FrameDecoder(max_message_size=max_message_size, max_segments=max_segments)
        self._out = bytearray()
        self._questions: dict[int, _Question] = {}
        self._answers: dict[int, _Answer] = {}
        self._export_refs = 0  # references to our bootstrap export held by the peer
        self._imports: dict[int, int] = {}  # import id -> reference count
        self.closed = False

    # ----------------------------------------------------------------- output

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def _send(self, msg: Any) -> None:
        self._out += msg.to_bytes()

    @staticmethod
    def _new() -> Any:
        return rpc_schema().Message.new_message()

    # ----------------------------------------------------------------- client side

    def _allocate_question(self, kind: str) -> int:
        qid = 0
        while qid in self._questions:
            qid += 1
        self._questions[qid] = _Question(kind)
        return qid

    def bootstrap(self) -> int:
        self._check_open()
        qid = self._allocate_question("bootstrap")
        msg = self._new()
        msg.init("bootstrap").questionId = qid
        self._send(msg)
        return qid

    def call(
        self, target: CallTarget, interface_id: int, method_id: int, fill: ParamsBuilder
    ) -> int:
        self._check_open()
        qid = self._allocate_question("call")
        msg = self._new()
        call = msg.init("call")
        call.questionId = qid
        if isinstance(target, ImportedCap):
            call.target.importedCap = target.import_id
        else:
            promised = call.target.init("promisedAnswer")
            promised.questionId = target.question_id
            promised.init("transform", 0)
        call.interfaceId = interface_id
        call.methodId = method_id
        params = call.init("params")
        fill(params.content)
        params.init("capTable", 0)
        call.sendResultsTo.caller = None
        self._send(msg)
        return qid

    def is_question_pending(self, question_id: int) -> bool:
        q = self._questions.get(question_id)
        return q is not None and not q.returned

    def imports(self) -> dict[int, int]:
        return dict(self._imports)

    # ----------------------------------------------------------------- server side

    def is_answer_pending(self, question_id: int) -> bool:
        a = self._answers.get(question_id)
        return not self.closed and a is not None and a.kind == "call" and not a.returned

    def return_results(self, question_id: int, fill: ParamsBuilder | None) -> bool:
        """Answer a received call with results. False if it is no longer pending."""
        answer = self._take_pending(question_id)
        if answer is None:
            return False
        msg = self._new()
        ret = msg.init("return")
        ret.answerId = question_id
        ret.releaseParamCaps = False
        payload = ret.init("results")
        if fill is not None:
            fill(payload.content)
        payload.init("capTable", 0)
        self._send(msg)
        return True

    def return_exception(self, question_id: int, reason: str, type: str = EXC_FAILED) -> bool:
        answer = self._take_pending(question_id)
        if answer is None:
            return False
        self._send_exception_return(question_id, reason, type)
        return True

    def _take_pending(self, question_id: int) -> _Answer | None:
        if self.closed:
            return None
        answer = self._answers.get(question_id)
        if answer is None or answer.returned:
            return None
        answer.returned = True
        return answer

    def _send_exception_return(self, question_id: int, reason: str, type: str) -> None:
        msg = self._new()
        ret = msg.init("return")
        ret.answerId = question_id
        ret.releaseParamCaps = False
        exc = ret.init("exception")
        exc.reason = reason
        exc.type = type
        self._send(msg)

    def _send_bootstrap_return(self, question_id: int) -> None:
        msg = rpc_schema().Message.new_message(num_first_segment_words=64)
        ret = msg.init("return")
        ret.answerId = question_id
        payload = ret.init("results")
        payload.init("capTable", 1)[0].senderHosted = self.BOOTSTRAP_EXPORT_ID
        segments = msg.to_segments()
        if len(segments) != 1:  # pragma: no cover - 64 words always suffice
            raise LocalProtocolError("bootstrap return did not fit one segment")
        self._out += encode_segments([_with_capability_content(segments[0], 0)])

    # ----------------------------------------------------------------- both

    def abort(self, reason: str, type: str = EXC_FAILED) -> None:
        if self.closed:
            return
        msg = self._new()
        exc = msg.init("abort")
        exc.reason = reason
        exc.type = type
        self._send(msg)
        self.closed = True

    def release_imports(self) -> None:
        """Release every imported capability (cloudflared does this before its Abort)."""
        if self.closed:
            return
        for import_id, count in sorted(self._imports.items()):
            msg = self._new()
            rel = msg.init("release")
            rel.id = import_id
            rel.referenceCount = count
            self._send(msg)
        self._imports.clear()
        for qid in [q for q, v in self._questions.items() if v.kind == "bootstrap" and v.returned]:
            del self._questions[qid]

    def _check_open(self) -> None:
        if self.closed:
            raise LocalProtocolError("RPC session is closed")

    # ----------------------------------------------------------------- input

    def receive_data(self, data: bytes) -> list[RpcEvent]:
        """Feed bytes from the peer. Malformed input queues an Abort and raises."""
        if self.closed:
            return []
        events: list[RpcEvent] = []
        try:
            for segments in self._decoder.feed(data):
                self._handle(decode_message(segments), events)
                if self.closed:
                    break
        except RemoteProtocolError as exc:
            self.abort(str(exc))
            raise
        return events

    def _handle(self, msg: Any, events: list[RpcEvent]) -> None:
        try:
            which = str(msg.which)
        except Exception:  # unknown union member (newer protocol)
            return
        try:
            handler = _HANDLERS.get(which)
            if handler is None:
                self._send_unimplemented(msg, which)
            else:
                handler(self, getattr(msg, which), events)
        except RemoteProtocolError:
            raise
        except Exception as exc:  # pycapnp reading errors on malformed content
            raise RemoteProtocolError(f"invalid RPC {which} message: {exc}") from exc

    def _send_unimplemented(self, msg: Any, which: str) -> None:
        if which in ("unimplemented", "abort"):
            return
        out = self._new()
        out.unimplemented = msg
        self._send(out)

    def _on_abort(self, exc: Any, events: list[RpcEvent]) -> None:
        self.closed = True
        events.append(PeerAborted(_read_text(exc.reason)))

    def _on_bootstrap(self, boot: Any, events: list[RpcEvent]) -> None:
        qid = int(boot.questionId)
        self._new_answer(qid, "bootstrap")
        if self._serves_bootstrap:
            self._answers[qid].returned = True
            self._export_refs += 1
            self._send_bootstrap_return(qid)
        else:
            self._answers[qid].returned = True
            self._send_exception_return(qid, "no bootstrap capability here", EXC_FAILED)

    def _new_answer(self, qid: int, kind: str) -> None:
        if qid in self._answers:
            raise RemoteProtocolError(f"RPC question id {qid} reused before Finish")
        if len(self._answers) >= MAX_OUTSTANDING_ANSWERS:
            raise RemoteProtocolError("too many outstanding RPC questions from the peer")
        self._answers[qid] = _Answer(kind)

    def _on_call(self, call: Any, events: list[RpcEvent]) -> None:
        qid = int(call.questionId)
        self._new_answer(qid, "call")
        interface_id = int(call.interfaceId)
        method_id = int(call.methodId)
        if str(call.sendResultsTo.which) != "caller":
            self.return_exception(
                qid, "only results to the caller are supported", EXC_UNIMPLEMENTED
            )
            return
        target = call.target
        target_kind = str(target.which)
        valid = False
        if target_kind == "importedCap":
            valid = (
                self._serves_bootstrap
                and int(target.importedCap) == self.BOOTSTRAP_EXPORT_ID
                and self._export_refs > 0
            )
        elif target_kind == "promisedAnswer":
            promised = target.promisedAnswer
            answer = self._answers.get(int(promised.questionId))
            valid = (
                self._serves_bootstrap
                and answer is not None
                and answer.kind == "bootstrap"
                and len(promised.transform) == 0
            )
        if not valid:
            self.return_exception(qid, f"call on an unknown capability ({target_kind})")
            return
        events.append(CallReceived(qid, interface_id, method_id, call.params.content))

    def _on_return(self, ret: Any, events: list[RpcEvent]) -> None:
        qid = int(ret.answerId)
        question = self._questions.get(qid)
        if question is None or question.returned:
            raise RemoteProtocolError(f"RPC return for unknown question {qid}")
        question.returned = True
        kind = str(ret.which)
        if kind == "results":
            payload = ret.results
            caps = tuple(_cap_descriptor(c) for c in payload.capTable)
            if question.kind == "bootstrap":
                if not caps or caps[0][0] not in ("senderHosted", "senderPromise"):
                    raise RemoteProtocolError("bootstrap answer carries no capability")
                import_id = caps[0][1]
                self._imports[import_id] = self._imports.get(import_id, 0) + 1
                events.append(BootstrapResolved(qid, import_id))
            else:
                events.append(ResultsReturned(qid, payload.content, caps))
        elif kind == "exception":
            exc = ret.exception
            events.append(ExceptionReturned(qid, _read_text(exc.reason), str(exc.type)))
        else:
            events.append(ExceptionReturned(qid, f"return of kind {kind}", EXC_FAILED))
        self._send_finish(qid)

    def _send_finish(self, qid: int) -> None:
        # Mirrors cloudflared: keep result caps (released explicitly later), and ask for the
        # early-cancellation workaround.
        msg = self._new()
        fin = msg.init("finish")
        fin.questionId = qid
        fin.releaseResultCaps = False
        fin.requireEarlyCancellationWorkaround = True
        self._send(msg)
        if self._questions[qid].kind == "bootstrap" and self._imports:
            # Like cloudflared (capnp-go), the bootstrap question id stays taken while its
            # capability is imported: later calls use ids from 1, as in the recording.
            return
        del self._questions[qid]

    def _on_finish(self, fin: Any, events: list[RpcEvent]) -> None:
        qid = int(fin.questionId)
        answer = self._answers.pop(qid, None)
        if answer is None:
            return  # tolerated: a Finish racing our own bookkeeping
        if answer.kind == "bootstrap" and bool(fin.releaseResultCaps) and self._export_refs:
            self._export_refs -= 1

    def _on_release(self, rel: Any, events: list[RpcEvent]) -> None:
        if int(rel.id) == self.BOOTSTRAP_EXPORT_ID and self._serves_bootstrap:
            self._export_refs = max(0, self._export_refs - int(rel.referenceCount))

    def _on_unimplemented(self, echoed: Any, events: list[RpcEvent]) -> None:
        kind = str(echoed.which)
        if kind == "bootstrap":
            qid = int(echoed.bootstrap.questionId)
        elif kind == "call":
            qid = int(echoed.call.questionId)
        else:
            return
        question = self._questions.pop(qid, None)
        if question is not None and not question.returned:
            events.append(
                ExceptionReturned(qid, f"peer does not implement {kind}", "unimplemented")
            )

    def _on_ignored(self, msg: Any, events: list[RpcEvent]) -> None:
        return


def _cap_descriptor(desc: Any) -> tuple[str, int]:
    kind = str(desc.which)
    if kind in ("senderHosted", "senderPromise", "receiverHosted"):
        return kind, int(getattr(desc, kind))
    return kind, -1


def _with_capability_content(segment: bytes, cap_index: int) -> bytes:
    """Set ``Message.return.results.content`` to capability pointer ``cap_index``.

    pycapnp cannot write a capability pointer outside its RPC runtime, so the bootstrap answer is
    built with a null content pointer and this helper walks Message -> Return -> Payload (all
    struct pointers in one segment) and writes the capability pointer (kind 3, index in the upper
    32 bits) into Payload's first pointer slot.
    """
    words = bytearray(segment)

    def follow(ptr_word: int) -> tuple[int, int]:
        (raw,) = struct.unpack_from("<Q", words, ptr_word * 8)
        if raw & 3 != 0 or raw == 0:
            raise LocalProtocolError("unexpected pointer layout in bootstrap return")
        offset = (raw & 0xFFFFFFFF) >> 2
        if offset & (1 << 29):
            offset -= 1 << 30
        data_words = (raw >> 32) & 0xFFFF
        start = ptr_word + 1 + offset
        return start, start + data_words  # (struct start, first pointer slot)

    _, message_ptrs = follow(0)
    _, return_ptrs = follow(message_ptrs)
    _, payload_ptrs = follow(return_ptrs)
    struct.pack_into("<Q", words, payload_ptrs * 8, 3 | (cap_index << 32))
    return bytes(words)


_HANDLERS: dict[str, Callable[[RpcPeer, Any, list[RpcEvent]], None]] = {
    "abort": RpcPeer._on_abort,
    "bootstrap": RpcPeer._on_bootstrap,
    "call": RpcPeer._on_call,
    "return": RpcPeer._on_return,
    "finish": RpcPeer._on_finish,
    "release": RpcPeer._on_release,
    "unimplemented": RpcPeer._on_unimplemented,
    "resolve": RpcPeer._on_ignored,
    "disembargo": RpcPeer._on_ignored,
}
