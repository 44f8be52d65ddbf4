"""Load generators: wrk (HTTP/1.1 req/s and latency), curl (bulk MB/s), a socket TTFB probe.

Each returns a flat dict of numbers so results can be tabulated and written as JSON. Every run
is bounded in time (wrk -d, curl --max-time, socket timeouts).
"""

from __future__ import annotations

import json
import re
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# wrk's done() hook prints a JSON line; percentiles come from wrk's HdrHistogram (microseconds).
WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\"p50_us\":%d,\"p90_us\":%d," ..
    "\"p99_us\":%d,\"max_us\":%d,\"mean_us\":%.1f,\"err_connect\":%d,\"err_read\":%d," ..
    "\"err_write\":%d,\"err_status\":%d,\"err_timeout\":%d}\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass(frozen=True)
class Endpoint:
    """Where a load generator sends requests: a loopback port and the Host header to send."""

    port: int
    host: str

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _lua_file() -> str:
    f = tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-wrk-", delete=False)
    f.write(WRK_LUA)
    f.close()
    return f.name


def wrk(ep: Endpoint, path: str, connections: int, duration: float) -> dict[str, float]:
    """req/s and latency percentiles (ms) for GETs of `path` over `connections` keep-alive conns."""
    threads = 1 if connections == 1 else 2
    lua = _lua_file()
    try:
        out = subprocess.run(
            [
                "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
                "--timeout", "5s", "-s", lua, "-H", f"Host: {ep.host}", ep.url(path),
            ],
            capture_output=True, text=True, timeout=duration + 30, check=False,
        )  # fmt: skip
    finally:
        Path(lua).unlink(missing_ok=True)
    m = re.search(r"WRKJSON (\{.*\})", out.stdout)
    if not m:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    r = json.loads(m.group(1))
    secs = r["duration_us"] / 1e6
    errors = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"] + r["err_timeout"]
    return {
        "requests": r["requests"],
        "seconds": round(secs, 3),
        "rps": round(r["requests"] / secs, 1) if secs else 0.0,
        "mbps": round(r["bytes"] / secs / 1e6, 2) if secs else 0.0,
        "p50_ms": r["p50_us"] / 1000,
        "p90_ms": r["p90_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "mean_ms": round(r["mean_us"] / 1000, 4),
        "errors": errors,
    }


def _curl(args: list[str], max_time: float) -> tuple[int, int, float, float, str]:
    out = subprocess.run(
        ["curl", "-sS", "--max-time", str(int(max_time)), "-w", "\nCURLW %{http_code} %{size_download} "
         "%{size_upload} %{time_total} %{time_starttransfer}", *args],
        capture_output=True, text=True, timeout=max_time + 10, check=False,
    )  # fmt: skip
    m = re.search(r"CURLW (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+)", out.stdout)
    if not m or out.returncode != 0:
        raise RuntimeError(f"curl {args} failed (rc={out.returncode}): {out.stderr.strip()}")
    body = out.stdout[: m.start()]
    code, down, up, total = int(m.group(1)), int(m.group(2)), int(m.group(3)), float(m.group(4))
    return code, down if down else up, total, float(m.group(5)), body


def download(ep: Endpoint, size: int, repeats: int, max_time: float = 120) -> dict[str, float]:
    """MB/s (10^6 bytes) of a streamed GET /download?size=N to /dev/null; best of `repeats`."""
    runs = []
    for _ in range(repeats):
        code, n, total, _ttfb, _ = _curl(
            ["-o", "/dev/null", "-H", f"Host: {ep.host}", ep.url(f"/download?size={size}")],
            max_time,
        )
        if code != 200 or n != size:
            raise RuntimeError(f"download: status {code}, {n} of {size} bytes")
        runs.append(size / total / 1e6)
    return {"mbps": round(max(runs), 1), "mbps_runs": [round(r, 1) for r in runs], "bytes": size}


def upload(ep: Endpoint, file: Path, repeats: int, max_time: float = 120) -> dict[str, float]:
    """MB/s of a streamed POST of `file` (curl -T, no Expect: 100-continue); best of `repeats`."""
    size = file.stat().st_size
    runs = []
    for _ in range(repeats):
        code, _n, total, _ttfb, body = _curl(
            [
                "-X", "POST", "-T", str(file), "-H", "Expect:", "-H", f"Host: {ep.host}",
                "-H", "Content-Type: application/octet-stream", ep.url("/upload"),
            ],
            max_time,
        )  # fmt: skip
        received = json.loads(body.strip() or "{}").get("received") if code == 200 else None
        if code != 200 or received != size:
            raise RuntimeError(f"upload: status {code}, origin received {received} of {size} bytes")
        runs.append(size / total / 1e6)
    return {"mbps": round(max(runs), 1), "mbps_runs": [round(r, 1) for r in runs], "bytes": size}


def ttfb_fresh(ep: Endpoint, path: str, count: int, budget: float) -> dict[str, float]:
    """Time from connect() to the first response byte on a new TCP connection, `count` times
    (stops early when `budget` seconds are spent). Sequential: measures latency, not load."""
    req = f"GET {path} HTTP/1.1\r\nHost: {ep.host}\r\nConnection: close\r\n\r\n".encode()
    samples: list[float] = []
    deadline = time.monotonic() + budget
    while len(samples) < count and time.monotonic() < deadline:
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", ep.port), timeout=5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(req)
            first = s.recv(1)
            t1 = time.perf_counter()
            if not first:
                raise RuntimeError("ttfb: connection closed without a response")
            while s.recv(65536):
                pass
        samples.append((t1 - t0) * 1000)
    samples.sort()
    return {
        "count": len(samples),
        "p50_ms": round(statistics.median(samples), 4),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 4),
    }


def make_upload_file(directory: Path, size: int) -> Path:
    """A file of `size` bytes (not all zeros, in case anything compresses), written in 1 MiB blocks."""
    path = directory / f"upload-{size}.bin"
    block = bytes(range(256)) * 4096
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
    return path
