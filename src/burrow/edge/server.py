"""The edge process: tunnel listener, public HTTP listener, admin listener, routing snapshot.

The data path never waits on the store: routes and tunnel credentials live in an immutable
`RoutingSnapshot`, replaced when the store's change counter moves (polled every second).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, cast

from burrow.edge import access_gate
from burrow.edge.certs import CertStore
from burrow.edge.gate import Gate, LimitSettings
from burrow.edge.public import EyeballProtocol, PublicContext
from burrow.edge.public_h2 import AlpnDispatch
from burrow.edge.registry import Registry
from burrow.edge.remote_config import RemoteConfigs
from burrow.edge.tunnel_conn import Accepted, EdgeTunnelConnection
from burrow.errors import ConfigError, NotFound, RegistrationError, StoreError
from burrow.net import tls
from burrow.net.listen import GatedTLSServer, format_hostport, parse_hostport, serve_tls_gated
from burrow.net.ratelimit import KeyedRateLimiter
from burrow.observability.metrics import CONTENT_TYPE, EdgeStats, EdgeView
from burrow.pki import worker as pki_worker
from burrow.pki.ca import EdgePKI
from burrow.store.journal import ConnectionJournal, node_id_for, record_for
from burrow.store.records import RoutingSnapshot
from burrow.store.sealing import SecretBox
from burrow.store.secrets import verify_secret
from burrow.store.sqlalchemy_store import SQLStore
from burrow.store.waf_rules import WafRuleRecord, compile_records, list_waf_rules
from burrow.waf.rules import WafEngine
from burrow.wire.registration import RegistrationRequest

if TYPE_CHECKING:
    # Loaded on first use only (see `_start_admin` and `metrics`): aiohttp and
    # prometheus_client cost an idle edge ~12 MB of RSS.
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from burrow.access.service import AccessService
    from burrow.edge.acme_manager import AcmeManager  # ACME (and cryptography) only when used

log = logging.getLogger("burrow.edge")

DEFAULT_TUNNEL_PORT = 7844


def default_state_dir() -> Path:
    return Path.home() / ".local" / "share" / "burrow" / "edge"


def store_url_for(state_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{state_dir / 'state.db'}"


@dataclass
class EdgeConfig:
    state_dir: Path = field(default_factory=default_state_dir)
    tunnel_listen: list[str] = field(default_factory=lambda: ["0.0.0.0:7844"])
    http_listen: list[str] = field(default_factory=lambda: ["0.0.0.0:8080"])
    admin_listen: str | None = "127.0.0.1:7845"
    names: list[str] = field(default_factory=lambda: ["localhost", "127.0.0.1", "::1"])
    location: str = "burrow"
    store_url: str | None = None
    poll_interval: float = 1.0
    grace_period: float = 30.0
    handshake_rate: float = 10.0  # TLS handshakes per second per source address
    handshake_burst: float = 40.0
    limits: LimitSettings = field(default_factory=LimitSettings)
    waf_rules: Path | None = None  # YAML file of WAF custom rules, re-read when it changes
    https_listen: list[str] = field(default_factory=list)  # public HTTPS ADDR:PORT (443)
    tls_certs: list[tuple[Path, Path]] = field(default_factory=list)  # (cert, key), SNI by SAN
    redirect_https: bool = False  # answer plain HTTP with a redirect to HTTPS
    acme_directory: str | None = None  # ACME directory URL: certificates for routed hostnames
    acme_email: str | None = None
    acme_ca_bundle: Path | None = None  # CA file to trust for the ACME server's own HTTPS
    acme_renew_before: float = 30 * 86400.0  # seconds before expiry to renew
    acme_interval: float = 300.0  # seconds between certificate maintenance rounds
    acme_challenges: tuple[str, ...] = ("http-01", "tls-alpn-01")  # in order of preference
    acme_dns_hook: str | None = None  # PROGRAM present|cleanup DOMAIN VALUE: dns-01, wildcards
    access_team_domain: str = ""  # hosts the Access login pages (e.g. auth.example.com)
    # Certificate work (CA, tunnel certificate, development certificates) in a short-lived
    # child process, keeping cryptography out of the edge: None = unless it is loaded anyway.
    pki_out_of_process: bool | None = None


class EdgeServer(EdgeView):
    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.registry = Registry()
        self.remote_configs = RemoteConfigs()
        self.stats = EdgeStats()
        self.snapshot = RoutingSnapshot(routes={}, wildcards={}, tunnels={})
        self.store: SQLStore | None = None
        self.pki: EdgePKI | None = None
        self.connections: set[EdgeTunnelConnection] = set()
        self._servers: list[asyncio.Server | GatedTLSServer] = []
        self._admin_runner: web.AppRunner | None = None
        self._admin_setup: asyncio.Task[web.AppRunner] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._generation = -1
        self._handshakes = KeyedRateLimiter(config.handshake_rate, config.handshake_burst)
        self._registrations = KeyedRateLimiter(config.handshake_rate, config.handshake_burst)
        self.waf = WafEngine.from_file(config.waf_rules) if config.waf_rules else WafEngine()
        self._waf_records: tuple[WafRuleRecord, ...] | None = None  # managed rules compiled
        self.gate = Gate(config.limits, self.waf)
        self._waf_gate()
        self.public = PublicContext(
            lookup=self._lookup, registry=self.registry, location=config.location, gate=self.gate
        )
        self.public.stats = self.stats
        self.tunnel_addresses: list[tuple[str, int]] = []
        self.http_addresses: list[tuple[str, int]] = []
        self.https_addresses: list[tuple[str, int]] = []
        self.certs: CertStore | None = None
        self.acme: AcmeManager | None = None
        self.admin_address: tuple[str, int] | None = None
        self.journal: ConnectionJournal | None = None  # live connections in the store
        self.access: AccessService | None = None  # Zero Trust access (burrow.access.service)

    @cached_property
    def metrics(self) -> CollectorRegistry:
        """The Prometheus registry, built on first use (a scrape): prometheus_client is not
        loaded into an edge nobody scrapes."""
        from burrow.access.metrics import AccessCollector
        from burrow.observability.prometheus import edge_registry

        registry = edge_registry(self)
        registry.register(AccessCollector(lambda: self.access))
        return registry

    def _lookup(self, host: str) -> uuid.UUID | None:
        return self.snapshot.lookup(host)

    # --- start / stop -------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.pki = await pki_worker.open_edge_pki(
            cfg.state_dir, cfg.names, out_of_process=cfg.pki_out_of_process
        )
        self.store = await SQLStore.open(cfg.store_url or store_url_for(cfg.state_dir))
        self.access = access_gate.start_access(self.store, cfg.state_dir, cfg.access_team_domain)
        self.public.access = access_gate.AccessGate(self.access)
        await self.reload()
        self.journal = ConnectionJournal(self.store, node_id_for(cfg.state_dir))
        await self.journal.start()
        loop = asyncio.get_running_loop()
        ssl_ctx = tls.server_context(self.pki.leaf_cert_path, self.pki.leaf_key_path)
        for addr in cfg.tunnel_listen:
            host, port = parse_hostport(addr, DEFAULT_TUNNEL_PORT)
            server = await serve_tls_gated(host, port, ssl_ctx, self._admit, self._new_tunnel_conn)
            self._servers.append(server)
            self.tunnel_addresses.append(server.sockets[0].getsockname()[:2])
        for addr in cfg.http_listen:
            host, port = parse_hostport(addr, 8080)
            http_server = await loop.create_server(
                lambda: EyeballProtocol(self.public, "http"), host, port, reuse_address=True
            )
            self._servers.append(http_server)
            self.http_addresses.append(http_server.sockets[0].getsockname()[:2])
        if cfg.https_listen:
            await self._start_https(cfg)
        if cfg.admin_listen:
            await self._start_admin(cfg.admin_listen)
        self._poller = loop.create_task(self._poll())
        log.info(
            "edge started: tunnel=%s http=%s admin=%s state=%s",
            ",".join(format_hostport(*a) for a in self.tunnel_addresses),
            ",".join(format_hostport(*a) for a in self.http_addresses),
            format_hostport(*self.admin_address) if self.admin_address else "-",
            cfg.state_dir,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, GOAWAY every tunnel connection, let in-flight requests finish."""
        grace = self.config.grace_period if grace is None else grace
        for server in self._servers:
            server.close()
        if self._poller is not None:
            self._poller.cancel()
        if self.acme is not None:
            await self.acme.stop()
        for conn in list(self.connections):
            conn.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # A drain poll: streams end one by one and there is no single event for "all done".
        while loop.time() < deadline and any(c.in_flight for c in self.connections):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            # Past the grace period: abort, so no TLS close_notify exchange keeps it alive.
            conn.abort()
        if self._admin_setup is not None and not self._admin_setup.done():
            self._admin_setup.cancel()  # connections waiting for it are aborted
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        for server in self._servers:
            await server.wait_closed()
        if self.journal is not None:
            await self.journal.stop()
        if self.store is not None:
            await self.store.close()

    async def _start_https(self, cfg: EdgeConfig) -> None:
        """The public HTTPS listener: SNI picks the certificate, ALPN picks h2 or HTTP/1.1."""
        assert self.pki is not None
        certs = self.certs = await CertStore.create(
            self.pki,
            cfg.names,
            cfg.tls_certs,
            is_routed=lambda host: self.snapshot.lookup(host) is not None,
            dev_certs=not cfg.acme_directory,
            out_of_process=cfg.pki_out_of_process,
        )
        if cfg.acme_directory:
            self._start_acme(cfg, certs)
        loop = asyncio.get_running_loop()
        for addr in cfg.https_listen:
            host, port = parse_hostport(addr, 443)
            server: asyncio.Server | GatedTLSServer
            if certs.dev_certs:
                # Development certificates are issued before the handshake, once the SNI is
                # known (see GatedTLSServer), never inside OpenSSL's callback. Connection
                # limits apply in the eyeball protocols, as with create_server.
                server = await serve_tls_gated(
                    host,
                    port,
                    certs.default,
                    lambda _ip: True,
                    lambda _ip: AlpnDispatch(self.public),
                    handshake_timeout=cfg.limits.header_timeout,
                    prepare=certs.prepare,
                )
            else:
                server = await loop.create_server(
                    lambda: AlpnDispatch(self.public),
                    host,
                    port,
                    ssl=certs.default,
                    ssl_handshake_timeout=cfg.limits.header_timeout,
                    reuse_address=True,
                )
            self._servers.append(server)
            self.https_addresses.append(server.sockets[0].getsockname()[:2])
        if cfg.redirect_https:
            self.public.https_redirect_port = self.https_addresses[0][1]
        log.info(
            "https listening on %s", ",".join(format_hostport(*a) for a in self.https_addresses)
        )

    def _start_acme(self, cfg: EdgeConfig, certs: CertStore) -> None:
        from burrow.edge.acme_manager import AcmeManager
        from burrow.pki.acme import AcmeIssuer, load_or_create_account_key

        assert self.store is not None and cfg.acme_directory is not None
        issuer = AcmeIssuer(
            cfg.acme_directory,
            load_or_create_account_key(cfg.state_dir / "acme-account.key"),
            email=cfg.acme_email,
            ca_bundle=cfg.acme_ca_bundle,
        )
        self.acme = AcmeManager(
            store=self.store,
            box=SecretBox.load_or_create(cfg.state_dir),
            certs=certs,
            issuer=issuer,
            hostnames=self._acme_hostnames,
            renew_before=dt.timedelta(seconds=cfg.acme_renew_before),
            interval=cfg.acme_interval,
            prefer=cfg.acme_challenges,
            dns_hook=cfg.acme_dns_hook,
            node=node_id_for(cfg.state_dir),  # the lease holder among nodes sharing the store
        )
        self.public.acme_challenges = self.acme.challenges
        self.acme.start()

    def _acme_hostnames(self) -> list[str]:
        """Routed names that want a certificate: exact ones, and `*.suffix` for wildcards."""
        snap = self.snapshot
        return [*snap.routes.keys(), *("*." + suffix for suffix in snap.wildcards)]

    # --- routing snapshot ---------------------------------------------------------------------

    async def reload(self) -> None:
        assert self.store is not None
        generation = await self.store.change_counter()
        if generation != self._generation:
            self.snapshot = await self.store.snapshot()
            if self.acme is not None:
                self.acme.poke()  # new hostnames may need certificates
            if self.access is not None:
                await self.access.refresh()  # access apps, tokens, keys, revocations
            self._generation = generation
            await self._reload_waf()
            for changed in await self.remote_configs.refresh(self.store):
                for live in self.registry.connections(changed.tunnel_id):
                    if live.accepting:
                        self.remote_configs.push_to(live, changed)
            for conn in self.registry.all():
                if conn.tunnel_id not in self.snapshot.tunnels:
                    log.info("tunnel %s was deleted: closing its connections", conn.tunnel_id)
                    if isinstance(conn, EdgeTunnelConnection):
                        conn.shutdown()

    async def _reload_waf(self) -> None:
        """Compile the API-managed WAF rules when they changed (once per change, not per
        request); a rule that does not compile keeps the previous set."""
        assert self.store is not None
        records = tuple(await list_waf_rules(self.store))
        if records == self._waf_records:
            return
        try:
            rules = compile_records(list(records))
        except ConfigError as exc:
            log.error("managed WAF rules not applied, keeping the previous set: %s", exc)
            return
        self._waf_records = records
        self.waf.set_managed(rules)
        self._waf_gate()
        log.info("WAF: %d managed rules applied", len(rules))

    def _waf_gate(self) -> None:
        """Requests only pay for the WAF when there is a rule to run."""
        self.gate.waf = self.waf if self.waf.ruleset.rules else None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            if self.waf.maybe_reload():
                self._waf_gate()
            if self.certs is not None:
                self.certs.maybe_reload()
            try:
                await self.reload()
            except StoreError as exc:
                log.warning("state store unavailable, keeping the current routes: %s", exc)
            except Exception:
                log.exception("reloading routes failed")

    # --- tunnel connections ---------------------------------------------------------------------

    def _admit(self, ip: str) -> bool:
        if self._handshakes.allow(ip):
            return True
        log.debug("handshake rate limit hit for %s", ip)
        return False

    def _new_tunnel_conn(self, ip: str) -> EdgeTunnelConnection:
        conn = EdgeTunnelConnection(
            authenticate=self._authenticate_counted,
            on_registered=self._registered,
            on_gone=self._gone,
            location=self.config.location,
            peer=ip,
            on_closed=self.connections.discard,
        )
        self.connections.add(conn)
        return conn

    def _registered(self, conn: EdgeTunnelConnection) -> None:
        if self.remote_configs.managed(conn.tunnel_id):
            self.remote_configs.push_to(conn)
        self.stats.registration_success += 1
        self.registry.add(conn)
        if self.journal is not None:  # a background write; never awaited here
            self.journal.opened(record_for(conn, self.journal.node, self.config.location))

    async def _authenticate_counted(
        self, conn: EdgeTunnelConnection, request: RegistrationRequest
    ) -> Accepted:
        try:
            return await self._authenticate(conn, request)
        except RegistrationError as exc:
            self.stats.registration_failed(registration_cause(exc.cause))
            raise

    def metric_connections(self) -> list[tuple[uuid.UUID, bool, int]]:
        return [(c.tunnel_id, c.accepting, c.in_flight) for c in self.connections if c.registered]

    def _gone(self, conn: EdgeTunnelConnection) -> None:
        self.registry.remove(conn)
        if self.journal is not None and conn.registered:
            self.journal.closed(conn.connection_id)

    async def _authenticate(
        self, conn: EdgeTunnelConnection, request: RegistrationRequest
    ) -> Accepted:
        if not self._registrations.allow(conn.peer):
            raise RegistrationError(
                "too many registration attempts from this address",
                retryable=True,
                retry_after_s=self._registrations.retry_after(conn.peer) + 1.0,
            )
        record = self.snapshot.tunnels.get(request.tunnel_id)
        if record is None and self.store is not None:
            # Created moments ago? Ask the store before refusing.
            try:
                tunnel = await self.store.get_tunnel(request.tunnel_id)
            except NotFound:
                tunnel = None
            except StoreError as exc:
                raise RegistrationError(
                    f"edge state store unavailable: {exc}", retryable=True, retry_after_s=2.0
                ) from None
            if tunnel is not None and not tunnel.deleted:
                await self.reload()
                record = self.snapshot.tunnels.get(request.tunnel_id)
        if record is None:
            raise RegistrationError(
                f"tunnel {request.tunnel_id} does not exist on this edge", retryable=False
            )
        tag_ok = hmac.compare_digest(record.account_id.encode(), request.account_tag.encode())
        secret_ok = verify_secret(request.tunnel_secret, record.secret_hash)
        if not (tag_ok and secret_ok):
            raise RegistrationError(
                "tunnel credentials rejected: account tag or tunnel secret does not match",
                retryable=False,
            )
        for other in self.registry.connections(record.id):
            if (
                isinstance(other, EdgeTunnelConnection)
                and other.client_id == request.client.client_id
                and other.conn_index == request.conn_index
                and other.accepting
            ):
                if request.replace_existing:
                    other.shutdown()
                else:
                    raise RegistrationError("EDUPCONN", retryable=True)
        return Accepted(
            tunnel_id=record.id,
            account_id=record.account_id,
            tunnel_name=record.name,
            remotely_managed=self.remote_configs.managed(record.id),
        )

    # --- admin ------------------------------------------------------------------------------------

    async def _start_admin(self, addr: str) -> None:
        """Bind the admin listener now; build the aiohttp application on its first connection.

        aiohttp and the admin API modules cost an idle edge ~9 MB of RSS, and most edges see
        an admin request rarely (or only health checks). The socket is bound here, so a busy
        port still fails the start; the sealing key the API uses is created here as before."""
        from burrow.store.sealing import SecretBox

        SecretBox.load_or_create(self.config.state_dir)
        host, port = parse_hostport(addr, 7845)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _AdminAcceptor(self), host, port, reuse_address=True
        )
        self._servers.append(server)
        self.admin_address = tuple(server.sockets[0].getsockname()[:2])

    def _admin_protocol(self) -> asyncio.Protocol | None:
        """aiohttp's protocol for a new admin connection, or None while it is being built."""
        runner = self._admin_runner
        if runner is not None and runner.server is not None:
            return runner.server()
        return None

    def _admin_ready(self) -> asyncio.Task[web.AppRunner]:
        if self._admin_setup is None:
            self._admin_setup = asyncio.get_running_loop().create_task(self._build_admin())
        return self._admin_setup

    async def _build_admin(self) -> web.AppRunner:
        from aiohttp import web

        from burrow.admin.app import context_from_edge, mount_admin  # admin builds on the edge

        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/ready", self._healthz)
        mount_admin(app, context_from_edge(self))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._admin_runner = runner
        return runner

    async def _metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web

        from burrow.observability.prometheus import render

        return web.Response(body=render(self.metrics), headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.json_response(
            {
                "status": "ok",
                "tunnels_connected": self.registry.tunnel_count(),
                "connections": len(self.registry.all()),
            }
        )


class _AdminAcceptor(asyncio.Protocol):
    """An admin connection accepted before aiohttp is loaded: reading is paused until the
    application is built, then the transport is handed to aiohttp's own protocol (as if
    aiohttp had accepted it). Later connections go to aiohttp directly."""

    def __init__(self, edge: EdgeServer) -> None:
        self._edge = edge
        self._transport: asyncio.Transport | None = None
        self._target: asyncio.Protocol | None = None
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not subclass asyncio's.
        transport = cast(asyncio.Transport, transport)
        target = self._edge._admin_protocol()
        if target is not None:
            self._hand_over(transport, target)
            return
        self._transport = transport
        transport.pause_reading()
        self._edge._admin_ready().add_done_callback(self._ready)

    def _ready(self, task: asyncio.Task[web.AppRunner]) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        target = None if task.cancelled() or task.exception() else self._edge._admin_protocol()
        if target is None:
            if not task.cancelled() and task.exception() is not None:
                log.error("admin API failed to start: %s", task.exception())
            transport.abort()
            return
        self._hand_over(transport, target)
        for chunk in self._early:
            target.data_received(chunk)
        self._early.clear()
        transport.resume_reading()

    def _hand_over(self, transport: asyncio.Transport, target: asyncio.Protocol) -> None:
        self._target = target
        transport.set_protocol(target)
        target.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._early.append(data)  # only before the hand-over (reading is paused)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._early.clear()


def registration_cause(cause: str) -> str:
    """A bounded metric label for a refused registration (causes can embed tunnel ids)."""
    lowered = cause.lower()
    for needle, label in (
        ("edupconn", "duplicate_connection"),
        ("too many", "rate_limited"),
        ("does not exist", "unknown_tunnel"),
        ("credentials rejected", "bad_credentials"),
        ("store unavailable", "store_unavailable"),
    ):
        if needle in lowered:
            return label
    return "other"
