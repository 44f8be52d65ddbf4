"""The connector's Orchestrator: remote pushes with cloudflared's version semantics and JSON
form (durations in seconds), and local reloads that keep the running config when the new one is
bad."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from burrow.connector.orchestrator import Orchestrator
from burrow.connector.proxy import Dispatcher
from burrow.ingress.rules import HTTPService, Ingress, StatusService


def _orchestrator(config_path: str | None = None) -> Orchestrator:
    ingress = Ingress.parse([{"service": "http_status:503"}])
    return Orchestrator(Dispatcher(ingress, connector_id=b"x"), config_path=config_path)


def _push(version: Any, config: Any) -> bytes:
    return json.dumps({"version": version, "config": config}).encode()


GOOD: dict[str, Any] = {
    "ingress": [
        {
            "hostname": "a.example.com",
            "service": "https://localhost:8443",
            "originRequest": {"connectTimeout": 7, "noTLSVerify": True, "http2Origin": True},
        },
        {"service": "http_status:404"},
    ],
    "originRequest": {"keepAliveTimeout": 45, "httpHostHeader": "internal"},
    "warp-routing": {},
}


async def test_versions_apply_in_order_and_older_ones_are_ignored() -> None:
    orch = _orchestrator()
    assert orch.version == -1
    assert orch.apply_remote(_push(0, GOOD)) == (0, None)
    rule = orch.ingress.rules[0]
    assert isinstance(rule.service, HTTPService) and rule.service.port == 8443
    opts = rule.origin_request
    assert (opts.connect_timeout, opts.no_tls_verify, opts.http2_origin) == (7.0, True, True)
    assert (opts.keep_alive_timeout, opts.http_host_header) == (45.0, "internal")
    assert orch.ingress.rules[1].origin_request.connect_timeout == 30.0  # default kept
    other = {"ingress": [{"service": "http_status:500"}]}
    assert orch.apply_remote(_push(0, other)) == (0, None)  # same version: ignored
    assert isinstance(orch.ingress.rules[0].service, HTTPService)
    assert orch.apply_remote(_push(5, other)) == (5, None)
    assert orch.ingress.rules[0].service == StatusService(500)
    assert orch.config_document() == {"version": 5, "config": other}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"ingress": []}, "The config file doesn't contain any ingress rules"),
        (
            {
                "ingress": [
                    {"service": "http_status:404", "originRequest": {"connectTimeout": "10s"}}
                ]
            },
            'strconv.ParseInt: parsing "\\"10s\\"": invalid syntax',
        ),
        (
            {"ingress": [{"hostname": "a.example.com", "service": "http://x:1"}]},
            "The last ingress rule must match all URLs",
        ),
        (
            {"ingress": [{"service": "http_status:404", "originRequest": {"noTLSVerify": "yes"}}]},
            "cannot unmarshal string into Go struct field",
        ),
        ({"ingress": [{"service": "http://localhost:80/path"}]}, "ingress rules don't support"),
    ],
)
async def test_invalid_push_keeps_the_running_config(config: Any, message: str) -> None:
    orch = _orchestrator()
    assert orch.apply_remote(_push(1, GOOD)) == (1, None)
    version, err = orch.apply_remote(_push(2, config))
    assert version == 1 and err is not None and message in err
    assert isinstance(orch.ingress.rules[0].service, HTTPService)
    assert orch.last_push == (2, err)


async def test_malformed_envelope() -> None:
    orch = _orchestrator()
    assert orch.apply_remote(b"not json")[1] is not None
    assert orch.apply_remote(b'{"version": "1", "config": {}}')[1] is not None
    assert orch.version == -1
    # A config sent as a JSON string is accepted too.
    assert orch.apply_remote(_push(3, json.dumps(GOOD))) == (3, None)


async def test_local_reload_keeps_running_config_when_the_file_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("ingress:\n  - service: http_status:201\n")
    orch = _orchestrator(str(path))
    assert not orch.file_changed()
    path.write_text("ingress:\n  - service: http_status:202\n  # longer\n")
    assert orch.file_changed()
    assert orch.reload_local() is True
    assert orch.ingress.rules[0].service == StatusService(202)
    for bad in ("ingress: [\n", "originRequest:\n  connectTimeout: 10\ningress:\n  - service: x\n"):
        path.write_text(bad)
        assert orch.reload_local() is False
        assert orch.ingress.rules[0].service == StatusService(202)
    path.unlink()
    assert orch.reload_local() is False
    # Once the edge manages the tunnel, the local file no longer applies.
    path.write_text("ingress:\n  - service: http_status:204\n")
    assert orch.apply_remote(_push(1, GOOD)) == (1, None)
    assert orch.reload_local() is False
    assert isinstance(orch.ingress.rules[0].service, HTTPService)
