"""Processes under test: the origin, `burrow edge serve`, `burrow tunnel run`; /proc readings.

Every process is started by this module, remembered by PID and stopped by that PID
(SIGTERM, then SIGKILL after a grace period). Nothing here looks for processes by name.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def burrow_bin() -> str:
    """The `burrow` console script of this interpreter (a Python script, so its PID is Python's)."""
    beside = Path(sys.executable).parent / "burrow"
    if beside.exists():
        return str(beside)
    found = shutil.which("burrow")
    if not found:
        raise SystemExit("the `burrow` command is not installed: pip install -e '.[fast]'")
    return found


@dataclass
class Proc:
    """A started process with its log file; `stop()` ends it by PID."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        if not self.alive():
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def start(name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> Proc:
    log_path = workdir / f"{name}.log"
    log = open(log_path, "wb")
    full_env = dict(os.environ)
    full_env.update(env or {})
    popen = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env
    )
    return Proc(name, popen, log_path)


def wait_until(pred, timeout: float, proc: Proc | None = None, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.log_tail()}")
        if pred():
            return
        time.sleep(0.05)
    tail = proc.log_tail() if proc else ""
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


def http_get_status(port: int, path: str, host: str | None = None) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path, headers={"Host": host} if host else {})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return resp.status
    except OSError:
        return None


def start_origin(workdir: Path) -> tuple[Proc, int, str]:
    """The Python origin (bench/origin.py); returns (proc, port, description)."""
    port = free_port()
    proc = start(
        "origin", [sys.executable, str(BENCH_DIR / "origin.py"), "--port", str(port)], workdir
    )
    wait_until(lambda: "READY" in proc.log_tail(), 15, proc, "the origin to listen")
    loop = proc.log_tail().split("READY", 1)[1].split()[1]
    return proc, port, f"python asyncio.Protocol+httptools ({loop})"


@dataclass
class Burrow:
    edge: Proc
    connector: Proc
    http_port: int
    tunnel_port: int
    hostname: str
    tunnel_id: str


def start_burrow(
    workdir: Path,
    origin_port: int,
    hostname: str,
    started: list[Proc],
    loglevel: str = "warn",
    src: Path | None = None,
) -> Burrow:
    """`burrow edge serve` + `burrow edge tunnel create --json` + `burrow tunnel run`, via the CLI.

    `src`: run burrow from this source tree (a `src/` directory, e.g. `git archive` of another
    commit) instead of the installed one, to compare two versions with the same harness.
    Each process is appended to `started` as soon as it exists, so the caller stops it even
    when a later step fails.
    """
    exe = burrow_bin()
    env = {"PYTHONPATH": str(src)} if src else {}
    state = workdir / "edge-state"
    tunnel_port, http_port, admin_port = free_port(), free_port(), free_port()
    edge = start(
        "edge",
        [
            exe, "edge", "serve",
            "--state-dir", str(state),
            "--tunnel-listen", f"127.0.0.1:{tunnel_port}",
            "--http-listen", f"127.0.0.1:{http_port}",
            "--admin-listen", f"127.0.0.1:{admin_port}",
            "--loglevel", loglevel,
        ],
        workdir,
        env=env,
    )  # fmt: skip
    started.append(edge)
    wait_until(
        lambda: (state / "edge.json").exists() and http_get_status(http_port, "/", "x.invalid") is not None,
        30, edge, "the edge to listen",
    )  # fmt: skip
    made = subprocess.run(
        [exe, "edge", "tunnel", "create", "bench", "--hostname", hostname, "--state-dir", str(state), "--json"],
        capture_output=True, timeout=60, check=False, env={**os.environ, **env},
    )  # fmt: skip
    if made.returncode != 0:
        raise RuntimeError(f"tunnel create failed: {made.stderr.decode(errors='replace')}")
    info = json.loads(made.stdout)
    connector = start(
        "connector",
        [
            exe, "tunnel", "run",
            "--url", f"http://127.0.0.1:{origin_port}",
            "--ha-connections", "1",
            "--loglevel", loglevel,
        ],
        workdir,
        env={**env, "TUNNEL_TOKEN": info["token"]},  # not on the command line, where `ps` shows it
    )  # fmt: skip
    started.append(connector)
    wait_until(
        lambda: http_get_status(http_port, "/small", hostname) == 200,
        30, connector, "a request through the tunnel to succeed",
    )  # fmt: skip
    return Burrow(edge, connector, http_port, tunnel_port, hostname, info["id"])


# --- /proc readings ----------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Watch:
    """Samples RSS of some processes every `interval` while active; records CPU before/after."""

    pids: dict[str, int]
    interval: float = 0.1
    peak_kb: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _cpu0: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> Watch:
        self._cpu0 = {n: cpu_seconds(p) for n, p in self.pids.items()}
        self.peak_kb = {n: rss_kb(p) for n, p in self.pids.items()}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for n, p in self.pids.items():
                self.peak_kb[n] = max(self.peak_kb.get(n, 0), rss_kb(p))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for n, p in self.pids.items():
            self.peak_kb[n] = max(self.peak_kb.get(n, 0), rss_kb(p))
            self.cpu_s[n] = cpu_seconds(p) - self._cpu0[n]
