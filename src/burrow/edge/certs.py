"""Certificates of the public HTTPS listener, chosen per connection by SNI.

Sources, in order of preference for a server name:
1. operator-provided certificate files (`--tls-cert`/`--tls-key`), indexed by the DNS names in
   their subjectAltName (exact names, then `*.parent` wildcards), re-read when a file changes;
2. certificates added at run time (`CertStore.install`, e.g. obtained over ACME);
3. for development, a certificate from the edge's own CA, issued on first use for a hostname the
   edge routes (never for arbitrary names a client sends) and cached. It is issued before the
   handshake (`prepare`, awaited by the HTTPS listener (`burrow.net.listen.GatedTLSServer`) once it has read the SNI), in a
   child process (`burrow.pki.worker`) unless `cryptography` is loaded here anyway: an edge
   serving development certificates then never loads it.

Every context offers ALPN `h2` and `http/1.1`; the default context (no or unknown SNI) presents
the edge's own names.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from burrow.errors import ConfigError
from burrow.pki import worker
from burrow.pki.ca import EdgePKI

log = logging.getLogger("burrow.edge.certs")

ALPN = ["h2", "http/1.1"]
MAX_DEV_CERTS = 1024
#: After a failed issuance, handshakes for that name get the default certificate for this long
#: instead of starting another child process each.
DEV_FAILURE_BACKOFF = 10.0
#: Development certificates issued at the same time (each one is a child process).
DEV_CONCURRENCY = 2


def make_context(
    cert_pem: bytes | Path, key_pem: bytes | Path, alpn: list[str] = ALPN
) -> ssl.SSLContext:
    """A TLS 1.2+ server context for eyeballs, with ALPN h2/http1.1."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(alpn)
    if isinstance(cert_pem, Path) and isinstance(key_pem, Path):
        ctx.load_cert_chain(str(cert_pem), str(key_pem))
        return ctx
    # ssl only loads chains from files: write them to a private temporary directory.
    with tempfile.TemporaryDirectory(prefix="burrow-tls-") as tmp:
        cert_path = Path(tmp) / "cert.pem"
        key_path = Path(tmp) / "key.pem"
        cert_path.write_bytes(cert_pem if isinstance(cert_pem, bytes) else cert_pem.read_bytes())
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem if isinstance(key_pem, bytes) else key_pem.read_bytes())
        ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx


def cert_dns_names(cert_pem: bytes) -> list[str]:
    """Lower-case DNS names of the first certificate in a PEM chain."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


class CertStore:
    def __init__(
        self,
        pki: EdgePKI,
        default_names: list[str],
        files: list[tuple[Path, Path]] | None = None,
        *,
        is_routed: Callable[[str], bool] = lambda _host: False,
        dev_certs: bool = True,
        default_pem: tuple[bytes, bytes] | None = None,
        out_of_process: bool | None = None,
    ) -> None:
        """`default_pem`: the default certificate, already issued (see `create`); without it
        one is issued here, in-process."""
        self.pki = pki
        self.files = list(files or [])
        self.is_routed = is_routed
        self.dev_certs = dev_certs
        self._file_stamps: list[tuple[int, int, int, int]] = []
        self._from_files: dict[str, ssl.SSLContext] = {}
        self._installed: dict[str, ssl.SSLContext] = {}
        self._dev: collections.OrderedDict[str, ssl.SSLContext] = collections.OrderedDict()
        self._alpn_challenges: dict[str, ssl.SSLContext] = {}  # tls-alpn-01 in progress
        self.dev_issued = 0
        self.out_of_process = out_of_process  # None: a child unless cryptography is loaded
        self._issuing: dict[str, asyncio.Future[None]] = {}
        self._failed: dict[str, float] = {}  # name -> monotonic time of the last failure
        self._issue_slots: asyncio.Semaphore | None = None
        cert, key = default_pem or pki.issue_server_cert(default_names or ["localhost"])
        self.default = make_context(cert, key)
        self.default.sni_callback = self._sni
        self._load_files()

    @classmethod
    async def create(
        cls,
        pki: EdgePKI,
        default_names: Sequence[str],
        files: list[tuple[Path, Path]] | None = None,
        *,
        is_routed: Callable[[str], bool] = lambda _host: False,
        dev_certs: bool = True,
        out_of_process: bool | None = None,
    ) -> CertStore:
        """A store whose default certificate is issued without blocking the event loop (and,
        by default, without loading `cryptography` into this process)."""
        default_pem = await worker.issue_server_cert(
            pki, list(default_names) or ["localhost"], out_of_process=out_of_process
        )
        return cls(
            pki,
            list(default_names),
            files,
            is_routed=is_routed,
            dev_certs=dev_certs,
            default_pem=default_pem,
            out_of_process=out_of_process,
        )

    # --- operator files -------------------------------------------------------------------

    def _stamps(self) -> list[tuple[int, int, int, int]]:
        out = []
        for cert, key in self.files:
            try:
                a, b = os.stat(cert), os.stat(key)
            except OSError:
                out.append((0, 0, 0, 0))
                continue
            out.append((a.st_mtime_ns, a.st_size, b.st_mtime_ns, b.st_size))
        return out

    def _load_files(self) -> None:
        by_name: dict[str, ssl.SSLContext] = {}
        first: ssl.SSLContext | None = None
        for cert, key in self.files:
            try:
                cert_pem = cert.read_bytes()
                ctx = make_context(cert, key)
                names = cert_dns_names(cert_pem)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"cannot load TLS certificate {cert} / {key}: {exc}") from None
            ctx.sni_callback = self._sni
            first = first or ctx
            for name in names:
                by_name.setdefault(name, ctx)
        self._from_files = by_name
        self._file_stamps = self._stamps()
        if first is not None:
            self.default = first

    def maybe_reload(self) -> bool:
        """Re-read the operator's files when they changed; keep the old ones if broken."""
        if not self.files or self._stamps() == self._file_stamps:
            return False
        try:
            self._load_files()
        except ConfigError as exc:
            self._file_stamps = self._stamps()
            log.error("TLS certificates not reloaded, keeping the previous ones: %s", exc)
            return False
        log.info("TLS certificates reloaded from %d file pair(s)", len(self.files))
        return True

    # --- run-time certificates ------------------------------------------------------------

    def install(self, names: list[str], cert_pem: bytes, key_pem: bytes) -> None:
        ctx = make_context(cert_pem, key_pem)
        ctx.sni_callback = self._sni
        for name in names:
            self._installed[name.lower().rstrip(".")] = ctx
            self._dev.pop(name, None)

    def set_alpn_challenge(self, name: str, cert_pem: bytes, key_pem: bytes) -> None:
        """RFC 8737: while validating `name`, handshakes for it present the challenge
        certificate and negotiate only `acme-tls/1`."""
        self._alpn_challenges[name] = make_context(cert_pem, key_pem, ["acme-tls/1"])

    def clear_alpn_challenge(self, name: str) -> None:
        self._alpn_challenges.pop(name, None)

    def has_operator_cert(self, name: str) -> bool:
        """An operator-provided file covers `name` (ACME then leaves it alone)."""
        return self._match(self._from_files, name) is not None

    # --- selection --------------------------------------------------------------------------

    @staticmethod
    def _match(table: dict[str, ssl.SSLContext], name: str) -> ssl.SSLContext | None:
        ctx = table.get(name)
        if ctx is None:
            _, dot, parent = name.partition(".")
            if dot:
                ctx = table.get("*." + parent)
        return ctx

    def _ready_context(self, name: str) -> ssl.SSLContext | None:
        """The context for `name` if one exists now (nothing is issued)."""
        if self._alpn_challenges:
            challenge = self._alpn_challenges.get(name)
            if challenge is not None:
                return challenge
        ctx = self._match(self._from_files, name) or self._match(self._installed, name)
        if ctx is not None:
            return ctx
        if not self.dev_certs:
            return None
        ctx = self._dev.get(name)
        if ctx is not None:
            self._dev.move_to_end(name)
        return ctx

    def _wants_dev_cert(self, name: str) -> bool:
        return self.dev_certs and self._ready_context(name) is None and self.is_routed(name)

    def _add_dev(self, name: str, cert: bytes, key: bytes) -> ssl.SSLContext:
        ctx = make_context(cert, key)
        ctx.sni_callback = self._sni
        self._dev[name] = ctx
        self.dev_issued += 1
        if len(self._dev) > MAX_DEV_CERTS:
            self._dev.popitem(last=False)
        return ctx

    def context_for(self, name: str) -> ssl.SSLContext | None:
        """The context for `name`, chosen synchronously (OpenSSL's SNI callback). A missing
        development certificate is normally issued before the handshake by `prepare`; only
        when `cryptography` is loaded in this process anyway is it issued here (as it always
        was), otherwise the handshake gets the default certificate."""
        ctx = self._ready_context(name)
        if ctx is not None or not self.dev_certs or not self.is_routed(name):
            return ctx
        if self.out_of_process or (self.out_of_process is None and not worker.crypto_loaded()):
            return None
        cert, key = self.pki.issue_server_cert([name])
        return self._add_dev(name, cert, key)

    async def prepare(self, name: str) -> None:
        """Make the certificate for SNI `name` ready before its handshake: issue the
        development certificate of a routed name that has none yet (one issuance per name at
        a time; concurrent handshakes for it wait for the same one). Never raises: a failure
        is logged and the handshake goes on with the default certificate."""
        name = name.lower().rstrip(".")
        try:
            if not self._wants_dev_cert(name):
                return
        except Exception:
            log.exception("choosing a certificate for %r failed", name)
            return
        pending = self._issuing.get(name)
        if pending is not None:
            await asyncio.shield(pending)
            return
        failed_at = self._failed.get(name)
        if failed_at is not None and time.monotonic() - failed_at < DEV_FAILURE_BACKOFF:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._issuing[name] = fut
        try:
            if self._issue_slots is None:
                self._issue_slots = asyncio.Semaphore(DEV_CONCURRENCY)
            async with self._issue_slots:
                cert, key = await worker.issue_server_cert(
                    self.pki, [name], out_of_process=self.out_of_process
                )
            self._add_dev(name, cert, key)
            self._failed.pop(name, None)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._failed[name] = time.monotonic()
            if len(self._failed) > MAX_DEV_CERTS:
                self._failed.pop(next(iter(self._failed)))
            log.exception("choosing a certificate for %r failed", name)
        finally:
            del self._issuing[name]
            fut.set_result(None)

    def _sni(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if not server_name:
            return
        try:
            ctx = self.context_for(server_name.lower().rstrip("."))
        except Exception:  # never fail a handshake from inside OpenSSL's callback
            log.exception("choosing a certificate for %r failed", server_name)
            return
        if ctx is not None:
            sslobj.context = ctx
