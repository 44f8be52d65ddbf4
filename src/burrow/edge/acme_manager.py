"""Automatic certificates for routed hostnames: obtained over ACME (http-01, answered by the
edge's plain-HTTP listener), renewed before expiry, kept in the state store so every edge node
serves them, and installed into the HTTPS listener's `CertStore`.

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
from collections.abc import Callable, Iterable

from burrow.edge.certs import CertStore
from burrow.errors import BurrowError
from burrow.pki.acme import AcmeIssuer
from burrow.store.certificates import StoredCertificate, all_certificates, put_certificate
from burrow.store.sealing import SecretBox
from burrow.store.sqlalchemy_store import SQLStore

log = logging.getLogger("burrow.edge.acme")

MAX_BACKOFF = 3600.0


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
    ) -> None:
        self.prefer = prefer
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
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass

    async def run_once(self) -> None:
        stored = await all_certificates(self.store, self.box)
        for name, cert in stored.items():
            current = self.installed.get(name)
            if current is None or current.updated_at != cert.updated_at:
                self._install(cert)
        now = dt.datetime.now(dt.UTC)
        loop = asyncio.get_running_loop()
        for name in sorted(set(self.hostnames())):
            if not _orderable(name) or self.certs.has_operator_cert(name):
                continue
            have = self.installed.get(name)
            if have is not None and have.not_after - now > self.renew_before:
                continue
            retry = self._retry_at.get(name)
            if retry is not None and loop.time() < retry[0]:
                continue
            await self._order(name, renewal=have is not None)

    async def _order(self, name: str, *, renewal: bool) -> None:
        log.info("%s certificate for %s over ACME", "renewing" if renewal else "ordering", name)
        try:
            issued = await asyncio.to_thread(self.issuer.obtain, [name], self, prefer=self.prefer)
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

    def _install(self, cert: StoredCertificate) -> None:
        self.certs.install([cert.hostname], cert.cert_pem, cert.key_pem)
        self.installed[cert.hostname] = cert


def _orderable(name: str) -> bool:
    """Exact DNS names only: no wildcards (those need dns-01), no IP literals."""
    return (
        bool(name)
        and not name.startswith("*")
        and ":" not in name
        and not name.replace(".", "").isdigit()
    )
