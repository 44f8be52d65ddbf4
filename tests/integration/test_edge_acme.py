"""Automatic certificates over ACME against a real test CA (Debian's pebble): a routed hostname
gets its certificate (http-01 answered by the edge), curl verifies it against pebble's root, a
newly routed hostname gets one too, and a certificate near expiry is renewed."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from burrow.edge.acme_manager import AcmeManager
from burrow.store.certificates import all_certificates, put_certificate
from burrow.testing.frontdoor import curl, edge_stack
from burrow.testing.harness import provision
from burrow.testing.pebble import free_port, pebble_missing, run_pebble

pytestmark = pytest.mark.skipif(pebble_missing() is not None, reason=str(pebble_missing()))


async def _until_installed(
    manager: AcmeManager, name: str, after: dt.datetime | None = None
) -> None:
    """Wait for maintenance cycles until `name` has a certificate (updated after `after`)."""
    async with asyncio.timeout(60):
        while True:
            cert = manager.installed.get(name)
            if cert is not None and (after is None or cert.updated_at > after):
                return
            manager.cycle_done.clear()
            await manager.cycle_done.wait()


async def test_acme_certificates_issued_verified_and_renewed(tmp_path: Path) -> None:
    http_port = free_port()
    async with run_pebble(tmp_path / "pebble", http_port) as pebble:
        async with edge_stack(
            tmp_path / "edge",
            hostnames=("app.localhost",),
            http_listen=[f"127.0.0.1:{http_port}"],
            https_listen=["127.0.0.1:0"],
            acme_directory=pebble.directory,
            acme_ca_bundle=pebble.ca_bundle,
            acme_interval=3600.0,
        ) as (edge, seen):
            manager = edge.acme
            assert manager is not None and edge.store is not None
            await _until_installed(manager, "app.localhost")
            root = tmp_path / "pebble-root.pem"
            root.write_bytes(pebble.root_pem())
            # curl verifies the certificate against pebble's root, over h2 and HTTP/1.1.
            assert (await curl(edge, "app.localhost", "/echo", "--http2", cacert=root))[:2] == (
                "2",
                200,
            )
            assert (await curl(edge, "app.localhost", "/echo", "--http1.1", cacert=root))[1] == 200
            # The challenge was answered by the edge itself, never by the origin.
            assert not any("acme-challenge" in p for p in seen)
            # Kept in the control plane (private key sealed, readable with the edge's key).
            stored = await all_certificates(edge.store, manager.box)
            assert (
                set(stored) == {"app.localhost"}
                and b"PRIVATE KEY" in stored["app.localhost"].key_pem
            )

            # A newly routed hostname gets its certificate without anyone asking.
            await provision(edge, name="later", hostnames=["new.localhost"])
            await _until_installed(manager, "new.localhost")
            _v, status, _b = await curl(edge, "new.localhost", "/", cacert=root)
            assert status == 530  # TLS verified; no connector for that tunnel yet

            # A certificate close to expiry (here: one from the edge CA valid for a day) is
            # replaced by a fresh one from the ACME CA at the next maintenance round.
            assert edge.pki is not None
            short_cert, short_key = edge.pki.issue_server_cert(
                ["app.localhost"], validity=dt.timedelta(days=1)
            )
            short = x509.load_pem_x509_certificate(short_cert)
            before = await put_certificate(
                edge.store, manager.box, "app.localhost", short_cert, short_key,
                short.not_valid_after_utc,
            )  # fmt: skip
            issued = manager.issued
            await manager.run_once()
            assert manager.issued == issued + 1
            renewed = manager.installed["app.localhost"]
            assert renewed.updated_at > before.updated_at
            assert renewed.not_after - dt.datetime.now(dt.UTC) > dt.timedelta(days=2)
            assert (await curl(edge, "app.localhost", "/echo", "--http2", cacert=root))[1] == 200


async def test_acme_tls_alpn_01(tmp_path: Path) -> None:
    """The tls-alpn-01 challenge, answered by the HTTPS listener itself (RFC 8737)."""
    http_port, https_port = free_port(), free_port()
    async with run_pebble(tmp_path / "pebble", http_port, tls_port=https_port) as pebble:
        async with edge_stack(
            tmp_path / "edge",
            hostnames=("app.localhost",),
            http_listen=[f"127.0.0.1:{http_port}"],
            https_listen=[f"127.0.0.1:{https_port}"],
            acme_directory=pebble.directory,
            acme_ca_bundle=pebble.ca_bundle,
            acme_challenges=("tls-alpn-01",),
            acme_interval=3600.0,
        ) as (edge, _seen):
            manager = edge.acme
            assert manager is not None and edge.certs is not None
            await _until_installed(manager, "app.localhost")
            assert manager.challenges == {}  # no http-01 was used
            assert edge.certs._alpn_challenges == {}  # withdrawn after validation
            root = tmp_path / "pebble-root.pem"
            root.write_bytes(pebble.root_pem())
            assert (await curl(edge, "app.localhost", "/echo", "--http2", cacert=root))[:2] == (
                "2",
                200,
            )
