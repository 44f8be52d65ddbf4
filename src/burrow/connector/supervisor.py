"""The connector process: N HA connections to the edge, each reconnecting on its own with
exponential backoff and jitter; graceful shutdown; the shared ingress dispatcher.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import platform
import socket
import ssl
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from burrow import __version__
from burrow.connector.credentials import TunnelCredentials
from burrow.connector.orchestrator import Orchestrator
from burrow.connector.proxy import Dispatcher
from burrow.connector.session import ConnectorSession
from burrow.errors import BurrowError, ConfigError, RegistrationError
from burrow.ingress.rules import HelloWorldService, Ingress
from burrow.net.backoff import Backoff
from burrow.net.listen import parse_hostport
from burrow.observability.metrics import ConnectorStats, ConnectorView
from burrow.wire.registration import ClientInfo, RegistrationRequest

if TYPE_CHECKING:  # aiohttp is loaded only for the metrics server or hello_world
    from aiohttp import web

log = logging.getLogger("burrow.connector")

FEATURES = ("serialized_headers", "allow_remote_config")
TUNNEL_SERVER_NAME = "h2.cftunnel.com"
CONNECT_TIMEOUT = 15.0
DUPLICATE_CONNECTION = "EDUPCONN"


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
    # Failed attempts of the first connection before giving up at start-up (cloudflared's
    # `--retries`); once connected, connections retry for ever.
    retries: int = 5
    # `--metrics ADDR`: serve /metrics, /ready, /healthcheck, /config there.
    metrics_address: str | None = None
    # A connection that fell back to another edge address tries its own again this often, so
    # connections spread out again when an edge comes back.
    rehome_interval: float = 10.0
    # config.yml reloaded on SIGHUP (`Connector.reload`), and on change when `watch_config`.
    config_path: str | None = None
    watch_config: bool = False
    origin_ca_pool: str | None = None  # `--origin-ca-pool`: one more CA for HTTPS origins


class Connector(ConnectorView):
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
        self.dispatcher = Dispatcher(
            config.ingress,
            connector_id=str(self.connector_id).encode(),
            origin_ca_pool=config.origin_ca_pool,
        )
        self.orchestrator = Orchestrator(
            self.dispatcher, config_path=config.config_path, on_ingress=self._ingress_changed
        )
        self.proxy_stats = self.dispatcher.stats
        self.stats = ConnectorStats()
        self.sessions: dict[int, ConnectorSession] = {}
        # Where each connection is: index -> (host, port, location).
        self.placement: dict[int, tuple[str, int, str]] = {}
        self.addresses: list[tuple[str, int]] = list(self.edges)
        self.ready = asyncio.Event()
        self.metrics_address: tuple[str, int] | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._retiring: set[ConnectorSession] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._ever_ready = False
        self._first_registered = asyncio.Event()
        self._stopping = False
        self._fatal: BurrowError | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._hello: web.AppRunner | None = None
        self._done = asyncio.Event()

    @property
    def ready_connections(self) -> int:
        return sum(1 for s in self.sessions.values() if s.registered.done() and not s.closed)

    async def start(self) -> None:
        await self._ensure_hello(self.config.ingress)
        if self.config.watch_config and self.config.config_path:
            self._tasks.append(asyncio.get_running_loop().create_task(self.orchestrator.watch()))
        if self.config.metrics_address:
            from burrow.connector.endpoints import start_endpoints

            self._metrics_runner, self.metrics_address = await start_endpoints(
                self, self.config.metrics_address
            )
            log.info("metrics server on http://%s:%d/metrics", *self.metrics_address)
        self.addresses = await resolve_edges(self.edges)
        if len(self.addresses) > 1:
            log.info("edge addresses: %s", ", ".join(f"{h}:{p}" for h, p in self.addresses))
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
        sessions = [s for s in (*self.sessions.values(), *self._retiring) if not s.closed]
        log.info(
            "unregistering %d connection(s); in-flight requests have %.0fs to finish",
            len(sessions),
            grace,
        )
        await asyncio.gather(*(s.unregister() for s in sessions), return_exceptions=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # A drain poll: streams end one by one and there is no single event for "all done".
        while loop.time() < deadline and any(_busy(s) for s in sessions):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for s in sessions:
            s.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.sessions.clear()
        self.ready.clear()
        self.dispatcher.close()
        if self._hello is not None:
            await self._hello.cleanup()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        self._done.set()

    # --- metrics view (read at scrape time) ------------------------------------------------------

    def metric_connections(self) -> list[tuple[int, str, str, int]]:
        out = []
        for index, session in sorted(self.sessions.items()):
            if session.closed or not session.registered.done():
                continue
            location = self.placement.get(index, ("", 0, ""))[2]
            out.append((index, "", location, _in_flight(session)))
        return out

    def metric_concurrent(self) -> int:
        sessions = [*self.sessions.values(), *self._retiring]
        return sum(_in_flight(s) for s in sessions if not s.closed)

    def metric_tunnel_id(self) -> str:
        return str(self.config.credentials.tunnel_id)

    # --- configuration changes ---------------------------------------------------------------

    async def _ensure_hello(self, ingress: Ingress) -> None:
        """Start the built-in hello_world origin the first time an ingress uses it."""
        if self._hello is None and any(
            isinstance(r.service, HelloWorldService) for r in ingress.rules
        ):
            from burrow.origin.hello import start_hello_world

            self._hello, port = await start_hello_world()
            self.dispatcher.hello_address = ("127.0.0.1", port)

    def _ingress_changed(self, ingress: Ingress) -> None:
        if self._hello is None:
            task = asyncio.get_running_loop().create_task(self._ensure_hello(ingress))
            self._tasks.append(task)

    def reload(self) -> bool:
        """SIGHUP: re-read the config file (see Orchestrator.reload_local)."""
        return self.orchestrator.reload_local("SIGHUP received")

    @property
    def config_version(self) -> int:
        """For `/config`: the remote version in force, -1 for the local configuration."""
        return self.orchestrator.version

    @property
    def current_config(self) -> dict[str, object]:
        """For `/config`: the configuration in force (after reloads and pushes)."""
        return self.orchestrator.config_document()["config"]  # type: ignore[no-any-return]

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
        """Keep connection `index` up. Its home address is `addresses[index % n]`; after a
        failure it tries the next address, and while away from home it keeps trying to go home
        (see `_serve`), so connections spread over the edges again once they are back."""
        backoff = Backoff()
        attempts = 0
        shift = 0
        if index > 0:
            # As cloudflared: the other connections start once the first one registered, so
            # bad credentials or a dead edge cost one refused attempt, not N.
            await self._first_registered.wait()
        while not self._stopping:
            addresses = self.addresses
            home = index % len(addresses)
            slot = (home + shift) % len(addresses)
            host, port = addresses[slot]
            try:
                session = await self._connect(index, host, port, attempts)
            except RegistrationError as exc:
                self.stats.registration_failed(_cause_label(exc.cause))
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
                if exc.cause == DUPLICATE_CONNECTION:
                    shift += 1  # the edge already has this index from us: try another one
                log.warning(
                    "connection %d: registration at %s:%d failed (%s), retrying in %.1fs",
                    index,
                    host,
                    port,
                    exc.cause,
                    delay,
                )
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                delay = backoff.next_delay()
                shift += 1
                log.warning(
                    "connection %d: cannot reach edge %s:%d (%s), retrying in %.1fs",
                    index,
                    host,
                    port,
                    exc or type(exc).__name__,
                    delay,
                )
            else:
                backoff.reset()
                attempts = 0
                self._ever_ready = True
                at_home = await self._serve(index, session, slot != home, addresses[home])
                if at_home:
                    shift = 0
                self.sessions.pop(index, None)
                self.placement.pop(index, None)
                if self._stopping:
                    return
                if self.ready_connections == 0:
                    self.ready.clear()
                delay = backoff.next_delay()
                log.warning("connection %d to the edge lost, reconnecting in %.1fs", index, delay)
            attempts += 1
            if not self._ever_ready and index == 0 and attempts > self.config.retries:
                log.error("could not connect to the edge after %d attempt(s); giving up", attempts)
                self._fatal = BurrowError(
                    f"could not connect to the edge after {attempts} attempt(s) (--retries)"
                )
                self._done.set()
                return
            await asyncio.sleep(delay)

    async def _serve(
        self, index: int, session: ConnectorSession, away: bool, home: tuple[str, int]
    ) -> bool:
        """Wait until `session` closes. While it is not on its home address, try the home
        address every `rehome_interval`; on success the new session takes over the index and
        the old one is unregistered and drained (make before break, no request is lost).
        Returns whether the connection was at home when it closed."""
        loop = asyncio.get_running_loop()
        closed = loop.create_task(_closed_or_goaway(session))
        try:
            while away and not self._stopping:
                done, _ = await asyncio.wait({closed}, timeout=self.config.rehome_interval)
                if done or self._stopping:
                    break
                try:
                    new = await self._connect(index, home[0], home[1], 0, replace=True)
                except (RegistrationError, OSError, ssl.SSLError, TimeoutError) as exc:
                    log.debug("connection %d: home edge %s:%d still down: %s", index, *home, exc)
                    continue
                old, session, away = session, new, False
                log.info("connection %d moved back to edge %s:%d", index, *home)
                self._spawn(self._retire(old))
                closed.cancel()
                closed = loop.create_task(_closed_or_goaway(session))
            await closed
        finally:
            closed.cancel()
        if not session.closed:
            # GOAWAY: the edge is shutting down. Its in-flight streams finish on the old
            # connection while the loop dials a replacement right away.
            log.info("connection %d: the edge is going away, reconnecting", index)
            self.sessions.pop(index, None)
            self._spawn(self._drained(session))
        return not away

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _drained(self, session: ConnectorSession) -> None:
        self._retiring.add(session)
        try:
            await session.closed_event.wait()
        finally:
            self._retiring.discard(session)

    async def _retire(self, session: ConnectorSession) -> None:
        """Unregister a replaced connection, let its streams finish, then close it."""
        self._retiring.add(session)
        try:
            await session.unregister()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.grace_period
            while loop.time() < deadline and _busy(session):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            session.close()
        finally:
            self._retiring.discard(session)

    async def _connect(
        self, index: int, host: str, port: int, attempts: int, *, replace: bool = False
    ) -> ConnectorSession:
        loop = asyncio.get_running_loop()
        local_config = None
        if index == 0 and self.config.local_config is not None and not replace:
            local_config = json.dumps(self.config.local_config).encode()

        def factory() -> ConnectorSession:
            return ConnectorSession(
                self._request(index, attempts, b""),
                self.dispatcher,
                local_config=local_config,
                apply_remote_config=self.orchestrator.apply_remote,
            )

        transport, session = await asyncio.wait_for(
            loop.create_connection(
                factory, host, port, ssl=self.ssl, server_hostname=self.config.server_name
            ),
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
        if self._stopping:
            session.close()
            raise RegistrationError("connector is shutting down", retryable=True)
        self.sessions[index] = session
        self.placement[index] = (host, port, details.location_name)
        self.stats.register_success += 1
        self._first_registered.set()
        if local_config is not None:
            self.stats.local_config_pushes += 1
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


async def _closed_or_goaway(session: ConnectorSession) -> None:
    """Until the session closes or the edge sends GOAWAY."""
    waiters = {
        asyncio.ensure_future(session.closed_event.wait()),
        asyncio.ensure_future(session.goaway_event.wait()),
    }
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def resolve_edges(edges: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Every address the edge names resolve to, in order, without duplicates. A name that
    does not resolve (yet) is kept as it is: connecting to it fails and is retried."""
    loop = asyncio.get_running_loop()
    out: list[tuple[str, int]] = []
    for host, port in edges:
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            found = [(host, port)]
        except ValueError:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                found = [(str(info[4][0]), port) for info in infos]
            except OSError as exc:
                log.warning("cannot resolve edge %s: %s", host, exc)
                found = [(host, port)]
        for addr in found:
            if addr not in out:
                out.append(addr)
    return out or list(edges)


def _cause_label(cause: str) -> str:
    """A bounded label for a registration error (causes may embed ids)."""
    if cause == DUPLICATE_CONNECTION:
        return cause
    lowered = cause.lower()
    for word in ("rate", "credentials", "does not exist", "store", "closed", "shutting"):
        if word in lowered:
            return word.replace(" ", "_")
    return "other"


def _in_flight(session: ConnectorSession) -> int:
    """Request streams open on a session (the control stream is not a request)."""
    n = len(session.streams)
    return n - 1 if session._control is not None and n else n


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
