"""Header (de)serialisation and stream types of the tunnel over h2 (PROTOCOL.md 3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from burrow.errors import RemoteProtocolError
from burrow.wire.tunnel_h2 import (
    RESPONSE_HEADERS,
    StreamType,
    classify,
    deserialize_headers,
    origin_response_headers,
    parse_response,
    serialize_headers,
)


def test_serialisation_matches_cloudflared_format() -> None:
    # cloudflared: base64.RawStdEncoding of name and value, "name:value" pairs joined by ";"
    assert serialize_headers([(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]) == (
        b"U2V0LUNvb2tpZQ:YT0x;U2V0LUNvb2tpZQ:Yj0y"
    )
    assert deserialize_headers(b"U2V0LUNvb2tpZQ:YT0x;;U2V0LUNvb2tpZQ:Yj0y") == [
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]


@given(
    st.lists(st.tuples(st.binary(min_size=1, max_size=40), st.binary(max_size=200)), max_size=20)
)
def test_roundtrip(headers: list[tuple[bytes, bytes]]) -> None:
    assert deserialize_headers(serialize_headers(headers)) == headers


@pytest.mark.parametrize("bad", [b"abc", b"a:b:c", b"!!!!:YQ", b"YQ:*", b"Y:YQ"])
def test_malformed_serialised_headers(bad: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        deserialize_headers(bad)


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ([(b"cf-cloudflared-proxy-connection-upgrade", b"control-stream")], StreamType.CONTROL),
        ([(b"cf-cloudflared-proxy-connection-upgrade", b"websocket")], StreamType.WEBSOCKET),
        (
            [(b"cf-cloudflared-proxy-connection-upgrade", b"update-configuration")],
            StreamType.CONFIGURATION,
        ),
        ([(b"cf-cloudflared-proxy-src", b"10.0.0.1")], StreamType.TCP),
        ([(b"x-other", b"1")], StreamType.HTTP),
    ],
)
def test_classify(headers: list[tuple[bytes, bytes]], kind: StreamType) -> None:
    assert classify([(b":method", b"GET"), *headers]) is kind


def test_origin_response_headers_hide_internal_and_keep_websocket_headers() -> None:
    out = origin_response_headers(
        101,
        [
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Accept", b"xyz"),
            (b"cf-int-secret", b"1"),
            (b"Content-Length", b"5"),
        ],
        websocket=True,
    )
    status, user, source = parse_response(out)
    assert status == 200 and source == "origin"  # 101 travels as 200 over h2
    names = [n for n, _ in user]
    assert b"cf-int-secret" not in names
    assert {b"Upgrade", b"Connection", b"Sec-WebSocket-Accept"} <= set(names)
    assert (b"content-length", b"5") not in out  # not duplicated for an upgrade
    plain = origin_response_headers(200, [(b"Content-Length", b"5")])
    assert (b"content-length", b"5") in plain
    assert any(n == RESPONSE_HEADERS for n, _ in plain)


def test_parse_response_refuses_bad_status() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_response([(b":status", b"abc")])
    with pytest.raises(RemoteProtocolError):
        parse_response([(RESPONSE_HEADERS, b"")])
