"""50 MB each way through `burrow edge serve` + `burrow tunnel run`, streamed, not buffered.

The peak RSS (VmHWM) of the edge and the connector processes is read from /proc before and
after: if either held a whole body in memory, its peak would grow by about the body size.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from e2e_world import E2E

from burrow.testing.origins import PATTERN

SIZE = 50 * 1024 * 1024
MAX_GROWTH = 25 * 1024 * 1024
HOST = "bulk.localhost"
MB = 1024 * 1024


def _pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    reps, rest = divmod(size, len(PATTERN))
    for _ in range(reps):
        digest.update(PATTERN)
    digest.update(PATTERN[:rest])
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="needs /proc/PID/status (Linux) for VmHWM"
)
def test_50mb_upload_and_download_streamed(e2e: E2E, tmp_path: Path) -> None:
    edge = e2e.start_edge()
    made = e2e.create_tunnel(edge, "bulk", HOST)
    conn = e2e.run_connector("--token", made["token"], "--url", e2e.origin)
    edge.wait_connections(4, conn)

    # Warm up every code path (small upload and download) before taking the baseline.
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(256 * 1024))
    e2e.wait_status(edge.url("/echo"), 200, host=HOST)
    assert e2e.curl(edge.url("/upload"), "-T", str(small), host=HOST).status == 200
    assert e2e.curl(edge.url("/download?size=262144"), host=HOST).status == 200
    base = {"edge": edge.proc.vm("VmHWM"), "connector": conn.vm("VmHWM")}

    upload = tmp_path / "upload.bin"
    with open(upload, "wb") as fh:
        for _ in range(SIZE // MB):
            fh.write(os.urandom(MB))
    t0 = time.monotonic()
    r = e2e.curl(edge.url("/upload"), "-T", str(upload), host=HOST, timeout=60)
    up_s = time.monotonic() - t0
    assert r.status == 200, r
    assert r.json() == {"size": SIZE, "sha256": _file_sha256(upload)}
    upload.unlink()

    download = tmp_path / "download.bin"
    t0 = time.monotonic()
    r = e2e.curl(edge.url(f"/download?size={SIZE}"), host=HOST, output=download, timeout=60)
    down_s = time.monotonic() - t0
    assert r.status == 200, r
    assert download.stat().st_size == SIZE
    assert _file_sha256(download) == _pattern_sha256(SIZE)
    download.unlink()

    peak = {"edge": edge.proc.vm("VmHWM"), "connector": conn.vm("VmHWM")}
    growth = {k: peak[k] - base[k] for k in base}
    report = ", ".join(
        f"{k}: VmHWM {base[k] / MB:.1f} -> {peak[k] / MB:.1f} MB (+{growth[k] / MB:.1f})"
        for k in base
    )
    print(
        f"\n50 MB upload {up_s:.2f}s ({SIZE / MB / up_s:.0f} MB/s), "
        f"download {down_s:.2f}s ({SIZE / MB / down_s:.0f} MB/s); {report}"
    )
    for k, g in growth.items():
        assert g < MAX_GROWTH, f"{k} peak RSS grew by {g / MB:.1f} MB; {report}"
