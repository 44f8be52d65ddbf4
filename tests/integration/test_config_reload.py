"""`burrow tunnel run --config` as a user runs it (a subprocess), against an in-process edge:
SIGHUP and file changes reload the ingress without dropping a download in flight, a bad new
config keeps the running one, and bad configs at start exit non-zero with cloudflared's words."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from burrow.connector.credentials import TunnelCredentials, write_credentials_file
from burrow.testing.harness import provision, start_edge

HOST = {"Host": "app.localhost"}
# `python -m burrow.cli.main` would load the CLI module twice; call its entry point instead.
BURROW = (sys.executable, "-c", "from burrow.cli.main import main; main()")


def _ingress(ports: dict[str, int], app: str) -> list[dict[str, Any]]:
    return [
        {
            "hostname": "app.localhost",
            "path": "^/sse",
            "service": f"http://127.0.0.1:{ports['stream']}",
        },
        {"hostname": "app.localhost", "service": f"http://127.0.0.1:{ports[app]}"},
        {"service": "http_status:404"},
    ]


async def _wait(predicate: Any, what: str, limit: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def _body(port: int) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/", headers=HOST) as r:
        return await r.text()


async def test_sighup_and_file_change_reload_without_dropping_requests(
    tmp_path: Path, origins: dict[str, int]
) -> None:
    edge = await start_edge(tmp_path / "edge")
    proc: subprocess.Popen[bytes] | None = None
    try:
        made = await provision(edge)
        assert edge.pki is not None
        creds = tmp_path / "creds.json"
        write_credentials_file(creds, made.credentials)
        base = {
            "tunnel": str(made.tunnel.id),
            "credentials-file": str(creds),
            "edge": [f"127.0.0.1:{edge.tunnel_addresses[0][1]}"],
            "cacert": str(edge.pki.ca_cert_path),
            "ha-connections": 1,
            "grace-period": "2s",
            "no-autoupdate": True,
        }
        config = tmp_path / "config.yml"
        config.write_text(yaml.safe_dump({**base, "ingress": _ingress(origins, "one")}))
        log_path = tmp_path / "connector.log"
        with open(log_path, "wb") as log:  # noqa: ASYNC230 - a local file, opened once
            proc = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once
                [*BURROW, "tunnel", "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        port = edge.http_addresses[0][1]
        await _wait(lambda: edge.registry.pick(made.tunnel.id) is not None, "registration")
        assert await _body(port) == "one"

        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{port}/sse?n=10&interval=0.15", headers=HOST) as download,
        ):
            first = await download.content.readline()
            assert first.startswith(b"data:")
            config.write_text(yaml.safe_dump({**base, "ingress": _ingress(origins, "two")}))
            os.kill(proc.pid, signal.SIGHUP)
            await _wait(lambda: _is(port, "two"), "reload")
            rest = await download.read()
        events = [first, *[ln for ln in rest.split(b"\n") if ln.startswith(b"data:")]]
        assert len(events) == 10
        assert b"SIGHUP received: reloaded" in log_path.read_bytes()

        # A bad config (the catch-all first) keeps the running one, and says why.
        bad = _ingress(origins, "one")
        bad.reverse()
        config.write_text(yaml.safe_dump({**base, "ingress": bad}))
        await _wait(
            lambda: b"keeping the running configuration" in log_path.read_bytes(), "bad reload"
        )
        assert b"rules which follow it will never be triggered" in log_path.read_bytes()
        assert await _body(port) == "two"

        # A good file is picked up without a signal (mtime polled every second).
        config.write_text(yaml.safe_dump({**base, "ingress": _ingress(origins, "one")}))
        await _wait(lambda: _is(port, "one"), "file-change reload")
        assert proc.poll() is None
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        await edge.stop(grace=1.0)


async def _is(port: int, expected: str) -> bool:
    return await _body(port) == expected


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BURROW, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


BAD_CONFIGS = {
    "invalid_yaml": ("ingress: [\n  - service: x\n", "error parsing YAML in config file at"),
    "not_catch_all": (
        "ingress:\n  - hostname: a.example.com\n    service: http://localhost:1\n",
        "The last ingress rule must match all URLs (i.e. it should not have a hostname or path "
        "filter)",
    ),
    "bad_duration": (
        "originRequest:\n  connectTimeout: 10\ningress:\n  - service: http_status:404\n",
        "cannot unmarshal !!int `10` into time.Duration",
    ),
    "path_in_service": (
        "ingress:\n  - service: http://localhost:8000/app\n",
        "ingress rules don't support proxying to a different path",
    ),
    "lookahead": (
        "ingress:\n  - hostname: a.example.com\n    path: (?=x)\n    service: http://localhost:1\n"
        "  - service: http_status:404\n",
        "Rule #1 has an invalid regex",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_at_start_exits_non_zero_with_cloudflareds_message(
    tmp_path: Path, case: str
) -> None:
    text, expected = BAD_CONFIGS[case]
    creds = tmp_path / "creds.json"
    write_credentials_file(
        creds,
        TunnelCredentials(account_tag="a" * 32, tunnel_secret=b"s" * 32, tunnel_id=uuid.uuid4()),
    )
    config = tmp_path / "config.yml"
    config.write_text(f"credentials-file: {creds}\nedge: [127.0.0.1:1]\n{text}")
    result = _run_cli("tunnel", "run", "--config", str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr


def test_missing_config_file_and_unknown_keys(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    result = _run_cli("tunnel", "run", "--config", str(missing), cwd=tmp_path)
    assert result.returncode != 0
    assert f"open {missing}: no such file or directory" in result.stderr
    # An unknown top-level key is reported (then the run fails for lack of an edge here).
    config = tmp_path / "config.yml"
    config.write_text("ha-conections: 2\ningress:\n  - service: http_status:404\n")
    result = _run_cli("tunnel", "run", "--config", str(config), cwd=tmp_path)
    assert "unknown configuration key(s) ignored: ha-conections" in result.stderr
