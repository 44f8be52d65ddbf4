"""burrow's benchmark suite: direct to an origin vs through burrow, in one run, on loopback.

    python bench/run.py            # full run (10 s per load, 100 MB bulk, best of 3)
    python bench/run.py --quick    # 3 s per load, 32 MB bulk, 1 repeat
    python bench/run.py --profile  # also py-spy the edge and connector under 64-conn load

It starts a fast origin (bench/origin.py), `burrow edge serve`, `burrow edge tunnel create`
and `burrow tunnel run` as separate processes through the CLI, measures each scenario against
each target, prints a table with ratios to direct and writes bench/results/<timestamp>.json.
See bench/README.md for how to read the figures.

Structure for later additions: a *target* is a way to reach the origin (`direct`,
`burrow-h1`; planned: `burrow-h2` via h2load, `ssh-R`); a *scenario* is a measurement
(`small_c1`, `small_c64`, `64k_c64`, `download`, `upload`, `ttfb_fresh`; planned:
`access_tcp`). Add a target in `build_targets`, a scenario in `SCENARIOS`; PLANNED lists what
is not measured yet and is reported as such.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loads
import procs
import pyspy

HOSTNAME = "bench.localhost"
RESULTS = Path(__file__).resolve().parent / "results"


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
    protocol: str = "http/1.1"  # "h2" targets would use h2load instead of wrk (planned)


@dataclass
class Scenario:
    name: str
    label: str
    run: Callable[[Target, Settings, Path], dict[str, Any]]
    # (metric key, unit, higher_is_better) shown in the table; the JSON keeps every key.
    shown: list[tuple[str, str, bool]] = field(default_factory=list)


def _wrk(path: str, conns: int) -> Callable[[Target, Settings, Path], dict[str, Any]]:
    def run(t: Target, s: Settings, _tmp: Path) -> dict[str, Any]:
        with procs.Watch(t.watched) as w:
            r = loads.wrk(t.endpoint, path, conns, s.duration)
        r["rss_peak_mb"] = {n: round(kb / 1024, 1) for n, kb in w.peak_kb.items()}
        # CPU per request: all watched processes together, and each one.
        if r["requests"]:
            r["cpu_us_per_req"] = {n: round(c * 1e6 / r["requests"], 1) for n, c in w.cpu_s.items()}
            r["cpu_us_per_req_total"] = round(sum(w.cpu_s.values()) * 1e6 / r["requests"], 1)
        return r

    return run


def _download(t: Target, s: Settings, _tmp: Path) -> dict[str, Any]:
    with procs.Watch(t.watched) as w:
        r = loads.download(t.endpoint, s.bulk_bytes, s.repeats)
    r["rss_peak_mb"] = {n: round(kb / 1024, 1) for n, kb in w.peak_kb.items()}
    return r


def _upload(t: Target, s: Settings, tmp: Path) -> dict[str, Any]:
    file = tmp / f"upload-{s.bulk_bytes}.bin"
    if not file.exists():
        loads.make_upload_file(tmp, s.bulk_bytes)
    with procs.Watch(t.watched) as w:
        r = loads.upload(t.endpoint, file, s.repeats)
    r["rss_peak_mb"] = {n: round(kb / 1024, 1) for n, kb in w.peak_kb.items()}
    return r


def _ttfb(t: Target, s: Settings, _tmp: Path) -> dict[str, Any]:
    return loads.ttfb_fresh(t.endpoint, "/small", s.ttfb_count, budget=s.duration)


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
    Scenario("ttfb_fresh", "TTFB new conn", _ttfb, [("p50_ms", "p50 ms", False), ("p99_ms", "p99 ms", False)]),
]  # fmt: skip

# Not measured yet; listed in the output and the JSON so the gap is visible.
PLANNED = {
    "target burrow-h2": "HTTP/2 eyeballs via h2load (needs the edge's h2 public listener)",
    "target ssh-R": "an `ssh -R` reverse tunnel on loopback as the classic baseline (needs sshd set-up)",
    "scenario access_tcp": "TCP MB/s through `burrow access tcp` (needs the access client)",
}


def build_targets(origin_port: int, b: procs.Burrow, origin_pid: int) -> list[Target]:
    return [
        Target("direct", loads.Endpoint(origin_port, HOSTNAME), {"origin": origin_pid}),
        Target(
            "burrow-h1",
            loads.Endpoint(b.http_port, HOSTNAME),
            {"edge": b.edge.pid, "connector": b.connector.pid, "origin": origin_pid},
        ),
    ]


# --- output -----------------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


def table(results: dict[str, dict[str, Any]], targets: list[str]) -> tuple[str, dict[str, Any]]:
    """Rows per (scenario, metric); a ratio column per non-direct target (x direct; for
    latencies also the added milliseconds)."""
    others = [t for t in targets if t != "direct"]
    head = f"{'scenario':18} {'metric':11} " + " ".join(f"{t:>12}" for t in targets)
    head += "".join(f"  {('ratio ' + t):>18}" for t in others)
    lines = [head, "-" * len(head)]
    ratios: dict[str, Any] = {}
    for sc in SCENARIOS:
        for key, unit, _higher in sc.shown:
            vals = {t: (results.get(t, {}).get(sc.name) or {}).get(key) for t in targets}
            row = f"{sc.label:18} {unit:11} " + " ".join(f"{_fmt(vals[t]):>12}" for t in targets)
            base = vals.get("direct")
            for t in others:
                v = vals[t]
                cell = "-"
                if v is not None and base:
                    ratio = v / base
                    ratios.setdefault(t, {})[f"{sc.name}.{key}"] = round(ratio, 4)
                    cell = f"{ratio:.3f}x"
                    if unit.endswith("ms"):
                        cell = f"{v - base:+.3f}ms {ratio:.1f}x"
                row += f"  {cell:>18}"
            lines.append(row)
    return "\n".join(lines), ratios


def rss_table(rss: dict[str, dict[str, float]]) -> str:
    lines = [f"{'RSS MB':18} {'idle':>8} {'load peak':>10} {'idle after':>11}"]
    for name in ("edge", "connector", "origin"):
        r = rss.get(name, {})
        lines.append(
            f"{name:18} {r.get('idle', 0):8.1f} {r.get('peak', 0):10.1f} {r.get('after', 0):11.1f}"
        )
    both = {
        k: rss.get("edge", {}).get(k, 0) + rss.get("connector", {}).get(k, 0)
        for k in ("idle", "peak", "after")
    }
    lines.append(
        f"{'edge+connector':18} {both['idle']:8.1f} {both['peak']:10.1f} {both['after']:11.1f}"
    )
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


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description="burrow benchmark: direct vs through burrow")
    ap.add_argument("--quick", action="store_true", help="3 s loads, 32 MB bulk, no repeats")
    ap.add_argument("--duration", type=float, help="seconds per load run (overrides the mode)")
    ap.add_argument("--bulk-mb", type=int, help="bulk transfer size in MB (10^6 bytes)")
    ap.add_argument("--only", help="comma-separated scenario names to run")
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
    chosen = [sc for sc in SCENARIOS if not args.only or sc.name in args.only.split(",")]

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="burrow-bench-"))
    started: list[procs.Proc] = []
    try:
        origin, origin_port, origin_desc = procs.start_origin(tmp)
        started.append(origin)
        b = procs.start_burrow(tmp, origin_port, HOSTNAME, started, src=args.src)
        targets = build_targets(origin_port, b, origin.pid)
        version = str(args.src) if args.src else _git_rev()
        print(f"origin: {origin_desc} on 127.0.0.1:{origin_port} | burrow {version} | "
              f"{os.cpu_count()} CPUs | {'quick' if args.quick else 'full'}: {s.duration:g}s loads, "
              f"{s.bulk_bytes / 1e6:g} MB bulk x{s.repeats}", flush=True)  # fmt: skip

        load_before = os.getloadavg()
        if load_before[0] > 0.5:
            print(f"note: load average {load_before[0]:.2f} before the run; other work on this "
                  "machine competes for the CPUs and skews the figures")  # fmt: skip
        time.sleep(1.0)  # let start-up allocations settle before the idle reading
        pids = {"edge": b.edge.pid, "connector": b.connector.pid, "origin": origin.pid}
        rss: dict[str, dict[str, float]] = {
            n: {"idle": procs.rss_kb(p) / 1024} for n, p in pids.items()
        }

        results: dict[str, dict[str, Any]] = {t.name: {} for t in targets}
        for sc in chosen:
            for t in targets:
                print(f"  {sc.name:12} {t.name:10} ...", end=" ", flush=True)
                try:
                    r = sc.run(t, s, tmp)
                except Exception as exc:
                    r = {"error": str(exc)}
                results[t.name][sc.name] = r
                print(
                    ", ".join(f"{k}={r[k]}" for k, _, _ in sc.shown if k in r) or r.get("error"),
                    flush=True,
                )
                for n, mb in (r.get("rss_peak_mb") or {}).items():
                    rss[n]["peak"] = max(rss[n].get("peak", 0), mb)
        time.sleep(1.0)
        for n, p in pids.items():
            rss[n]["after"] = procs.rss_kb(p) / 1024

        prof = None
        if args.profile:
            print("  profiling edge and connector (py-spy) under small_c64 ...", flush=True)
            RESULTS.mkdir(exist_ok=True)
            prof = profile(b, s, RESULTS / stamp, native=args.native)

        for p in started:
            if not p.alive():
                print(f"warning: {p.name} exited during the run:\n{p.log_tail()}", file=sys.stderr)

        text, ratios = table(results, [t.name for t in targets])
        print()
        print(text)
        print()
        print(rss_table(rss))
        print("\nnot measured yet: " + "; ".join(f"{k} ({v})" for k, v in PLANNED.items()))
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
                "hostname_header": HOSTNAME,
                "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            },
            "results": results, "ratios": ratios,
            "rss_mb": {n: {k: round(v, 1) for k, v in r.items()} for n, r in rss.items()},
            "profile": prof, "planned": PLANNED,
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
