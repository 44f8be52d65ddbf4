"""WAF custom rules managed through the CLI and the admin API, applied by a running edge from
the state store: a rule created with `burrow edge waf rule create` blocks what it names within
about two seconds and nothing else, its hostname scope holds, deleting it lifts the block; the
API refuses malformed expressions with the position and needs an operator token."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp

from burrow.edge.server import EdgeServer
from burrow.store.records import SCOPE_OPERATOR
from burrow.testing.frontdoor import edge_stack, raw_exchange

BURROW = (sys.executable, "-c", "from burrow.cli.main import main; main()")


async def _cli(edge: EdgeServer, *args: str) -> tuple[int, str, str]:
    store = ["--store-url", edge.config.store_url] if edge.config.store_url else []
    proc = await asyncio.create_subprocess_exec(
        *BURROW, *args, "--state-dir", str(edge.config.state_dir), *store,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _status(edge: EdgeServer, host: str, path: str, method: str = "GET") -> int:
    port = edge.http_addresses[0][1]
    req = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    responses = await raw_exchange(port, req.encode())
    assert len(responses) == 1, responses
    return responses[0][0]


async def _until_status(edge: EdgeServer, host: str, path: str, want: int, within: float) -> float:
    """Request again until the answer is `want`; the time that took (the edge polls its store,
    so this is a bounded wait for a change made by another process)."""
    start = time.monotonic()
    while True:
        status = await _status(edge, host, path)
        elapsed = time.monotonic() - start
        if status == want:
            return elapsed
        assert elapsed < within, f"{host}{path}: still {status} after {elapsed:.1f} s"
        await asyncio.sleep(0.05)


async def test_cli_rule_blocks_on_running_edge_and_deletion_lifts_it(tmp_path: Path) -> None:
    async with edge_stack(tmp_path / "edge", hostnames=("app.localhost", "other.localhost")) as (
        edge,
        seen,
    ):
        assert edge.gate.waf is None  # no rules: requests do not pay for the WAF
        assert await _status(edge, "app.localhost", "/admin/x") == 200

        code, out, err = await _cli(
            edge, "edge", "waf", "rule", "create",
            'http.request.uri.path matches "^/admin(/|$)"',
            "--id", "no-admin", "--host", "app.localhost",
        )  # fmt: skip
        assert code == 0, err
        assert "Created WAF rule no-admin (block, app.localhost)" in out
        took = await _until_status(edge, "app.localhost", "/admin/x", 403, within=3.0)
        assert took < 2.5
        before = len(seen)
        assert await _status(edge, "app.localhost", "/admin/x") == 403
        assert len(seen) == before  # blocked at the edge: the origin never saw it
        # Nothing else is blocked: other paths, and the same path on another hostname.
        assert await _status(edge, "app.localhost", "/administrator") == 200
        assert await _status(edge, "app.localhost", "/") == 200
        assert await _status(edge, "other.localhost", "/admin/x") == 200

        code, out, err = await _cli(edge, "edge", "waf", "rule", "list")
        assert code == 0 and "no-admin" in out and "app.localhost" in out, (out, err)
        code, out, err = await _cli(
            edge, "edge", "waf", "rule", "test", "--host", "app.localhost", "--path", "/admin"
        )
        assert (code, out.strip()) == (0, "blocked by no-admin"), err

        # A malformed expression is refused with its position; nothing is stored.
        code, _out, err = await _cli(
            edge, "edge", "waf", "rule", "create", 'http.request.uri.path eq "/x" and'
        )
        assert code == 2 and "at position 34" in err, err

        code, _out, err = await _cli(edge, "edge", "waf", "rule", "delete", "no-admin")
        assert code == 0, err
        took = await _until_status(edge, "app.localhost", "/admin/x", 200, within=3.0)
        assert took < 2.5
        assert edge.gate.waf is None


async def test_admin_api_manages_waf_rules(tmp_path: Path) -> None:
    async with edge_stack(
        tmp_path / "edge",
        hostnames=("app.localhost", "other.localhost"),
        admin_listen="127.0.0.1:0",
    ) as (edge, _seen):
        assert edge.store is not None and edge.admin_address is not None
        _, op_token = await edge.store.create_api_token(None, [SCOPE_OPERATOR], name="op")
        account = await edge.store.get_or_create_default_account()
        _, acct_token = await edge.store.create_api_token(account.id, ["account:admin"], name="a")
        base = f"http://{edge.admin_address[0]}:{edge.admin_address[1]}/api/v1/waf/rules"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {op_token}"}) as s:
            bad = {"expression": 'http.host eq "x" or ip.src in {10.0.0.0/33}', "action": "block"}
            async with s.post(base, json=bad) as r:
                assert r.status == 400
                error = (await r.json())["errors"][0]
                assert error["position"] == 32 and "at position 32" in error["message"], error
            async with s.post(base, json={"expression": "ssl", "action": "deny"}) as r:
                assert r.status == 400 and "unknown action" in await r.text()

            rule = {
                "id": "no-post",
                "expression": 'http.request.method eq "POST"',
                "action": "block",
                "hostnames": ["other.localhost"],
            }
            async with s.post(base, json=rule) as r:
                assert r.status == 201, await r.text()
                created = (await r.json())["result"]
                assert created["hostnames"] == ["other.localhost"] and created["position"] == 1
            async with s.post(base, json=rule) as r:
                assert r.status == 409
            # This node applies the change before answering.
            assert await _status(edge, "other.localhost", "/", "POST") == 403
            assert await _status(edge, "app.localhost", "/", "POST") == 200
            assert await _status(edge, "other.localhost", "/", "GET") == 200

            probe = {"host": "other.localhost", "method": "POST", "path": "/"}
            async with s.post(base + "/test", json={"request": probe}) as r:
                assert (await r.json())["result"]["blocked_by"] == "no-post"
            async with s.post(base + "/test", json={"expression": "ssl and", "request": {}}) as r:
                assert r.status == 400 and (await r.json())["errors"][0]["position"] == 8
            async with s.get(base) as r:
                assert [x["id"] for x in (await r.json())["result"]] == ["no-post"]
            async with s.delete(base + "/no-post") as r:
                assert r.status == 200
            async with s.delete(base + "/no-post") as r:
                assert r.status == 404
            assert await _status(edge, "other.localhost", "/", "POST") == 200
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {acct_token}"}) as s:
            async with s.get(base) as r:
                assert r.status == 403
