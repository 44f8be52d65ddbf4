"""Load generators: wrk (HTTP/1.1 req/s and latency), h2load (the same over HTTP/2 + TLS),
curl (bulk MB/s, over HTTP/2 for TLS endpoints), TTFB probes (a socket; curl for TLS).

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
from typing import Any

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
    """Where a load generator sends requests: a loopback port and the Host header to send.

    With `ca` set the endpoint is HTTPS: clients connect to 127.0.0.1 but use `host` in the URL
    (SNI, :authority) and verify the certificate against `ca`; curl is told to speak HTTP/2."""

    port: int
    host: str
    ca: Path | None = None

    @property
    def tls(self) -> bool:
        return self.ca is not None

    def url(self, path: str) -> str:
        if self.tls:
            return f"https://{self.host}:{self.port}{path}"
        return f"http://127.0.0.1:{self.port}{path}"

    def curl_args(self) -> list[str]:
        if self.ca is not None:
            return ["--http2", "--cacert", str(self.ca),
                    "--resolve", f"{self.host}:{self.port}:127.0.0.1"]  # fmt: skip
        return ["-H", f"Host: {self.host}"]


def _lua_file() -> str:
    f = tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-wrk-", delete=False)
    f.write(WRK_LUA)
    f.close()
    return f.name


def wrk(ep: Endpoint, path: str, connections: int, duration: float) -> dict[str, Any]:
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


@dataclass(frozen=True)
class CurlResult:
    code: int
    nbytes: int  # downloaded, or uploaded when nothing was downloaded
    total: float  # seconds
    ttfb: float  # seconds from the start to the first response byte
    tls: float  # seconds from the start to the end of the TLS handshake (0 without TLS)
    http_version: str
    body: str


def _curl(ep: Endpoint, args: list[str], max_time: float) -> CurlResult:
    out = subprocess.run(
        ["curl", "-sS", "--max-time", str(int(max_time)), *ep.curl_args(), "-w",
         "\nCURLW %{http_code} %{size_download} %{size_upload} %{time_total} "
         "%{time_starttransfer} %{time_appconnect} %{http_version}", *args],
        capture_output=True, text=True, timeout=max_time + 10, check=False,
    )  # fmt: skip
    m = re.search(r"CURLW (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+) (\S+)", out.stdout)
    if not m or out.returncode != 0:
        raise RuntimeError(f"curl {args} failed (rc={out.returncode}): {out.stderr.strip()}")
    down, up = int(m.group(2)), int(m.group(3))
    version = m.group(7)
    if ep.tls and version != "2":
        raise RuntimeError(f"curl spoke HTTP/{version} to an h2 endpoint, not HTTP/2")
    return CurlResult(
        code=int(m.group(1)), nbytes=down if down else up, total=float(m.group(4)),
        ttfb=float(m.group(5)), tls=float(m.group(6)), http_version=version,
        body=out.stdout[: m.start()],
    )  # fmt: skip


def download(ep: Endpoint, size: int, repeats: int, max_time: float = 120) -> dict[str, Any]:
    """MB/s (10^6 bytes) of a streamed GET /download?size=N to /dev/null; best of `repeats`."""
    runs = []
    for _ in range(repeats):
        r = _curl(ep, ["-o", "/dev/null", ep.url(f"/download?size={size}")], max_time)
        if r.code != 200 or r.nbytes != size:
            raise RuntimeError(f"download: status {r.code}, {r.nbytes} of {size} bytes")
        runs.append(size / r.total / 1e6)
    return {"mbps": round(max(runs), 1), "mbps_runs": [round(r, 1) for r in runs], "bytes": size}


def upload(ep: Endpoint, file: Path, repeats: int, max_time: float = 120) -> dict[str, Any]:
    """MB/s of a streamed POST of `file` (curl -T, no Expect: 100-continue); best of `repeats`."""
    size = file.stat().st_size
    runs = []
    for _ in range(repeats):
        r = _curl(
            ep,
            [
                "-X", "POST", "-T", str(file), "-H", "Expect:",
                "-H", "Content-Type: application/octet-stream", ep.url("/upload"),
            ],
            max_time,
        )  # fmt: skip
        received = json.loads(r.body.strip() or "{}").get("received") if r.code == 200 else None
        if r.code != 200 or received != size:
            raise RuntimeError(
                f"upload: status {r.code}, origin received {received} of {size} bytes"
            )
        runs.append(size / r.total / 1e6)
    return {"mbps": round(max(runs), 1), "mbps_runs": [round(r, 1) for r in runs], "bytes": size}


def ttfb_fresh(ep: Endpoint, path: str, count: int, budget: float) -> dict[str, Any]:
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


def ttfb_curl(ep: Endpoint, path: str, count: int, budget: float) -> dict[str, Any]:
    """Like `ttfb_fresh` for an HTTPS endpoint: one curl per sample (new TCP connection, TLS
    handshake with ALPN h2, one request); curl's own timers, so process start-up is not counted.
    `tls_p50_ms` is the part spent until the TLS handshake completed."""
    samples: list[float] = []
    tls: list[float] = []
    deadline = time.monotonic() + budget
    while len(samples) < count and time.monotonic() < deadline:
        r = _curl(ep, ["-o", "/dev/null", ep.url(path)], 10)
        if r.code != 200:
            raise RuntimeError(f"ttfb: status {r.code}")
        samples.append(r.ttfb * 1000)
        tls.append(r.tls * 1000)
    samples.sort()
    return {
        "count": len(samples),
        "p50_ms": round(statistics.median(samples), 4),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 4),
        "tls_p50_ms": round(statistics.median(tls), 4),
    }


_H2LOAD_DONE = re.compile(r"finished in ([\d.]+)s, ([\d.]+) req/s")
_H2LOAD_REQS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_H2LOAD_TRAFFIC = re.compile(r"traffic: \S+ \((\d+)\) total")
_H2LOAD_PROTO = re.compile(r"Application protocol: (\S+)")


def h2load(ep: Endpoint, path: str, connections: int, duration: float) -> dict[str, Any]:
    """The HTTP/2 counterpart of `wrk`: `connections` TLS connections with ALPN h2, one request
    in flight on each (-m1, as wrk keeps one per connection), for `duration` seconds.
    Percentiles come from h2load's per-request log (time until the end of each response)."""
    if not ep.tls:
        raise ValueError("h2load is used for the HTTPS (h2) endpoint only")
    threads = 1 if connections == 1 else 2
    with tempfile.NamedTemporaryFile("r", suffix=".tsv", prefix="bench-h2load-") as log:
        out = subprocess.run(
            [
                "h2load", f"-t{threads}", f"-c{connections}", "-m1",
                f"-D{max(1, round(duration))}", "-N5",
                f"--connect-to=127.0.0.1:{ep.port}", f"--log-file={log.name}", ep.url(path),
            ],
            capture_output=True, text=True, timeout=duration + 30, check=False,
        )  # fmt: skip
        latencies = sorted(int(line.split("\t")[2]) for line in log if line.count("\t") >= 2)
    done, reqs = _H2LOAD_DONE.search(out.stdout), _H2LOAD_REQS.search(out.stdout)
    traffic, proto = _H2LOAD_TRAFFIC.search(out.stdout), _H2LOAD_PROTO.search(out.stdout)
    if not (done and reqs and traffic) or not latencies:
        raise RuntimeError(f"h2load failed: {out.stdout[-1500:]}\n{out.stderr[-500:]}")
    if not proto or proto.group(1) != "h2":
        raise RuntimeError(f"h2load did not negotiate h2: {proto.group(1) if proto else None}")
    secs = float(done.group(1))
    ok = int(reqs.group(4))

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * q))] / 1000

    return {
        "requests": ok,
        "seconds": secs,
        "rps": round(ok / secs, 1) if secs else 0.0,
        "mbps": round(int(traffic.group(1)) / secs / 1e6, 2) if secs else 0.0,
        "p50_ms": pct(0.5),
        "p90_ms": pct(0.9),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] / 1000,
        "mean_ms": round(sum(latencies) / len(latencies) / 1000, 4),
        "errors": int(reqs.group(5)) + int(reqs.group(6)) + int(reqs.group(7)),
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
