"""The edge's request gate (limits, WAF hook) and the front-door CLI options, in memory."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from burrow.cli.edge_front import FrontDoorOptions, apply_front_door, parse_rate, parse_size
from burrow.edge.gate import RATE_LIMITED, TOO_LARGE, TUNNEL_BUSY, WAF_BLOCKED, Gate, LimitSettings
from burrow.edge.registry import Registry
from burrow.edge.server import EdgeConfig
from burrow.errors import ConfigError
from burrow.waf import WafEngine, parse_rules


def check(gate: Gate, **kw: object) -> object:
    args: dict[str, object] = dict(
        ip="192.0.2.1",
        host="app.example.com",
        method=b"GET",
        target=b"/",
        headers=[],
        content_length=None,
        ssl=False,
        ray="r",
    )
    args.update(kw)
    return gate.check_request(**args)  # type: ignore[arg-type]


def test_connections_per_ip_are_counted_and_released() -> None:
    gate = Gate(LimitSettings(max_conns_per_ip=2))
    assert gate.connection_opened("a") and gate.connection_opened("a")
    assert not gate.connection_opened("a")
    assert gate.connection_opened("b")
    gate.connection_closed("a")
    assert gate.connections("a") == 1 and gate.connection_opened("a")
    for _ in range(2):
        gate.connection_closed("a")
    assert gate.connections("a") == 0


def test_rate_limits_per_ip_and_per_host() -> None:
    gate = Gate(LimitSettings(ip_rate=0.001, ip_burst=2, host_rate=0.001, host_burst=3))
    assert check(gate) is None and check(gate) is None
    refusal = check(gate)
    assert refusal is not None and refusal.error is RATE_LIMITED  # type: ignore[attr-defined]
    assert refusal.retry_after >= 1  # type: ignore[attr-defined]
    assert check(gate, ip="192.0.2.2") is None  # host bucket: 3rd token
    assert check(gate, ip="192.0.2.3").error is RATE_LIMITED  # type: ignore[union-attr]
    assert check(gate, ip="192.0.2.4", host="other") is None


def test_body_limits_and_waf() -> None:
    waf = WafEngine(
        parse_rules([{"expression": 'http.request.uri.path eq "/x"', "action": "block"}])
    )
    gate = Gate(LimitSettings(max_body_bytes=100, body_limits={"big.example.com": 10_000}), waf)
    assert check(gate, content_length=100) is None
    assert check(gate, content_length=101).error is TOO_LARGE  # type: ignore[union-attr]
    assert check(gate, host="big.example.com", content_length=10_000) is None
    assert check(gate, target=b"/x?y").error is WAF_BLOCKED  # type: ignore[union-attr]
    assert gate.body_limit("big.example.com") == 10_000 and gate.body_limit("else") == 100


@dataclass
class FakeConn:
    tunnel_id: uuid.UUID
    conn_index: int
    in_flight: int = 0
    accepting: bool = True


def test_streams_per_tunnel() -> None:
    registry = Registry()
    tid = uuid.uuid4()
    a, b = FakeConn(tid, 0), FakeConn(tid, 1)
    registry.add(a)
    registry.add(b)
    gate = Gate(LimitSettings(max_streams_per_tunnel=3))
    assert gate.pick(registry, tid) in (a, b)  # the registry spreads ties
    a.in_flight, b.in_flight = 2, 1
    busy = gate.pick(registry, tid)
    assert busy is not None and busy.error is TUNNEL_BUSY  # type: ignore[union-attr]
    b.in_flight = 0
    assert gate.pick(registry, tid) is b
    assert gate.pick(registry, uuid.uuid4()) is None


@pytest.mark.parametrize(
    ("text", "size"), [("65536", 65536), ("512k", 512 << 10), ("10M", 10 << 20), ("1GiB", 1 << 30)]
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_parse_rate_and_errors() -> None:
    assert parse_rate("10") == (10.0, 0.0)
    assert parse_rate("5/20") == (5.0, 20.0)
    for bad in ("x", "-1", "1/x"):
        with pytest.raises(ConfigError):
            parse_rate(bad)
    with pytest.raises(ConfigError):
        parse_size("10 parsecs")


def test_apply_front_door(tmp_path: Path) -> None:
    cfg = EdgeConfig(state_dir=tmp_path)
    apply_front_door(
        cfg,
        FrontDoorOptions(
            header_timeout=5,
            rate_per_ip="10/30",
            max_body="1M",
            body_limit=["App.Example.com.=2k"],
            https_listen=["127.0.0.1:8443"],
            tls_cert=[tmp_path / "c.pem"],
            tls_key=[tmp_path / "k.pem"],
            redirect_https=True,
        ),
    )
    assert cfg.limits.header_timeout == 5 and (cfg.limits.ip_rate, cfg.limits.ip_burst) == (10, 30)
    assert cfg.limits.max_body_bytes == 1 << 20
    assert cfg.limits.body_limits == {"app.example.com": 2048}
    assert cfg.tls_certs == [(tmp_path / "c.pem", tmp_path / "k.pem")] and cfg.redirect_https
    for opts in (
        FrontDoorOptions(redirect_https=True),
        FrontDoorOptions(tls_cert=[tmp_path / "c.pem"]),
        FrontDoorOptions(body_limit=["nohost"]),
        FrontDoorOptions(acme_directory="https://acme.example/dir"),
    ):
        with pytest.raises(ConfigError):
            apply_front_door(EdgeConfig(state_dir=tmp_path), opts)
