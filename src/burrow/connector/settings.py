"""`burrow tunnel run` settings from cloudflared's config.yml: which top-level keys exist, and
how a file value fills in for a flag that was not given.

cloudflared reads every flag of `tunnel run` from the config file too (urfave/cli `altsrc`), with
flag > environment variable > file > default. Typer already resolves flag > environment; the
helpers here add the file and the default. Top-level keys cloudflared does not know are reported
(cloudflared would silently ignore them; a typo such as `ha-conections` deserves a warning).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from burrow.errors import ConfigError
from burrow.ingress.config import ConfigFile, UnvalidatedRule, parse_duration
from burrow.ingress.rules import Ingress

# The config struct's own keys, then every flag of `cloudflared tunnel [run]`.
KNOWN_KEYS = frozenset(
    """
    tunnel ingress warp-routing originRequest
    config credentials-file cred-file credentials-contents token token-file origincert
    url hello-world unix-socket bastion socks5 proxy-address proxy-port
    proxy-connect-timeout proxy-tls-timeout proxy-tcp-keepalive proxy-no-happy-eyeballs
    proxy-keepalive-connections proxy-keepalive-timeout proxy-connection-timeout
    proxy-expect-continue-timeout http-host-header origin-server-name origin-ca-pool
    no-tls-verify no-chunked-encoding http2-origin
    metrics metrics-update-freq pidfile autoupdate-freq no-autoupdate is-autoupdated no-prechecks
    loglevel log-level transport-loglevel logfile log-directory trace-output output
    edge region edge-ip-version edge-bind-address cacert protocol ha-connections retries
    max-edge-addr-retries grace-period rpc-timeout dial-edge-timeout write-stream-timeout
    heartbeat-interval heartbeat-count compression-quality use-reconnect-token
    post-quantum features label tag hostname id name lb-pool api-url overwrite-dns
    management-hostname management-diagnostics service-op-ip local-ssh-port ssh-idle-timeout
    ssh-max-timeout ssh-server host-key-path bucket-name region-name s3-url-host
    max-active-flows icmpv4-src icmpv6-src dns-resolver-addrs stdin-control quick-service
    quic-connection-level-flow-control-limit quic-stream-level-flow-control-limit
    quic-disable-pmtu-discovery connector-id
    """.split()
)


def unknown_keys(raw: Mapping[str, Any]) -> list[str]:
    return sorted(str(k) for k in raw if str(k) not in KNOWN_KEYS)


def unknown_keys_warning(raw: Mapping[str, Any], source: str) -> str | None:
    unknown = unknown_keys(raw)
    if not unknown:
        return None
    return f"warning: {source}: unknown configuration key(s) ignored: {', '.join(unknown)}"


def pick(flag: Any, raw: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """The flag's value (already flag > environment), else the file's, else the default."""
    if flag is not None:
        return flag
    value = raw.get(key)
    return default if value is None else value


def as_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ConfigError(f"{key}: expected a boolean, got {value!r}")


def as_int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected an integer, got {value!r}") from None


def as_seconds(value: Any, key: str) -> float:
    """A Go duration (`30s`, `1m30s`) or, as burrow also accepts, a bare number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"invalid duration for {key}: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise ConfigError(f"invalid value for {key}: {exc}") from None


def find_credentials_file(tunnel: str | None, config_source: str | None) -> Path | None:
    """cloudflared's lookup of `<tunnel-UUID>.json` when no credentials file is named: next to
    the config file, then in the default config directories."""
    if not tunnel:
        return None
    try:
        tunnel_id = uuid.UUID(str(tunnel))
    except ValueError:
        return None
    dirs = []
    if config_source:
        dirs.append(Path(config_source).parent)
    dirs += [Path(os.path.expanduser(d)) for d in ("~/.cloudflared", "~/.cloudflare-warp")]
    dirs += [Path("/etc/cloudflared"), Path("/usr/local/etc/cloudflared")]
    for directory in dirs:
        path = directory / f"{tunnel_id}.json"
        if path.is_file():
            return path
    return None


@dataclass(frozen=True, slots=True)
class IngressSpec:
    """What the connector's ingress is built from, as plain data.

    A built `Ingress` holds compiled (re2) patterns, which cannot be pickled; `burrow tunnel
    run` validates the ingress while parsing its flags, hands this to the process that runs the
    connector (see burrow.launch), and that process builds the same `Ingress` again."""

    url: str | None = None
    hello_world: bool = False
    rules: tuple[UnvalidatedRule, ...] = ()
    origin_request: Mapping[str, Any] | None = None

    def build(self) -> Ingress:
        if self.url or self.hello_world:
            return Ingress.single(self.url, hello_world=self.hello_world)
        if self.rules:
            return Ingress.parse(list(self.rules), self.origin_request)
        return Ingress.single(None)


def ingress_spec(url: str | None, hello_world: bool | None, cfg: ConfigFile | None) -> IngressSpec:
    """cloudflared's precedence: `--url`/`--hello-world` (flag, else the file's key) make one
    catch-all rule; otherwise the file's `ingress:` rules; with neither, every request is a 503."""
    raw = cfg.raw if cfg is not None else {}
    url = pick(url, raw, "url")
    hello = as_bool(pick(hello_world, raw, "hello-world", False), "hello-world")
    if url or hello:
        return IngressSpec(url=str(url) if url else None, hello_world=hello)
    if cfg is not None and cfg.ingress:
        return IngressSpec(rules=tuple(cfg.ingress), origin_request=dict(cfg.origin_request))
    return IngressSpec()
