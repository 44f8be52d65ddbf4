"""TCP over WebSocket through a real edge and connector on loopback: `burrow access tcp|ssh`
against a TCP echo server, real OpenSSH (ssh + scp through ProxyCommand) and real PostgreSQL
(psql through `burrow access tcp`); bastion mode, raw TCP streams, close propagation, errors."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from burrow.access.tcp_client import AccessError, TCPForwarder, make_target, open_websocket
from burrow.ingress.rules import Ingress
from burrow.net.h2conn import H2Stream, Headers
from burrow.testing.harness import CountingPool, TunnelStack, read_stalling
from burrow.wire.tunnel_h2 import TCP_SRC_HEADER, parse_response

pytestmark = pytest.mark.timeout(180)


def burrow_argv() -> list[str]:
    beside = Path(sys.executable).parent / "burrow"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "burrow.cli.main"]


# --- a TCP echo server that records its connections ------------------------------------------


class EchoServer:
    def __init__(self) -> None:
        self.connections: list[Echo] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.new_connection = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: Echo(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for c in self.connections:
            if c.transport is not None:
                c.transport.abort()


class Echo(asyncio.Protocol):
    def __init__(self, owner: EchoServer) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.Event()
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.owner.connections.append(self)
        self.owner.new_connection.set()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if data == b"BYE\n":
            assert self.transport is not None
            self.transport.write(b"bye\n")
            self.transport.close()
            return
        assert self.transport is not None
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


@asynccontextmanager
async def tcp_stack(tmp_path: Path, services: dict[str, str]) -> AsyncIterator[TunnelStack]:
    rules = [{"hostname": h, "service": s} for h, s in services.items()]
    rules.append({"service": "http_status:404"})
    async with TunnelStack.start(
        tmp_path / "stack", Ingress.parse(rules), hostnames=tuple(services)
    ) as stack:
        yield stack


@pytest.fixture
async def stack(tmp_path: Path, echo: EchoServer) -> AsyncIterator[TunnelStack]:
    async with tcp_stack(
        tmp_path,
        {
            "tcp.localhost": f"tcp://127.0.0.1:{echo.port}",
            "down.localhost": f"tcp://127.0.0.1:{closed_port()}",
            "bastion.localhost": "bastion",
        },
    ) as s:
        yield s


@asynccontextmanager
async def forwarder(
    stack: TunnelStack, host: str = "tcp.localhost", **kw: object
) -> AsyncIterator[int]:
    target = make_target(f"http://{host}:{stack.http_port}", **kw)  # type: ignore[arg-type]
    fw = TCPForwarder(target)
    _, port = await fw.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await fw.stop()


# --- echo -----------------------------------------------------------------------------------------


async def _echo_bytes(port: int, total: int, chunk: int = 1 << 20) -> str:
    """Send `total` pseudo-random bytes and read the echo concurrently; sha256 of what came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    block = hashlib.sha256(str(total).encode()).digest() * (chunk // 32)

    async def send() -> None:
        left = total
        while left > 0:
            n = min(left, len(block))
            writer.write(block[:n])
            await writer.drain()
            left -= n

    sender = asyncio.create_task(send())
    h = hashlib.sha256()
    got = 0
    while got < total:
        data = await reader.read(1 << 20)
        assert data, f"echo closed after {got} of {total} bytes"
        h.update(data)
        got += len(data)
    await sender
    writer.close()
    return h.hexdigest()


def _expected(total: int, chunk: int = 1 << 20) -> str:
    block = hashlib.sha256(str(total).encode()).digest() * (chunk // 32)
    h = hashlib.sha256()
    left = total
    while left > 0:
        n = min(left, len(block))
        h.update(block[:n])
        left -= n
    return h.hexdigest()


async def test_100mb_echo_is_byte_exact(stack: TunnelStack) -> None:
    total = 100 * 1000 * 1000 + 7  # not a multiple of any frame or buffer size
    async with forwarder(stack) as port:
        assert await asyncio.wait_for(_echo_bytes(port, total), 120) == _expected(total)


async def test_reads_lent_as_views_carry_random_bytes_intact(
    stack: TunnelStack, every_read_lent: CountingPool
) -> None:
    # Every read of the access client's local socket and of the connector's target socket is
    # lent from the receive-buffer pool as a view, and the client stalls as it reads the
    # echo, so views wait in the tunnel. A buffer reused while lent, or a frame header sent
    # apart from its payload out of order, would corrupt the echo.
    payload = os.urandom(16 << 20)
    async with forwarder(stack) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=64 << 10)

        async def send() -> None:
            for i in range(0, len(payload), 1 << 20):
                writer.write(payload[i : i + (1 << 20)])
                await writer.drain()

        sender = asyncio.create_task(send())
        got = await read_stalling(reader)
        while len(got) < len(payload):
            data = await asyncio.wait_for(reader.read(1 << 20), 30)
            assert data, f"echo closed after {len(got)} of {len(payload)} bytes"
            got += data
        await sender
        writer.close()
    size = len(payload)
    assert len(got) == size
    assert got == payload
    # the access client's local reads and the connector's reads of the echo both went through
    # the pool, every byte of each
    assert every_read_lent.lent >= 2 * size


async def test_50_sessions_at_once(stack: TunnelStack, echo: EchoServer) -> None:
    async with forwarder(stack) as port:
        sizes = [64 * 1024 + i * 997 for i in range(50)]
        results = await asyncio.wait_for(
            asyncio.gather(*(_echo_bytes(port, n, 16 * 1024) for n in sizes)), 60
        )
    assert results == [_expected(n, 16 * 1024) for n in sizes]
    assert len(echo.connections) >= 50  # one origin connection per session


async def test_client_close_closes_the_origin_connection(
    stack: TunnelStack, echo: EchoServer
) -> None:
    async with forwarder(stack) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"ping\n"
        origin = echo.connections[-1]
        assert not origin.closed.is_set()
        writer.close()
        await asyncio.wait_for(origin.closed.wait(), 5)


async def test_origin_close_closes_the_client(stack: TunnelStack) -> None:
    async with forwarder(stack) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"BYE\n")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"bye\n"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # EOF, promptly
        writer.close()


async def test_unreachable_target_is_a_clear_error(stack: TunnelStack) -> None:
    target = make_target(f"http://down.localhost:{stack.http_port}")
    with pytest.raises(AccessError) as err:
        await asyncio.wait_for(open_websocket(target, None), 10)  # type: ignore[arg-type]
    message = str(err.value)
    assert "502" in message and "unable to reach tcp://127.0.0.1:" in message
    assert "Connection refused" in message
    # Through the forwarder the local connection is closed at once, not left hanging.
    async with forwarder(stack, "down.localhost") as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()


async def test_cli_reports_unreachable_target_and_exits(stack: TunnelStack) -> None:
    proc = await asyncio.create_subprocess_exec(
        *burrow_argv(), "access", "tcp", "--hostname", f"http://down.localhost:{stack.http_port}",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert out == b""
    assert b"502" in err and b"unable to reach" in err


async def test_bastion_uses_the_jump_destination(stack: TunnelStack, echo: EchoServer) -> None:
    from burrow.access.tcp_client import access_headers

    headers = access_headers(destination=f"tcp://127.0.0.1:{echo.port}/ignored/path")
    async with forwarder(stack, "bastion.localhost", headers=headers) as port:
        assert await _echo_bytes(port, 100_000) == _expected(100_000)
    target = make_target(f"http://bastion.localhost:{stack.http_port}")
    with pytest.raises(AccessError, match="Did not receive final destination"):
        await open_websocket(target, None)  # type: ignore[arg-type]


async def test_unknown_hostname_and_plain_http_to_a_stream_service(stack: TunnelStack) -> None:
    target = make_target(f"http://nowhere.localhost:{stack.http_port}")
    with pytest.raises(AccessError, match=r"answered [45]"):
        await open_websocket(target, None)  # type: ignore[arg-type]


# --- raw TCP streams (cf-cloudflared-proxy-src), driven from the edge's side -------------------


class _Collector:
    def __init__(self) -> None:
        self.status = 0
        self.data = bytearray()
        self.headers_seen = asyncio.Event()
        self.ended = asyncio.Event()
        self.changed = asyncio.Event()

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        self.status = parse_response(headers)[0]
        self.headers_seen.set()
        if end_stream:
            self.ended.set()

    def on_data(self, stream: H2Stream, data: bytes, end_stream: bool) -> None:
        self.data += data
        self.changed.set()
        stream.consumed(len(data))
        if end_stream:
            self.ended.set()

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None:
        self.ended.set()

    def on_end(self, stream: H2Stream) -> None:
        self.ended.set()

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        self.ended.set()

    def on_writable(self, stream: H2Stream) -> None:
        pass


async def test_raw_tcp_stream(stack: TunnelStack, echo: EchoServer) -> None:
    conn = stack.edge.registry.pick(stack.made.tunnel.id)
    assert conn is not None

    def open_raw(authority: str) -> tuple[H2Stream, _Collector]:
        handler = _Collector()
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", authority.encode()),
            (b":path", b"/"),
            (TCP_SRC_HEADER, b"127.0.0.1:50000"),
        ]
        return conn.open_stream(headers, handler), handler  # type: ignore[attr-defined]

    stream, got = open_raw(f"127.0.0.1:{echo.port}")
    await asyncio.wait_for(got.headers_seen.wait(), 10)
    assert got.status == 200
    stream.write(b"raw bytes, no frames")
    while len(got.data) < 20 and not got.ended.is_set():
        got.changed.clear()
        await asyncio.wait_for(got.changed.wait(), 10)
    assert bytes(got.data) == b"raw bytes, no frames"
    stream.end()
    await asyncio.wait_for(got.ended.wait(), 10)

    _, bad = open_raw("not-an-ip:22")
    await asyncio.wait_for(bad.ended.wait(), 10)
    assert bad.status == 502


# --- real OpenSSH through ProxyCommand -------------------------------------------------------

SSHD = "/usr/sbin/sshd"


@asynccontextmanager
async def sshd(tmp: Path) -> AsyncIterator[int]:
    for tool in (SSHD, "ssh", "ssh-keygen", "scp"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (openssh-server / openssh-client)")
    if os.geteuid() == 0:
        # sshd running as root insists on its privilege-separation directory.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    for name in ("host_key", "user_key"):
        rc, _, err = await _run(
            "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)
        )
        assert rc == 0, err
    (tmp / "authorized_keys").write_bytes((tmp / "user_key.pub").read_bytes())
    os.chmod(tmp / "authorized_keys", 0o600)
    port = closed_port()
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.geteuid()).pw_name
    (tmp / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host_key'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"StrictModes no\nPidFile none\nPermitRootLogin yes\nAllowUsers {user}\n"
        "Subsystem sftp internal-sftp\nLogLevel VERBOSE\n"
    )
    proc = await asyncio.create_subprocess_exec(
        SSHD, "-D", "-e", "-f", str(tmp / "sshd_config"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        lines = []
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), 15)
            lines.append(line)
            if not line:
                pytest.fail(f"sshd did not start: {b''.join(lines).decode(errors='replace')}")
            if b"Server listening on" in line:
                break
        drain = asyncio.create_task(proc.stderr.read())  # keep its pipe from filling up
        yield port
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def _ssh_options(tmp: Path, http_port: int) -> list[str]:
    proxy = shlex.join(
        [*burrow_argv(), "access", "ssh", "--hostname", f"http://ssh.localhost:{http_port}"]
    )
    return [
        "-F", "none",
        "-o", f"UserKnownHostsFile={tmp / 'known_hosts'}",
        "-o", "StrictHostKeyChecking=no",
        "-o", f"IdentityFile={tmp / 'user_key'}",
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", "ConnectTimeout=30",
        "-o", f"ProxyCommand={proxy}",
    ]  # fmt: skip


async def _run(*argv: str, limit: float = 60) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_openssh_command_and_scp_through_proxycommand(tmp_path: Path) -> None:
    keys = tmp_path / "ssh"
    keys.mkdir()
    async with sshd(keys) as ssh_port:
        async with tcp_stack(tmp_path, {"ssh.localhost": f"ssh://127.0.0.1:{ssh_port}"}) as st:
            user = __import__("pwd").getpwuid(os.geteuid()).pw_name
            opts = _ssh_options(keys, st.http_port)
            rc, out, err = await _run("ssh", *opts, f"{user}@ssh.localhost", "echo via-$((6*7))")
            assert rc == 0, err.decode(errors="replace")
            assert out == b"via-42\n"

            src = tmp_path / "payload.bin"
            src.write_bytes(
                b"".join(
                    hashlib.sha512(i.to_bytes(4, "big")).digest() * (1 << 14) for i in range(20)
                )
            )
            dst = tmp_path / "copied.bin"
            rc, _, err = await _run(
                "scp", *opts, str(src), f"{user}@ssh.localhost:{dst}", limit=120
            )
            assert rc == 0, err.decode(errors="replace")
            assert dst.stat().st_size == 20 * (1 << 20)
            assert (
                hashlib.sha256(dst.read_bytes()).digest()
                == hashlib.sha256(src.read_bytes()).digest()
            )


# --- real PostgreSQL through `burrow access tcp` ---------------------------------------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@asynccontextmanager
async def postgres() -> AsyncIterator[int]:
    if not (PG_BIN / "postgres").exists() or shutil.which("psql") is None:
        pytest.skip("PostgreSQL 15 (postgres, initdb) or psql is not installed")
    base = Path(tempfile.mkdtemp(prefix="burrow-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = base / "data"
    port = closed_port()
    proc = None
    try:
        rc, _, err = await _run(
            *as_user, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
            "--no-sync", limit=120,
        )  # fmt: skip
        assert rc == 0, err.decode(errors="replace")
        proc = await asyncio.create_subprocess_exec(
            *as_user, str(PG_BIN / "postgres"), "-D", str(data), "-k", str(base),
            "-h", "127.0.0.1", "-p", str(port), "-c", "fsync=off",
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            if not line:
                pytest.fail("postgres exited during start-up")
            if b"ready to accept connections" in line:
                break
        drain = asyncio.create_task(proc.stderr.read())
        yield port
        drain.cancel()
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(base, ignore_errors=True)


async def test_psql_through_access_tcp(tmp_path: Path) -> None:
    async with postgres() as pg_port:
        async with tcp_stack(tmp_path, {"pg.localhost": f"tcp://127.0.0.1:{pg_port}"}) as st:
            local = closed_port()
            client = await asyncio.create_subprocess_exec(
                *burrow_argv(), "access", "tcp",
                "--hostname", f"http://pg.localhost:{st.http_port}",
                "--url", f"127.0.0.1:{local}",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                assert client.stderr is not None
                line = await asyncio.wait_for(client.stderr.readline(), 30)
                assert b"listening on" in line, line
                rc, out, err = await _run(
                    "psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(local),
                    "-U", "postgres", "-d", "postgres",
                    "-c", "select 6*7, count(*) from generate_series(1, 100000)",
                )  # fmt: skip
                assert rc == 0, err.decode(errors="replace")
                assert out.strip() == b"42|100000"
            finally:
                client.terminate()
                await asyncio.wait_for(client.wait(), 15)


# --- wss:// to an HTTPS edge ------------------------------------------------------------------


async def test_wss_with_cacert_and_untrusted_edge(tmp_path: Path, echo: EchoServer) -> None:
    from burrow.testing.harness import provision, start_connector, start_edge

    edge = await start_edge(tmp_path / "edge", https_listen=["127.0.0.1:0"])
    connector = None
    try:
        made = await provision(edge, hostnames=("tls.localhost",))
        ingress = Ingress.parse(
            [{"hostname": "tls.localhost", "service": f"tcp://127.0.0.1:{echo.port}"},
             {"service": "http_status:404"}]
        )  # fmt: skip
        connector = await start_connector(made, ingress)
        assert edge.pki is not None
        port = edge.https_addresses[0][1]
        target = make_target(f"tls.localhost:{port}", cacert=str(edge.pki.ca_cert_path))
        assert target.secure and target.url == f"wss://tls.localhost:{port}/"
        fw = TCPForwarder(target)
        _, local = await fw.start("127.0.0.1", 0)
        try:
            assert await _echo_bytes(local, 1_000_000) == _expected(1_000_000)
        finally:
            await fw.stop()
        untrusted = make_target(f"tls.localhost:{port}")  # the system CAs only
        with pytest.raises(AccessError, match="not trusted"):
            await open_websocket(untrusted, None)  # type: ignore[arg-type]
    finally:
        if connector is not None:
            await connector.stop(grace=1.0)
        await edge.stop(grace=1.0)
