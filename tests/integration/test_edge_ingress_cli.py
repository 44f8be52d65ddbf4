"""`burrow edge tunnel ingress set|show|clear` against the state of a running edge: the CLI
writes the store, the edge notices the change and pushes the configuration to the connector."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp

from burrow.ingress.rules import Ingress
from burrow.testing.harness import provision, start_connector, start_edge
from burrow.testing.origins import start_test_origin

BURROW = (sys.executable, "-c", "from burrow.cli.main import main; main()")


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *BURROW,
        *args,
        *_STORE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


_STORE: list[str] = []


async def test_ingress_set_show_clear_reaches_the_running_connector(tmp_path: Path) -> None:
    state = tmp_path / "edge"
    edge = await start_edge(state)
    # The CLI must work on the edge's store, whichever it is (PostgreSQL in the second pass).
    _STORE[:] = ["--store-url", edge.config.store_url] if edge.config.store_url else []
    runner, origin = await start_test_origin()
    connector = None
    try:
        made = await provision(edge, name="web")
        connector = await start_connector(made, Ingress.parse([{"service": "http_status:503"}]))
        config = tmp_path / "config.yml"
        config.write_text(
            "originRequest:\n  connectTimeout: 10s\n"
            f"ingress:\n  - hostname: app.localhost\n    service: http://127.0.0.1:{origin}\n"
            "  - service: http_status:404\n"
        )
        code, out, err = await _cli(
            "edge", "tunnel", "ingress", "set", "web", str(config), "--state-dir", str(state)
        )
        assert code == 0, err
        assert "version 1, 2 rule(s)" in out

        code, out, err = await _cli(
            "edge", "tunnel", "ingress", "show", "web", "--state-dir", str(state)
        )
        assert code == 0, err
        shown = json.loads(out)
        assert shown["version"] == 1
        assert shown["config"]["originRequest"] == {"connectTimeout": 10}

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        url = f"http://127.0.0.1:{edge.http_addresses[0][1]}/echo"
        async with aiohttp.ClientSession() as s:
            while True:
                async with s.get(url, headers={"Host": "app.localhost"}) as r:
                    if r.status == 200:
                        assert (await r.json())["path"] == "/echo"
                        break
                assert loop.time() < deadline, "the pushed ingress never applied"
                await asyncio.sleep(0.1)
        assert connector.orchestrator.version == 1
        assert connector.dispatcher.ingress.rules[0].origin_request.connect_timeout == 10.0

        # An invalid file is refused with cloudflared's message and changes nothing.
        bad = tmp_path / "bad.yml"
        bad.write_text("ingress:\n  - hostname: app.localhost\n    service: http://x:1\n")
        code, out, err = await _cli(
            "edge", "tunnel", "ingress", "set", "web", str(bad), "--state-dir", str(state)
        )
        assert code != 0 and "The last ingress rule must match all URLs" in err
        code, out, err = await _cli(
            "edge", "tunnel", "ingress", "set", "nope", str(config), "--state-dir", str(state)
        )
        assert code != 0 and "no tunnel named 'nope'" in err

        code, out, err = await _cli(
            "edge", "tunnel", "ingress", "clear", "web", "--state-dir", str(state)
        )
        assert code == 0 and "locally managed again" in out
        code, out, err = await _cli(
            "edge", "tunnel", "ingress", "show", "web", "--state-dir", str(state)
        )
        assert code != 0 and "locally managed" in err
    finally:
        if connector is not None:
            await connector.stop(grace=0.5)
        await runner.cleanup()
        await edge.stop(grace=0.5)
