"""burrow's benchmark suite: direct vs burrow vs `ssh -R` vs a C TLS relay, in one run.

    python bench/run.py              # full run (10 s per load, 100 MB bulk, best of 3)
    python bench/run.py --quick      # 3 s per load, 32 MB bulk, 1 repeat
    python bench/run.py --profile    # also py-spy the edge and connector under 64-conn load
    python bench/run.py --soak 600   # also 10 min of steady load, edge/connector RSS every 10 s

It starts a fast origin (bench/origin.py), `burrow edge serve` (HTTP and HTTPS listeners),
`burrow edge tunnel create` and `burrow tunnel run` as separate processes through the CLI, a
TCP origin with its own tunnel and `burrow access tcp` client (bench/tcp_throughput.py), and a
private sshd with `ssh -N -R` as the classic alternative, and two HAProxy processes as a C TLS
relay of burrow's shape (bench/tls_relay.py, the ceiling); it measures each scenario against
each target, prints a table with ratios to direct and writes bench/results/<timestamp>.json.
See bench/README.md for how to read the figures.

A *target* is a way to reach the origin (`direct`, `burrow-h1`, `burrow-h2`, `ssh-R`,
`tls-relay`; built in `build_targets`); a *scenario* is a measurement (`SCENARIOS`). A
scenario a target cannot measure raises `NotApplicable`, shown as "n/a" with the reason under
the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loads
import procs
import pyspy
import tcp_throughput
import tls_relay

HOSTNAME = "bench.localhost"
TCP_HOSTNAME = "tcp.localhost"
RESULTS = Path(__file__).resolve().parent / "results"
SOAK_MAX_S = 900
SOAK_INTERVAL_S = 10
SOAK_GROWTH_MB = 5.0


class NotApplicable(Exception):
    """A scenario the target cannot measure; the message says why (printed under the table)."""


@dataclass
class Settings:
    duration: float
    bulk_bytes: int
    repeats: int
    ttfb_count: int

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(duration=3, bulk_bytes=32_000_000, repeats=1, ttfb_count=100)
        return cls(duration=10, bulk_bytes=100_000_000, repeats=3, ttfb_count=300)


@dataclass
class Target:
    """A way to reach the origin, and the processes whose RSS/CPU belong to it."""

    name: str
    endpoint: loads.Endpoint
    watched: dict[str, int]  # process name -> pid (RSS and CPU are reported for these)
    protocol: str = "http/1.1"  # "h2": h2load instead of wrk, curl over HTTP/2
    trees: frozenset[str] = frozenset()  # watched names counted with their descendants (sshd)
    tcp_port: int | None = None  # where the access_tcp scenario connects (None: n/a)
    tcp_watched: dict[str, int] = field(default_factory=dict)
    na: dict[str, str] = field(default_factory=dict)  # scenario -> why it is not measured

    def watch(self, tcp: bool = False) -> procs.Watch:
        return procs.Watch(self.tcp_watched if tcp else self.watched, trees=self.trees)


@dataclass
class Scenario:
    name: str
    label: str
    run: Callable[[Target, Settings, Path], dict[str, Any]]
    # (metric key, unit, higher_is_better) shown in the table; the JSON keeps every key.
    shown: list[tuple[str, str, bool]] = field(default_factory=list)


def _wrk(path: str, conns: int) -> Callable[[Target, Settings, Path], dict[str, Any]]:
    """wrk for HTTP/1.1 targets, h2load (same connections, one request in flight on each) for h2."""

    def run(t: Target, s: Settings, _tmp: Path) -> dict[str, Any]:
        tool = loads.h2load if t.protocol == "h2" else loads.wrk
        with t.watch() as w:
            r = tool(t.endpoint, path, conns, s.duration)
        r["rss_peak_mb"] = {n: round(kb / 1024, 1) for n, kb in w.peak_kb.items()}
        # CPU per request: all watched processes together, and each one.
        if r["requests"]:
            r["cpu_us_per_req"] = {n: round(c * 1e6 / r["requests"], 1) for n, c in w.cpu_s.items()}
            r["cpu_us_per_req_total"] = round(sum(w.cpu_s.values()) * 1e6 / r["requests"], 1)
        return r

    return run


def _download(t: Target, s: Settings, _tmp: Path) -> dict[str, Any]:
    with t.watch() as w:
        r = loads.download(t.endpoint, s.bulk_bytes, s.repeats)
    r["rss_peak_mb"] = {n: round(kb / 1024, 1) for n, kb in w.peak_kb.items()}
    return r


def _upload(t: Target, s: Settings, tmp: Path) -> dict[str, Any]:
    file = tmp / f"upload-{s.bulk_bytes}.bin"
    if not file.exists():
        loads.make_upload_file(tmp, s.bulk_bytes)
    with t.watch() as w:
        r = loads.upload(t.endpoint, file, s.repeats)
    r["rss_peak_mb"] = {n: round(kb / 1024, 1) for n, kb in w.peak_kb.items()}
    return r


def _ttfb(t: Target, s: Settings, _tmp: Path) -> dict[str, Any]:
    if t.endpoint.tls:  # a new connection includes the TLS handshake (curl's timers)
        return loads.ttfb_curl(t.endpoint, "/small", s.ttfb_count, budget=s.duration)
    return loads.ttfb_fresh(t.endpoint, "/small", s.ttfb_count, budget=s.duration)


def _access_tcp(t: Target, s: Settings, _tmp: Path) -> dict[str, Any]:
    """Bulk TCP both ways (bench/tcp_throughput.py's client against its byte source/sink)."""
    if t.tcp_port is None:
        raise NotApplicable(t.na.get("access_tcp", "no TCP path for this target"))
    port = t.tcp_port
    with t.watch(tcp=True) as w:
        up = [tcp_throughput.upload(port, s.bulk_bytes) for _ in range(s.repeats)]
        down = [tcp_throughput.download(port, s.bulk_bytes) for _ in range(s.repeats)]
    return {
        "up_mbps": round(max(up), 1), "down_mbps": round(max(down), 1),
        "up_runs": [round(x, 1) for x in up], "down_runs": [round(x, 1) for x in down],
        "bytes": s.bulk_bytes, "cpu_s": {n: round(c, 2) for n, c in w.cpu_s.items()},
        "rss_peak_mb": {n: round(kb / 1024, 1) for n, kb in w.peak_kb.items()},
    }  # fmt: skip


BULK_SCENARIOS = frozenset({"download", "upload", "access_tcp"})


def _merge_round(prev: dict[str, Any] | None, r: dict[str, Any]) -> dict[str, Any]:
    """Fold one round of a bulk scenario into the earlier ones: best MB/s, all runs kept."""
    if prev is None or "na" in prev or "error" in prev:
        return r
    if "na" in r or "error" in r:
        return prev
    out = dict(r)
    for key, value in prev.items():
        if key.endswith("_runs"):
            out[key] = value + r.get(key, [])
        elif key.endswith("mbps"):
            out[key] = max(value, r.get(key, value))
        elif key == "rss_peak_mb":
            out[key] = {n: max(mb, r.get(key, {}).get(n, 0)) for n, mb in value.items()}
    return out


SCENARIOS = [
    Scenario("small_c1", "small, 1 conn", _wrk("/small", 1),
             [("rps", "req/s", True), ("p50_ms", "p50 ms", False), ("p99_ms", "p99 ms", False)]),
    Scenario("small_c64", "small, 64 conns", _wrk("/small", 64),
             [("rps", "req/s", True), ("p50_ms", "p50 ms", False), ("p99_ms", "p99 ms", False),
              ("cpu_us_per_req_total", "CPU us/req", False)]),
    Scenario("64k_c64", "64 KB, 64 conns", _wrk("/64k", 64),
             [("rps", "req/s", True), ("mbps", "MB/s", True), ("p99_ms", "p99 ms", False)]),
    Scenario("download", "download", _download, [("mbps", "MB/s", True)]),
    Scenario("upload", "upload", _upload, [("mbps", "MB/s", True)]),
    Scenario("ttfb_fresh", "TTFB new conn", _ttfb, [("p50_ms", "p50 ms", False), ("p99_ms", "p99 ms", False),
                                                    ("tls_p50_ms", "TLS p50 ms", False)]),
    Scenario("access_tcp", "TCP, access tcp", _access_tcp, [("up_mbps", "up MB/s", True), ("down_mbps", "down MB/s", True)]),
]  # fmt: skip
TARGETS = ("direct", "burrow-h1", "burrow-h2", "ssh-R", "tls-relay")

NOTES = {
    "ttfb_fresh": "TTFB new conn: connect to first response byte, sequential; plain TCP via a "
    "Python socket, except burrow-h2: curl, including the TLS handshake (its part: `TLS p50 ms`)",
    "burrow-h2": "burrow-h2: h2load -m1 (one request in flight per connection, like wrk) over TLS "
    "with ALPN h2, latency = time to the end of each response from h2load's request log; "
    "download/upload with curl --http2; direct stays the plain origin",
    "access_tcp": "TCP, access tcp: burrow-h1 column = `burrow access tcp` -> edge -> tunnel -> "
    "connector (tcp:// ingress) -> TCP sink/source; ssh-R = a second -R forward of the same "
    "session; tls-relay = a second frontend pair of the same two haproxy; direct = the "
    "sink/source itself",
    "cpu": "CPU us/req: direct = origin; burrow = edge + connector + origin; ssh-R = sshd "
    "(listener and session processes) + ssh + origin; tls-relay = both haproxy + origin",
    "tls-relay": "tls-relay: the ceiling for burrow-h1's shape, not a peer: plain TCP into one "
    "haproxy, TLS 1.3 (verified) to a second, plain TCP to the origin; C, one thread each, TCP "
    "mode, 256 KiB buffers, no HTTP routing, Access or multiplexing (bench/tls_relay.py)",
}


@dataclass
class Stack:
    """Everything started for the run (the PIDs the targets watch)."""

    origin: procs.Proc
    origin_port: int
    burrow: procs.Burrow
    tcp_origin: procs.Proc | None = None
    tcp_origin_port: int | None = None
    tcp_connector: procs.Proc | None = None
    access: procs.Proc | None = None
    access_port: int | None = None
    ssh: procs.SshReverse | None = None
    relay: tls_relay.TlsRelay | None = None


def build_targets(st: Stack, wanted: list[str], skipped: dict[str, str]) -> list[Target]:
    """The targets in `wanted` that the stack supports; `skipped` receives the others' reasons."""
    b, origin = st.burrow, st.origin.pid
    tcp_origin = {"tcp-origin": st.tcp_origin.pid} if st.tcp_origin else {}
    no_tcp = "not started (access_tcp is not among the scenarios)"
    out = [
        Target("direct", loads.Endpoint(st.origin_port, HOSTNAME), {"origin": origin},
               tcp_port=st.tcp_origin_port, tcp_watched=tcp_origin, na={"access_tcp": no_tcp}),
    ]  # fmt: skip
    burrow_pids = {"edge": b.edge.pid, "connector": b.connector.pid, "origin": origin}
    access: dict[str, int] = {}
    if st.tcp_connector and st.access:
        access = {"edge": b.edge.pid, "tcp-connector": st.tcp_connector.pid,
                  "access": st.access.pid, **tcp_origin}  # fmt: skip
    out.append(
        Target("burrow-h1", loads.Endpoint(b.http_port, HOSTNAME), burrow_pids,
               tcp_port=st.access_port, tcp_watched=access, na={"access_tcp": no_tcp})
    )  # fmt: skip
    if b.https_port:
        out.append(
            Target("burrow-h2", loads.Endpoint(b.https_port, HOSTNAME, ca=b.ca_pem), burrow_pids,
                   protocol="h2",
                   na={"access_tcp": "`access tcp` carries TCP in a WebSocket over HTTP/1.1; "
                                     "there is no h2 path to measure"})
        )  # fmt: skip
    if st.ssh:
        ssh_pids = {"sshd": st.ssh.sshd.pid, "ssh": st.ssh.ssh.pid}
        tcp_fwd = st.ssh.forwards.get(st.tcp_origin_port) if st.tcp_origin_port else None
        out.append(
            Target("ssh-R", loads.Endpoint(st.ssh.forwards[st.origin_port], HOSTNAME),
                   {**ssh_pids, "origin": origin}, trees=frozenset({"sshd"}),
                   tcp_port=tcp_fwd, tcp_watched={**ssh_pids, **tcp_origin},
                   na={"access_tcp": no_tcp})
        )  # fmt: skip
    if st.relay:
        relay_pids = {"relay-front": st.relay.front.pid, "relay-back": st.relay.back.pid}
        tcp_fwd = st.relay.forwards.get(st.tcp_origin_port) if st.tcp_origin_port else None
        out.append(
            Target("tls-relay", loads.Endpoint(st.relay.forwards[st.origin_port], HOSTNAME),
                   {**relay_pids, "origin": origin}, tcp_port=tcp_fwd,
                   tcp_watched={**relay_pids, **tcp_origin}, na={"access_tcp": no_tcp})
        )  # fmt: skip
    for name in wanted:
        if name not in {t.name for t in out} and name not in skipped:
            skipped[name] = "not started"
    return [t for t in out if t.name in wanted]


# --- output -----------------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


def _cell(r: dict[str, Any] | None, key: str) -> tuple[float | None, str]:
    """The value of `key` in a scenario result and how to print it (n/a, error, -)."""
    if r is None:
        return None, "-"
    if "na" in r:
        return None, "n/a"
    if "error" in r:
        return None, "error"
    v = r.get(key)
    return v, _fmt(v)


def table(results: dict[str, dict[str, Any]], targets: list[str]) -> tuple[str, dict[str, Any]]:
    """Rows per (scenario, metric); a ratio column per non-direct target (x direct; for
    latencies also the added milliseconds)."""
    others = [t for t in targets if t != "direct"]
    head = f"{'scenario':16} {'metric':11} " + " ".join(f"{t:>11}" for t in targets)
    head += "".join(f"  {('ratio ' + t):>17}" for t in others)
    lines = [head, "-" * len(head)]
    ratios: dict[str, Any] = {}
    for sc in SCENARIOS:
        if not any(sc.name in results.get(t, {}) for t in targets):
            continue
        for key, unit, _higher in sc.shown:
            cells = {t: _cell(results.get(t, {}).get(sc.name), key) for t in targets}
            if all(v is None for v, _ in cells.values()) and not any(
                c in ("n/a", "error") for _, c in cells.values()
            ):
                continue  # a metric no target reports in this run (e.g. TLS without burrow-h2)
            row = f"{sc.label:16} {unit:11} " + " ".join(f"{cells[t][1]:>11}" for t in targets)
            base = cells["direct"][0] if "direct" in cells else None
            for t in others:
                v, shown = cells[t]
                cell = shown if shown in ("n/a", "error") else "-"
                if v is not None and base:
                    ratio = v / base
                    ratios.setdefault(t, {})[f"{sc.name}.{key}"] = round(ratio, 4)
                    cell = f"{ratio:.3f}x"
                    if unit.endswith("ms"):
                        cell = f"{v - base:+.3f}ms {ratio:.1f}x"
                row += f"  {cell:>17}"
            lines.append(row)
    return "\n".join(lines), ratios


def footnotes(results: dict[str, dict[str, Any]], targets: list[str]) -> list[str]:
    """Why cells are n/a or errors, and how the less obvious rows are measured."""
    out = []
    for t in targets:
        for sc, r in results.get(t, {}).items():
            if "na" in r:
                out.append(f"n/a {t} {sc}: {r['na']}")
            elif "error" in r:
                out.append(f"error {t} {sc}: {r['error'][:300]}")
    ran = {sc for t in targets for sc in results.get(t, {})}
    for key, text in NOTES.items():
        if key in ran or key in targets or (key == "cpu" and "small_c64" in ran):
            out.append(text)
    return out


def rss_table(rss: dict[str, dict[str, float]]) -> str:
    """Idle after start-up, peak under load, idle after the run; burrow's two processes first."""

    def cell(r: dict[str, float], k: str) -> str:
        return f"{r[k]:.1f}" if k in r else "-"

    lines = [f"{'RSS MB':18} {'idle':>8} {'load peak':>10} {'idle after':>11}"]
    names = ["edge", "connector"] + [n for n in rss if n not in ("edge", "connector")]
    for name in names:
        r = rss.get(name, {})
        lines.append(f"{name:18} {cell(r, 'idle'):>8} {cell(r, 'peak'):>10} {cell(r, 'after'):>11}")
        if name == "connector":
            e, c = rss.get("edge", {}), rss.get("connector", {})
            both = {k: e[k] + c[k] for k in ("idle", "peak", "after") if k in e and k in c}
            lines.append(f"{'edge+connector':18} {cell(both, 'idle'):>8} {cell(both, 'peak'):>10} "
                         f"{cell(both, 'after'):>11}")  # fmt: skip
    return "\n".join(lines)


def _git_rev() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "src"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() + ("+dirty-src" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --- profiling --------------------------------------------------------------------------------


def profile(b: procs.Burrow, s: Settings, out_prefix: Path, native: bool = False) -> dict[str, Any]:
    """py-spy both burrow processes while wrk drives 64 connections of small responses."""
    reason = pyspy.available()
    if reason:
        return {"skipped": reason}
    seconds = max(3, int(s.duration))
    files = {"edge": out_prefix.with_name(out_prefix.name + "-edge.txt"),
             "connector": out_prefix.with_name(out_prefix.name + "-connector.txt")}  # fmt: skip
    spies = {
        n: pyspy.record(getattr(b, n).pid, seconds, f, native=native) for n, f in files.items()
    }
    time.sleep(0.5)  # py-spy attaches; the load starts after and outlasts the sampling window
    loads.wrk(loads.Endpoint(b.http_port, HOSTNAME), "/small", 64, seconds + 1)
    summary: dict[str, Any] = {}
    for n, p in spies.items():
        _, err = p.communicate(timeout=60)
        if p.returncode != 0 or not files[n].exists():
            summary[n] = {"error": err.decode(errors="replace").strip()[-500:]}
            continue
        summary[n] = pyspy.summarize(files[n]) | {"raw": str(files[n])}
    return summary


# --- soak -------------------------------------------------------------------------------------


def soak(b: procs.Burrow, seconds: float) -> dict[str, Any]:
    """Steady load (wrk -c16, small responses, through burrow-h1) for `seconds` (at most
    SOAK_MAX_S), sampling edge and connector RSS every SOAK_INTERVAL_S. Growth is judged after
    a warm-up (the first minute when the soak lasts two minutes or more), because pools, caches
    and allocator arenas fill up at the start and that is not a leak."""
    seconds = min(seconds, SOAK_MAX_S)
    pids = {"edge": b.edge.pid, "connector": b.connector.pid}
    ep = loads.Endpoint(b.http_port, HOSTNAME)
    box: dict[str, Any] = {}

    def load() -> None:
        try:
            box["wrk"] = loads.wrk(ep, "/small", 16, seconds)
        except Exception as exc:  # reported, the samples still say something
            box["error"] = str(exc)

    def sample(t0: float) -> dict[str, float]:
        return {"t": round(time.monotonic() - t0, 1)} | {
            n: round(procs.rss_kb(p) / 1024, 1) for n, p in pids.items()
        }

    samples: list[dict[str, float]] = []
    thread = threading.Thread(target=load, daemon=True)
    t0 = time.monotonic()
    thread.start()
    while thread.is_alive():
        samples.append(sample(t0))
        thread.join(SOAK_INTERVAL_S)
    samples.append(sample(t0))
    warm = 60.0 if seconds >= 120 else min(float(SOAK_INTERVAL_S), seconds / 2)
    base = next((x for x in samples if x["t"] >= warm), samples[-1])
    per: dict[str, dict[str, float]] = {}
    for n in [*pids, "edge+connector"]:
        series = [x[n] if n in x else x["edge"] + x["connector"] for x in samples]
        b_val = base[n] if n in base else base["edge"] + base["connector"]
        per[n] = {
            "first": series[0], "last": series[-1], "max": max(series),
            "growth": round(series[-1] - series[0], 1),
            "growth_after_warmup": round(series[-1] - b_val, 1),
        }  # fmt: skip
    grew = per["edge+connector"]["growth_after_warmup"] > SOAK_GROWTH_MB
    return {
        "seconds": seconds, "connections": 16, "interval_s": SOAK_INTERVAL_S,
        "warmup_s": warm, "threshold_mb": SOAK_GROWTH_MB, "grew": grew,
        "rss_mb": per, "samples": samples,
        "wrk": box.get("wrk"), "error": box.get("error"),
    }  # fmt: skip


def soak_text(r: dict[str, Any]) -> str:
    w = r.get("wrk") or {}
    lines = [
        f"soak: {r['seconds']:g}s of wrk -c16 GET /small through burrow-h1, "
        f"{w.get('rps', 0):,.0f} req/s, {w.get('errors', '?')} errors"
        + (f", wrk error: {r['error']}" if r.get("error") else ""),
        f"{'RSS MB':18} {'first':>7} {'last':>7} {'max':>7} {'growth':>7} "
        f"{'after ' + format(r['warmup_s'], 'g') + 's':>10}",
    ]
    for n, v in r["rss_mb"].items():
        lines.append(f"{n:18} {v['first']:7.1f} {v['last']:7.1f} {v['max']:7.1f} "
                     f"{v['growth']:+7.1f} {v['growth_after_warmup']:+10.1f}")  # fmt: skip
    g = r["rss_mb"]["edge+connector"]["growth_after_warmup"]
    verdict = "GREW" if r["grew"] else "steady"
    lines.append(f"{verdict}: edge+connector {g:+.1f} MB after the first {r['warmup_s']:g}s "
                 f"(threshold {r['threshold_mb']:g} MB)")  # fmt: skip
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def _start_extras(
    st: Stack,
    tmp: Path,
    started: list[procs.Proc],
    tcp: bool,
    ssh: bool,
    relay: bool,
    skipped: dict[str, str],
) -> str | None:
    """The access-tcp route, the ssh -R tunnel and the TLS relay; a failure skips that part
    (with the reason) instead of the whole run. Returns why access_tcp cannot run, if so."""
    tcp_na = None
    if tcp:
        try:
            st.tcp_origin_port = tcp_throughput.start_tcp_origin(tmp, started)
            st.tcp_origin = started[-1]
            st.tcp_connector, st.access, st.access_port = tcp_throughput.start_tcp_route(
                st.burrow.exe, st.burrow.state_dir, st.burrow.http_port, st.tcp_origin_port,
                tmp, started, env=st.burrow.env, hostname=TCP_HOSTNAME,
            )  # fmt: skip
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            tcp_na = f"access tcp set-up failed: {str(exc)[:300]}"
            st.tcp_connector = st.access = st.access_port = None
    ports = [st.origin_port] + ([st.tcp_origin_port] if st.tcp_origin_port else [])
    if ssh:
        try:
            st.ssh = procs.start_ssh_reverse(tmp, ports, started)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            skipped["ssh-R"] = f"ssh -R set-up failed: {str(exc)[:300]}"
    if relay:
        try:
            st.relay = tls_relay.start_tls_relay(tmp, ports, started)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            skipped["tls-relay"] = f"tls relay set-up failed: {str(exc)[:300]}"
    return tcp_na


def main() -> int:
    ap = argparse.ArgumentParser(
        description="burrow benchmark: direct vs burrow vs ssh -R vs a TLS relay"
    )
    ap.add_argument("--quick", action="store_true", help="3 s loads, 32 MB bulk, no repeats")
    ap.add_argument("--duration", type=float, help="seconds per load run (overrides the mode)")
    ap.add_argument("--bulk-mb", type=int, help="bulk transfer size in MB (10^6 bytes)")
    ap.add_argument(
        "--only", help="comma-separated scenario names to run ('none': only --soak/--profile)"
    )
    ap.add_argument("--targets", help=f"comma-separated targets (default: {','.join(TARGETS)})")
    ap.add_argument(
        "--soak", type=float, metavar="SECONDS",
        help=f"also run steady load this long (at most {SOAK_MAX_S}) and watch RSS growth",
    )  # fmt: skip
    ap.add_argument(
        "--profile", action="store_true", help="py-spy edge+connector under 64-conn small load"
    )
    ap.add_argument("--native", action="store_true", help="with --profile: include C frames")
    ap.add_argument("--src", type=Path, help="run burrow from this src/ dir (compare versions)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the temp dir with process logs")
    args = ap.parse_args()

    for tool in ("wrk", "curl"):
        if shutil.which(tool) is None:
            print(f"error: `{tool}` is required (Debian package {tool})", file=sys.stderr)
            return 2
    s = Settings.for_mode(args.quick)
    if args.duration:
        s.duration = args.duration
    if args.bulk_mb:
        s.bulk_bytes = args.bulk_mb * 1_000_000
    only = args.only.split(",") if args.only else [sc.name for sc in SCENARIOS]
    wanted = args.targets.split(",") if args.targets else list(TARGETS)
    bad = [n for n in only if n not in {sc.name for sc in SCENARIOS} | {"none"}]
    bad += [t for t in wanted if t not in TARGETS]
    if bad:
        print(f"error: unknown scenario/target {bad}; scenarios: "
              f"{', '.join(sc.name for sc in SCENARIOS)}; targets: {', '.join(TARGETS)}",
              file=sys.stderr)  # fmt: skip
        return 2
    if "direct" not in wanted:
        wanted.insert(0, "direct")  # the ratios are to direct
    chosen = [sc for sc in SCENARIOS if sc.name in only]
    soak_s = min(args.soak or 0.0, SOAK_MAX_S)
    if args.soak and args.soak > SOAK_MAX_S:
        print(f"note: --soak capped at {SOAK_MAX_S} s")
    skipped: dict[str, str] = {}
    if "burrow-h2" in wanted and shutil.which("h2load") is None:
        skipped["burrow-h2"] = "`h2load` is not installed (Debian nghttp2-client)"
    if "ssh-R" in wanted and (why := procs.ssh_missing()):
        skipped["ssh-R"] = why
    if "tls-relay" in wanted and (why := tls_relay.tools_missing()):
        skipped["tls-relay"] = why
    src = args.src
    if src is None and importlib.util.find_spec("burrow") is None:
        # The console script needs the package; run the tree this bench/ belongs to.
        src = Path(__file__).resolve().parent.parent / "src"
        print(f"note: `burrow` is not importable by {sys.executable}; using PYTHONPATH={src}")

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="burrow-bench-"))
    started: list[procs.Proc] = []
    try:
        origin, origin_port, origin_desc = procs.start_origin(tmp)
        started.append(origin)
        h2 = "burrow-h2" in wanted and "burrow-h2" not in skipped
        b = procs.start_burrow(tmp, origin_port, HOSTNAME, started, src=src, https=h2)
        st = Stack(origin, origin_port, b)
        version = str(args.src) if args.src else _git_rev()
        print(f"origin: {origin_desc} on 127.0.0.1:{origin_port} | burrow {version} | "
              f"{os.cpu_count()} CPUs | {'quick' if args.quick else 'full'}: {s.duration:g}s loads, "
              f"{s.bulk_bytes / 1e6:g} MB bulk x{s.repeats}", flush=True)  # fmt: skip

        load_before = os.getloadavg()
        if load_before[0] > 0.5:
            print(f"note: load average {load_before[0]:.2f} before the run; other work on this "
                  "machine competes for the CPUs and skews the figures")  # fmt: skip
        time.sleep(1.0)  # let start-up allocations settle before the idle reading
        # Idle RSS of edge and connector before anything else (the extra TCP tunnel) touches them.
        watched: dict[str, tuple[int, bool]] = {
            "edge": (b.edge.pid, False), "connector": (b.connector.pid, False),
            "origin": (origin.pid, False),
        }  # fmt: skip

        def rss_mb(name: str) -> float:
            pid, tree = watched[name]
            return sum(procs.rss_kb(p) for p in (procs.descendants(pid) if tree else [pid])) / 1024

        rss: dict[str, dict[str, float]] = {n: {"idle": rss_mb(n)} for n in watched}

        tcp_na = _start_extras(
            st, tmp, started,
            tcp=any(sc.name == "access_tcp" for sc in chosen),
            ssh="ssh-R" in wanted and "ssh-R" not in skipped,
            relay="tls-relay" in wanted and "tls-relay" not in skipped, skipped=skipped,
        )  # fmt: skip
        for name, proc in (("tcp-connector", st.tcp_connector), ("access", st.access),
                           ("tcp-origin", st.tcp_origin)):  # fmt: skip
            if proc is not None:
                watched[name] = (proc.pid, False)
        if st.ssh:
            watched["sshd"] = (st.ssh.sshd.pid, True)
            watched["ssh"] = (st.ssh.ssh.pid, False)
        if st.relay:
            watched["relay-front"] = (st.relay.front.pid, False)
            watched["relay-back"] = (st.relay.back.pid, False)
        time.sleep(0.5)
        for n in watched:
            rss.setdefault(n, {"idle": rss_mb(n)})
        targets = build_targets(st, wanted, skipped)
        if tcp_na:
            for t in targets:
                t.tcp_port = None
                t.na["access_tcp"] = tcp_na
        for name, why in skipped.items():
            print(f"note: target {name} skipped: {why}")

        results: dict[str, dict[str, Any]] = {t.name: {} for t in targets}
        for sc in chosen:
            # Bulk repeats alternate between targets (round-robin, best of the rounds), so a
            # burst of other load on the machine does not land on one target's repeats only.
            rounds = s.repeats if sc.name in BULK_SCENARIOS else 1
            one = dataclasses.replace(s, repeats=1) if rounds > 1 else s
            for t in targets:
                results[t.name].pop(sc.name, None)
            for t in [t for _ in range(rounds) for t in targets]:
                print(f"  {sc.name:12} {t.name:10} ...", end=" ", flush=True)
                try:
                    r = sc.run(t, one, tmp)
                except NotApplicable as exc:
                    r = {"na": str(exc)}
                except Exception as exc:
                    r = {"error": str(exc)}
                r = _merge_round(results[t.name].get(sc.name), r)
                results[t.name][sc.name] = r
                shown = ", ".join(f"{k}={r[k]}" for k, _, _ in sc.shown if k in r)
                print(shown or ("n/a" if "na" in r else r.get("error")), flush=True)
                for n, mb in (r.get("rss_peak_mb") or {}).items():
                    if n in rss:
                        rss[n]["peak"] = max(rss[n].get("peak", 0), mb)
        time.sleep(1.0)
        for n in watched:
            rss[n]["after"] = rss_mb(n)

        soaked = None
        if soak_s:
            print(f"  soak {soak_s:g}s through burrow-h1 (wrk -c16, RSS every "
                  f"{SOAK_INTERVAL_S}s) ...", flush=True)  # fmt: skip
            soaked = soak(b, soak_s)

        prof = None
        if args.profile:
            print("  profiling edge and connector (py-spy) under small_c64 ...", flush=True)
            RESULTS.mkdir(exist_ok=True)
            prof = profile(b, s, RESULTS / stamp, native=args.native)

        for p in started:
            if not p.alive():
                print(f"warning: {p.name} exited during the run:\n{p.log_tail()}", file=sys.stderr)

        names = [t.name for t in targets]
        text, ratios = table(results, names)
        notes = footnotes(results, names)
        notes += [f"target {n} skipped: {why}" for n, why in skipped.items()]
        print()
        if chosen:
            print(text)
            print()
            print("\n".join(f"* {n}" for n in notes))
            print()
        print(rss_table(rss))
        if soaked:
            print()
            print(soak_text(soaked))
        if prof:
            for n, summ in prof.items():
                print()
                print(pyspy.format_summary(n, summ) if "samples" in summ else f"{n}: {summ}")

        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"{stamp}.json"
        out.write_text(json.dumps({
            "meta": {
                "timestamp": stamp, "mode": "quick" if args.quick else "full",
                "duration_s": s.duration, "bulk_bytes": s.bulk_bytes, "repeats": s.repeats,
                "origin": origin_desc, "burrow": version, "cpus": os.cpu_count(),
                "python": platform.python_version(), "platform": platform.platform(),
                "hostname_header": HOSTNAME, "targets": names,
                "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            },
            "results": results, "ratios": ratios, "notes": notes, "skipped_targets": skipped,
            "rss_mb": {n: {k: round(v, 1) for k, v in r.items()} for n, r in rss.items()},
            "soak": soaked, "profile": prof,
        }, indent=2) + "\n")  # fmt: skip
        print(f"\nresults: {out}")
        return 0
    finally:
        for p in reversed(started):
            p.stop()
        if args.keep_logs:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
