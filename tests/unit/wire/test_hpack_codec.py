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
