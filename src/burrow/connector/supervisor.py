"""The connector process: N HA connections to the edge, each reconnecting on its own with
exponential backoff and jitter; graceful shutdown; the shared ingress dispatcher.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import platform
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from burrow import __version__
from burrow.connector.credentials import TunnelCredentials
from burrow.connector.proxy import Dispatcher
from burrow.connector.session import ConnectorSession
from burrow.errors import ConfigError, RegistrationError
from burrow.ingress.rules import HelloWorldService, Ingress
from burrow.net.backoff import Backoff
from burrow.net.listen import parse_hostport
from burrow.origin.hello import start_hello_world
from burrow.wire.registration import ClientInfo, RegistrationRequest

log = logging.getLogger("burrow.connector")

FEATURES = ("serialized_headers", "allow_remote_config")
TUNNEL_SERVER_NAME = "h2.cftunnel.com"
CONNECT_TIMEOUT = 15.0


def _arch() -> str:
    machine = platform.machine().lower()
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    return f"{platform.system().lower()}_{machine}"


def edge_ssl_context(cafile: Path | None, ca_pem: str | None) -> ssl.SSLContext:
    """Verify the edge like cloudflared: only `--cacert` when given, else a CA carried in a
    burrow token, else the system trust store (which honours SSL_CERT_FILE)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        if cafile is not None:
            ctx.load_verify_locations(cafile=str(cafile))
        elif ca_pem:
            ctx.load_verify_locations(cadata=ca_pem)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the edge CA certificate: {exc}") from None
    return ctx


@dataclass
class ConnectorConfig:
    credentials: TunnelCredentials
    ingress: Ingress
    edges: list[str] = field(default_factory=list)
    cafile: Path | None = None
    ha_connections: int = 4
    grace_period: float = 30.0
    server_name: str = TUNNEL_SERVER_NAME
    local_config: dict[str, object] | None = None


class Connector:
    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config
        self.connector_id = uuid.uuid4()
        creds = config.credentials
        edges = config.edges or list(creds.edge)
        if not edges:
            raise ConfigError(
                "no edge address: pass --edge HOST:PORT (or TUNNEL_EDGE), or use a token that "
                "carries one"
            )
        self.edges = [parse_hostport(e, 7844) for e in edges]
        self.ssl = edge_ssl_context(config.cafile, creds.ca_pem)
        self.dispatcher = Dispatcher(config.ingress, connector_id=str(self.connector_id).encode())
        self.sessions: dict[int, ConnectorSession] = {}
        self.ready = asyncio.Event()
        self._stopping = False
        self._fatal: RegistrationError | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._hello: web.AppRunner | None = None
        self._done = asyncio.Event()

    @property
    def ready_connections(self) -> int:
        return sum(1 for s in self.sessions.values() if s.registered.done() and not s.closed)

    async def start(self) -> None:
        if any(isinstance(r.service, HelloWorldService) for r in self.config.ingress.rules):
            self._hello, port = await start_hello_world()
            self.dispatcher.hello_address = ("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        for index in range(self.config.ha_connections):
            self._tasks.append(loop.create_task(self._connection_loop(index)))

    async def run(self) -> None:
        """Run until `stop()` or a permanent registration error (re-raised)."""
        await self.start()
        await self._done.wait()
        if self._fatal is not None:
            raise self._fatal

    async def stop(self, grace: float | None = None) -> None:
        """Unregister every connection, serve in-flight requests up to `grace`, then close."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.config.grace_period if grace is None else grace
        sessions = [s for s in self.sessions.values() if not s.closed]
        await asyncio.gather(*(s.unregister() for s in sessions), return_exceptions=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline and any(_busy(s) for s in sessions):
            await asyncio.sleep(0.05)
        for s in sessions:
            s.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.dispatcher.close()
        if self._hello is not None:
            await self._hello.cleanup()
        self._done.set()

    def _request(self, index: int, attempts: int, local_ip: bytes) -> RegistrationRequest:
        creds = self.config.credentials
        return RegistrationRequest(
            account_tag=creds.account_tag,
            tunnel_secret=creds.tunnel_secret,
            tunnel_id=creds.tunnel_id,
            conn_index=index,
            client=ClientInfo(
                client_id=self.connector_id.bytes,
                features=FEATURES,
                version=f"burrow-{__version__}",
                arch=_arch(),
            ),
            origin_local_ip=local_ip,
            num_previous_attempts=min(attempts, 255),
        )

    async def _connection_loop(self, index: int) -> None:
        backoff = Backoff()
        attempts = 0
        loop = asyncio.get_running_loop()
        while not self._stopping:
            host, port = self.edges[index % len(self.edges)]
            try:
                session = await self._connect(index, host, port, attempts)
            except RegistrationError as exc:
                if not exc.retryable:
                    log.error(
                        "the edge refused tunnel %s permanently: %s",
                        self.config.credentials.tunnel_id,
                        exc.cause,
                    )
                    self._fatal = exc
                    self._done.set()
                    return
                delay = max(backoff.next_delay(), exc.retry_after_s)
                log.warning(
                    "connection %d: registration failed (%s), retrying in %.1fs", index, exc, delay
                )
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                delay = backoff.next_delay()
                log.warning(
                    "connection %d: cannot reach edge %s:%d (%s), retrying in %.1fs",
                    index,
                    host,
                    port,
                    exc,
                    delay,
                )
            else:
                backoff.reset()
                attempts = 0
                await session.closed_event.wait()
                self.sessions.pop(index, None)
                if self._stopping:
                    return
                if self.ready_connections == 0:
                    self.ready.clear()
                delay = backoff.next_delay()
                log.warning("connection %d to the edge lost, reconnecting in %.1fs", index, delay)
            attempts += 1
            await asyncio.sleep(delay)
        del loop

    async def _connect(self, index: int, host: str, port: int, attempts: int) -> ConnectorSession:
        loop = asyncio.get_running_loop()
        local_config = None
        if index == 0 and self.config.local_config is not None:
            local_config = json.dumps(self.config.local_config).encode()

        holder: list[ConnectorSession] = []

        def factory() -> ConnectorSession:
            session = ConnectorSession(
                self._request(index, attempts, b""), self.dispatcher, local_config=local_config
            )
            holder.append(session)
            return session

        transport, session = await asyncio.wait_for(
            loop.create_connection(factory, host, port, ssl=self.ssl, server_hostname=self.config.server_name),
            CONNECT_TIMEOUT,
        )
        sockname = transport.get_extra_info("sockname")
        if sockname:
            session.request = self._request(index, attempts, _ip_bytes(sockname[0]))
        try:
            details = await asyncio.wait_for(session.registered, CONNECT_TIMEOUT)
        except BaseException:
            session.close()
            raise
        self.sessions[index] = session
        self.ready.set()
        log.info(
            "registered tunnel connection: index=%d connection=%s location=%s edge=%s:%d",
            index,
            details.uuid,
            details.location_name,
            host,
            port,
        )
        return session


def _busy(session: ConnectorSession) -> bool:
    return not session.closed and len(session.streams) > 1


def _ip_bytes(ip: str) -> bytes:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return b""
    if isinstance(addr, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{addr}").packed
    return addr.packed
