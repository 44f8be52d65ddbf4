"""The tunnel's HPACK coder (burrow.wire.hpack_codec) against the reference `hpack` coder: what
it encodes decodes identically with `hpack.Decoder`, and it decodes whatever `hpack.Encoder`
(Huffman, dynamic table: what Go peers send) produces, across blocks sharing one table."""

from __future__ import annotations

import random

import hpack
import pytest
from hpack.exceptions import OversizedHeaderListError

from burrow.wire.hpack_codec import FastDecoder, FastEncoder

NAMES = [
    b":method",
    b":path",
    b":authority",
    b"content-length",
    b"user-agent",
    b"x-custom",
    b"accept-encoding",
    b"cf-ray",
    b"n" * 140,  # a literal name longer than the 7-bit length prefix
]


def _random_headers(rnd: random.Random) -> list[tuple[bytes, bytes]]:
    out = []
    for _ in range(rnd.randrange(1, 12)):
        size = rnd.choice([0, 1, 5, 126, 127, 128, 300, 5000])
        out.append((rnd.choice(NAMES), bytes(rnd.randrange(32, 127) for _ in range(size))))
    out.append((b":method", b"GET"))  # a full static-table match
    return out


def test_round_trip_with_reference_decoder() -> None:
    rnd = random.Random(7)
    enc, fast, ref = FastEncoder(), FastDecoder(), hpack.Decoder()
    fast.max_header_list_size = ref.max_header_list_size = 1 << 20
    for _ in range(400):
        headers = _random_headers(rnd)
        block = enc.encode(headers)
        assert [tuple(h) for h in ref.decode(block, raw=True)] == headers
        assert [tuple(h) for h in fast.decode(block, raw=True)] == headers


def test_decodes_reference_encoder_output_with_shared_table() -> None:
    """Huffman strings and dynamic-table references fall back to hpack's decoder, whose table
    stays in step with the peer's encoder from block to block."""
    rnd = random.Random(8)
    enc, fast = hpack.Encoder(), FastDecoder()
    fast.max_header_list_size = 1 << 20
    for _ in range(200):
        headers = _random_headers(rnd)
        assert [tuple(h) for h in fast.decode(enc.encode(headers), raw=True)] == headers


def test_credentials_are_never_indexed_nor_cached() -> None:
    enc = FastEncoder()
    block = enc.encode([(b"authorization", b"Bearer secret"), (b"cookie", b"a=b")])
    decoded = hpack.Decoder().decode(block, raw=True)
    assert [tuple(h) for h in decoded] == [
        (b"authorization", b"Bearer secret"),
        (b"cookie", b"a=b"),
    ]
    assert all(isinstance(h, hpack.NeverIndexedHeaderTuple) for h in decoded)
    assert not any(b"secret" in key[1] for key in enc._cache)


def test_table_size_change_is_signalled() -> None:
    enc, ref = FastEncoder(), hpack.Decoder()
    enc.header_table_size = 0  # the peer lowered SETTINGS_HEADER_TABLE_SIZE
    block = enc.encode([(b"x-a", b"1")])
    assert block[0] & 0xE0 == 0x20  # a dynamic table size update first (RFC 7541 6.3)
    assert [tuple(h) for h in ref.decode(block, raw=True)] == [(b"x-a", b"1")]
    assert ref.header_table_size == 0


def test_oversized_header_list_is_refused() -> None:
    dec = FastDecoder()
    dec.max_header_list_size = 100
    block = FastEncoder().encode([(b"x-big", b"v" * 200)])
    with pytest.raises(OversizedHeaderListError):
        dec.decode(block, raw=True)


def test_truncated_block_is_an_error() -> None:
    block = FastEncoder().encode([(b"x-custom", b"value")])
    with pytest.raises(hpack.HPACKError):
        FastDecoder().decode(block[:-2], raw=True)


def test_repeated_plain_blocks_decode_from_memory_and_stay_independent() -> None:
    headers = [(b":status", b"200"), (b"cf-cloudflared-response-headers", b"Q29udGVudC1UeXBl")]
    block = FastEncoder().encode(headers)
    decoder = FastDecoder()
    first = decoder.decode(block, raw=True)
    assert [tuple(h) for h in first] == headers
    first.append((b"x-mutated", b"1"))  # a caller's list is its own
    second = decoder.decode(block, raw=True)
    assert [tuple(h) for h in second] == headers
    assert block in decoder._blocks


def test_blocks_of_table_references_decode_fast_and_stay_in_step_with_the_table() -> None:
    """An h2 client repeats one block of dynamic-table references per similar request. Such
    blocks are decoded without hpack's decoder and remembered for the table they were read
    against; through evictions and a table size change they agree with the reference."""
    rnd = random.Random(9)
    enc, fast, ref = hpack.Encoder(), FastDecoder(), hpack.Decoder()
    fast.max_header_list_size = ref.max_header_list_size = 1 << 20
    repeated = [_random_headers(rnd) for _ in range(6)]
    for i in range(400):
        if i == 200:
            enc.header_table_size = 512  # signalled in the next block; evicts entries
        headers = rnd.choice(repeated) if rnd.random() < 0.8 else _random_headers(rnd)
        block = enc.encode(headers)
        expected = [tuple(h) for h in ref.decode(block, raw=True)]
        assert expected == headers
        assert [tuple(h) for h in fast.decode(block, raw=True)] == expected
    request = [(b":method", b"GET"), (b":path", b"/small"), (b"user-agent", b"h2load nghttp2")]
    fast.decode(enc.encode(request), raw=True)  # literals, indexed into the table
    block = enc.encode(request)  # now only references
    version = fast._version
    assert [tuple(h) for h in fast.decode(block, raw=True)] == request
    assert [tuple(h) for h in fast.decode(block, raw=True)] == request
    assert fast._version == version  # hpack's decoder was not needed
    assert fast._blocks[block][0] == version


def test_blocks_read_by_hpack_that_leave_the_table_alone_are_remembered() -> None:
    """A Huffman literal without indexing (what nghttp2 clients send for some fields) needs
    hpack's decoder until the block is kept (its second sighting); from then on it is served
    from memory while the table stands, and read again after it changed. A never-indexed
    credential is never kept."""
    from hpack.huffman import HuffmanEncoder
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

    value = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(b"/small?x=1")
    block = b"\x82" + b"\x04" + bytes([0x80 | len(value)]) + value  # GET, :path literal
    fast = FastDecoder()
    assert [tuple(h) for h in fast.decode(block, raw=True)] == [
        (b":method", b"GET"),
        (b":path", b"/small?x=1"),
    ]
    assert block not in fast._blocks  # seen once
    assert [tuple(h) for h in fast.decode(block, raw=True)][1] == (b":path", b"/small?x=1")
    version = fast._version
    assert fast._blocks[block][0] == version
    assert [tuple(h) for h in fast.decode(block, raw=True)][1] == (b":path", b"/small?x=1")
    assert fast._version == version
    enc = hpack.Encoder()
    fast.decode(enc.encode([(b"x-new", b"entry")]), raw=True)  # indexes: a new table version
    assert fast._version == version + 1
    assert [tuple(h) for h in fast.decode(block, raw=True)][1] == (b":path", b"/small?x=1")
    secret = enc.encode([(b"authorization", b"Bearer s3cret", True)], huffman=True)
    for _ in range(3):
        assert fast.decode(secret, raw=True)[0][1] == b"Bearer s3cret"
    assert secret not in fast._blocks


def test_blocks_seen_once_are_not_kept() -> None:
    """Request blocks from an edge differ in their cf-ray: none is kept, so the cache neither
    grows with nor is churned by them; a block that comes again is kept from then on."""
    enc, fast = FastEncoder(), FastDecoder()
    base = [(b":method", b"GET"), (b":path", b"/"), (b"x-forwarded-for", b"192.0.2.1")]
    for i in range(1000):
        block = enc.encode([*base, (b"cf-ray", b"%016x-LHR" % i)])
        assert [tuple(h) for h in fast.decode(block, raw=True)][3] == (b"cf-ray", b"%016x-LHR" % i)
    assert fast._blocks == {}
    repeated = enc.encode(base)
    fast.decode(repeated, raw=True)
    assert repeated not in fast._blocks
    fast.decode(repeated, raw=True)
    assert repeated in fast._blocks
