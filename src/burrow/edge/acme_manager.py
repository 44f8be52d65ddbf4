"""Automatic certificates for routed hostnames: obtained over ACME (http-01, answered by the
edge's plain-HTTP listener; tls-alpn-01 by its HTTPS listener; dns-01 through an operator's hook
program, the only way to get wildcard names), renewed before expiry, kept in the state store so
every edge node serves them, and installed into the HTTPS listener's `CertStore`.

Nodes sharing a store coordinate through a lease per hostname (`burrow.store.acme_leases`): one
node orders, the others see the lease, look again a few seconds later and install the
certificate from the store.

Runs as one background task: at start, when the routes change (`poke`) and every `interval`
seconds it (1) installs certificates that appeared or changed in the store (issued by another
node, say) and (2) orders one for every exact routed hostname that has none, or whose
certificate expires within `renew_before`. Failures back off per hostname (up to an hour).
The data path never waits on any of this.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import subprocess
from collections.abc import Callable, Iterable

from burrow.edge.certs import CertStore
from burrow.errors import BurrowError
from burrow.pki.acme import AcmeError, AcmeIssuer
from burrow.store.acme_leases import acquire_lease, release_lease
from burrow.store.certificates import StoredCertificate, all_certificates, put_certificate
from burrow.store.sealing import SecretBox
from burrow.store.sqlalchemy_store import SQLStore

log = logging.getLogger("burrow.edge.acme")

MAX_BACKOFF = 3600.0
LEASE_RECHECK = 3.0  # seconds: how soon a node waiting on another's order looks again
DNS_HOOK_TIMEOUT = 300.0  # seconds a dns-01 hook may take (it may wait for DNS propagation)


class AcmeManager:
    def __init__(
        self,
        *,
        store: SQLStore,
        box: SecretBox,
        certs: CertStore,
        issuer: AcmeIssuer,
        hostnames: Callable[[], Iterable[str]],
        renew_before: dt.timedelta = dt.timedelta(days=30),
        interval: float = 300.0,
        prefer: tuple[str, ...] = ("http-01", "tls-alpn-01"),
        dns_hook: str | None = None,
        node: str = "",
        lease_ttl: dt.timedelta = dt.timedelta(minutes=10),
    ) -> None:
        self.prefer = prefer
        self.dns_hook = dns_hook  # PROGRAM present|cleanup DOMAIN VALUE (dns-01)
        self.node = node or "edge"  # lease holder name, unique per node
        self.lease_ttl = lease_ttl  # longer than an order can take
        self.lease_waits = 0  # orders left to another node holding the lease
        self._recheck_soon = False
        self.store = store
        self.box = box
        self.certs = certs
        self.issuer = issuer
        self.hostnames = hostnames
        self.renew_before = renew_before
        self.interval = interval
        self.challenges: dict[str, str] = {}  # token -> key authorization (http-01)
        self.installed: dict[str, StoredCertificate] = {}
        self.issued = 0
        self._retry_at: dict[str, tuple[float, float]] = {}  # name -> (when, last delay)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.cycle_done = asyncio.Event()  # set after every completed cycle (tests wait on it)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def poke(self) -> None:
        """Routes changed: look for new hostnames now."""
        self._wake.set()

    # --- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.run_once()
            except BurrowError as exc:
                log.warning("certificate maintenance failed: %s", exc)
            except Exception:
                log.exception("certificate maintenance failed")
            self.cycle_done.set()
            wait = min(self.interval, LEASE_RECHECK) if self._recheck_soon else self.interval
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    async def _sync_from_store(self) -> None:
        """Install certificates that appeared or changed in the store (another node's)."""
        stored = await all_certificates(self.store, self.box)
        for name, cert in stored.items():
            current = self.installed.get(name)
            if current is None or current.updated_at != cert.updated_at:
                self._install(cert)

    def _fresh(self, name: str) -> bool:
        have = self.installed.get(name)
        now = dt.datetime.now(dt.UTC)
        return have is not None and have.not_after - now > self.renew_before

    async def run_once(self) -> None:
        self._recheck_soon = False
        await self._sync_from_store()
        loop = asyncio.get_running_loop()
        for name in sorted(set(self.hostnames())):
            if not _orderable(name, dns=self.dns_hook is not None):
                continue
            if self.certs.has_operator_cert(name) or self._fresh(name):
                continue
            retry = self._retry_at.get(name)
            if retry is not None and loop.time() < retry[0]:
                continue
            if not await acquire_lease(self.store, name, self.node, self.lease_ttl):
                # Another node is ordering it: its certificate will appear in the store.
                self.lease_waits += 1
                self._recheck_soon = True
                log.info("another edge node is ordering the certificate for %s", name)
                continue
            try:
                await self._sync_from_store()  # it may have finished just before our lease
                if not self._fresh(name):
                    await self._order(name, renewal=name in self.installed)
            finally:
                await release_lease(self.store, name, self.node)

    async def _order(self, name: str, *, renewal: bool) -> None:
        log.info("%s certificate for %s over ACME", "renewing" if renewal else "ordering", name)
        prefer = ("dns-01",) if name.startswith("*.") else self.prefer
        try:
            issued = await asyncio.to_thread(self.issuer.obtain, [name], self, prefer=prefer)
        except BurrowError as exc:
            loop = asyncio.get_running_loop()
            last = self._retry_at.get(name, (0.0, 5.0))[1]
            delay = min(MAX_BACKOFF, last * 2)
            self._retry_at[name] = (loop.time() + delay, delay)
            log.warning("certificate for %s not obtained (retry in %.0f s): %s", name, delay, exc)
            return
        self._retry_at.pop(name, None)
        stored = await put_certificate(
            self.store, self.box, name, issued.fullchain_pem, issued.key_pem, issued.not_after
        )
        self._install(stored)
        self.issued += 1
        log.info("certificate for %s installed, valid until %s", name, issued.not_after)

    # --- ChallengeResponder (called from the ACME worker thread; dict updates are atomic) ---

    def publish_http01(self, token: str, key_authorization: str) -> None:
        self.challenges[token] = key_authorization

    def withdraw_http01(self, token: str) -> None:
        self.challenges.pop(token, None)

    def publish_tls_alpn01(self, domain: str, cert_pem: bytes, key_pem: bytes) -> None:
        self.certs.set_alpn_challenge(domain, cert_pem, key_pem)

    def withdraw_tls_alpn01(self, domain: str) -> None:
        self.certs.clear_alpn_challenge(domain)

    def publish_dns01(self, domain: str, value: str) -> None:
        self._dns_hook("present", domain, value, strict=True)

    def withdraw_dns01(self, domain: str, value: str) -> None:
        self._dns_hook("cleanup", domain, value, strict=False)

    def _dns_hook(self, verb: str, domain: str, value: str, *, strict: bool) -> None:
        """Run `PROGRAM present|cleanup DOMAIN VALUE` (blocking: we are in the ACME thread)."""
        if self.dns_hook is None:
            raise AcmeError(f"dns-01 for {domain} needs --acme-dns-hook")
        argv = [self.dns_hook, verb, domain, value]
        try:
            done = subprocess.run(
                argv, capture_output=True, timeout=DNS_HOOK_TIMEOUT, check=False, text=True
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = f"dns-01 hook {self.dns_hook} {verb} {domain} failed: {exc}"
        else:
            if done.returncode == 0:
                return
            detail = (done.stderr or done.stdout).strip()[-500:]
            problem = (
                f"dns-01 hook {self.dns_hook} {verb} {domain} exited with {done.returncode}: "
                f"{detail}"
            )
        if strict:
            raise AcmeError(problem)
        log.warning("%s", problem)

    def _install(self, cert: StoredCertificate) -> None:
        self.certs.install([cert.hostname], cert.cert_pem, cert.key_pem)
        self.installed[cert.hostname] = cert


def _orderable(name: str, *, dns: bool = False) -> bool:
    """DNS names, no IP literals; wildcards (`*.example.com`) only with a dns-01 hook."""
    if name.startswith("*."):
        if not dns:
            return False
        name = name[2:]
    return (
        bool(name) and "*" not in name and ":" not in name and not name.replace(".", "").isdigit()
    )
