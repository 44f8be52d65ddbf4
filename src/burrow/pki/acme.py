"""ACME client glue (RFC 8555) on top of certbot's `acme` library: obtain a certificate for some
names with the http-01 challenge.

The `acme` library is synchronous (requests); callers run `AcmeIssuer.obtain` in a worker thread.
Challenge responses are handed to a `publish(token, key_authorization)` callback (the edge serves
them on its plain-HTTP listener at /.well-known/acme-challenge/<token>) and withdrawn afterwards.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from burrow.errors import BurrowError, ConfigError

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
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb", opener=lambda p, f: __import__("os").open(p, f, 0o600)) as fh:
        fh.write(pem)
    tmp.replace(path)
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
        from josepy.jwk import JWKRSA
        from acme import client, messages

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
        publish: Callable[[str, str], None],
        withdraw: Callable[[str], None],
        *,
        deadline_s: float = 90.0,
    ) -> Issued:
        from acme import challenges, errors, messages

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
        published: list[str] = []
        try:
            acme_client = self._connect()
            order = acme_client.new_order(csr_pem)  # type: ignore[attr-defined]
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue
                chall = next(
                    (c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)),
                    None,
                )
                if chall is None:
                    raise AcmeError(
                        f"no http-01 challenge offered for {authz.body.identifier.value}"
                    )
                response, validation = chall.response_and_validation(
                    acme_client.net.key  # type: ignore[attr-defined]
                )
                publish(chall.chall.encode("token"), validation)
                published.append(chall.chall.encode("token"))
                acme_client.answer_challenge(chall, response)  # type: ignore[attr-defined]
            deadline = dt.datetime.now() + dt.timedelta(seconds=deadline_s)
            final = acme_client.poll_and_finalize(order, deadline)  # type: ignore[attr-defined]
        except errors.Error as exc:
            raise AcmeError(f"ACME order for {', '.join(names)} failed: {exc}") from None
        except OSError as exc:  # requests' connection errors are OSErrors
            raise AcmeError(f"ACME server {self.directory_url} unreachable: {exc}") from None
        finally:
            for token in published:
                withdraw(token)
        chain = final.fullchain_pem.encode()
        return Issued(tuple(names), chain, key_pem, not_after(chain))
