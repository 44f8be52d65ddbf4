"""burrow.wire.http1: request/response parsing, serialisers, fuzzing, h11 differential."""

from __future__ import annotations

from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from burrow.errors import HTTPRequestError, LocalProtocolError, RemoteProtocolError
from burrow.wire import http1
from burrow.wire.http1 import (
    LAST_CHUNK,
    Data,
    EndOfMessage,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    Upgraded,
)

# --- helpers -------------------------------------------------------------------------------------


def feed_chunks(parser: Any, chunks: list[bytes], eof: bool = False) -> list[Any]:
    """Feed chunks; after Upgraded, remaining bytes are appended to its rest. Merge Data."""
    events: list[Any] = []
    upgraded: Upgraded | None = None
    for chunk in chunks:
        if upgraded is not None:
            upgraded.rest += chunk
            continue
        for ev in parser.feed(chunk):
            if isinstance(ev, Upgraded):
                upgraded = Upgraded(ev.rest)
                events.append(upgraded)
            elif isinstance(ev, Data) and events and isinstance(events[-1], Data):
                events[-1] = Data(events[-1].data + ev.data)
            else:
                events.append(ev)
    if eof and upgraded is None:
        events.extend(parser.feed_eof())
    return events


def parse(data: bytes, **kw: Any) -> list[Any]:
    return feed_chunks(RequestParser(**kw), [data])


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def refused(data: bytes, status: int = 400, **kw: Any) -> HTTPRequestError:
    with pytest.raises(HTTPRequestError) as info:
        feed_chunks(RequestParser(**kw), [data], eof=True)
    assert info.value.status == status, info.value
    # Same verdict when the bytes trickle in.
    with pytest.raises(HTTPRequestError) as info2:
        feed_chunks(RequestParser(**kw), bytewise(data), eof=True)
    assert info2.value.status == status, info2.value
    return info.value


# --- requests -------------------------------------------------------------------------------------


def test_simple_get() -> None:
    evs = parse(b"GET /index.html?q=1 HTTP/1.1\r\nHost: Example.COM\r\nAccept:  */*  \r\n\r\n")
    assert evs == [
        RequestHead(
            method=b"GET",
            target=b"/index.html?q=1",
            version=b"1.1",
            headers=[(b"host", b"Example.COM"), (b"accept", b"*/*")],
            keep_alive=True,
            content_length=None,
            chunked=False,
            upgrade=None,
            host=b"Example.COM",
            expect_continue=False,
        ),
        EndOfMessage([]),
    ]


def test_post_content_length_split_body() -> None:
    p = RequestParser()
    evs = p.feed(b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
    assert isinstance(evs[0], RequestHead) and evs[0].content_length == 10
    assert evs[1:] == [Data(b"hello")]
    assert p.feed(b"world") == [Data(b"world"), EndOfMessage([])]
    assert p.feed_eof() == []


def test_content_length_zero() -> None:
    evs = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert evs[0].content_length == 0 and evs[1:] == [EndOfMessage([])]


def test_chunked_with_extensions_and_trailers() -> None:
    req = (
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
        b'5;name=value;q="a b"\r\nhello\r\n'
        b"6 ; ext\r\n world\r\n"
        b"0\r\nX-Sum: abc \r\nX-Other:\tz\r\n\r\n"
    )
    for chunks in ([req], bytewise(req)):
        evs = feed_chunks(RequestParser(), chunks)
        assert evs[0].chunked and evs[0].content_length is None
        assert evs[1:] == [
            Data(b"hello world"),
            EndOfMessage([(b"x-sum", b"abc"), (b"x-other", b"z")]),
        ]


def test_pipelined_requests_in_one_feed() -> None:
    data = (
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
        b"\r\nGET /4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    evs = parse(data)
    heads = [e for e in evs if isinstance(e, RequestHead)]
    assert [h.target for h in heads] == [b"/1", b"/2", b"/3", b"/4"]
    assert [h.keep_alive for h in heads] == [True, True, True, False]
    assert sum(isinstance(e, EndOfMessage) for e in evs) == 4
    assert [e.data for e in evs if isinstance(e, Data)] == [b"abc", b"x"]


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Keep-Alive, Close", False),
        (b"1.1", b"keep-alive", True),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
        (b"1.0", b"Keep-Alive", True),
        (b"1.0", b"close", False),
    ],
)
def test_keep_alive(version: bytes, connection: bytes | None, keep_alive: bool) -> None:
    head = b"GET / HTTP/" + version + b"\r\nHost: a\r\n"
    if connection is not None:
        head += b"Connection: " + connection + b"\r\n"
    evs = parse(head + b"\r\n")
    assert evs[0].version == version and evs[0].keep_alive is keep_alive


def test_http10_without_host_is_fine() -> None:
    evs = parse(b"GET / HTTP/1.0\r\n\r\n")
    assert evs[0].host is None and evs[0].version == b"1.0"


def test_expect_continue_and_absolute_form() -> None:
    evs = parse(
        b"PUT http://a.example/x HTTP/1.1\r\nHost: a.example\r\nExpect: 100-Continue\r\n"
        b"Content-Length: 1\r\n\r\nz"
    )
    assert evs[0].expect_continue and evs[0].target == b"http://a.example/x"


def test_upgrade_request_keeps_following_bytes() -> None:
    frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    req = (
        b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
        b"Upgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    p = RequestParser()
    evs = p.feed(req + frame)
    assert evs[0].upgrade == b"websocket"
    assert evs[1:] == [Upgraded(frame)]
    with pytest.raises(LocalProtocolError):
        p.feed(b"more")
    # Head and frame split anywhere: same result.
    for cut in range(1, len(req) + 3):
        evs2 = feed_chunks(RequestParser(), [(req + frame)[:cut], (req + frame)[cut:]])
        assert evs2 == evs


def test_upgrade_header_without_connection_upgrade_is_plain() -> None:
    evs = parse(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
    assert evs[0].upgrade is None and evs[1] == EndOfMessage([])


def test_incomplete_message_at_eof() -> None:
    p = RequestParser()
    p.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(HTTPRequestError) as info:
        p.feed_eof()
    assert info.value.status == 400
    p = RequestParser()
    p.feed(b"GET / HTT")
    with pytest.raises(HTTPRequestError):
        p.feed_eof()
    p = RequestParser()
    assert p.feed(b"\r\n") == [] and p.feed_eof() == []


def test_error_is_sticky() -> None:
    p = RequestParser()
    with pytest.raises(HTTPRequestError):
        p.feed(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    with pytest.raises(HTTPRequestError):
        p.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


# --- limits ---------------------------------------------------------------------------------------


def test_header_limit_byte_by_byte() -> None:
    limit = 1024
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 5000 + b"\r\n\r\n"
    p = RequestParser(max_header_bytes=limit)
    for i in range(len(head)):
        try:
            p.feed(head[i : i + 1])
        except HTTPRequestError as exc:
            assert exc.status == 431
            assert i == limit  # the first byte past the limit
            break
    else:
        pytest.fail("no 431")


def test_header_limit_exact_fit_and_many_chunks() -> None:
    base = b"GET / HTTP/1.1\r\nHost: a\r\nX: "
    head = base + b"v" * (200 - len(base) - 4) + b"\r\n\r\n"
    assert len(head) == 200
    assert isinstance(parse(head, max_header_bytes=200)[0], RequestHead)
    refused(head, 431, max_header_bytes=199)


def test_header_limit_is_per_message() -> None:
    one = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 900 + b"\r\n\r\n"
    evs = parse(one * 10, max_header_bytes=1024)
    assert len(evs) == 20


def test_too_many_headers() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 10 + b"\r\n"
    refused(head, 431, max_headers=5)


def test_target_too_long() -> None:
    head = b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    refused(head, 414, max_target_bytes=1000)
    # Detected before the request line is even complete.
    p = RequestParser(max_target_bytes=1000)
    with pytest.raises(HTTPRequestError) as info:
        for i in range(1200):
            p.feed(head[i : i + 1])
    assert info.value.status == 414
    # Target longer than the whole header budget: still 414.
    refused(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n", 414, max_header_bytes=1024)


def test_chunked_trailer_limit() -> None:
    req = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
        + b"X-T: "
        + b"v" * 3000
        + b"\r\n\r\n"
    )
    refused(req, 431, max_header_bytes=1024)


# --- request smuggling corpus ------------------------------------------------------------------

H = b"Host: a\r\n"
SMUGGLING: list[tuple[str, bytes, int]] = [
    (
        "CL.TE",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        400,
    ),
    (
        "TE.CL",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        400,
    ),
    (
        "CL.TE lowercase",
        b"POST / HTTP/1.1\r\n" + H + b"content-length: 4\r\ntransfer-encoding: CHUNKED\r\n\r\n",
        400,
    ),
    (
        "dup CL equal",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    (
        "dup CL differ",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    ("CL list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc", 400),
    ("CL negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("CL plus", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", 400),
    ("CL hex", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x3\r\n\r\nabc", 400),
    ("CL empty", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: \r\n\r\n", 400),
    (
        "CL overlong",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1" + b"0" * 19 + b"\r\n\r\n",
        400,
    ),
    ("CL underscore", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1_0\r\n\r\n", 400),
    ("CL inner space", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1 0\r\n\r\n", 400),
    (
        "TE chunked,identity",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n",
        400,
    ),
    ("TE identity", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n", 400),
    ("TE xchunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n", 400),
    ("TE chunkedx", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunkedx\r\n\r\n", 400),
    ("TE trailing tab", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\t\r\n\r\n", 400),
    (
        "TE vertical tab",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: \x0bchunked\r\n\r\n",
        400,
    ),
    ("TE form feed", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: \x0cchunked\r\n\r\n", 400),
    (
        "TE space before colon",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n",
        400,
    ),
    (
        "TE tab before colon",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding\t: chunked\r\n\r\n",
        400,
    ),
    ("TE quoted", b"POST / HTTP/1.1\r\n" + H + b'Transfer-Encoding: "chunked"\r\n\r\n', 400),
    (
        "TE twice chunked",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    (
        "TE chunked, chunked",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n",
        400,
    ),
    ("TE folded", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n", 400),
    ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (
        "TE gzip,chunked",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
        501,
    ),
    ("obs-fold SP", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n folded\r\n\r\n", 400),
    ("obs-fold HTAB", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n\tfolded\r\n\r\n", 400),
    ("bare LF everywhere", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare LF header", b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400),
    ("bare LF end", b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
    ("bare CR header", b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400),
    ("bare CR request line", b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
    ("bare CR leading", b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("NUL in value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400),
    ("CTL in value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x01b\r\n\r\n", 400),
    ("DEL in value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x7fb\r\n\r\n", 400),
    ("ESC in value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x1bb\r\n\r\n", 400),
    ("NUL in name", b"GET / HTTP/1.1\r\n" + H + b"X\x00: a\r\n\r\n", 400),
    ("empty name", b"GET / HTTP/1.1\r\n" + H + b": a\r\n\r\n", 400),
    ("no colon", b"GET / HTTP/1.1\r\n" + H + b"Junk\r\n\r\n", 400),
    ("no Host 1.1", b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("two Hosts equal", b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400),
    (
        "chunk size overflow",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"1" * 17
        + b"\r\nx\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size negative",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size 0x",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x1\r\nx\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size underscore",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n1_0\r\n"
        + b"x" * 16
        + b"\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size space",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n 1\r\nx\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size trailing space",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1 \r\nx\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size empty",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n\r\nx\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk ext garbage",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1;\x00\r\nx\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk ext no name",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1;=x\r\nx\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk ext bare CR",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1;a\rb\r\nx\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk ext unterminated quote",
        b"POST / HTTP/1.1\r\n" + H + b'Transfer-Encoding: chunked\r\n\r\n1;a="b\r\nx\r\n0\r\n\r\n',
        400,
    ),
    (
        "chunk bare LF",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk data too long",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk data bare LF",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\n0\r\n\r\n",
        400,
    ),
    (
        "last chunk bare LF",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\n\n",
        400,
    ),
    (
        "trailer obs-fold",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n",
        400,
    ),
    (
        "trailer NUL",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX: a\x00\r\n\r\n",
        400,
    ),
    (
        "trailer space before colon",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX : a\r\n\r\n",
        400,
    ),
    ("double space request line", b"GET  /x HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("space in target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("lowercase method", b"get / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("unknown version", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 400),
    ("HTTP/2.0 request line", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("HTTP/0.9", b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505),
    ("no version (HTTP/0.9)", b"GET /\r\n" + H + b"\r\n", 505),
    ("trailing double space request line", b"GET /x  HTTP/1.1\r\n" + H + b"\r\n", 400),
]


@pytest.mark.parametrize(("name", "data", "status"), SMUGGLING, ids=[c[0] for c in SMUGGLING])
def test_smuggling_corpus_refused(name: str, data: bytes, status: int) -> None:
    exc = refused(data, status)
    assert str(exc)


def test_smuggling_message_is_clear() -> None:
    assert "Content-Length" in str(refused(SMUGGLING[0][1]))
    assert "duplicate content-length" in str(refused(SMUGGLING[3][1])).lower()
    assert "Host" in str(refused(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"))


def test_legitimate_ows_is_accepted() -> None:
    evs = parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tChunked \r\n\r\n0\r\n\r\n")
    assert evs[0].chunked and evs[-1] == EndOfMessage([])
    evs = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  2 \r\n\r\nab")
    assert evs[0].content_length == 2 and evs[1] == Data(b"ab")


# --- responses ------------------------------------------------------------------------------------


def rparse(chunks: list[bytes], method: bytes = b"GET", eof: bool = False) -> list[Any]:
    p = ResponseParser()
    p.expect(method)
    return feed_chunks(p, chunks, eof=eof)


def test_response_content_length() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
    for chunks in ([data], bytewise(data)):
        evs = rparse(chunks)
        assert evs == [
            ResponseHead(
                200,
                b"OK",
                b"1.1",
                [(b"content-length", b"5"), (b"content-type", b"text/plain")],
                True,
                5,
                False,
            ),
            Data(b"hello"),
            EndOfMessage([]),
        ]


def test_response_chunked_with_trailers() -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nGrpc-Status: 0\r\n\r\n"
    evs = rparse([data])
    assert evs[0].chunked and evs[1:] == [Data(b"abc"), EndOfMessage([(b"grpc-status", b"0")])]


def test_response_read_until_close() -> None:
    p = ResponseParser()
    p.expect(b"GET")
    evs = p.feed(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\npart1")
    assert evs[0].keep_alive is False and evs[0].content_length is None
    assert evs[1:] == [Data(b"part1")]
    assert p.feed(b"part2") == [Data(b"part2")]
    assert p.feed_eof() == [EndOfMessage([])]
    # Transfer-Encoding without a final chunked also means read until close.
    evs = rparse([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz"], eof=True)
    assert evs[1:] == [Data(b"zz"), EndOfMessage([])] and not evs[0].keep_alive


def test_response_truncated() -> None:
    p = ResponseParser()
    p.expect(b"GET")
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(RemoteProtocolError):
        p.feed_eof()
    p = ResponseParser()
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Len")
    with pytest.raises(RemoteProtocolError):
        p.feed_eof()


def test_response_to_head_has_no_body() -> None:
    p = ResponseParser()
    p.expect(b"HEAD")
    p.expect(b"GET")
    evs = p.feed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    assert [type(e) for e in evs] == [ResponseHead, EndOfMessage, ResponseHead, Data, EndOfMessage]
    assert evs[0].content_length == 1000 and evs[3] == Data(b"ok")


@pytest.mark.parametrize("status", [204, 304])
def test_response_without_body(status: int) -> None:
    head = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status
    evs = rparse([head + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    assert [type(e) for e in evs] == [ResponseHead, EndOfMessage, ResponseHead, EndOfMessage]
    assert evs[0].status == status


def test_response_100_continue_skipped() -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    )
    for chunks in ([data], bytewise(data)):
        evs = rparse(chunks, method=b"POST")
        assert evs[0].status == 201 and evs[0].reason == b"Created"
        assert evs[1:] == [Data(b"ok"), EndOfMessage([])]


def test_response_101_upgrade() -> None:
    data = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi"
    )
    evs = rparse([data])
    assert evs[0].status == 101 and evs[1:] == [Upgraded(b"\x81\x02hi")]
    assert rparse(bytewise(data)) == evs


def test_response_empty_reason_and_keep_alive() -> None:
    evs = rparse([b"HTTP/1.1 200 \r\nConnection: close\r\nContent-Length: 0\r\n\r\n"])
    assert evs[0].reason == b"" and evs[0].keep_alive is False


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    ],
)
def test_response_malformed(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        rparse([data], eof=True)
    assert info.value.status == 502


def test_response_header_limit() -> None:
    p = ResponseParser(max_header_bytes=100)
    with pytest.raises(RemoteProtocolError):
        p.feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200)


# --- serialisers and helpers -----------------------------------------------------------------------


def test_serialize_heads_roundtrip() -> None:
    out = http1.serialize_request_head(b"GET", b"/x", [(b"host", b"a"), (b"x-y", b"z")])
    assert out == b"GET /x HTTP/1.1\r\nhost: a\r\nx-y: z\r\n\r\n"
    assert parse(out)[0].headers == [(b"host", b"a"), (b"x-y", b"z")]
    assert http1.serialize_response_head(200, None, []) == b"HTTP/1.1 200 OK\r\n\r\n"
    assert http1.serialize_response_head(299, None, []) == b"HTTP/1.1 299 Unknown\r\n\r\n"
    assert http1.serialize_response_head(404, b"Nope", [(b"a", b"b")]) == (
        b"HTTP/1.1 404 Nope\r\na: b\r\n\r\n"
    )
    with pytest.raises(LocalProtocolError):
        http1.serialize_response_head(200, None, [(b"x", b"a\r\nInjected: 1")])
    with pytest.raises(LocalProtocolError):
        http1.serialize_request_head(b"GET", b"/x\r\n", [])
    with pytest.raises(LocalProtocolError):
        http1.serialize_response_head(42, None, [])


def test_chunk_encoding_roundtrip() -> None:
    body = http1.encode_chunk(b"hello") + http1.encode_chunk(b"x" * 300) + LAST_CHUNK
    assert body.startswith(b"5\r\nhello\r\n12c\r\n")
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    evs = parse(head + body)
    assert evs[1:] == [Data(b"hello" + b"x" * 300), EndOfMessage([])]
    with pytest.raises(LocalProtocolError):
        http1.encode_chunk(b"")


def test_connection_tokens_and_hop_by_hop() -> None:
    headers = [(b"connection", b"Keep-Alive, X-Foo"), (b"connection", b" close ,"), (b"x", b"y")]
    assert http1.connection_tokens(headers) == {b"keep-alive", b"x-foo", b"close"}
    assert b"transfer-encoding" in http1.HOP_BY_HOP and b"host" not in http1.HOP_BY_HOP


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Example.COM", "example.com"),
        (b"example.com:8443", "example.com"),
        (b"example.com.", "example.com"),
        (b"example.com.:80", "example.com"),
        (b"[::1]:8080", "::1"),
        (b"[2001:DB8::1]", "2001:db8::1"),
        (b"127.0.0.1:80", "127.0.0.1"),
        (b"", None),
        (b".", None),
        (b":80", None),
        (b"exa mple.com", None),
        (b"example.com:http", None),
        (b"ex\x00ample.com", None),
        (b"[::1", None),
        (b"[]:80", None),
        (b"[::1]x", None),
        (b"a/b", None),
        (b"a@b", None),
    ],
)
def test_normalize_host(raw: bytes, expected: str | None) -> None:
    assert http1.normalize_host(raw) == expected


# --- fuzzing ------------------------------------------------------------------------------------

VALID_REQUESTS: list[bytes] = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /p?q=1 HTTP/1.0\r\nUser-Agent: x\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nHost: a.example:8080\r\nAccept: */*\r\nX-Empty:\r\n\r\n",
    b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    b"PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nwiki\r\n5\r\npedia\r\n0\r\nT: v\r\n\r\n",
    b"DELETE /d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://a/x HTTP/1.1\r\nHost: a\r\nCookie: k=v; k2=v2\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
    b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
    b"PATCH /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
]
UPGRADE_REQUEST = (
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00"
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_random_bytes_only_raise_http_errors(chunks: list[bytes]) -> None:
    try:
        feed_chunks(RequestParser(max_header_bytes=512, max_target_bytes=128), chunks, eof=True)
    except HTTPRequestError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(VALID_REQUESTS), min_size=1, max_size=4),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_fuzz_splits_do_not_change_result(
    reqs: list[bytes], upgrade: bool, cuts: list[int]
) -> None:
    # Keep-alive for everything but the final message (Connection: close / 1.0 end the stream).
    stream = b"".join(reqs) + (UPGRADE_REQUEST if upgrade else b"")
    whole = feed_chunks(RequestParser(), [stream], eof=True)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert feed_chunks(RequestParser(), pieces, eof=True) == whole
    assert sum(isinstance(e, RequestHead) for e in whole) == len(reqs) + upgrade


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(VALID_REQUESTS + [c[1] for c in SMUGGLING]),
    st.integers(min_value=0, max_value=300),
    st.binary(max_size=4),
)
def test_fuzz_mutations_only_raise_http_errors(data: bytes, at: int, junk: bytes) -> None:
    at %= len(data) + 1
    mutated = data[:at] + junk + data[at + len(junk) :]
    results = []
    for chunks in ([mutated], bytewise(mutated)):
        try:
            results.append(feed_chunks(RequestParser(), chunks, eof=True))
        except HTTPRequestError as exc:
            results.append(exc.status)  # type: ignore[arg-type]
    assert results[0] == results[1]


# --- differential against h11 ----------------------------------------------------------------------


def h11_parse(data: bytes) -> list[Any]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    out: list[Any] = []
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA or ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
            return out
        if isinstance(ev, h11.Request):
            out.append(
                (
                    "head",
                    ev.method,
                    ev.target,
                    ev.http_version,
                    [(n, v) for n, v in ev.headers],
                )
            )
        elif isinstance(ev, h11.Data):
            if out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + ev.data)
            else:
                out.append(("data", bytes(ev.data)))
        elif isinstance(ev, h11.EndOfMessage):
            out.append(("end", [(n, v) for n, v in ev.headers]))
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return out
            conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()


def ours(data: bytes) -> list[Any]:
    out: list[Any] = []
    for ev in feed_chunks(RequestParser(), [data]):
        if isinstance(ev, RequestHead):
            out.append(("head", ev.method, ev.target, ev.version, ev.headers))
        elif isinstance(ev, Data):
            out.append(("data", ev.data))
        elif isinstance(ev, EndOfMessage):
            out.append(("end", ev.trailers))
    return out


@pytest.mark.parametrize("data", VALID_REQUESTS, ids=range(len(VALID_REQUESTS)))
def test_differential_h11(data: bytes) -> None:
    assert ours(data) == h11_parse(data)


def test_differential_h11_pipelined() -> None:
    keep = [r for r in VALID_REQUESTS if b"close" not in r and b"HTTP/1.0" not in r]
    stream = b"".join(keep)
    assert ours(stream) == h11_parse(stream)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.from_regex(rb"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z"),
            st.from_regex(rb"\A[!-~]([ !-~]{0,30}[!-~])?\Z"),
        ),
        max_size=8,
    ),
    st.from_regex(rb"\A/[A-Za-z0-9/._~%?=&-]{0,40}\Z"),
    st.binary(max_size=40),
)
def test_differential_h11_generated(
    fields: list[tuple[bytes, bytes]], target: bytes, body: bytes
) -> None:
    fields = [
        (n, v)
        for n, v in fields
        if n.lower()
        not in (
            b"host",
            b"content-length",
            b"transfer-encoding",
            b"connection",
            b"upgrade",
            b"expect",
        )
    ]
    head = b"POST " + target + b" HTTP/1.1\r\nHost: a\r\n"
    head += b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    data = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    assert ours(data) == h11_parse(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8), st.sampled_from([b"GET", b"HEAD"]))
def test_fuzz_response_random_bytes_only_raise_remote_errors(
    chunks: list[bytes], method: bytes
) -> None:
    p = ResponseParser(max_header_bytes=512)
    p.expect(method)
    try:
        feed_chunks(p, [b"HTTP/1.1 200 OK\r\n", *chunks], eof=True)
    except RemoteProtocolError:
        pass


def test_views_pass_through_bodies_and_are_parsed_as_bytes_elsewhere() -> None:
    """Large reads arrive as views of a pooled receive buffer (net/recvbuf): body bytes go on
    as views of it, while heads, chunk framing and trailers in the same read are still parsed."""
    p = ResponseParser()
    p.expect(b"GET")
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire = head + b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n"
    evs = p.feed(memoryview(bytearray(wire)))
    assert evs[0].chunked
    assert [bytes(e.data) for e in evs[1:3]] == [b"hello", b" world"]
    assert evs[3] == EndOfMessage([(b"x-sum", b"1")])
    # A Content-Length body read in one view: the Data is that view, not a copy.
    p = ResponseParser()
    p.expect(b"GET")
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
    buf = bytearray(b"abcdefgh")
    evs = p.feed(memoryview(buf))
    assert type(evs[0].data) is memoryview and evs[0].data.obj is buf
    assert evs[1] == EndOfMessage([])
    # The body's end and the next pipelined request's head in one view.
    q = RequestParser()
    q.feed(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n")
    evs = q.feed(memoryview(b"xyzGET /b HTTP/1.1\r\nHost: h\r\n\r\n"))
    assert bytes(evs[0].data) == b"xyz" and evs[1] == EndOfMessage([])
    assert evs[2].target == b"/b"
