"""Access on the HTTPS listener over HTTP/2 (curl --http2): a service token passes, the origin
gets the assertion, and the answer carries the app token as the CF_Authorization cookie."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from burrow.testing.frontdoor import curl, edge_stack

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


async def test_service_token_over_h2_sets_the_app_cookie(tmp_path: Path) -> None:
    async with edge_stack(tmp_path, https_listen=["127.0.0.1:0"]) as (edge, _seen):
        assert edge.access is not None and edge.access.store is not None
        st = edge.access.store
        app = await st.create_app("app", "app.localhost")
        tok, secret = await st.create_service_token("ci")
        await st.create_policy(app.id, "ci", "non_identity", [("service_token", tok.id, "")])
        await edge.reload()
        assert (await curl(edge, "app.localhost", "/echo", "--http2"))[:2] == ("2", 403)
        dump = tmp_path / "headers.txt"
        version, status, body = await curl(
            edge, "app.localhost", "/echo", "--http2", "-D", str(dump),
            "-H", f"CF-Access-Client-Id: {tok.client_id}",
            "-H", f"CF-Access-Client-Secret: {secret}",
        )  # fmt: skip
        assert (version, status) == ("2", 200)
        seen = {k.lower(): v for k, v in json.loads(body)["headers"]}
        jwt = seen["cf-access-jwt-assertion"]
        assert "cf-access-client-secret" not in seen
        cookies = [
            line.split(":", 1)[1].strip()
            for line in dump.read_text().splitlines()
            if line.lower().startswith("set-cookie:")
        ]
        assert any(c.startswith(f"CF_Authorization={jwt};") and "Secure" in c for c in cookies)
        got = await curl(
            edge, "app.localhost", "/echo", "--http2", "-H", f"Cookie: CF_Authorization={jwt}"
        )
        assert got[:2] == ("2", 200)
