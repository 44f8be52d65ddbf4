"""The e2e world: burrow's CLI as subprocesses, curl, readiness polling (used by conftest.py).

`burrow edge serve`, `burrow edge tunnel ...`, `burrow tunnel run` and `burrow demo` run as
subprocesses of the installed console script on free loopback ports, each edge with its own
--state-dir under tmp_path. Its store is the SQLite file in that directory, or, when the suite
runs on PostgreSQL (`BURROW_TEST_STORE=postgres` with BURROW_TEST_PG_URL), a fresh database per
state directory, passed as `--store-url` to every command that opens the edge's state (child
environments never inherit BURROW_* variables, so nothing else points them there). The
origin is `burrow.testing.origins` in its own process (origin_server.py); requests are made
with curl. Readiness is polled (the edge's admin /healthz reports `connections`), never slept
for. Every process started here is killed by its PID at teardown.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from burrow.testing.pgdb import create_database, edges_use_postgres

HERE = Path(__file__).resolve().parent
CURL = shutil.which("curl")


def burrow_argv() -> list[str]:
    """The installed `burrow` console script (what a user runs), else `python -m`."""
    script = Path(sys.executable).with_name("burrow")
    if script.exists():
        return [str(script)]
    found = shutil.which("burrow")
    if found:
        return [found]
    return [sys.executable, "-m", "burrow.cli.main"]


def free_port() -> int:
    """A port that is free now, below the kernel's ephemeral range: a port the kernel handed
    out for `bind(0)` may be given again to some outgoing connection (curl, wrk, another
    test) before the process under test binds it."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def wait_until(
    check: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or check}: {last!r}"
            )
        time.sleep(interval)


def proc_status(pid: int, key: str) -> int:
    """A field of /proc/PID/status in bytes (VmHWM = peak RSS, VmRSS = current RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            value, unit = line.split()[1:3]
            assert unit == "kB"
            return int(value) * 1024
    raise KeyError(key)


class Proc:
    """One subprocess with stdout/stderr in files (no pipe can fill up and stall it)."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        n = 0
        while (log_dir / f"{name}.{n}.err").exists():
            n += 1
        self.out_path = log_dir / f"{name}.{n}.out"
        self.err_path = log_dir / f"{name}.{n}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,  # a Ctrl-C at the terminal does not reach it
            )
        self.pid = self.popen.pid

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop_and_wait(self, sig: int, timeout: float) -> tuple[int, float]:
        """Send `sig`, wait for the exit; (exit status, seconds it took)."""
        t0 = time.monotonic()
        self.signal(sig)
        code = self.wait(timeout)
        return code, time.monotonic() - t0

    def stop_cleanly(self, timeout: float = 30) -> None:
        """SIGTERM, then assert a clean exit (status 0), with the log if it was not: a process
        asked to dump its modules writes the dump on this path."""
        code, _ = self.stop_and_wait(signal.SIGTERM, timeout)
        assert code == 0, self.describe()

    def kill(self) -> None:
        if self.running():
            os.kill(self.pid, signal.SIGKILL)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable
            pass

    def vm(self, key: str) -> int:
        return proc_status(self.pid, key)

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid}) stderr:\n{self.stderr()[-4000:]}"


@dataclass
class CurlResult:
    status: int
    body: bytes
    stderr: str
    exit_code: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Edge:
    proc: Proc
    state_dir: Path
    tunnel_port: int
    http_port: int
    admin_port: int
    store_url: str | None = None  # None: the SQLite file in state_dir

    def state_args(self) -> list[str]:
        """The flags that point a burrow command at this edge's state (for `burrow edge ...`
        commands run alongside it)."""
        return ["--state-dir", str(self.state_dir), *store_args(self.store_url)]

    @property
    def tunnel_addr(self) -> str:
        return f"127.0.0.1:{self.tunnel_port}"

    @property
    def ca(self) -> Path:
        return self.state_dir / "ca.pem"

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def healthz(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}/healthz", timeout=2
            ) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except OSError:
            return None

    def connections(self) -> int:
        h = self.healthz()
        return int(h["connections"]) if h else -1

    def wait_connections(
        self, n: int, connector: Proc | None = None, timeout: float = 15.0
    ) -> None:
        """Poll /healthz until `n` tunnel connections are registered (failing fast, with its
        log, when the edge or the given connector process has died)."""

        def check() -> bool:
            assert self.proc.running(), self.proc.describe()
            if connector is not None:
                assert connector.running(), connector.describe()
            return self.connections() >= n

        wait_until(check, timeout, what=f"{n} tunnel connection(s) at the edge")


def store_args(store_url: str | None) -> list[str]:
    return ["--store-url", store_url] if store_url else []


def dumped_modules(path: Path) -> set[str]:
    """The `sys.modules` names a process wrote to `path` on SIGTERM (BURROW_DEBUG_MODULES)."""
    return set(path.read_text().split())


def dumped_packages(path: Path) -> set[str]:
    """The top-level packages in such a dump (`sqlalchemy` for `sqlalchemy.orm`)."""
    return {name.split(".")[0] for name in dumped_modules(path)}


@dataclass
class E2E:
    """The per-test world: processes, state directories, the origin, curl."""

    tmp: Path
    origin_port: int
    procs: list[Proc] = field(default_factory=list)
    store_urls: dict[Path, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.logs = self.tmp / "logs"
        self.logs.mkdir(exist_ok=True)
        self.home = self.tmp / "home"
        self.home.mkdir(exist_ok=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.origin_port}"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of every burrow process: no TUNNEL_*/BURROW_* leaking in from the
        outside, and a HOME of its own so no ~/.cloudflared/config.yml is picked up."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TUNNEL_", "BURROW_", "PYTEST_"))
        }
        env["HOME"] = str(self.home)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, [*burrow_argv(), *args], self.logs, self.env(env))
        self.procs.append(proc)
        return proc

    def burrow(
        self, *args: str, timeout: float = 30, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a short burrow command to completion."""
        return subprocess.run(
            [*burrow_argv(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(env),
            stdin=subprocess.DEVNULL,
        )

    # -- edge ---------------------------------------------------------------------------------

    def store_url(self, state_dir: Path) -> str | None:
        """The store of the edge whose state is in `state_dir`: None (its SQLite file) or, on
        the PostgreSQL pass, a database of its own, created on first use and the same for every
        later command and restart on that state directory."""
        if not edges_use_postgres():
            return None
        key = state_dir.resolve()
        if key not in self.store_urls:
            self.store_urls[key] = asyncio.run(create_database("burrow_e2e"))
        return self.store_urls[key]

    def start_edge(
        self,
        state_dir: Path | None = None,
        ports: tuple[int, int, int] | None = None,
        loglevel: str = "info",
        wait: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> Edge:
        sd = state_dir or (self.tmp / "edge-state")
        tunnel_port, http_port, admin_port = ports or (free_port(), free_port(), free_port())
        store_url = self.store_url(sd)
        proc = self.spawn(
            "edge",
            [
                "edge",
                "serve",
                "--state-dir",
                str(sd),
                "--tunnel-listen",
                f"127.0.0.1:{tunnel_port}",
                "--http-listen",
                f"127.0.0.1:{http_port}",
                "--admin-listen",
                f"127.0.0.1:{admin_port}",
                "--loglevel",
                loglevel,
                *store_args(store_url),
                *extra_args,
            ],
        )
        edge = Edge(proc, sd, tunnel_port, http_port, admin_port, store_url)
        if wait:

            def up() -> bool:
                assert proc.running(), proc.describe()
                return edge.healthz() is not None and (sd / "edge.json").exists()

            wait_until(up, 20, what="the edge's /healthz")
        return edge

    def start_edge_dumping_modules(
        self,
        state_dir: Path,
        dump: Path,
        ports: tuple[int, int, int] | None = None,
        https_port: int | None = None,
    ) -> Edge:
        """`burrow edge serve` writing its `sys.modules` to `dump` on SIGTERM, waited for on its
        public listener and edge.json, not on /healthz as `start_edge` does: that would load
        the admin API, which is not what a test of the modules it loads is about."""
        tunnel_port, http_port, admin_port = ports or (free_port(), free_port(), free_port())
        store_url = self.store_url(state_dir)
        args = ["edge", "serve", "--state-dir", str(state_dir), *store_args(store_url)]
        args += ["--tunnel-listen", f"127.0.0.1:{tunnel_port}", "--http-listen"]
        args += [f"127.0.0.1:{http_port}", "--admin-listen", f"127.0.0.1:{admin_port}"]
        if https_port is not None:
            args += ["--https-listen", f"127.0.0.1:{https_port}"]
        proc = self.spawn("edge", args, {"BURROW_DEBUG_MODULES": str(dump)})
        edge = Edge(proc, state_dir, tunnel_port, http_port, admin_port, store_url)

        def listening() -> bool:
            assert proc.running(), proc.describe()
            if not (state_dir / "edge.json").exists():
                return False
            try:
                urllib.request.urlopen(edge.url("/"), timeout=2)
            except urllib.error.HTTPError:
                return True  # any HTTP answer: the public listener is up
            except OSError:
                return False
            return True

        wait_until(listening, 30, what="the edge's public listener")
        return edge

    def create_tunnel(self, edge: Edge, name: str, *hostnames: str) -> dict[str, Any]:
        args = ["edge", "tunnel", "create", name, *edge.state_args(), "--json"]
        for h in hostnames:
            args += ["--hostname", h]
        r = self.burrow(*args)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    # -- connector ----------------------------------------------------------------------------

    def run_connector(self, *args: str, env: dict[str, str] | None = None) -> Proc:
        return self.spawn("connector", ["tunnel", "run", "--grace-period", "1", *args], env)

    # -- curl ---------------------------------------------------------------------------------

    def curl(
        self,
        url: str,
        *args: str,
        host: str | None = None,
        output: Path | None = None,
        timeout: float = 20,
    ) -> CurlResult:
        assert CURL is not None
        out = output or (self.tmp / f"curl-body-{time.monotonic_ns()}")
        argv = [CURL, "-sS", "--max-time", str(timeout), "-o", str(out), "-w", "%{http_code}"]
        if host:
            argv += ["-H", f"Host: {host}"]
        r = subprocess.run(
            [*argv, *args, url], capture_output=True, text=True, timeout=timeout + 10
        )
        body = b""
        if output is None and out.exists():
            body = out.read_bytes()
            out.unlink()
        status = int(r.stdout.strip() or 0) if r.stdout.strip().isdigit() else 0
        return CurlResult(status, body, r.stderr, r.returncode)

    def wait_status(
        self, url: str, status: int, *args: str, host: str | None = None, timeout: float = 10
    ) -> tuple[CurlResult, float]:
        """Poll until a request answers `status`; (the response, seconds it took)."""
        t0 = time.monotonic()

        def check() -> CurlResult | None:
            r = self.curl(url, *args, host=host, timeout=5)
            return r if r.status == status else None

        r = wait_until(check, timeout, interval=0.1, what=f"{status} from {host or ''} {url}")
        return r, time.monotonic() - t0

    def cleanup(self) -> None:
        for p in reversed(self.procs):
            p.kill()
