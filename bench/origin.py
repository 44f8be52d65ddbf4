"""A small, fast HTTP/1.1 origin for the benchmark: asyncio.Protocol + httptools (+ uvloop).

The benchmark compares "direct to this origin" with "through burrow to this origin", so the
origin must cost as little as possible per request: responses for the fixed routes are
pre-built bytes, bodies are streamed with transport flow control (never built whole), and
uploads are drained and counted without being kept.

Routes (any method unless noted):
  GET  /small                 a 100-byte body
  GET  /64k                   a 65,536-byte body
  GET  /download?size=N       N bytes, streamed in 256 KiB writes with backpressure
  POST /upload                drains the request body (Content-Length or chunked) and answers
                              {"received": N}
  anything else               404

Run: python bench/origin.py --port 0   (prints "READY <port> <loop>" on stdout once listening)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from urllib.parse import parse_qs, urlsplit

import httptools

SMALL_BODY = (
    b"burrow benchmark origin: a small response body padded to one hundred bytes." + b"." * 100
)[:100]
BODY_64K = b"x" * 65536
CHUNK = b"d" * (256 * 1024)
MAX_DOWNLOAD = 16 * 1024**3


def _response(status: bytes, body: bytes, content_type: bytes = b"text/plain") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"Server: bench-origin\r\n"
        b"Content-Type: " + content_type + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"\r\n" + body
    )


RESP_SMALL = _response(b"200 OK", SMALL_BODY)
RESP_64K = _response(b"200 OK", BODY_64K, b"application/octet-stream")
RESP_404 = _response(b"404 Not Found", b"not found\n")
RESP_400 = _response(b"400 Bad Request", b"bad request\n")


class OriginProtocol(asyncio.Protocol):
    """One connection; requests are answered in order (pipelining works for fixed routes)."""

    __slots__ = (
        "keep_alive",
        "parser",
        "paused",
        "received",
        "remaining",
        "transport",
        "url",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.received = 0
        self.paused = False
        self.remaining = 0  # bytes of a streamed download still to write
        self.keep_alive = True

    # --- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._write(RESP_400)
            self._close()
        except httptools.HttpParserError:
            self._write(RESP_400)
            self._close()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # --- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.received = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.received += len(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        url = self.url
        if url == b"/small":
            self._write(RESP_SMALL)
        elif url == b"/64k":
            self._write(RESP_64K)
        elif url.startswith(b"/download"):
            self._start_download(url)
            return
        elif url.startswith(b"/upload"):
            body = b'{"received": ' + str(self.received).encode() + b"}\n"
            self._write(_response(b"200 OK", body, b"application/json"))
        else:
            self._write(RESP_404)
        if not self.keep_alive:
            self._close()

    # --- helpers -------------------------------------------------------------------------------
    def _start_download(self, url: bytes) -> None:
        query = parse_qs(urlsplit(url.decode("latin-1")).query)
        try:
            size = int(query.get("size", ["0"])[0])
        except ValueError:
            size = -1
        if not 0 <= size <= MAX_DOWNLOAD:
            self._write(RESP_400)
            self._close()
            return
        self._write(
            b"HTTP/1.1 200 OK\r\nServer: bench-origin\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Length: " + str(size).encode() + b"\r\n\r\n"
        )
        self.remaining = size
        # Stop reading further requests until this body is out (keeps responses in order).
        if self.transport is not None:
            self.transport.pause_reading()
        self._pump()

    def _pump(self) -> None:
        t = self.transport
        while self.remaining > 0 and not self.paused and t is not None:
            n = min(self.remaining, len(CHUNK))
            t.write(CHUNK if n == len(CHUNK) else CHUNK[:n])
            self.remaining -= n
        if self.remaining == 0 and t is not None and not t.is_closing():
            if not self.keep_alive:
                self._close()
            else:
                t.resume_reading()

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(OriginProtocol, host, port, backlog=1024, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    loop_name = type(loop).__module__.split(".")[0]
    print(f"READY {bound} {loop_name}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    args = parser.parse_args()
    if not args.no_uvloop and not os.environ.get("BENCH_NO_UVLOOP"):
        try:
            import uvloop

            uvloop.run(serve(args.host, args.port))
            return
        except ImportError:
            pass
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
