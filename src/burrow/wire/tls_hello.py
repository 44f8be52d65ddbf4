"""The SNI of a TLS ClientHello, read from the first bytes a client sends (sans-IO).

The edge's HTTPS listener peeks at these bytes before the handshake starts, so that a
certificate issued on first use (in a child process) can be made ready asynchronously; OpenSSL's
own SNI callback is synchronous and cannot wait for it.
"""

from __future__ import annotations

#: A ClientHello larger than this is left to OpenSSL without a peek (no SNI preparation).
MAX_PEEK = 65536
_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0x0000


def parse_client_hello(data: bytes) -> tuple[bool, str | None, int]:
    """Look for the SNI host name in the TLS records at the start of `data`.

    Returns ``(done, name, need)``: ``done`` with the name (None when there is none, or the
    bytes are not a TLS ClientHello: the handshake then fails or proceeds as it would have),
    or not done yet and ``need`` total bytes to look at next time.
    """
    hello = bytearray()
    pos = 0
    while True:
        if len(data) < pos + 5:
            return False, None, pos + 5
        if data[pos] != _HANDSHAKE:
            return True, None, 0
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        end = pos + 5 + length
        if end > MAX_PEEK:
            return True, None, 0
        if len(data) < end:
            return False, None, end
        hello += data[pos + 5 : end]
        pos = end
        if len(hello) >= 4:
            if hello[0] != _CLIENT_HELLO:
                return True, None, 0
            body_len = int.from_bytes(hello[1:4], "big")
            if len(hello) >= 4 + body_len:
                return True, _server_name(bytes(hello[4 : 4 + body_len])), 0


def _server_name(body: bytes) -> str | None:
    """The host_name of the server_name extension (RFC 6066) of a ClientHello body."""
    try:
        pos = 2 + 32  # legacy_version, random
        pos += 1 + body[pos]  # legacy_session_id
        pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher_suites
        pos += 1 + body[pos]  # legacy_compression_methods
        end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= min(end, len(body)):
            ext_type = int.from_bytes(body[pos : pos + 2], "big")
            ext_len = int.from_bytes(body[pos + 2 : pos + 4], "big")
            ext = body[pos + 4 : pos + 4 + ext_len]
            pos += 4 + ext_len
            if ext_type != _EXT_SERVER_NAME:
                continue
            i = 2  # server_name_list length
            while i + 3 <= len(ext):
                name_type = ext[i]
                name_len = int.from_bytes(ext[i + 1 : i + 3], "big")
                name = ext[i + 3 : i + 3 + name_len]
                i += 3 + name_len
                if name_type == 0 and name:
                    return name.decode("ascii").lower().rstrip(".") or None
            return None
    except (IndexError, UnicodeDecodeError):
        return None
    return None
