"""ACME client glue (RFC 8555) on top of certbot's `acme` library: obtain a certificate for some
names with the http-01, tls-alpn-01 or dns-01 challenge.

The `acme` library is synchronous (requests); callers run `AcmeIssuer.obtain` in a worker thread.
Challenge responses are handed to a `publish(token, key_authorization)` callback (the edge serves
them on its plain-HTTP listener at /.well-known/acme-challenge/<token>) and withdrawn afterwards.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from burrow.errors import BurrowError, ConfigError
from burrow.private_files import write_atomic

log = logging.getLogger("burrow.acme")


class AcmeError(BurrowError):
    """The ACME server refused or failed an order; retried later."""

    retryable = True


@dataclass(frozen=True, slots=True)
class Issued:
    names: tuple[str, ...]
    fullchain_pem: bytes
    key_pem: bytes
    not_after: dt.datetime


def not_after(cert_pem: bytes) -> dt.datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def load_or_create_account_key(path: Path) -> bytes:
    """The ACME account key (PEM, mode 0600), created on first use."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, pem, mode=0o600)
    return pem


class AcmeIssuer:
    """One ACME account at one directory; `obtain` is blocking (run it in a thread)."""

    def __init__(
        self,
        directory_url: str,
        account_key_pem: bytes,
        *,
        email: str | None = None,
        ca_bundle: Path | None = None,
        timeout: int = 30,
    ) -> None:
        self.directory_url = directory_url
        self.email = email
        self._account_key_pem = account_key_pem
        self._verify: bool | str = str(ca_bundle) if ca_bundle else True
        self._timeout = timeout
        self._client: object | None = None

    def __repr__(self) -> str:
        return f"AcmeIssuer({self.directory_url!r})"

    def _connect(self) -> object:
        from acme import client, messages
        from josepy.jwk import JWKRSA

        if self._client is not None:
            return self._client
        key = serialization.load_pem_private_key(self._account_key_pem, password=None)
        jwk = JWKRSA(key=key)
        net = client.ClientNetwork(
            jwk,
            user_agent="burrow-edge",
            verify_ssl=self._verify,  # type: ignore[arg-type]  # requests takes a CA path too
            timeout=self._timeout,
        )
        directory = messages.Directory.from_json(net.get(self.directory_url).json())
        acme_client = client.ClientV2(directory, net=net)
        registration = messages.NewRegistration.from_data(
            email=self.email, terms_of_service_agreed=True
        )
        try:
            account = acme_client.new_account(registration)
        except Exception as exc:  # an existing account answers with its URL
            from acme import errors

            if not isinstance(exc, errors.ConflictError):
                raise
            account = acme_client.query_registration(
                messages.RegistrationResource(uri=exc.location, body=messages.Registration())
            )
        net.account = account
        self._client = acme_client
        return acme_client

    def obtain(
        self,
        names: Sequence[str],
        responder: ChallengeResponder,
        *,
        prefer: Sequence[str] = ("http-01", "tls-alpn-01"),
        deadline_s: float = 90.0,
    ) -> Issued:
        """Order a certificate for `names`, answering each authorization with the first
        challenge type in `prefer` that the server offers."""
        from acme import errors, messages

        if not names:
            raise ConfigError("an ACME order needs at least one name")
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        csr_pem = csr.public_bytes(serialization.Encoding.PEM)
        cleanup: list[Callable[[], None]] = []
        try:
            acme_client: Any = self._connect()
            account_key = acme_client.net.key
            thumbprint = _b64(account_key.thumbprint())
            order = acme_client.new_order(csr_pem)
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue
                domain = authz.body.identifier.value
                offered = {_typ(c): c for c in authz.body.challenges}
                kind = next((k for k in prefer if k in offered), None)
                if kind is None:
                    raise AcmeError(
                        f"none of {', '.join(prefer)} offered for {domain} "
                        f"(offered: {', '.join(offered)})"
                    )
                challb = offered[kind]
                token = _token(challb)
                key_authz = f"{token}.{thumbprint}"
                if kind == "http-01":
                    responder.publish_http01(token, key_authz)
                    cleanup.append(functools.partial(responder.withdraw_http01, token))
                elif kind == "dns-01":
                    # RFC 8555 8.4: TXT _acme-challenge.<domain> = b64url(SHA-256(key authz));
                    # for *.example.com the identifier (and so `domain`) is example.com.
                    value = _b64(hashlib.sha256(key_authz.encode("ascii")).digest())
                    cleanup.append(functools.partial(responder.withdraw_dns01, domain, value))
                    responder.publish_dns01(domain, value)
                else:
                    cert_pem, cert_key = tls_alpn01_certificate(domain, key_authz)
                    responder.publish_tls_alpn01(domain, cert_pem, cert_key)
                    cleanup.append(functools.partial(responder.withdraw_tls_alpn01, domain))
                acme_client.answer_challenge(challb, _EmptyResponse.for_type(kind))
            deadline = dt.datetime.now() + dt.timedelta(seconds=deadline_s)
            final = acme_client.poll_and_finalize(order, deadline)
        except errors.Error as exc:
            raise AcmeError(f"ACME order for {', '.join(names)} failed: {exc}") from None
        except OSError as exc:  # requests' connection errors are OSErrors
            raise AcmeError(f"ACME server {self.directory_url} unreachable: {exc}") from None
        finally:
            for undo in cleanup:
                undo()
        chain = final.fullchain_pem.encode()
        return Issued(tuple(names), chain, key_pem, not_after(chain))


class ChallengeResponder(Protocol):
    """Where challenge answers are published (the edge's listeners); called from a thread."""

    def publish_http01(self, token: str, key_authorization: str) -> None: ...
    def withdraw_http01(self, token: str) -> None: ...
    def publish_tls_alpn01(self, domain: str, cert_pem: bytes, key_pem: bytes) -> None: ...
    def withdraw_tls_alpn01(self, domain: str) -> None: ...
    def publish_dns01(self, domain: str, value: str) -> None: ...
    def withdraw_dns01(self, domain: str, value: str) -> None: ...


ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # id-pe-acmeIdentifier
ACME_TLS_ALPN = "acme-tls/1"


def tls_alpn01_certificate(domain: str, key_authorization: str) -> tuple[bytes, bytes]:
    """RFC 8737: a self-signed certificate for `domain` carrying the critical
    acmeIdentifier extension, an OCTET STRING of SHA-256(key authorization)."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain[:64])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _typ(challb: Any) -> str:
    chall = challb.chall
    typ = getattr(chall, "typ", None)
    if isinstance(typ, str) and typ:
        return typ
    return str(getattr(chall, "jobj", {}).get("type", ""))


def _token(challb: Any) -> str:
    chall = challb.chall
    if hasattr(chall, "encode") and hasattr(chall, "token"):
        return str(chall.encode("token"))
    return str(chall.jobj["token"])  # a type the acme library no longer models


class _EmptyResponse:
    """The challenge response body RFC 8555 asks for: `{}` (for any challenge type)."""

    _cache: dict[str, Any] = {}

    @classmethod
    def for_type(cls, kind: str) -> Any:
        from acme import challenges

        if kind not in cls._cache:
            existing = challenges.ChallengeResponse.TYPES.get(kind)
            if existing is None:

                class Response(challenges.ChallengeResponse):
                    typ = kind

                    def to_partial_json(self) -> dict[str, Any]:
                        return {}

                    def __bool__(self) -> bool:
                        # The acme client sends a POST-as-GET (empty payload) for a falsy
                        # body, and a field-less josepy object is falsy.
                        return True

                existing = Response
            cls._cache[kind] = existing
        response_cls = cls._cache[kind]
        if issubclass(response_cls, challenges.KeyAuthorizationChallengeResponse):
            return response_cls(key_authorization="unused")  # serialised as {}
        return response_cls()
