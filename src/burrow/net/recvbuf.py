"""Receive buffers for `asyncio.BufferedProtocol` reads: large reads, passed on without a copy.

With `data_received`, uvloop reads at most 256,000 bytes at a time into a buffer of its own and
copies each read into a new `bytes`. The connector's origin connections read into these
1 MiB pooled buffers instead, and a large read goes on to the tunnel as a `memoryview`: the h2
stream queues the view and the TLS transport encrypts from it at the next flush. Fewer, larger
reads make fewer, larger DATA frames and TLS writes in the process that encrypts a download,
its bottleneck (bench: burrow-h1 downloads +6-25 % in alternating runs). The edge's eyeball
reads were tried the same way for uploads and measured no better, so they keep `data_received`.

A buffer is reused only when no view of it is alive: a mapping with exported buffers refuses
to be resized, which `_lent` uses as an exact test (one `mremap` to the same size, ~0.4 us,
made only after a view of the buffer was handed out: small requests never pay for it).
The buffers are anonymous mappings rather than `bytearray`s, which are zero-filled at once:
a page costs memory only once a read reaches it, so a connector that only ever serves small
responses stays at a page or two. Reads under `VIEW_MIN` are copied out as `bytes`, so a view
holds at most twice its own length: whatever queues views (stream high-water marks, transport
write limits) stays bounded as before, within that factor.
"""

from __future__ import annotations

import asyncio
import mmap
from typing import ClassVar

from burrow.wire import DataPiece

BUF_SIZE = 1 << 20
VIEW_MIN = BUF_SIZE // 2  # smaller reads are copied out (memory pinned per byte stays <= 2x)
POOL_MAX = 4  # buffers kept for reuse per process; more lent at once are allocated and dropped


def _lent(buf: mmap.mmap) -> bool:
    """True while a view of `buf` is alive (an exported mapping cannot be resized)."""
    try:
        buf.resize(BUF_SIZE)
    except BufferError:
        return True
    return False


def _new_buffer() -> mmap.mmap:
    return mmap.mmap(-1, BUF_SIZE)


class RecvBuffers:
    """A pool of receive buffers; one per process (`POOL`), shared by all connections.

    `get_buffer` and `filled` bracket one read: asyncio calls `get_buffer`, reads into it and
    calls `buffer_updated` synchronously, so the buffer of the read in progress is remembered
    between the two calls."""

    __slots__ = ("_current", "_pool", "_viewed")

    def __init__(self) -> None:
        self._pool: list[mmap.mmap] = []
        self._current: mmap.mmap | None = None
        self._viewed = False  # a view of `_current` was handed out (it may still be alive)

    def get_buffer(self) -> memoryview:
        """A free buffer, as a view: asyncio's pure-Python TLS transport slices what it is given
        to read the rest of a record into."""
        return memoryview(self._take())

    def _take(self) -> mmap.mmap:
        current = self._current
        if current is not None and (not self._viewed or not _lent(current)):
            self._viewed = False  # after small reads (copied out) there is nothing to probe
            return current
        self._viewed = False
        for buf in self._pool:
            if buf is not current and not _lent(buf):
                self._current = buf
                return buf
        buf = _new_buffer()  # mapped on first use; its pages cost memory once reads reach them
        if len(self._pool) < POOL_MAX:
            self._pool.append(buf)
        self._current = buf
        return buf

    def filled(self, n: int, copy_small: bool = True) -> DataPiece:
        """The `n` bytes just read: a view of the buffer when large (or always, when not
        `copy_small`), else a copy."""
        view = memoryview(self._current)[:n]  # type: ignore[arg-type]
        if n < VIEW_MIN and copy_small:
            return bytes(view)
        self._viewed = True
        return view


POOL = RecvBuffers()


class PooledReads(asyncio.BufferedProtocol):
    """Base for a protocol whose reads land in `POOL`'s buffers and reach `data_received` as
    `bytes` or, when large, as a view it may pass on (never written to while it lives)."""

    __slots__ = ()

    keeps_views: ClassVar[bool] = True
    """False for a protocol that is done with each piece when `data_received` returns (it
    copies what it keeps): it gets every read as a view, since none can pin a buffer."""

    def get_buffer(self, sizehint: int) -> memoryview:
        return POOL.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(POOL.filled(nbytes, self.keeps_views))

    def data_received(self, data: DataPiece) -> None:
        raise NotImplementedError
