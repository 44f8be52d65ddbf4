"""TLS contexts for the tunnel transport.

- The edge's tunnel listener is a TLS server. cloudflared's HTTP/2 transport sends no ALPN, so
  none is required. cloudflared 2025.5 offers only the P-256 key-exchange group; newer builds
  put a post-quantum share first and P-256 second. OpenSSL's default group list contains
  P-256 (and answers a post-quantum-first hello with a HelloRetryRequest when it does not know
  that group), so the default list is kept rather than narrowed.
- The connector is a TLS client that always verifies the edge, like cloudflared: with
  ``--cacert`` it trusts only that file, otherwise the system trust store (which honours
  ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``). There is no skip-verify.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["client_context", "server_context"]


def server_context(cert_path: Path | str, key_path: Path | str) -> ssl.SSLContext:
    """A TLS 1.2+ server context presenting ``cert_path``/``key_path``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_SINGLE_ECDH_USE
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx


def client_context(cafile: Path | str | None = None) -> ssl.SSLContext:
    """A verifying TLS 1.2+ client context.

    ``cafile`` given: trust only the certificates in it (cloudflared's ``--cacert``).
    ``cafile`` None: the system default trust, honouring ``SSL_CERT_FILE``.
    Strict X.509 verification is enabled, as Python 3.13+ does by default.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if cafile is not None:
        ctx.load_verify_locations(cafile=str(cafile))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return ctx
