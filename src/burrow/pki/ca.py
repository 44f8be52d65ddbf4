"""The edge's own certificate authority.

The tunnel listener must present a certificate for ``h2.cftunnel.com`` (and friends) that the
connector verifies against a CA it was told to trust (``--cacert``). cloudflared has no
skip-verify, so the edge runs a small CA of its own and keeps it in its state directory::

    ca.pem / ca.key          the CA (EC P-256, 10 years)
    tunnel.pem / tunnel.key  the tunnel-listener leaf (EC P-256, 1 year, reissued as needed)

Certificates follow the RFC 5280 profile that strict verifiers (OpenSSL's X509_STRICT, which
Python 3.13 enables by default, and Go's crypto/x509) insist on: the CA has a critical
BasicConstraints, KeyUsage and a SubjectKeyIdentifier; leaves carry AuthorityKeyIdentifier,
SubjectKeyIdentifier, ExtendedKeyUsage serverAuth and a SubjectAltName.

Private keys are written with mode 0600 from the moment the file exists (``os.open`` with an
explicit mode), never chmod-ed afterwards, and replaced atomically through a temporary file.

``cryptography`` (x509 + hazmat, ~10 MB of RSS for the life of a process) is imported inside the
functions that build, parse or sign, never at module level: a long-running edge only needs the
PEM files, which the stdlib ``ssl`` module loads itself. The edge runs the checks and the
issuing in a short-lived child (``burrow.pki.worker``). After every successful
`EdgePKI.load_or_create` a small record (``tunnel.check.json``: the SHA-256 of the four files,
the leaf's names and expiry) lets the next start confirm, without parsing anything, that the
files are exactly the ones that were verified; any change to them sends it back to the full
check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from burrow.errors import ConfigError
from burrow.private_files import write_atomic

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

#: Names every tunnel-listener certificate covers (cloudflared verifies these).
TUNNEL_SERVER_NAMES: tuple[str, ...] = (
    "h2.cftunnel.com",
    "quic.cftunnel.com",
    "probe.cftunnel.com",
)

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=365)
#: A leaf expiring within this window is reissued at start.
RENEW_BEFORE = dt.timedelta(days=30)
#: Backdate notBefore a little to tolerate clock skew between edge and connectors.
BACKDATE = dt.timedelta(hours=1)

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
LEAF_CERT_FILE = "tunnel.pem"
LEAF_KEY_FILE = "tunnel.key"
#: What the last full check verified (see the module docstring); not a secret, but 0600.
CHECK_FILE = "tunnel.check.json"
_CHECK_VERSION = 1
_CHECKED_FILES = (CA_CERT_FILE, CA_KEY_FILE, LEAF_CERT_FILE, LEAF_KEY_FILE)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _normalize_name(name: str) -> str:
    """Lower-case a DNS name and drop a trailing dot; canonicalise IP literals."""
    text = name.strip()
    if not text:
        raise ConfigError("empty certificate name")
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    text = text.rstrip(".").lower()
    try:
        text.encode("ascii")
    except UnicodeEncodeError:
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ConfigError(f"invalid certificate name {name!r}: {exc}") from None
    if not text or any(not label for label in text.split(".")):
        raise ConfigError(f"invalid certificate name {name!r}")
    return text


def normalize_names(names: Sequence[str]) -> tuple[str, ...]:
    """Normalised, de-duplicated names in their given order."""
    out: list[str] = []
    for name in names:
        norm = _normalize_name(name)
        if norm not in out:
            out.append(norm)
    return tuple(out)


def _general_name(name: str) -> x509.GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _serial() -> int:
    # Positive, at most 20 octets (RFC 5280 4.1.2.2): 159 random bits.
    return secrets.randbits(159) | 1


def _write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data, mode=0o600)


def _write_public(path: Path, data: bytes) -> None:
    write_atomic(path, data, mode=0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load private key {path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"private key {path} is not an EC key")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"cannot load certificate {path}: {exc}") from None


def _same_public_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    from cryptography.hazmat.primitives import serialization

    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return cert.public_key().public_bytes(enc, fmt) == key.public_key().public_bytes(enc, fmt)


def _cert_names(cert: x509.Certificate) -> frozenset[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    out = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    out.update(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    return frozenset(out)


def _build_ca_cert(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "burrow"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"burrow edge CA {secrets.token_hex(4)}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def _sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _checked_files(state_dir: Path) -> dict[str, str] | None:
    """SHA-256 of the CA and tunnel files, or None when one of them cannot be read."""
    out: dict[str, str] = {}
    for name in _CHECKED_FILES:
        digest = _sha256_file(state_dir / name)
        if digest is None:
            return None
        out[name] = digest
    return out


@dataclass(slots=True)
class EdgePKI:
    """The edge CA plus the tunnel-listener certificate, backed by files in ``state_dir``.

    The CA certificate and key are parsed on first use (issuing, `ca_cert`), so an `EdgePKI`
    obtained from `open_verified` costs no ``cryptography`` import until something signs."""

    state_dir: Path
    names: tuple[str, ...]
    _ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = field(
        default=None, repr=False
    )

    @property
    def ca_cert_path(self) -> Path:
        return self.state_dir / CA_CERT_FILE

    @property
    def ca_key_path(self) -> Path:
        return self.state_dir / CA_KEY_FILE

    @property
    def leaf_cert_path(self) -> Path:
        return self.state_dir / LEAF_CERT_FILE

    @property
    def leaf_key_path(self) -> Path:
        return self.state_dir / LEAF_KEY_FILE

    @property
    def ca_cert(self) -> x509.Certificate:
        return self._ca_pair()[0]

    @property
    def ca_key(self) -> ec.EllipticCurvePrivateKey:
        return self._ca_pair()[1]

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate in PEM (what connectors are told to trust)."""
        if self._ca is None:
            try:
                return self.ca_cert_path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"cannot read {self.ca_cert_path}: {exc}") from None
        from cryptography.hazmat.primitives import serialization

        return self._ca[0].public_bytes(serialization.Encoding.PEM)

    @property
    def tunnel_names(self) -> tuple[str, ...]:
        """Every name the tunnel-listener leaf covers."""
        return normalize_names([*TUNNEL_SERVER_NAMES, *self.names])

    def _ca_pair(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if self._ca is None:
            self._ca = self._load_ca(self.state_dir)
        return self._ca

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def load_or_create(cls, state_dir: Path, names: Sequence[str] = ()) -> EdgePKI:
        """Load the CA from ``state_dir`` (creating it on first start) and make sure the
        tunnel-listener leaf exists, is signed by this CA, is not about to expire and covers
        exactly the tunnel names plus ``names``; otherwise reissue it."""
        state_dir = Path(state_dir)
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create state directory {state_dir}: {exc}") from None
        ca = cls._load_or_create_ca(state_dir)
        pki = cls(state_dir=state_dir, names=normalize_names(names), _ca=ca)
        if pki._leaf_needs_reissue():
            cert_pem, key_pem = pki.issue_server_cert(pki.tunnel_names)
            # Key first: a crash in between leaves a mismatched pair, which is detected and
            # reissued at the next start.
            _write_private(pki.leaf_key_path, key_pem)
            _write_public(pki.leaf_cert_path, cert_pem)
        pki._record_check()
        return pki

    @classmethod
    def for_ca(cls, state_dir: Path) -> EdgePKI:
        """The PKI for commands that only need the CA (`ca_pem`, e.g. `edge tunnel create`):
        the existing CA files as they are, without parsing them or touching the tunnel
        certificate (which belongs to `edge serve` and its names); `load_or_create` when
        there is no CA yet."""
        state_dir = Path(state_dir)
        if (state_dir / CA_CERT_FILE).is_file() and (state_dir / CA_KEY_FILE).is_file():
            return cls(state_dir=state_dir, names=())
        return cls.load_or_create(state_dir)

    @classmethod
    def open_verified(cls, state_dir: Path, names: Sequence[str] = ()) -> EdgePKI | None:
        """The PKI in ``state_dir`` when `load_or_create` with these ``names`` would change
        nothing, decided without ``cryptography``: the files are byte for byte the ones the
        last full check verified (``tunnel.check.json``), the leaf covers exactly these names
        and is not within `RENEW_BEFORE` of expiring. None means: run `load_or_create`."""
        state_dir = Path(state_dir)
        try:
            record = json.loads((state_dir / CHECK_FILE).read_bytes())
            norm = normalize_names(names)
            tunnel_names = normalize_names([*TUNNEL_SERVER_NAMES, *norm])
            if not (
                isinstance(record, dict)
                and record.get("version") == _CHECK_VERSION
                and set(record["names"]) == set(tunnel_names)
            ):
                return None
            not_after = dt.datetime.fromtimestamp(float(record["not_after"]), dt.UTC)
        except (OSError, ValueError, KeyError, TypeError, ConfigError):
            return None
        if not_after - _now() < RENEW_BEFORE:
            return None
        if record.get("files") != _checked_files(state_dir):
            return None
        return cls(state_dir=state_dir, names=norm)

    def _record_check(self) -> None:
        """Remember what was just verified, for `open_verified` (best effort)."""
        files = _checked_files(self.state_dir)
        if files is None:
            return
        leaf = _load_cert(self.leaf_cert_path)
        record = {
            "version": _CHECK_VERSION,
            "names": sorted(_cert_names(leaf)),
            "not_after": leaf.not_valid_after_utc.timestamp(),
            "files": files,
        }
        data = json.dumps(record, indent=1, sort_keys=True).encode() + b"\n"
        path = self.state_dir / CHECK_FILE
        try:
            if path.read_bytes() == data:
                return
        except OSError:
            pass
        try:
            write_atomic(path, data, mode=0o600)
        except OSError:
            pass  # only an optimisation: the next start runs the full check again

    @staticmethod
    def _load_ca(state_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The existing CA pair; a missing or mismatched file is a ConfigError."""
        cert_path = state_dir / CA_CERT_FILE
        key_path = state_dir / CA_KEY_FILE
        if not key_path.exists():
            raise ConfigError(f"{key_path} is missing")
        key = _load_key(key_path)
        cert = _load_cert(cert_path)
        if not _same_public_key(cert, key):
            raise ConfigError(f"{cert_path} does not match {key_path}")
        return cert, key

    @staticmethod
    def _load_or_create_ca(
        state_dir: Path,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        cert_path = state_dir / CA_CERT_FILE
        key_path = state_dir / CA_KEY_FILE
        if key_path.exists():
            key = _load_key(key_path)
            if cert_path.exists():
                cert = _load_cert(cert_path)
                if not _same_public_key(cert, key):
                    raise ConfigError(
                        f"{cert_path} does not match {key_path}; restore the pair or remove "
                        "both to create a new CA (connectors must then trust the new ca.pem)"
                    )
                return cert, key
            # Key survived but the certificate did not (e.g. a crash on first start):
            # re-certify the same key.
            cert = _build_ca_cert(key, _now())
            _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
            return cert, key
        if cert_path.exists():
            raise ConfigError(
                f"{key_path} is missing but {cert_path} exists; restore the key or remove "
                f"{cert_path} to create a new CA (connectors must then trust the new ca.pem)"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _build_ca_cert(key, _now())
        _write_private(key_path, _key_pem(key))
        _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return cert, key

    def _leaf_needs_reissue(self) -> bool:
        from cryptography.exceptions import InvalidSignature

        if not (self.leaf_cert_path.exists() and self.leaf_key_path.exists()):
            return True
        try:
            cert = _load_cert(self.leaf_cert_path)
            key = _load_key(self.leaf_key_path)
        except ConfigError:
            return True
        if not _same_public_key(cert, key):
            return True
        if cert.issuer != self.ca_cert.subject:
            return True
        try:
            cert.verify_directly_issued_by(self.ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            return True
        if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
            return True
        return _cert_names(cert) != frozenset(self.tunnel_names)

    # -- issuing ----------------------------------------------------------------------------

    def issue_server_cert(
        self, names: Sequence[str], *, validity: dt.timedelta | None = None
    ) -> tuple[bytes, bytes]:
        """Issue a TLS server certificate for ``names`` (DNS names, wildcards, IP literals).

        Returns ``(cert_pem, key_pem)``; the caller stores the key (mode 0600). Loads
        ``cryptography`` into this process: the edge issues through `burrow.pki.worker`.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        norm = normalize_names(names)
        if not norm:
            raise ConfigError("a server certificate needs at least one name")
        ca_cert, ca_key = self._ca_pair()
        now = _now()
        not_after = min(now + (validity or LEAF_VALIDITY), ca_cert.not_valid_after_utc)
        key = ec.generate_private_key(ec.SECP256R1())
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, norm[0][:64])]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in norm]), critical=False
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)
