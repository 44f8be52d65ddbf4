"""HTTP/1.1 message parsing (sans-IO) on top of httptools (llhttp, strict mode).

Heads are framed by us (find the blank line, bounded) and parsed incrementally by llhttp, so a
malformed or oversized head fails as soon as the offending byte arrives and nothing is buffered
past the limits. Bodies (Content-Length, chunked, read-until-close) are framed in Python: that
gives exact control over chunk-size/extension validation and lets HEAD/204/304 responses skip
their body, which httptools cannot do. Request-smuggling defences are applied on top of
llhttp's own strictness (CL+TE, duplicate CL, TE other than a final `chunked`, obs-fold, bare
CR/LF, CTLs in values, Host rules).

Events: RequestHead/ResponseHead, Data, EndOfMessage(trailers), Upgraded(rest). A head is
followed by zero or more Data and one EndOfMessage; a message that switches protocols (request
with Connection: upgrade + Upgrade, 101 response) ends with Upgraded(rest) instead, carrying the
bytes that followed it, and the parser is done (feeding it again is a LocalProtocolError).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import httptools

from burrow.errors import (
    BurrowError,
    HTTPRequestError,
    LocalProtocolError,
    RemoteProtocolError,
)
from burrow.wire import DataPiece
from burrow.wire.http1_write import (
    HOP_BY_HOP,
    LAST_CHUNK,
    Headers,
    connection_tokens,
    encode_chunk,
    normalize_host,
    serialize_request_head,
    serialize_response_head,
)

__all__ = [
    "HOP_BY_HOP",
    "LAST_CHUNK",
    "Data",
    "EndOfMessage",
    "Headers",
    "RequestEvent",
    "RequestHead",
    "RequestParser",
    "ResponseEvent",
    "ResponseHead",
    "ResponseParser",
    "Upgraded",
    "connection_tokens",
    "encode_chunk",
    "normalize_host",
    "serialize_request_head",
    "serialize_response_head",
]


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    version: bytes
    headers: Headers
    keep_alive: bool
    content_length: int | None
    chunked: bool
    upgrade: bytes | None
    host: bytes | None
    expect_continue: bool


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    version: bytes
    headers: Headers
    keep_alive: bool
    content_length: int | None
    chunked: bool


@dataclass(slots=True)
class Data:
    data: DataPiece


@dataclass(slots=True)
class EndOfMessage:
    trailers: Headers


@dataclass(slots=True)
class Upgraded:
    rest: DataPiece


RequestEvent: TypeAlias = RequestHead | Data | EndOfMessage | Upgraded
ResponseEvent: TypeAlias = ResponseHead | Data | EndOfMessage | Upgraded

# --- grammar bits -------------------------------------------------------------------------------

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = rb'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*"'
_CHUNK_LINE_RE: Final = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*"
    % (_TOKEN, _TOKEN, _QUOTED)
)
_FIELD_LINE_RE: Final = re.compile(rb"(%s):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*)" % _TOKEN)
_TOKEN_RE: Final = re.compile(_TOKEN)
_MAX_CHUNK_LINE: Final = 4096
_VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0"}

# Header names the head parser looks at (after lower-casing).
_K_CL, _K_TE, _K_HOST, _K_CONN, _K_UPGRADE, _K_EXPECT = range(6)
_SPECIAL: Final = {
    b"content-length": _K_CL,
    b"transfer-encoding": _K_TE,
    b"host": _K_HOST,
    b"connection": _K_CONN,
    b"upgrade": _K_UPGRADE,
    b"expect": _K_EXPECT,
}

# Transfer-Encoding verdicts: exactly chunked; other codings then chunked; chunked absent;
# malformed (chunked twice or not final, not a token list).
_TE_CHUNKED, _TE_CODED, _TE_NOT_CHUNKED, _TE_INVALID = range(4)

# Parser states.
_HEAD, _CL, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _UPGRADE, _DONE = range(
    9
)


def _transfer_codings(te: bytes) -> int:
    """Classify a (combined) Transfer-Encoding value: one of the _TE_* verdicts."""
    codings = [c.strip(b" \t").lower() for c in te.split(b",")]
    if any(_TOKEN_RE.fullmatch(c) is None for c in codings):
        return _TE_INVALID
    n = codings.count(b"chunked")
    if n == 0:
        return _TE_NOT_CHUNKED
    if n > 1 or codings[-1] != b"chunked":
        return _TE_INVALID
    return _TE_CHUNKED if len(codings) == 1 else _TE_CODED


class _Collector:
    """The httptools callback target: one per parser, reset per message."""

    __slots__ = ("complete", "done", "headers", "parts", "size")

    def __init__(self) -> None:
        self.headers: Headers = []
        self.parts: list[bytes] = []
        self.size = 0
        self.complete = False
        self.done = False

    def on_url(self, piece: bytes) -> None:
        self.parts.append(piece)
        self.size += len(piece)

    on_status = on_url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self.complete = True

    def on_message_complete(self) -> None:
        self.done = True

    def reset(self) -> None:
        self.headers = []
        self.parts.clear()
        self.size = 0
        self.complete = False
        self.done = False


class _Parser:
    """Shared machinery: incremental head feeding and body framing."""

    __slots__ = (
        "_buf",
        "_col",
        "_cparser",
        "_error",
        "_head_bytes",
        "_lead_cr",
        "_line1",
        "_max_head",
        "_max_headers",
        "_remaining",
        "_started",
        "_state",
        "_tail",
        "_trailer_bytes",
        "_trailers",
        "_upgrade_after",
    )

    def __init__(self, max_head: int, max_headers: int) -> None:
        self._max_head = max_head
        self._max_headers = max_headers
        self._state = _HEAD
        self._col = _Collector()
        self._cparser: httptools.HttpRequestParser | httptools.HttpResponseParser | None = None
        self._started = False
        self._lead_cr = False
        self._head_bytes = 0
        self._line1 = -1
        self._tail = b""
        self._buf = bytearray()
        self._remaining = 0
        self._trailers: Headers = []
        self._trailer_bytes = 0
        self._upgrade_after = False
        self._error: BurrowError | None = None

    # --- subclass hooks --------------------------------------------------------------------------

    def _fail(self, message: str, status: int) -> BurrowError:
        raise NotImplementedError

    def _new_cparser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        raise NotImplementedError

    def _finish_head(self, events: list[Any]) -> None:
        raise NotImplementedError

    def _check_head_sizes(self) -> None:
        """Raise early for size limits visible in the partially parsed head."""

    # --- driving ---------------------------------------------------------------------------------

    def _feed(self, data: DataPiece, events: list[Any]) -> None:
        if self._error is not None:
            raise self._error
        try:
            self._run(data, events)
        except BurrowError as exc:
            if not isinstance(exc, LocalProtocolError):
                self._error = exc
                self._state = _DONE
            raise

    def _run(self, data: DataPiece, events: list[Any]) -> None:
        pos = 0
        n = len(data)
        while True:
            st = self._state
            if st == _UPGRADE:
                events.append(Upgraded(data[pos:] if pos else data))
                self._state = _DONE
                return
            if pos >= n:
                return
            if st == _CL or st == _CHUNK_DATA:
                r = self._remaining
                if n - pos < r:
                    events.append(Data(data[pos:] if pos else data))
                    self._remaining = r - (n - pos)
                    return
                events.append(Data(data[pos : pos + r]))
                pos += r
                if st == _CL:
                    self._end(events, [])
                else:
                    self._state = _CHUNK_END
            elif st == _UNTIL_CLOSE:
                events.append(Data(data[pos:] if pos else data))
                return
            elif type(data) is not bytes:
                # A large read lent as a view (net/recvbuf) that goes on past the body: heads,
                # chunk framing and trailers are parsed from bytes.
                data = bytes(data[pos:])
                n = len(data)
                pos = 0
            elif st == _HEAD:
                pos = self._feed_head(data, pos, n, events)
            elif st == _CHUNK_SIZE:
                line, pos = self._line(data, pos, n, _MAX_CHUNK_LINE)
                if line is None:
                    return
                m = _CHUNK_LINE_RE.fullmatch(line)
                if m is None:
                    raise self._fail("invalid chunk size line", 400)
                size = int(m.group(1), 16)
                if size:
                    self._remaining = size
                    self._state = _CHUNK_DATA
                else:
                    self._trailers = []
                    self._trailer_bytes = 0
                    self._state = _TRAILERS
            elif st == _CHUNK_END:
                line, pos = self._line(data, pos, n, 0)
                if line is None:
                    return
                if line:
                    raise self._fail("chunk data not followed by CRLF", 400)
                self._state = _CHUNK_SIZE
            elif st == _TRAILERS:
                before = pos - len(self._buf)
                line, pos = self._line(data, pos, n, self._max_head - self._trailer_bytes, 431)
                if line is None:
                    return
                self._trailer_bytes += pos - before
                if not line:
                    self._end(events, self._trailers)
                    continue
                m = _FIELD_LINE_RE.fullmatch(line)
                if m is None:
                    raise self._fail("invalid trailer field", 400)
                self._trailers.append((m.group(1).lower(), m.group(2).rstrip(b" \t")))
                if len(self._trailers) > self._max_headers:
                    raise self._fail("too many trailer fields", 431)
            else:
                raise LocalProtocolError("HTTP/1.1 parser fed after it finished (upgrade or error)")

    def _end(self, events: list[Any], trailers: Headers) -> None:
        if self._upgrade_after:  # Upgraded(rest) takes the place of EndOfMessage
            self._upgrade_after = False
            self._state = _UPGRADE
        else:
            events.append(EndOfMessage(trailers))
            self._state = _HEAD

    def _line(
        self, data: bytes, pos: int, n: int, limit: int, status: int = 400
    ) -> tuple[bytes | None, int]:
        """Take one CRLF-terminated line (content at most `limit` bytes), buffering partials."""
        buf = self._buf
        i = data.find(b"\n", pos)
        if i == -1:
            buf += data[pos:]
            if len(buf) > limit + 1:
                raise self._fail("line too long in message body framing", status)
            return None, n
        if buf:
            buf += data[pos : i + 1]
            raw = bytes(buf)
            buf.clear()
        else:
            raw = data[pos : i + 1]
        if len(raw) > limit + 2:
            raise self._fail("line too long in message body framing", status)
        if len(raw) < 2 or raw[-2] != 13:
            raise self._fail("bare LF in message body framing", 400)
        return raw[:-2], i + 1

    def _feed_head(self, data: bytes, pos: int, n: int, events: list[Any]) -> int:
        if not self._started:
            # Empty lines before a message are ignored (RFC 9112 2.2), CRLF only.
            if self._lead_cr:
                if data[pos] != 10:
                    raise self._fail("bare CR before the start line", 400)
                pos += 1
                self._lead_cr = False
            while data.startswith(b"\r\n", pos):
                pos += 2
            if pos >= n:
                return n
            if data[pos] == 13 or data[pos] == 10:
                if pos == n - 1 and data[pos] == 13:
                    self._lead_cr = True
                    return n
                raise self._fail("bare CR or LF before the start line", 400)
            self._started = True
            if self._cparser is None:
                self._cparser = self._new_cparser()
        # Find the blank line ending the head, also when it straddles two feeds.
        end = -1
        tail = self._tail
        if tail:
            j = (tail + data[pos : pos + 3]).find(b"\r\n\r\n")
            if j != -1:
                end = pos + j + 4 - len(tail)
        if end == -1:
            j = data.find(b"\r\n\r\n", pos)
            if j != -1:
                end = j + 4
        stop = n if end == -1 else end
        size = self._head_bytes + (stop - pos)
        if size > self._max_head:
            # Parse what fits (a malformed or too-long target wins over 431), then refuse.
            self._feed_c(data[pos : pos + self._max_head - self._head_bytes])
            if self._col.size + 32 >= self._max_head:  # the target ate the whole budget
                raise self._fail("request target too long", 414)
            raise self._fail("header section too large", 431)
        if self._line1 < 0:  # remember where the start line ends (checked by subclasses)
            j = data.find(b"\n", pos, stop)
            if j != -1:
                self._line1 = self._head_bytes + (j - pos) + 1
        self._head_bytes = size
        self._feed_c(data[pos:stop] if pos or stop != n else data)
        if end == -1:
            self._tail = (tail + data[max(pos, stop - 3) : stop])[-3:]
            return n
        if not self._col.complete:
            raise self._fail("malformed HTTP head", 400)
        self._tail = b""
        self._started = False
        self._head_bytes = 0
        self._finish_head(events)
        self._line1 = -1
        return end

    def _feed_c(self, chunk: bytes) -> None:
        cp = self._cparser
        assert cp is not None
        try:
            cp.feed_data(chunk)
        except httptools.HttpParserUpgrade:
            pass  # llhttp stops at the end of an upgrade/CONNECT head; we decide ourselves
        except httptools.HttpParserError as exc:
            self._check_head_sizes()
            raise self._fail(f"malformed HTTP head: {exc}", 400) from None
        self._check_head_sizes()

    def _framing(
        self, headers: Headers, response: bool
    ) -> tuple[int | None, bool, bytes | None, bytes | None, int, bytes | None, bool]:
        """One pass over the special fields: (CL, chunked, TE, Connection, #Host, Host, 100-c)."""
        cl_raw: bytes | None = None
        te: bytes | None = None
        conn: bytes | None = None
        host: bytes | None = None
        hosts = 0
        expect = False
        get = _SPECIAL.get
        for name, value in headers:
            k = get(name)
            if k is None:
                continue
            if k == _K_CL:
                if cl_raw is not None:
                    raise self._fail("duplicate Content-Length header", 400)
                cl_raw = value
            elif k == _K_TE:
                te = value if te is None else te + b"," + value
            elif k == _K_HOST:
                hosts += 1
                host = value
            elif k == _K_CONN:
                conn = value if conn is None else conn + b"," + value
            elif k == _K_EXPECT:
                expect = value.lower() == b"100-continue"
        cl: int | None = None
        chunked = False
        if te is not None:
            if cl_raw is not None:
                raise self._fail("both Content-Length and Transfer-Encoding", 400)
            verdict = _transfer_codings(te)
            if verdict == _TE_INVALID:
                raise self._fail("invalid Transfer-Encoding (chunked must be final, once)", 400)
            if response:
                chunked = verdict != _TE_NOT_CHUNKED  # not chunked: read until close
            elif verdict == _TE_CHUNKED:
                chunked = True
            elif verdict == _TE_CODED:
                raise self._fail("unsupported transfer-coding", 501)
            else:
                raise self._fail("Transfer-Encoding without a final chunked", 400)
        elif cl_raw is not None:
            if not cl_raw.isdigit() or len(cl_raw) > 18:
                raise self._fail("invalid Content-Length", 400)
            cl = int(cl_raw)
        return cl, chunked, te, conn, hosts, host, expect


def _keep_alive(version: bytes, conn: bytes | None) -> tuple[bool, set[bytes]]:
    if conn is None:
        return version == b"1.1", set()
    tokens = {t.strip(b" \t").lower() for t in conn.split(b",")}
    if version == b"1.1":
        return b"close" not in tokens, tokens
    return b"keep-alive" in tokens, tokens


class RequestParser(_Parser):
    """Server side: eyeball requests, one instance per connection (keep-alive, pipelining).

    Raises HTTPRequestError with .status 400/414/431/501/505; the parser is unusable afterwards
    (events of earlier pipelined requests in the same feed are not returned).
    """

    __slots__ = ("_max_target",)

    def __init__(
        self,
        *,
        max_header_bytes: int = 32 * 1024,
        max_target_bytes: int = 16 * 1024,
        max_headers: int = 200,
    ) -> None:
        super().__init__(max_header_bytes, max_headers)
        self._max_target = max_target_bytes

    def feed(self, data: DataPiece) -> list[RequestEvent]:
        events: list[RequestEvent] = []
        self._feed(data, events)
        return events

    def feed_eof(self) -> list[RequestEvent]:
        if self._error is not None:
            raise self._error
        if self._state == _DONE or (self._state == _HEAD and not self._started):
            return []
        self._error = self._fail("connection closed in the middle of a request", 400)
        self._state = _DONE
        raise self._error

    def _fail(self, message: str, status: int) -> BurrowError:
        return HTTPRequestError(message, status=status)

    def _new_cparser(self) -> httptools.HttpRequestParser:
        return httptools.HttpRequestParser(self._col)

    def _check_head_sizes(self) -> None:
        if self._col.size > self._max_target:
            raise HTTPRequestError("request target too long", status=414)

    def _finish_head(self, events: list[Any]) -> None:
        col = self._col
        cp = self._cparser
        assert isinstance(cp, httptools.HttpRequestParser)
        headers = col.headers
        if len(headers) > self._max_headers:
            raise self._fail("too many header fields", 431)
        version = _VERSIONS.get(cp.get_http_version())
        if version is None:
            raise self._fail("HTTP version not supported", 505)
        method = cp.get_method()
        parts = col.parts
        target = parts[0] if len(parts) == 1 else b"".join(parts)
        if self._line1 != len(method) + len(target) + 12:
            raise self._fail("malformed request line (extra whitespace)", 400)
        cl, chunked, te, conn, hosts, host, expect = self._framing(headers, False)
        if hosts > 1:
            raise self._fail("multiple Host headers", 400)
        if hosts == 0 and version == b"1.1":
            raise self._fail("missing Host header", 400)
        if te is not None and version == b"1.0":
            raise self._fail("Transfer-Encoding in an HTTP/1.0 request", 400)
        keep_alive, tokens = _keep_alive(version, conn)
        upgrade: bytes | None = None
        if b"upgrade" in tokens:
            for name, value in headers:
                if name == b"upgrade":
                    upgrade = value.lower()
                    break
        reuse = col.done and keep_alive and upgrade is None and method != b"CONNECT"
        col.reset()
        if not reuse:
            self._cparser = None
        events.append(
            RequestHead(
                method, target, version, headers, keep_alive, cl, chunked, upgrade, host, expect
            )
        )
        self._upgrade_after = upgrade is not None
        if chunked:
            self._state = _CHUNK_SIZE
        elif cl:
            self._remaining = cl
            self._state = _CL
        else:
            self._end(events, [])


class ResponseParser(_Parser):
    """Client side: origin responses. Call expect(method) before each request's response."""

    __slots__ = ("_methods",)

    def __init__(self, *, max_header_bytes: int = 64 * 1024) -> None:
        super().__init__(max_header_bytes, 1000)
        self._methods: deque[bytes] = deque()

    def expect(self, method: bytes) -> None:
        self._methods.append(method)

    def feed(self, data: DataPiece) -> list[ResponseEvent]:
        events: list[ResponseEvent] = []
        self._feed(data, events)
        return events

    def feed_eof(self) -> list[ResponseEvent]:
        if self._error is not None:
            raise self._error
        st = self._state
        if st == _UNTIL_CLOSE:
            self._state = _DONE
            return [EndOfMessage([])]
        if st == _DONE or (st == _HEAD and not self._started):
            return []
        self._error = self._fail("origin closed the connection mid-response", 502)
        self._state = _DONE
        raise self._error

    def _fail(self, message: str, status: int) -> BurrowError:
        return RemoteProtocolError(f"origin response: {message}", status=502)

    def _new_cparser(self) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(self._col)

    def _finish_head(self, events: list[Any]) -> None:
        col = self._col
        cp = self._cparser
        assert isinstance(cp, httptools.HttpResponseParser)
        self._cparser = None  # responses almost always have bodies: a fresh llhttp each time
        headers = col.headers
        if len(headers) > self._max_headers:
            raise self._fail("too many header fields", 502)
        version = _VERSIONS.get(cp.get_http_version())
        if version is None:
            raise self._fail("unsupported HTTP version", 502)
        status = cp.get_status_code()
        parts = col.parts
        reason = b"".join(parts).strip(b" \t")
        col.reset()
        if status < 200 and status != 101:
            return  # informational (100 Continue, 103 Early Hints): skipped
        cl, chunked, te, conn, _hosts, _host, _expect = self._framing(headers, True)
        keep_alive, _tokens = _keep_alive(version, conn)
        head_only = self._methods.popleft() == b"HEAD" if self._methods else False
        if status == 101:
            events.append(ResponseHead(status, reason, version, headers, False, cl, chunked))
            self._state = _UPGRADE
            return
        if te is not None and version == b"1.0":
            keep_alive = False
        if head_only or status == 204 or status == 304:
            state = _HEAD
        elif chunked:
            state = _CHUNK_SIZE
        elif cl is None:
            state = _UNTIL_CLOSE
            keep_alive = False
        else:
            state = _CL if cl else _HEAD
            self._remaining = cl
        events.append(ResponseHead(status, reason, version, headers, keep_alive, cl, chunked))
        if state == _HEAD:
            self._end(events, [])
        else:
            self._state = state
