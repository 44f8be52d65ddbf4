"""A C TLS relay of burrow's shape, as the bench's reference for what the hardware allows.

burrow-h1 carries a request as plain HTTP/1.1 into one process, TLS 1.3 to a second process,
and plain TCP to the origin. The `tls-relay` target does the same with two HAProxy processes in
TCP mode: `front` takes the plain connection and relays it over verified TLS to `back`, which
relays it to the origin. Each runs one thread, as each burrow process runs one event loop.

HAProxy does no HTTP routing, Access, WAF or stream multiplexing, and it is compiled C on the
same OpenSSL. Its bulk figures therefore mark the ceiling for a two-hop TLS tunnel on the
machine at hand: the kernel's loopback copies, AES-GCM and the cores' scheduling, which burrow
pays too. Its buffers are 256 KiB (`tune.bufsize`). With HAProxy's default 16 KiB it moved
1 GB 12-24 % slower than burrow here, and with 1 MiB no faster than with 256 KiB.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from procs import Proc, accepts, free_port, start, wait_until

HAPROXY = "haproxy"
SNI = "relay.localhost"
BUFSIZE = 256 * 1024


def tools_missing() -> str | None:
    """Why the tls-relay target cannot run here, or None."""
    if shutil.which(HAPROXY) is None:
        return "`haproxy` is not installed (Debian haproxy)"
    if shutil.which("openssl") is None:
        return "`openssl` is not installed (Debian openssl): it makes the relay's certificate"
    return None


@dataclass
class TlsRelay:
    front: Proc  # plain in, TLS out
    back: Proc  # TLS in, plain out to the origin
    forwards: dict[int, int]  # origin port -> the front's listening port for it


def _self_signed(d: Path) -> tuple[Path, Path]:
    """A P-256 certificate for SNI, signed by itself (`openssl req`); the front trusts exactly
    this one. Returns (the certificate, certificate and key in one file for HAProxy's `crt`)."""
    cert, key = d / "relay-ca.pem", d / "relay-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={SNI}",
         "-addext", f"subjectAltName=DNS:{SNI}"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    both = d / "relay.pem"
    both.touch(mode=0o600)
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    key.unlink()
    return cert, both


def _config(frontends: list[tuple[int, str]], bind_opts: str = "") -> str:
    """One HAProxy process: a TCP-mode frontend per (listen port, `server` line)."""
    lines = [
        "global",
        "  nbthread 1",
        "  maxconn 4096",
        f"  tune.bufsize {BUFSIZE}",
        "defaults",
        "  mode tcp",
        "  timeout connect 5s",
        "  timeout client 120s",
        "  timeout server 120s",
    ]
    for i, (port, server) in enumerate(frontends):
        lines += [
            f"frontend f{i}",
            f"  bind 127.0.0.1:{port}{bind_opts}",
            f"  default_backend b{i}",
            f"backend b{i}",
            f"  server s{i} {server}",
        ]
    return "\n".join(lines) + "\n"


def start_tls_relay(workdir: Path, targets: list[int], started: list[Proc]) -> TlsRelay:
    """Two HAProxy processes relaying a free port per origin port in `targets` over TLS (the
    back's certificate verified by the front, SNI and host name checked). Both are appended to
    `started`; returns once every front port accepts connections."""
    d = workdir / "tls-relay"
    d.mkdir(mode=0o700, exist_ok=True)  # holds the relay's private key
    ca, both = _self_signed(d)
    back_ports = {t: free_port() for t in targets}
    forwards = {t: free_port() for t in targets}
    back_cfg = d / "back.cfg"
    back_cfg.write_text(
        _config([(back_ports[t], f"127.0.0.1:{t}") for t in targets], f" ssl crt {both}")
    )
    front_cfg = d / "front.cfg"
    front_cfg.write_text(
        _config(
            [
                (
                    forwards[t],
                    f"127.0.0.1:{back_ports[t]} ssl verify required ca-file {ca} "
                    f"sni str({SNI}) verifyhost {SNI}",
                )
                for t in targets
            ]
        )
    )
    back = start("relay-back", [HAPROXY, "-db", "-f", str(back_cfg)], workdir)
    started.append(back)
    front = start("relay-front", [HAPROXY, "-db", "-f", str(front_cfg)], workdir)
    started.append(front)
    for proc, ports in ((back, back_ports), (front, forwards)):
        for port in ports.values():
            wait_until(lambda p=port: accepts(p), 15, proc, f"haproxy to listen on {port}")
    return TlsRelay(front, back, forwards)
