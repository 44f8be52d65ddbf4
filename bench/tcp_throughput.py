"""`access tcp` throughput: MB/s of a direct TCP connection vs the same transfer carried by
`burrow access tcp` -> edge -> tunnel -> connector -> TCP origin (all real processes on loopback,
started through the CLI: `burrow edge serve`, `burrow tunnel run --url tcp://...`,
`burrow access tcp --url ...`).

    python bench/tcp_throughput.py [--size-mb 200] [--rounds 3]

Upload = client -> origin, download = origin -> client; each number is the best of `--rounds`
runs of `--size-mb` MB. Bulk TCP must not be limited by per-frame costs: the ratio to the direct
connection is the figure to watch. Every process is started here and stopped by its PID.

bench/run.py reuses this module for its `access_tcp` scenario: `start_tcp_origin` and
`start_tcp_route` (a TCP tunnel on the suite's edge) and the `upload`/`download` client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procs  # bench/procs.py: processes started and stopped by PID, free ports

CHUNK = 1 << 20


# --- the origin: a byte source/sink (run as `tcp_throughput.py --serve-origin PORT`) ------------


class _Origin(asyncio.Protocol):
    """First byte selects the test: U<8-byte n> = receive n bytes then answer b"K";
    D<8-byte n> = send n bytes; P = answer b"P" (readiness probe)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.head = b""
        self.mode = b""
        self.left = 0
        self.block = b"\xa5" * CHUNK

    def data_received(self, data: bytes) -> None:
        if not self.mode:
            self.head += data
            if self.head[:1] == b"P":
                self.t.write(b"P")
                self.head = b""
                return
            if len(self.head) < 9:
                return
            self.mode, self.left = self.head[:1], int.from_bytes(self.head[1:9], "big")
            data = self.head[9:]
            if self.mode == b"D":
                self._send()
                return
        if self.mode == b"U":
            self.left -= len(data)
            if self.left <= 0:
                self.t.write(b"K")

    def _send(self) -> None:
        while self.left > 0 and self.t.get_write_buffer_size() < 4 * CHUNK:
            n = min(CHUNK, self.left)
            self.t.write(self.block[:n])
            self.left -= n

    def resume_writing(self) -> None:
        if self.mode == b"D":
            self._send()

    def pause_writing(self) -> None:
        pass


async def _serve_origin(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Origin, "127.0.0.1", port)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


# --- measuring client ------------------------------------------------------------------------


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def upload(port: int, size: int) -> float:
    with _connect(port) as s:
        block = b"\x5a" * CHUNK
        t0 = time.perf_counter()
        s.sendall(b"U" + size.to_bytes(8, "big"))
        left = size
        while left > 0:
            n = min(CHUNK, left)
            s.sendall(block[:n])
            left -= n
        if s.recv(1) != b"K":
            raise RuntimeError("upload not acknowledged")
        return size / (time.perf_counter() - t0) / 1e6


def download(port: int, size: int) -> float:
    with _connect(port) as s:
        buf = bytearray(CHUNK)
        t0 = time.perf_counter()
        s.sendall(b"D" + size.to_bytes(8, "big"))
        got = 0
        while got < size:
            n = s.recv_into(buf)
            if not n:
                raise RuntimeError(f"connection closed after {got} of {size} bytes")
            got += n
        return size / (time.perf_counter() - t0) / 1e6


def probe(port: int) -> bool:
    try:
        with _connect(port) as s:
            s.settimeout(3)
            s.sendall(b"P")
            return s.recv(1) == b"P"
    except OSError:
        return False


# --- the processes ---------------------------------------------------------------------------


def start_tcp_origin(workdir: Path, started: list[procs.Proc]) -> int:
    """The byte source/sink above as its own process; returns its port."""
    port = procs.free_port()
    origin = procs.start(
        "tcp-origin", [sys.executable, __file__, "--serve-origin", str(port)], workdir
    )
    started.append(origin)
    procs.wait_until(lambda: "READY" in origin.log_tail(), 15, origin, "the TCP origin")
    return port


def start_tcp_route(
    exe: str,
    state: Path,
    http_port: int,
    origin_port: int,
    workdir: Path,
    started: list[procs.Proc],
    loglevel: str = "warn",
    env: dict[str, str] | None = None,
    hostname: str = "tcp.localhost",
) -> tuple[procs.Proc, procs.Proc, int]:
    """On a running edge (state dir `state`, public HTTP listener `http_port`): a tunnel for
    `hostname`, a connector whose ingress is `tcp://127.0.0.1:<origin_port>` and a
    `burrow access tcp` client listening on a free local port. Returns (connector, access
    client, local port) once a probe byte makes the round trip."""
    env = env or {}
    made = subprocess.run(
        [exe, "edge", "tunnel", "create", f"bench-{hostname.split('.')[0]}", "--hostname", hostname,
         "--state-dir", str(state), "--json"],
        capture_output=True, timeout=60, check=False, env={**os.environ, **env},
    )  # fmt: skip
    if made.returncode != 0:
        raise RuntimeError(f"tunnel create failed: {made.stderr.decode(errors='replace')}")
    token = json.loads(made.stdout)["token"]
    connector = procs.start(
        "tcp-connector",
        [exe, "tunnel", "run", "--url", f"tcp://127.0.0.1:{origin_port}",
         "--ha-connections", "1", "--loglevel", loglevel],
        workdir,
        env={**env, "TUNNEL_TOKEN": token},
    )  # fmt: skip
    started.append(connector)
    local_port = procs.free_port()
    client = procs.start(
        "access",
        [exe, "access", "tcp", "--hostname", f"http://{hostname}:{http_port}",
         "--url", f"127.0.0.1:{local_port}", "--loglevel", loglevel],
        workdir,
        env=env,
    )  # fmt: skip
    started.append(client)
    procs.wait_until(lambda: probe(local_port), 30, client, "a probe through access tcp")
    return connector, client, local_port


def start_all(workdir: Path, loglevel: str) -> tuple[list[procs.Proc], int, int]:
    exe = procs.burrow_bin()
    started: list[procs.Proc] = []
    try:
        origin_port = start_tcp_origin(workdir, started)
        state = workdir / "edge-state"
        tunnel_port, http_port, admin_port = procs.free_port(), procs.free_port(), procs.free_port()
        edge = procs.start(
            "edge",
            [
                exe, "edge", "serve", "--state-dir", str(state),
                "--tunnel-listen", f"127.0.0.1:{tunnel_port}",
                "--http-listen", f"127.0.0.1:{http_port}",
                "--admin-listen", f"127.0.0.1:{admin_port}",
                "--loglevel", loglevel,
            ],
            workdir,
        )  # fmt: skip
        started.append(edge)
        procs.wait_until(
            lambda: procs.http_get_status(http_port, "/", "x.invalid") is not None,
            30, edge, "the edge to listen",
        )  # fmt: skip
        _, _, local_port = start_tcp_route(
            exe, state, http_port, origin_port, workdir, started, loglevel
        )
    except (RuntimeError, OSError, subprocess.SubprocessError):
        for p in started:
            print(f"--- {p.name}\n{p.log_tail()}", file=sys.stderr)
        for p in reversed(started):
            p.stop()
        raise
    return started, origin_port, local_port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loglevel", default="warn")
    ap.add_argument("--serve-origin", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_origin:
        try:
            import uvloop

            uvloop.run(_serve_origin(args.serve_origin))
        except ImportError:
            asyncio.run(_serve_origin(args.serve_origin))
        return
    size = args.size_mb << 20
    with tempfile.TemporaryDirectory(prefix="bench-tcp-") as tmp:
        started, origin_port, local_port = start_all(Path(tmp), args.loglevel)
        try:
            results: dict[str, dict[str, float]] = {}
            for name, port in (("direct", origin_port), ("access tcp", local_port)):
                cpu0 = {p.name: procs.cpu_seconds(p.pid) for p in started}
                up = max(upload(port, size) for _ in range(args.rounds))
                down = max(download(port, size) for _ in range(args.rounds))
                cpu = {p.name: procs.cpu_seconds(p.pid) - cpu0[p.name] for p in started}
                results[name] = {"upload_MBps": up, "download_MBps": down, **cpu}
        finally:
            for p in reversed(started):
                p.stop()
    print(f"access tcp throughput, {args.size_mb} MB x {args.rounds} rounds (best), MB/s")
    print(f"{'path':<12}{'upload':>10}{'download':>10}")
    for name, r in results.items():
        print(f"{name:<12}{r['upload_MBps']:>10.1f}{r['download_MBps']:>10.1f}")
    d, t = results["direct"], results["access tcp"]
    print(
        f"ratio: upload {t['upload_MBps'] / d['upload_MBps']:.3f}, "
        f"download {t['download_MBps'] / d['download_MBps']:.3f}"
    )
    cpu = {k: round(v, 2) for k, v in t.items() if not k.endswith("MBps")}
    print(f"CPU seconds during the tunnelled runs: {cpu}")
    if os.environ.get("BENCH_JSON"):
        Path(os.environ["BENCH_JSON"]).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
