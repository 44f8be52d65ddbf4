"""Processes under test: the origin, `burrow edge serve`, `burrow tunnel run`; /proc readings.

Every process is started by this module, remembered by PID and stopped by that PID
(SIGTERM, then SIGKILL after a grace period). Nothing here looks for processes by name.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
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
    exe: str
    state_dir: Path
    env: dict[str, str]  # extra environment of the burrow processes (PYTHONPATH with --src)
    https_port: int | None = None  # the public HTTPS listener (h2 by ALPN), when started

    @property
    def ca_pem(self) -> Path:
        """The edge CA; it signs the dev certificates the HTTPS listener issues for routed names."""
        return self.state_dir / "ca.pem"


def start_burrow(
    workdir: Path,
    origin_port: int,
    hostname: str,
    started: list[Proc],
    loglevel: str = "warn",
    src: Path | None = None,
    https: bool = False,
) -> Burrow:
    """`burrow edge serve` + `burrow edge tunnel create --json` + `burrow tunnel run`, via the CLI.

    `src`: run burrow from this source tree (a `src/` directory, e.g. `git archive` of another
    commit) instead of the installed one, to compare two versions with the same harness.
    `https`: also open the public HTTPS listener (ALPN h2/http1.1; certificates for routed names
    are issued by the edge's own CA on first use).
    Each process is appended to `started` as soon as it exists, so the caller stops it even
    when a later step fails.
    """
    exe = burrow_bin()
    env = {"PYTHONPATH": str(src)} if src else {}
    state = workdir / "edge-state"
    tunnel_port, http_port, admin_port = free_port(), free_port(), free_port()
    https_port = free_port() if https else None
    edge = start(
        "edge",
        [
            exe, "edge", "serve",
            "--state-dir", str(state),
            "--tunnel-listen", f"127.0.0.1:{tunnel_port}",
            "--http-listen", f"127.0.0.1:{http_port}",
            "--admin-listen", f"127.0.0.1:{admin_port}",
            *(["--https-listen", f"127.0.0.1:{https_port}"] if https_port else []),
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
    b = Burrow(edge, connector, http_port, tunnel_port, hostname, info["id"], exe, state, env)
    if https_port:
        wait_until(
            lambda: https_alpn(https_port, hostname, b.ca_pem) == "h2",
            15, edge, "the HTTPS listener to offer h2",
        )  # fmt: skip
        b.https_port = https_port
    return b


def https_alpn(port: int, hostname: str, ca: Path) -> str | None:
    """The ALPN protocol a verified TLS handshake (SNI `hostname`, trusting `ca`) settles on."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
            with ctx.wrap_socket(raw, server_hostname=hostname) as tls:
                return tls.selected_alpn_protocol()
    except (OSError, ssl.SSLError):
        return None


# --- ssh -R: the classic reverse tunnel as a peer baseline -----------------------------------

SSHD = "/usr/sbin/sshd"


def ssh_missing() -> str | None:
    """Why the ssh-R target cannot run here, or None."""
    for tool in (SSHD, "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian openssh-server / openssh-client)"
    return None


@dataclass
class SshReverse:
    sshd: Proc  # the listener; the per-connection session processes are its descendants
    ssh: Proc
    forwards: dict[int, int]  # local port the origin is reached on -> forwarded (listening) port


def start_ssh_reverse(workdir: Path, targets: list[int], started: list[Proc]) -> SshReverse:
    """A private sshd on a free 127.0.0.1 port (own host key and authorized_keys in `workdir`,
    run as the current user, no PAM, StrictModes off) and `ssh -N -R` forwarding a free port
    on the server side to each of `targets` (127.0.0.1 ports). Both processes are appended to
    `started`. Returns once every forwarded port accepts connections."""
    d = workdir / "ssh"
    d.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        # sshd running as root insists on its privilege-separation directory (as the tests do).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    for name in ("host_key", "user_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    (d / "authorized_keys").write_bytes((d / "user_key.pub").read_bytes())
    os.chmod(d / "authorized_keys", 0o600)
    port = free_port()
    user = pwd.getpwuid(os.geteuid()).pw_name
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"StrictModes no\nPidFile none\nPermitRootLogin yes\nAllowUsers {user}\n"
        "AllowTcpForwarding yes\nGatewayPorts no\nLogLevel INFO\n"
    )
    sshd = start("sshd", [SSHD, "-D", "-e", "-f", str(d / "sshd_config")], workdir)
    started.append(sshd)
    wait_until(lambda: "Server listening on" in sshd.log_tail(), 15, sshd, "sshd to listen")
    forwards = {t: free_port() for t in targets}
    argv = [
        "ssh", "-N", "-F", "none", "-p", str(port),
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "ExitOnForwardFailure=yes",
        "-o", f"IdentityFile={d / 'user_key'}", "-o", "IdentitiesOnly=yes",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip
    for t, f in forwards.items():
        argv += ["-R", f"127.0.0.1:{f}:127.0.0.1:{t}"]
    ssh = start("ssh", [*argv, f"{user}@127.0.0.1"], workdir)
    started.append(ssh)
    for f in forwards.values():
        wait_until(lambda f=f: accepts(f), 30, ssh, f"ssh -R to listen on {f}")
    return SshReverse(sshd, ssh, forwards)


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# --- /proc readings ----------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (walks the parent PIDs in /proc/*/stat)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [pid], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


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
    """Samples RSS of some processes every `interval` while active; records CPU before/after.

    Names in `trees` stand for the process and its descendants at entry (sshd does the work of
    a connection in forked session processes): their RSS and CPU are summed over that tree."""

    pids: dict[str, int]
    interval: float = 0.1
    trees: frozenset[str] = frozenset()
    peak_kb: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _cpu0: dict[str, float] = field(default_factory=dict)
    _members: dict[str, list[int]] = field(default_factory=dict)

    def _rss(self, n: str) -> int:
        return sum(rss_kb(p) for p in self._members[n])

    def _cpu(self, n: str) -> float:
        return sum(cpu_seconds(p) for p in self._members[n])

    def __enter__(self) -> Watch:
        self._members = {
            n: descendants(p) if n in self.trees else [p] for n, p in self.pids.items()
        }
        self._cpu0 = {n: self._cpu(n) for n in self.pids}
        self.peak_kb = {n: self._rss(n) for n in self.pids}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for n in self.pids:
                self.peak_kb[n] = max(self.peak_kb.get(n, 0), self._rss(n))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for n in self.pids:
            self.peak_kb[n] = max(self.peak_kb.get(n, 0), self._rss(n))
            self.cpu_s[n] = self._cpu(n) - self._cpu0[n]
