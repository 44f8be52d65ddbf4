"""WAF custom rules at a real edge: they block and log what they name, and nothing else."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from burrow.edge.server import EdgeConfig, EdgeServer
from burrow.errors import ConfigError
from burrow.testing.frontdoor import edge_stack, raw_exchange

RULES = """
rules:
  - id: office
    expression: ip.src in {127.0.0.9/32}
    action: skip
  - id: watch-curl
    expression: lower(http.user_agent) contains "curl"
    action: log
  - id: no-admin
    description: the admin area is not public
    expression: http.request.uri.path matches "^/admin(/|$)" or http.request.headers["x-evil"] eq "1"
    action: block
  - id: api-readonly
    expression: not http.request.method in {"GET" "HEAD"}
    action: block
    hostnames: [other.localhost]
"""


async def test_waf_blocks_and_logs_only_what_rules_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = tmp_path / "waf.yaml"
    rules.write_text(RULES)
    caplog.set_level(logging.INFO, logger="burrow.waf")
    async with edge_stack(tmp_path / "edge", waf_rules=rules) as (edge, seen):
        base = f"http://127.0.0.1:{edge.http_addresses[0][1]}"
        app = {"Host": "app.localhost", "User-Agent": "test"}
        other = {"Host": "other.localhost", "User-Agent": "test"}
        async with aiohttp.ClientSession() as s:

            async def status(method: str, path: str, headers: dict[str, str]) -> int:
                async with s.request(method, base + path, headers=headers) as r:
                    body = await r.text()
                    if r.status == 403:
                        assert "Error 1020" in body and "Cf-Ray" in r.headers
                    return r.status

            assert await status("GET", "/admin", app) == 403
            assert await status("GET", "/admin/users?x=1", app) == 403
            assert await status("GET", "/administrator", app) == 200  # regex anchored on /
            assert await status("GET", "/echo", {**app, "X-Evil": "1"}) == 403
            assert await status("GET", "/echo", {**app, "X-Evil": "0"}) == 200
            assert await status("POST", "/echo", app) == 200  # per-host rule not for app
            assert await status("POST", "/echo", other) == 403
            assert await status("GET", "/echo", other) == 200
            assert await status("GET", "/echo", {**app, "User-Agent": "Curl/8"}) == 200
            assert seen == ["/administrator", "/echo", "/echo", "/echo", "/echo"]
            assert edge.waf is not None and edge.waf.blocked == 4 and edge.waf.logged == 1
            logged = [r.getMessage() for r in caplog.records if "(log)" in r.getMessage()]
            assert len(logged) == 1 and "watch-curl" in logged[0] and "/echo" in logged[0]

            # The file changes: the edge picks the new rules up (kept if the new file is bad).
            rules.write_text(RULES.replace('"^/admin(/|$)"', '"^/echo"'))
            assert edge.waf.maybe_reload()
            assert await status("GET", "/admin", app) == 200
            assert await status("GET", "/echo", app) == 403
            rules.write_text("rules:\n  - {expression: 'http.host eq', action: block}\n")
            assert not edge.waf.maybe_reload()
            assert await status("GET", "/echo", app) == 403


async def test_raw_socket_from_skipped_address_is_not_blocked(tmp_path: Path) -> None:

    rules = tmp_path / "waf.yaml"
    rules.write_text(RULES)
    async with edge_stack(tmp_path / "edge", waf_rules=rules) as (edge, _seen):
        port = edge.http_addresses[0][1]
        req = b"GET /admin HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n"
        assert (await raw_exchange(port, req, local="127.0.0.9"))[0][0] == 200  # skip wins
        assert (await raw_exchange(port, req, local="127.0.0.8"))[0][0] == 403


def test_edge_refuses_to_start_with_a_broken_rules_file(tmp_path: Path) -> None:
    rules = tmp_path / "waf.yaml"
    rules.write_text("rules:\n  - {expression: 'http.host eq \"a\" and', action: block}\n")
    with pytest.raises(ConfigError, match="position 21"):
        EdgeServer(EdgeConfig(state_dir=tmp_path, waf_rules=rules))
