"""Certificate work in a child process (burrow.pki.worker): the CA and tunnel certificate on
first start, and development certificates issued before the handshake once the SNI is known
(burrow.net.listen.GatedTLSServer with `prepare`), without blocking the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509

from burrow.errors import ConfigError
from burrow.pki import worker
from burrow.pki.ca import CHECK_FILE, EdgePKI
from burrow.testing.frontdoor import curl, edge_stack
from burrow.wire.tls_hello import parse_client_hello

NAMES = ["localhost", "127.0.0.1", "::1"]


def _client_hello(server_name: str | None) -> bytes:
    """The ClientHello an ssl client sends (with post-quantum-sized shares when offered)."""
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=server_name)
    if server_name is None:
        ctx.check_hostname = False
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_parse_client_hello_finds_sni_and_asks_for_more_bytes() -> None:
    hello = _client_hello("App.Example.com")
    assert parse_client_hello(hello) == (True, "app.example.com", 0)
    # Cut anywhere: not done, and the total number of bytes to wait for is known.
    for cut in (0, 3, 5, 40, len(hello) - 1):
        done, name, need = parse_client_hello(hello[:cut])
        assert not done and name is None and cut < need <= len(hello)
    # The same hello split over two TLS records.
    body = hello[5:]
    split = (
        hello[:3]
        + (30).to_bytes(2, "big")
        + body[:30]
        + hello[:3]
        + (len(body) - 30).to_bytes(2, "big")
        + body[30:]
    )
    assert parse_client_hello(split) == (True, "app.example.com", 0)
    assert parse_client_hello(b"GET / HTTP/1.1\r\n\r\n") == (True, None, 0)
    assert parse_client_hello(_client_hello(None))[:2] == (True, None)


async def test_first_start_in_a_child_then_verified_without_parsing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    pki = await worker.open_edge_pki(state, NAMES, out_of_process=True)
    assert pki._ca is None  # nothing parsed in this process
    for name in ("ca.pem", "ca.key", "tunnel.pem", "tunnel.key", CHECK_FILE):
        assert (state / name).is_file()
    record = json.loads((state / CHECK_FILE).read_text())
    assert set(record["names"]) == set(pki.tunnel_names)
    # The second start confirms the files by their digests alone.
    assert EdgePKI.open_verified(state, NAMES) is not None
    # Other names, or changed files, need the full check again (which reissues the leaf).
    assert EdgePKI.open_verified(state, ["localhost"]) is None
    leaf = (state / "tunnel.pem").read_bytes()
    (state / "tunnel.pem").write_bytes(leaf + b"\n")
    assert EdgePKI.open_verified(state, NAMES) is None
    await worker.open_edge_pki(state, NAMES, out_of_process=True)
    assert EdgePKI.open_verified(state, NAMES) is not None
    # A certificate issued by the child has the in-process profile and verifies.
    cert_pem, key_pem = await worker.issue_server_cert(pki, ["App.localhost"], out_of_process=True)
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(pki.ca_pem))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["app.localhost"]
    assert b"PRIVATE KEY" in key_pem


async def test_child_errors_keep_their_message(tmp_path: Path) -> None:
    state = tmp_path / "state"
    pki = await worker.open_edge_pki(state, NAMES, out_of_process=True)
    (state / "ca.key").unlink()
    with pytest.raises(ConfigError, match=r"ca\.key is missing but .*ca\.pem exists"):
        await worker.open_edge_pki(state, NAMES, out_of_process=True)
    with pytest.raises(ConfigError, match=r"ca\.key is missing"):
        await worker.issue_server_cert(pki, ["a.localhost"], out_of_process=True)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_dev_certificates_issued_in_a_child_before_the_handshake(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with edge_stack(
        tmp_path / "edge", https_listen=["127.0.0.1:0"], pki_out_of_process=True
    ) as (edge, _seen):
        assert edge.certs is not None
        loop = asyncio.get_running_loop()
        # The event loop keeps turning while the child issues: no pause near as long as the
        # issuance (a busy 2-core machine can still delay single ticks).
        gaps: list[float] = []

        async def ticker() -> None:
            last = loop.time()
            while True:
                await asyncio.sleep(0.01)
                gaps.append(loop.time() - last)
                last = loop.time()

        tick = asyncio.create_task(ticker())
        t0 = loop.time()
        try:
            # Several handshakes for the same new name at once: one issuance.
            results = await asyncio.gather(
                *(curl(edge, "app.localhost", "/echo", "--http2") for _ in range(3))
            )
        finally:
            elapsed = loop.time() - t0
            tick.cancel()
        assert [r[:2] for r in results] == [("2", 200)] * 3
        assert edge.certs.dev_issued == 1
        assert len(gaps) >= 5 and max(gaps) < elapsed / 2, (max(gaps), elapsed)
        assert (await curl(edge, "other.localhost", "/echo", "--http1.1"))[:2] == ("1.1", 200)
        assert edge.certs.dev_issued == 2
        # An unrouted name: nothing is issued, the default certificate is presented.
        assert (await curl(edge, "nobody.localhost", "/", "--http2", "-k"))[:2] == ("2", 404)
        assert edge.certs.dev_issued == 2
        # A failing issuance: the same error as in-process, and the default certificate.
        assert edge.pki is not None
        (edge.pki.ca_key_path).rename(tmp_path / "ca.key.away")
        with caplog.at_level(logging.ERROR, logger="burrow.edge.certs"):
            t0 = time.monotonic()
            version, status, _ = await curl(edge, "files.localhost", "/echo", "--http2", "-k")
            assert (version, status) == ("2", 200)
            assert time.monotonic() - t0 < 10
        assert "choosing a certificate for 'files.localhost' failed" in caplog.text
        assert "ca.key is missing" in caplog.text
        assert edge.certs.dev_issued == 2
