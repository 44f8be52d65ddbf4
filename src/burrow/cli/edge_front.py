"""The front-door options of `burrow edge serve` (limits, WAF rules, HTTPS), applied to an
`EdgeConfig`. Kept apart from cli/edge.py so that file stays about the edge's basics."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from burrow.edge.server import EdgeConfig
from burrow.errors import ConfigError

_SIZE_RE = re.compile(r"(\d+)\s*([kmgKMG]?)(i?[bB]?)")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
ACME_CHALLENGES = ("http-01", "tls-alpn-01", "dns-01")


def parse_size(text: str) -> int:
    """`1048576`, `512k`, `10M`, `1GiB` -> bytes (binary units)."""
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise ConfigError(f"invalid size {text!r} (examples: 65536, 512k, 10M, 1G)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def parse_rate(text: str) -> tuple[float, float]:
    """`RATE` or `RATE/BURST` requests per second -> (rate, burst); burst 0 = twice the rate."""
    rate_s, _, burst_s = text.partition("/")
    try:
        rate = float(rate_s)
        burst = float(burst_s) if burst_s else 0.0
    except ValueError:
        raise ConfigError(f"invalid rate {text!r} (requests per second, or RATE/BURST)") from None
    if rate < 0 or burst < 0:
        raise ConfigError(f"invalid rate {text!r}: must not be negative")
    return rate, burst


@dataclass
class FrontDoorOptions:
    header_timeout: float | None = None
    idle_timeout: float | None = None
    max_conns_per_ip: int | None = None
    rate_per_ip: str | None = None
    rate_per_host: str | None = None
    max_body: str | None = None
    body_limit: list[str] = field(default_factory=list)
    max_streams_per_tunnel: int | None = None
    waf_rules: Path | None = None
    https_listen: list[str] = field(default_factory=list)
    tls_cert: list[Path] = field(default_factory=list)
    tls_key: list[Path] = field(default_factory=list)
    redirect_https: bool = False
    acme_directory: str | None = None
    acme_email: str | None = None
    acme_ca_bundle: Path | None = None
    acme_dns_hook: str | None = None
    acme_challenges: list[str] = field(default_factory=list)


def apply_front_door(cfg: EdgeConfig, opts: FrontDoorOptions) -> None:
    lim = cfg.limits
    if opts.header_timeout is not None:
        lim.header_timeout = opts.header_timeout
    if opts.idle_timeout is not None:
        lim.idle_timeout = opts.idle_timeout
    if opts.max_conns_per_ip is not None:
        lim.max_conns_per_ip = opts.max_conns_per_ip
    if opts.rate_per_ip:
        lim.ip_rate, lim.ip_burst = parse_rate(opts.rate_per_ip)
    if opts.rate_per_host:
        lim.host_rate, lim.host_burst = parse_rate(opts.rate_per_host)
    if opts.max_body:
        lim.max_body_bytes = parse_size(opts.max_body)
    if opts.body_limit:
        limits = dict(lim.body_limits)
        for item in opts.body_limit:
            host, eq, size = item.partition("=")
            if not eq or not host.strip():
                raise ConfigError(f"--body-limit takes HOST=SIZE, got {item!r}")
            limits[host.strip().lower().rstrip(".")] = parse_size(size)
        lim.body_limits = limits
    if opts.max_streams_per_tunnel is not None:
        lim.max_streams_per_tunnel = opts.max_streams_per_tunnel
    if opts.waf_rules is not None:
        cfg.waf_rules = opts.waf_rules.expanduser()
    if opts.https_listen:
        cfg.https_listen = list(opts.https_listen)
    if len(opts.tls_cert) != len(opts.tls_key):
        raise ConfigError("give one --tls-key for every --tls-cert (paired in order)")
    if opts.tls_cert:
        cfg.tls_certs = [
            (c.expanduser(), k.expanduser())
            for c, k in zip(opts.tls_cert, opts.tls_key, strict=True)
        ]
    if opts.acme_directory:
        if not cfg.https_listen:
            raise ConfigError("--acme-directory needs --https-listen")
        cfg.acme_directory = opts.acme_directory
        cfg.acme_email = opts.acme_email
        cfg.acme_ca_bundle = opts.acme_ca_bundle.expanduser() if opts.acme_ca_bundle else None
        cfg.acme_dns_hook = opts.acme_dns_hook or None
        if opts.acme_challenges:
            kinds = tuple(dict.fromkeys(k.strip().lower() for k in opts.acme_challenges))
            unknown = set(kinds) - set(ACME_CHALLENGES)
            if unknown:
                raise ConfigError(
                    f"unknown --acme-challenge {', '.join(sorted(unknown))} "
                    f"(use {', '.join(ACME_CHALLENGES)})"
                )
            if "dns-01" in kinds and not cfg.acme_dns_hook:
                raise ConfigError("--acme-challenge dns-01 needs --acme-dns-hook")
            cfg.acme_challenges = kinds
    elif opts.acme_dns_hook or opts.acme_challenges:
        raise ConfigError("--acme-dns-hook and --acme-challenge need --acme-directory")
    if opts.redirect_https:
        if not cfg.https_listen:
            raise ConfigError("--redirect-https needs --https-listen")
        cfg.redirect_https = True
