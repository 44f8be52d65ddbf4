"""The pool of receive buffers: large reads are lent as views, and a buffer is never read
into again while any view of it is alive (that would change bytes already passed on)."""

from __future__ import annotations

import gc

import pytest

from burrow.net import recvbuf
from burrow.net.recvbuf import BUF_SIZE, POOL_MAX, VIEW_MIN, RecvBuffers


def _read(pool: RecvBuffers, fill: int, n: int) -> bytes | memoryview:
    """What a transport does: ask for a buffer, read `n` bytes into it, report them."""
    target = pool.get_buffer()
    assert len(target) == BUF_SIZE
    target[:n] = bytes([fill]) * n
    del target
    return pool.filled(n)


def test_large_reads_are_views_and_small_ones_copies() -> None:
    pool = RecvBuffers()
    big = _read(pool, 1, VIEW_MIN)
    assert type(big) is memoryview and len(big) == VIEW_MIN
    small = _read(pool, 2, VIEW_MIN - 1)
    assert type(small) is bytes and small == b"\x02" * (VIEW_MIN - 1)


def test_a_buffer_is_not_reused_while_a_view_of_it_lives() -> None:
    pool = RecvBuffers()
    first = _read(pool, 1, BUF_SIZE)
    second = _read(pool, 2, BUF_SIZE)
    assert type(first) is memoryview and type(second) is memoryview
    assert first.obj is not second.obj
    assert bytes(first) == b"\x01" * BUF_SIZE  # not overwritten by the second read
    held = first.obj
    del first
    gc.collect()
    third = _read(pool, 3, BUF_SIZE)
    assert type(third) is memoryview and third.obj is held  # released, so reused
    assert bytes(second) == b"\x02" * BUF_SIZE


def test_small_reads_never_pin_the_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    probes = []
    lent = recvbuf._lent
    monkeypatch.setattr(recvbuf, "_lent", lambda buf: probes.append(buf) or lent(buf))
    pool = RecvBuffers()
    copies = [_read(pool, i, 100) for i in range(50)]
    assert all(type(c) is bytes for c in copies)
    assert len(pool._pool) == 1  # one buffer served all 50 reads
    assert probes == []  # nothing was lent, so nothing needed the (system call) probe
    view = _read(pool, 1, BUF_SIZE)
    _read(pool, 2, 100)
    assert len(probes) == 1 and type(view) is memoryview and bytes(view[:1]) == b"\x01"


def test_the_pool_keeps_at_most_pool_max_buffers() -> None:
    pool = RecvBuffers()
    held = [_read(pool, i, BUF_SIZE) for i in range(POOL_MAX + 3)]
    assert len({id(v.obj) for v in held if type(v) is memoryview}) == POOL_MAX + 3
    assert len(pool._pool) == POOL_MAX
    assert [bytes(v[:1]) for v in held] == [bytes([i]) for i in range(POOL_MAX + 3)]


def test_pooled_reads_hand_data_received_what_was_read(monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[bytes | memoryview] = []

    class Sink(recvbuf.PooledReads):
        def data_received(self, data: bytes | memoryview) -> None:
            got.append(data)

    monkeypatch.setattr(recvbuf, "POOL", RecvBuffers())
    sink = Sink()
    target = sink.get_buffer(-1)
    target[:5] = b"hello"
    del target
    sink.buffer_updated(5)
    assert got == [b"hello"]
