"""HTTP/1.1 serialisation (sans-IO): heads, chunked framing, hop-by-hop and Host helpers.

Re-exported by `burrow.wire.http1`; import from there.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final, TypeAlias

from burrow.errors import LocalProtocolError

Headers: TypeAlias = list[tuple[bytes, bytes]]

LAST_CHUNK: Final = b"0\r\n\r\n"

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

_HOST_RE: Final = re.compile(rb"[a-z0-9._-]*")
_IPV6_RE: Final = re.compile(rb"[0-9a-f:.]+")

_REASONS: Final[dict[int, bytes]] = {int(s): s.phrase.encode("ascii") for s in HTTPStatus}
# Status lines for the common codes, precomputed: b"HTTP/1.1 200 OK\r\n".
_STATUS_LINES: Final[dict[int, bytes]] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, phrase) for code, phrase in _REASONS.items()
}


def _join(first: bytes, headers: Headers) -> bytes:
    parts = [first]
    append = parts.append
    for name, value in headers:
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
    append(b"\r\n")
    out = b"".join(parts)
    # Header injection guard: exactly one LF per line and no stray CR (one C-speed scan each).
    lines = len(headers) + 2
    if out.count(b"\n") != lines or out.count(b"\r") != lines:
        raise LocalProtocolError("CR or LF inside an HTTP/1.1 head field")
    return out


def serialize_request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    """`METHOD target HTTP/1.1` plus the headers, ready to write (callers add Host etc.)."""
    if not method or not target or b" " in method or b" " in target:
        raise LocalProtocolError("invalid method or request target")
    return _join(method + b" " + target + b" HTTP/1.1\r\n", headers)


def serialize_response_head(status: int, reason: bytes | None, headers: Headers) -> bytes:
    """`HTTP/1.1 status reason` plus the headers; reason None: the standard phrase."""
    if not 100 <= status <= 999:
        raise LocalProtocolError(f"invalid status code {status}")
    if reason is None:
        line = _STATUS_LINES.get(status)
        if line is None:
            line = b"HTTP/1.1 %d Unknown\r\n" % status
    else:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    return _join(line, headers)


def encode_chunk(data: bytes | memoryview) -> bytes:
    """One chunk of a chunked body. An empty chunk would end the body: use LAST_CHUNK."""
    if not data:
        raise LocalProtocolError("empty chunk; write LAST_CHUNK to end a chunked body")
    return b"".join((b"%x\r\n" % len(data), data, b"\r\n"))


def connection_tokens(headers: Headers) -> set[bytes]:
    """Lower-cased tokens named by the Connection header(s); these fields are hop-by-hop."""
    out: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            for tok in value.split(b","):
                tok = tok.strip(b" \t")
                if tok:
                    out.add(tok.lower())
    return out


def normalize_host(host: bytes) -> str | None:
    """Lower-case host without port and one trailing dot; IPv6 literals lose their brackets.

    None if empty or if it holds characters a routable host name cannot have.
    """
    host = host.strip(b" \t").lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        if end == -1:
            return None
        port = host[end + 1 :]
        if port and not (port[:1] == b":" and (port[1:].isdigit() or port == b":")):
            return None
        name = host[1:end]
        if not name or _IPV6_RE.fullmatch(name) is None:
            return None
        return name.decode("ascii")
    name, colon, port = host.partition(b":")
    if colon and port and (not port.isdigit() or len(port) > 5):
        return None
    if name.endswith(b"."):
        name = name[:-1]
    if not name or _HOST_RE.fullmatch(name) is None:
        return None
    return name.decode("ascii")
