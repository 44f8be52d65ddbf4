"""The public HTTPS listener: SNI certificates (edge CA for development, operator files reloaded
on change), HTTP/2 eyeballs with HTTP/1.1 fallback through the tunnel (curl, h2load), and the
HTTP -> HTTPS redirect."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import ssl
import time
from pathlib import Path

import pytest
import trustme

from burrow.edge.gate import LimitSettings
from burrow.testing.frontdoor import curl, edge_stack, raw_exchange
from burrow.testing.origins import pattern_bytes

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

HOSTS = ["app.localhost", "other.localhost", "files.localhost"]


async def test_h2_and_h1_over_https_through_the_tunnel(tmp_path: Path) -> None:
    async with edge_stack(tmp_path, https_listen=["127.0.0.1:0"]) as (edge, _seen):
        for flag, expected in (("--http2", "2"), ("--http1.1", "1.1")):
            version, status, body = await curl(edge, "app.localhost", "/echo?x=1", flag)
            assert (version, status) == (expected, 200)
            info = json.loads(body)
            headers = {k.lower(): v for k, v in info["headers"]}
            assert info["path"] == "/echo?x=1" and info["host"] == "app.localhost"
            assert headers["x-forwarded-proto"] == "https"
            assert json.loads(headers["cf-visitor"]) == {"scheme": "https"}
            assert headers["cf-connecting-ip"] == "127.0.0.1"
        # Edge-generated answers over h2 too.
        assert (await curl(edge, "nobody.localhost", "/", "--http2", "-k"))[:2] == ("2", 404)


async def test_h2_upload_and_download_exact_bytes(tmp_path: Path) -> None:
    async with edge_stack(tmp_path, https_listen=["127.0.0.1:0"]) as (edge, _seen):
        size = 5 * 1024 * 1024 + 17
        for path in ("/fixed", "/download"):
            out = tmp_path / "down.bin"
            version, status, _ = await curl(
                edge, "app.localhost", f"{path}?size={size}", "--http2", "-o", str(out)
            )
            assert (version, status) == ("2", 200)
            assert (
                hashlib.sha256(out.read_bytes()).digest()
                == hashlib.sha256(pattern_bytes(size)).digest()
            )
        blob = pattern_bytes(3 * 1024 * 1024 + 5)
        up = tmp_path / "up.bin"
        up.write_bytes(blob)
        version, status, body = await curl(
            edge, "app.localhost", "/upload", "--http2", "--data-binary", f"@{up}"
        )
        assert (version, status) == ("2", 200)
        assert json.loads(body) == {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load (nghttp2-client)")
async def test_h2load_many_concurrent_streams_on_one_connection(tmp_path: Path) -> None:
    async with edge_stack(tmp_path, https_listen=["127.0.0.1:0"]) as (edge, _seen):
        port = edge.https_addresses[0][1]

        async def h2load(*args: str) -> str:
            proc = await asyncio.create_subprocess_exec(
                "h2load", *args, "-H", ":authority: app.localhost",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            return out.decode()

        # One connection, 100 streams at a time, each waiting 0.3 s at the origin: only
        # concurrency on that connection finishes 200 of them in a few seconds.
        t0 = time.monotonic()
        out = await h2load(
            "-n", "200", "-c", "1", "-m", "100", f"https://127.0.0.1:{port}/slow?delay=0.3"
        )
        assert "200 succeeded, 0 failed, 0 errored" in out, out
        assert "Application protocol: h2" in out
        assert time.monotonic() - t0 < 15
        out = await h2load("-n", "3000", "-c", "4", "-m", "50", f"https://127.0.0.1:{port}/echo")
        assert "3000 succeeded, 0 failed, 0 errored" in out, out
        assert sum(c.in_flight for c in edge.registry.all()) == 0
        assert edge.gate.connections("127.0.0.1") == 0


async def test_h2_limits_and_waf(tmp_path: Path) -> None:
    rules = tmp_path / "waf.yaml"
    rules.write_text(
        "rules:\n  - {expression: 'http.request.uri.path contains \"/admin\" and ssl', action: block}\n"
    )
    limits = LimitSettings(body_limits={"app.localhost": 1000})
    async with edge_stack(
        tmp_path / "edge", https_listen=["127.0.0.1:0"], waf_rules=rules, limits=limits
    ) as (edge, seen):
        assert (await curl(edge, "app.localhost", "/admin", "--http2"))[:2] == ("2", 403)
        big = tmp_path / "big.bin"
        big.write_bytes(b"x" * 5000)
        # With a content-length: refused before anything reaches the tunnel.
        _v, status, _b = await curl(
            edge, "app.localhost", "/upload", "--http2", "--data-binary", f"@{big}"
        )
        assert status == 413 and seen == []
        # Without one the request is streamed; it is cut off with 413 once over the limit.
        _v, status, _b = await curl(
            edge, "app.localhost", "/upload", "--http2", "--data-binary", f"@{big}",
            "-H", "Transfer-Encoding: chunked",
        )  # fmt: skip
        assert status == 413
        assert (await curl(edge, "app.localhost", "/admin", "--http1.1"))[1] == 403
        assert (await curl(edge, "app.localhost", "/echo", "--http2"))[1] == 200
        assert "/admin" not in seen and seen[-1] == "/echo"


def _ssl_client(cafile: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _peer_names(port: int, server_name: str) -> list[str]:
    """The DNS names of the certificate the listener presents for `server_name`."""
    from cryptography import x509

    _r, w = await asyncio.open_connection(
        "127.0.0.1", port, ssl=_ssl_client(None), server_hostname=server_name
    )
    der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
    w.close()
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    return san.value.get_values_for_type(x509.DNSName)


async def test_sni_operator_certificates_reloaded_and_dev_certs_only_for_routed_names(
    tmp_path: Path,
) -> None:
    ca1, ca2 = trustme.CA(), trustme.CA()
    cert, key = tmp_path / "files.pem", tmp_path / "files.key"
    leaf = ca1.issue_cert("files.localhost")
    leaf.private_key_pem.write_to_path(str(key))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    ca1_file, ca2_file = tmp_path / "ca1.pem", tmp_path / "ca2.pem"
    ca1.cert_pem.write_to_path(str(ca1_file))
    ca2.cert_pem.write_to_path(str(ca2_file))
    async with edge_stack(
        tmp_path / "edge", https_listen=["127.0.0.1:0"], tls_certs=[(cert, key)]
    ) as (edge, _seen):
        port = edge.https_addresses[0][1]
        # The operator's certificate for its name, verified against the operator's CA.
        assert (await curl(edge, "files.localhost", "/echo", "--http2", cacert=ca1_file))[1] == 200
        # A routed name without an operator certificate: the edge CA issues one (development).
        assert (await curl(edge, "app.localhost", "/echo", "--http2"))[1] == 200
        assert await _peer_names(port, "app.localhost") == ["app.localhost"]
        assert edge.certs is not None
        issued = edge.certs.dev_issued
        # Names the edge does not route get the default certificate, and nothing is minted.
        assert await _peer_names(port, "evil.localhost") == ["files.localhost"]
        assert edge.certs.dev_issued == issued
        # The operator replaces the files: the new certificate is served after the reload.
        leaf2 = ca2.issue_cert("files.localhost")
        leaf2.private_key_pem.write_to_path(str(key))
        leaf2.cert_chain_pems[0].write_to_path(str(cert))
        assert edge.certs.maybe_reload()
        assert (await curl(edge, "files.localhost", "/echo", "--http2", cacert=ca2_file))[1] == 200
        # A broken replacement keeps the previous certificate.
        cert.write_text("not a certificate")
        assert not edge.certs.maybe_reload()
        assert (await curl(edge, "files.localhost", "/echo", cacert=ca2_file))[1] == 200


async def test_http_is_redirected_to_https(tmp_path: Path) -> None:
    async with edge_stack(tmp_path, https_listen=["127.0.0.1:0"], redirect_https=True) as (
        edge,
        seen,
    ):
        http_port = edge.http_addresses[0][1]
        https_port = edge.https_addresses[0][1]
        got = await raw_exchange(
            http_port,
            b"GET /echo?q=1 HTTP/1.1\r\nHost: App.localhost\r\n\r\n"
            b"POST /form HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 2\r\n\r\nab",
        )
        assert [g[0] for g in got] == [301, 308]
        assert got[0][1][b"location"] == f"https://app.localhost:{https_port}/echo?q=1".encode()
        assert got[1][1][b"location"] == f"https://app.localhost:{https_port}/form".encode()
        # ACME http-01 challenges stay on plain HTTP.
        got = await raw_exchange(
            http_port,
            b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: app.localhost\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert got[0][0] == 200 and seen == ["/.well-known/acme-challenge/tok"]
        assert (await curl(edge, "app.localhost", "/echo", "--http2"))[1] == 200
