"""HPACK for the tunnel without the per-header Python costs of `hpack`'s general coder.

`hpack.Encoder` searches the dynamic table linearly and Huffman-codes every literal bit by bit
in Python; `hpack.Decoder` pays a handful of calls per field. On a tunnel connection that is
~10-15 % of the CPU of each side for small requests. These subclasses keep the wire format
valid for any HPACK peer (cloudflared included) while taking a fast path:

- `FastEncoder` never inserts into the dynamic table and never Huffman-codes: every field is an
  indexed static entry or a literal *without indexing* (*never indexed* for credentials), with a
  static name index where one exists. Such a field's encoding does not depend on any state, so
  it is cached per (name, value) (bounded; credentials are never cached). A few bytes more per
  header block, no table bookkeeping on either side.
- `FastDecoder` decodes blocks made only of static-table references and plain literals in one
  tight loop without touching any state; any other block (dynamic-table references, incremental
  indexing, size updates, Huffman strings: what cloudflared's Go encoder sends) is handed whole
  to `hpack.Decoder.decode`, which keeps the dynamic table exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hpack
from hpack.exceptions import OversizedHeaderListError
from hpack.table import HeaderTable

_STATIC: tuple[tuple[bytes, bytes], ...] = tuple(HeaderTable.STATIC_TABLE)
_STATIC_LEN = len(_STATIC)
# name -> (first static index of the name, {value: static index})
_STATIC_MAP: dict[bytes, tuple[int, dict[bytes, int]]] = HeaderTable.STATIC_TABLE_MAPPING
_SENSITIVE = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})
_CACHE_MAX = 1024
_NEVER_INDEXED = hpack.NeverIndexedHeaderTuple
_BLOCK_CACHE_ENTRIES = 256  # decoded plain header blocks remembered by FastDecoder
_BLOCK_CACHE_BYTES = 2048  # only blocks up to this size
_SEEN_ONCE_MAX = 1024  # hashes of blocks decoded once (~70 KB at most per connection)


def _int(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 5.1) with the high bits of the first byte set to `first`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(data: bytes) -> bytes:
    """A string literal without Huffman coding."""
    n = len(data)
    if n < 127:
        return bytes((n,)) + data
    return _int(n, 7, 0) + data


def encode_field(name: bytes, value: bytes, sensitive: bool = False) -> bytes:
    """One header field, stateless (static index or literal without indexing)."""
    entry = _STATIC_MAP.get(name)
    if entry is not None and not sensitive:
        index = entry[1].get(value)
        if index is not None:
            return _int(index, 7, 0x80)
    first = 0x10 if sensitive else 0x00
    if entry is not None:
        return _int(entry[0], 4, first) + _literal(value)
    return bytes((first,)) + _literal(name) + _literal(value)


class FastEncoder(hpack.Encoder):
    """Stateless, cached field encoding (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[tuple[bytes, bytes], bytes] = {}

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        if isinstance(headers, dict):
            return super().encode(headers, huffman)
        parts: list[bytes] = []
        if self.header_table.resized:
            # The peer changed SETTINGS_HEADER_TABLE_SIZE: acknowledge it first (RFC 7541 4.2).
            parts.append(self._encode_table_size_change())
            self.header_table.resized = False
        cache = self._cache
        append = parts.append
        for header in headers:
            if type(header) is tuple and len(header) == 2:
                field = cache.get(header)
                if field is None:
                    name, value = header
                    if type(name) is not bytes or type(value) is not bytes:
                        name, value = _bytes(name), _bytes(value)
                    sensitive = name in _SENSITIVE
                    field = encode_field(name, value, sensitive)
                    if not sensitive:
                        if len(cache) >= _CACHE_MAX:
                            cache.clear()
                        cache[(name, value)] = field
                append(field)
                continue
            # HeaderTuple / NeverIndexedHeaderTuple / (name, value, sensitive)
            if isinstance(header, hpack.HeaderTuple):
                sensitive = not header.indexable
            else:
                sensitive = len(header) > 2 and bool(header[2])
            name, value = _bytes(header[0]), _bytes(header[1])
            append(encode_field(name, value, sensitive or name in _SENSITIVE))
        return b"".join(parts)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


class FastDecoder(hpack.Decoder):
    """A fast path for blocks that do not change the dynamic table, `hpack.Decoder` for the rest.

    The fast path reads indexed fields (static or dynamic table) and literals that are not
    indexed, with plain (not Huffman) strings. A block that leaves the dynamic table as it was
    means the same thing until the table changes, and the table changes only in
    `hpack.Decoder.decode` (such a call starts a new table version), so decoded blocks are
    remembered (bounded) by bytes and version, whichever path read them: a tunnel's responses
    repeat one plain block until a value such as Date changes, and an h2 client repeats one
    block (table references, Huffman literals it does not index) for each similar request.
    Either then costs one dict lookup. A block is kept from its second sighting on: every
    request block from an edge is unique (its cf-ray), and keeping those cost the connector
    ~1 us per request for entries nobody asked for again. Blocks with never-indexed fields
    (credentials) are not kept."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # block -> (table version it depends on, or -1 for none; decoded fields)
        self._blocks: dict[bytes, tuple[int, list[Any]]] = {}
        self._seen_once: set[int] = set()  # hash() of blocks decoded once (collisions harmless)
        self._version = 0

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if not raw:
            self._version += 1
            return super().decode(data, raw)
        known = self._blocks.get(data)
        if known is not None and (known[0] < 0 or known[0] == self._version):
            return list(known[1])
        found = self._fast(data)
        if found is not None:
            headers, dynamic = found
            self._remember(data, self._version if dynamic else -1, headers)
            return list(headers)
        # Huffman strings, indexing, size updates: hpack's decoder. A block that left the
        # table as it was (no new entry, no size change) is remembered like a fast one.
        table = self.header_table
        entries = table.dynamic_entries
        before = (len(entries), entries[0] if entries else None, table.maxsize)
        headers = list(super().decode(data, raw))
        after = (len(entries), entries[0] if entries else None, table.maxsize)
        if before[0] == after[0] and before[1] is after[1] and before[2] == after[2]:
            self._remember(data, self._version, headers)
            return list(headers)
        self._version += 1
        return headers

    def _remember(self, data: bytes, version: int, headers: list[Any]) -> None:
        """Keep a decoded block seen before (small ones, never one with a never-indexed field
        such as a credential) for `version` of the table (-1: any)."""
        if len(data) > _BLOCK_CACHE_BYTES:
            return
        seen = self._seen_once
        key = hash(data)  # cached by the bytes object since the lookup in `decode`
        if key not in seen:
            if len(seen) >= _SEEN_ONCE_MAX:
                seen.clear()
            seen.add(key)
            return
        if any(type(h) is _NEVER_INDEXED for h in headers):
            return
        if len(self._blocks) >= _BLOCK_CACHE_ENTRIES:
            self._blocks.clear()
        self._blocks[data] = (version, headers)

    def _fast(self, data: bytes) -> tuple[list[Any], bool] | None:
        """(fields, whether the dynamic table was used), or None for the general decoder."""
        headers: list[Any] = []
        append = headers.append
        static = _STATIC
        dynamic = self.header_table.dynamic_entries
        used_dynamic = False
        n = len(data)
        pos = 0
        total = 0
        limit = self.max_header_list_size
        while pos < n:
            b = data[pos]
            if b & 0x80:  # indexed field
                index = b & 0x7F
                if index == 0 or index == 0x7F:
                    return None  # invalid, or a longer index: the general decoder
                pos += 1
                if index <= _STATIC_LEN:
                    field = static[index - 1]
                elif index - _STATIC_LEN <= len(dynamic):
                    field = dynamic[index - _STATIC_LEN - 1]
                    used_dynamic = True
                else:
                    return None  # out of range: the general decoder raises
                append(field)
                total += len(field[0]) + len(field[1]) + 32
                continue
            kind = b & 0xF0
            if kind != 0x00 and kind != 0x10:
                return None  # incremental indexing or a table size update
            index = b & 0x0F
            pos += 1
            if index == 0x0F:
                shift = 0
                index = 0x0F
                while True:
                    if pos >= n:
                        return None
                    c = data[pos]
                    pos += 1
                    index += (c & 0x7F) << shift
                    shift += 7
                    if not c & 0x80:
                        break
            if index:
                if index <= _STATIC_LEN:
                    name = static[index - 1][0]
                elif index - _STATIC_LEN <= len(dynamic):
                    name = dynamic[index - _STATIC_LEN - 1][0]
                    used_dynamic = True
                else:
                    return None
            else:
                if pos >= n or data[pos] & 0x80:
                    return None  # Huffman-coded name
                length = data[pos] & 0x7F
                pos += 1
                if length == 0x7F:
                    return None
                name = data[pos : pos + length]
                if len(name) != length:
                    return None
                pos += length
            if pos >= n or data[pos] & 0x80:
                return None  # Huffman-coded value
            length = data[pos] & 0x7F
            pos += 1
            if length == 0x7F:
                shift = 0
                while True:
                    if pos >= n:
                        return None
                    c = data[pos]
                    pos += 1
                    length += (c & 0x7F) << shift
                    shift += 7
                    if not c & 0x80:
                        break
            value = data[pos : pos + length]
            if len(value) != length:
                return None
            pos += length
            total += len(name) + length + 32
            append(hpack.NeverIndexedHeaderTuple(name, value) if kind == 0x10 else (name, value))
        if total > limit:
            raise OversizedHeaderListError(f"A header list larger than {limit} has been received")
        return headers, used_dynamic
