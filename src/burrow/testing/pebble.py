"""Run Debian's `pebble` (a test ACME CA) and `pebble-challtestsrv` (as its DNS server, answering
127.0.0.1 for every name) on loopback for tests.

pebble's HTTPS listener gets a certificate from a throw-away CA (`trustme`); pebble validates
http-01 challenges against `http_port` on 127.0.0.1 (the edge's plain-HTTP listener) and
tls-alpn-01 against `tls_port` (the edge's HTTPS listener).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pebble_missing() -> str | None:
    """Why pebble tests cannot run here, or None."""
    for binary in ("pebble", "pebble-challtestsrv"):
        if shutil.which(binary) is None:
            return f"needs {binary} (Debian package pebble)"
    try:
        import acme  # noqa: F401
        import trustme  # noqa: F401
    except ImportError as exc:
        return f"needs the Python package {exc.name}"
    return None


@dataclass
class Pebble:
    directory: str
    ca_bundle: Path  # trust for pebble's own HTTPS (the ACME API)
    management: str
    challtestsrv: str = ""  # pebble-challtestsrv's management API (http://...): TXT records

    def dns_hook(self, path: Path, calls: Path) -> Path:
        """Write an `--acme-dns-hook` program that publishes dns-01 TXT records in
        challtestsrv (pebble's DNS server) and appends every call to `calls`."""
        path.write_text(
            f"#!{sys.executable}\n"
            "import json, sys, urllib.request\n"
            "verb, domain, value = sys.argv[1:4]\n"
            f"with open({str(calls)!r}, 'a') as fh:\n"
            "    fh.write(f'{verb} {domain} {value}\\n')\n"
            "body = {'host': f'_acme-challenge.{domain}.'}\n"
            "if verb == 'present':\n"
            "    body['value'] = value\n"
            "url = "
            f"{self.challtestsrv!r}"
            " + ('/set-txt' if verb == 'present' else '/clear-txt')\n"
            "req = urllib.request.Request(url, data=json.dumps(body).encode(), method='POST')\n"
            "urllib.request.urlopen(req, timeout=10).read()\n"
        )
        path.chmod(0o755)
        return path

    def root_pem(self) -> bytes:
        """The root that pebble signs issued certificates under (regenerated per run)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(f"{self.management}/roots/0", context=ctx, timeout=10) as r:
            return bytes(r.read())


async def _wait_for_line(stream: asyncio.StreamReader, needle: bytes, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while True:
            line = await stream.readline()
            if not line:
                raise RuntimeError("process exited before it was ready")
            if needle in line:
                return


@asynccontextmanager
async def run_pebble(
    workdir: Path, http_port: int, tls_port: int | None = None
) -> AsyncIterator[Pebble]:
    import trustme

    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - test set-up, tiny
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key, bundle = workdir / "pebble.pem", workdir / "pebble.key", workdir / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(bundle))
    api, mgmt, dns, chall_mgmt = free_port(), free_port(), free_port(), free_port()
    config = workdir / "pebble-config.json"
    config.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"127.0.0.1:{api}",
                    "managementListenAddress": f"127.0.0.1:{mgmt}",
                    "certificate": str(cert),
                    "privateKey": str(key),
                    "httpPort": http_port,
                    "tlsPort": tls_port or free_port(),
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            }
        )
    )
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    dns_proc = await asyncio.create_subprocess_exec(
        "pebble-challtestsrv",
        "-dns01", f"127.0.0.1:{dns}",
        "-http01", "", "-https01", "", "-tlsalpn01", "",
        "-management", f"127.0.0.1:{chall_mgmt}",
        "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    pebble_proc = None
    try:
        assert dns_proc.stdout is not None
        await _wait_for_line(dns_proc.stdout, b"Starting management server", 10)
        pebble_proc = await asyncio.create_subprocess_exec(
            "pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{dns}",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert pebble_proc.stdout is not None
        await _wait_for_line(pebble_proc.stdout, b"Listening on", 15)
        # Keep draining pebble's log so it never blocks on a full pipe.
        drain = asyncio.get_running_loop().create_task(_drain(pebble_proc.stdout))
        drain_dns = asyncio.get_running_loop().create_task(_drain(dns_proc.stdout))
        try:
            yield Pebble(
                f"https://127.0.0.1:{api}/dir",
                bundle,
                f"https://127.0.0.1:{mgmt}",
                f"http://127.0.0.1:{chall_mgmt}",
            )
        finally:
            drain.cancel()
            drain_dns.cancel()
    finally:
        for proc in (pebble_proc, dns_proc):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 5)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass
