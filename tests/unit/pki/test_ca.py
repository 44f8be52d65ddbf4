"""The edge CA and tunnel-listener certificate, checked with real TLS handshakes."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from burrow.errors import ConfigError
from burrow.net.tls import client_context, server_context
from burrow.pki import ca as ca_mod
from burrow.pki.ca import EdgePKI

NAMES = ["localhost", "127.0.0.1", "::1", "Edge.Example.COM."]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*san.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


@pytest.fixture
def pki(tmp_path: Path) -> EdgePKI:
    return EdgePKI.load_or_create(tmp_path / "state", NAMES)


def test_files_and_modes(pki: EdgePKI, tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert _mode(state) == 0o700
    for name in ("ca.pem", "ca.key", "tunnel.pem", "tunnel.key"):
        assert (state / name).is_file()
    assert _mode(state / "ca.key") == 0o600
    assert _mode(state / "tunnel.key") == 0o600
    assert pki.ca_cert_path == state / "ca.pem"
    assert pki.leaf_cert_path == state / "tunnel.pem"
    assert pki.leaf_key_path == state / "tunnel.key"
    assert pki.ca_pem == (state / "ca.pem").read_bytes()
    assert not [p for p in state.iterdir() if p.name.endswith(".tmp")]


def test_keys_created_0600_from_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The key files must never exist with a wider mode, even for an instant: no chmod.
    chmods: list[object] = []
    monkeypatch.setattr(os, "chmod", lambda *a, **k: chmods.append(a))
    old = os.umask(0)
    try:
        EdgePKI.load_or_create(tmp_path / "s", ["localhost"])
    finally:
        os.umask(old)
    assert chmods == []
    assert _mode(tmp_path / "s" / "ca.key") == 0o600
    assert _mode(tmp_path / "s" / "tunnel.key") == 0o600


def test_certificate_profiles(pki: EdgePKI) -> None:
    ca = _cert(pki.ca_cert_path)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    pub = ca.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert isinstance(pub.curve, ec.SECP256R1)
    life = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert life >= dt.timedelta(days=3650)

    leaf = _cert(pki.leaf_cert_path)
    assert _sans(leaf) == {
        "h2.cftunnel.com",
        "quic.cftunnel.com",
        "probe.cftunnel.com",
        "localhost",
        "127.0.0.1",
        "::1",
        "edge.example.com",
    }
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert lku.digital_signature and not lku.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=364) < life <= dt.timedelta(days=366)
    leaf.verify_directly_issued_by(ca)


def test_reload_keeps_everything(pki: EdgePKI, tmp_path: Path) -> None:
    state = tmp_path / "state"
    before = {n: (state / n).read_bytes() for n in ("ca.pem", "ca.key", "tunnel.pem", "tunnel.key")}
    again = EdgePKI.load_or_create(state, list(reversed(NAMES)))
    after = {n: (state / n).read_bytes() for n in before}
    assert before == after
    assert again.ca_pem == pki.ca_pem


def test_reissue_when_names_change(pki: EdgePKI, tmp_path: Path) -> None:
    state = tmp_path / "state"
    ca_before = (state / "ca.pem").read_bytes()
    leaf_before = (state / "tunnel.pem").read_bytes()
    EdgePKI.load_or_create(state, ["localhost", "new.example.net"])
    assert (state / "ca.pem").read_bytes() == ca_before
    assert (state / "tunnel.pem").read_bytes() != leaf_before
    assert "new.example.net" in _sans(_cert(state / "tunnel.pem"))
    assert "127.0.0.1" not in _sans(_cert(state / "tunnel.pem"))
    assert _mode(state / "tunnel.key") == 0o600


def test_reissue_when_missing_or_mismatched(pki: EdgePKI, tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "tunnel.pem").unlink()
    EdgePKI.load_or_create(state, NAMES)
    assert (state / "tunnel.pem").exists()
    # A key that does not match the certificate (crash between the two writes).
    other = ec.generate_private_key(ec.SECP256R1())
    (state / "tunnel.key").write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    EdgePKI.load_or_create(state, NAMES)
    key = serialization.load_pem_private_key((state / "tunnel.key").read_bytes(), None)
    assert _cert(state / "tunnel.pem").public_key() == key.public_key()


def test_reissue_when_expiring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    monkeypatch.setattr(ca_mod, "LEAF_VALIDITY", dt.timedelta(days=20))
    EdgePKI.load_or_create(state, NAMES)
    short = _cert(state / "tunnel.pem")
    monkeypatch.setattr(ca_mod, "LEAF_VALIDITY", dt.timedelta(days=365))
    EdgePKI.load_or_create(state, NAMES)
    fresh = _cert(state / "tunnel.pem")
    assert fresh.serial_number != short.serial_number
    assert fresh.not_valid_after_utc > short.not_valid_after_utc


def test_missing_ca_key_is_an_error(pki: EdgePKI, tmp_path: Path) -> None:
    (tmp_path / "state" / "ca.key").unlink()
    with pytest.raises(ConfigError, match=r"ca\.key is missing"):
        EdgePKI.load_or_create(tmp_path / "state", NAMES)


def test_issue_server_cert(pki: EdgePKI) -> None:
    cert_pem, key_pem = pki.issue_server_cert(["App.Example.com", "*.example.com", "10.0.0.1"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert _sans(cert) == {"app.example.com", "*.example.com", "10.0.0.1"}
    key = serialization.load_pem_private_key(key_pem, None)
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(pki.ca_cert)
    ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.0.0.1") in ips.get_values_for_type(x509.IPAddress)
    with pytest.raises(ConfigError):
        pki.issue_server_cert([])


def test_sha256_signatures(pki: EdgePKI) -> None:
    for path in (pki.ca_cert_path, pki.leaf_cert_path):
        assert isinstance(_cert(path).signature_hash_algorithm, hashes.SHA256)


# -- real handshakes --------------------------------------------------------------------------


async def _handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str, host: str = "127.0.0.1"
) -> str:
    """Run a TLS handshake over loopback; return what the client read from the server."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"hello")
            await writer.drain()
        except (ssl.SSLError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, host, 0, ssl=server)
    port = srv.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=client, server_hostname=server_hostname
        )
        try:
            data = await reader.read(5)
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
            return data.decode()
        finally:
            writer.close()
    finally:
        srv.close()
        await srv.wait_closed()


def _strict(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


@pytest.mark.parametrize("name", ["h2.cftunnel.com", "probe.cftunnel.com", "localhost"])
async def test_tls_handshake(pki: EdgePKI, name: str) -> None:
    server = server_context(pki.leaf_cert_path, pki.leaf_key_path)
    client = _strict(client_context(pki.ca_cert_path))
    assert await _handshake(server, client, name) == "hello"


async def test_tls_handshake_ip_san(pki: EdgePKI) -> None:
    server = server_context(pki.leaf_cert_path, pki.leaf_key_path)
    client = client_context(pki.ca_cert_path)
    assert await _handshake(server, client, "127.0.0.1") == "hello"


async def test_tls_handshake_p256_only_tls12(pki: EdgePKI) -> None:
    # cloudflared 2025.5 offers only P-256; also cover a TLS 1.2 client.
    server = server_context(pki.leaf_cert_path, pki.leaf_key_path)
    client = client_context(pki.ca_cert_path)
    client.set_ecdh_curve("prime256v1")
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await _handshake(server, client, "h2.cftunnel.com") == "hello"


async def test_tls_wrong_ca_fails(pki: EdgePKI, tmp_path: Path) -> None:
    other = EdgePKI.load_or_create(tmp_path / "other", NAMES)
    server = server_context(pki.leaf_cert_path, pki.leaf_key_path)
    client = client_context(other.ca_cert_path)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        await _handshake(server, client, "h2.cftunnel.com")


async def test_tls_wrong_name_fails(pki: EdgePKI) -> None:
    server = server_context(pki.leaf_cert_path, pki.leaf_key_path)
    client = client_context(pki.ca_cert_path)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        await _handshake(server, client, "h3.cftunnel.com")


async def test_client_default_trust_honours_ssl_cert_file(
    pki: EdgePKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_cert_path))
    server = server_context(pki.leaf_cert_path, pki.leaf_key_path)
    assert await _handshake(server, client_context(None), "h2.cftunnel.com") == "hello"


def test_client_context_settings(pki: EdgePKI) -> None:
    ctx = client_context(pki.ca_cert_path)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    # Only the given CA is trusted.
    assert len(ctx.get_ca_certs()) == 1


def test_for_ca_leaves_the_tunnel_certificate_alone(pki: EdgePKI, tmp_path: Path) -> None:
    state = tmp_path / "state"
    leaf = (state / "tunnel.pem").read_bytes()
    again = EdgePKI.for_ca(state)
    assert again.ca_pem == pki.ca_pem
    assert (state / "tunnel.pem").read_bytes() == leaf
    fresh = EdgePKI.for_ca(tmp_path / "fresh")  # no CA yet: created
    assert fresh.ca_pem == (tmp_path / "fresh" / "ca.pem").read_bytes()
