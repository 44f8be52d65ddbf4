"""`burrow tunnel run`: the connector, with cloudflared's flags, environment variables and
config file (`tunnel`, `credentials-file`, `ingress`, `originRequest`, ...)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

import typer

from burrow.cli.common import (
    as_list,
    fail,
    handle_errors,
    run_async,
    serve_until_signal,
    split_list,
)
from burrow.cli.main import tunnel_app
from burrow.connector.credentials import TunnelCredentials, decode_token, load_credentials_file
from burrow.connector.settings import (
    as_bool,
    as_seconds,
    find_credentials_file,
    pick,
    unknown_keys_warning,
)
from burrow.connector.supervisor import Connector, ConnectorConfig
from burrow.errors import ConfigError, RegistrationError
from burrow.ingress.config import ConfigFile, load_config_file
from burrow.ingress.rules import Ingress
from burrow.ingress.validate import find_default_config
from burrow.observability.logs import setup_logging

log = logging.getLogger("burrow.connector")


@tunnel_app.callback()
def tunnel_options(
    ctx: typer.Context,
    config: Path = typer.Option(
        None, "--config", help="cloudflared-style config.yml (also accepted after the verb)."
    ),
    origincert: Path = typer.Option(
        None, "--origincert", envvar="TUNNEL_ORIGIN_CERT", help="cert.pem from `tunnel login`."
    ),
) -> None:
    """cloudflared's form `burrow tunnel --config F VERB ...`."""
    ctx.obj = {"config": str(config) if config else None, "origincert": origincert}


def _credentials(
    token: str | None,
    credentials_file: Path | None,
    cfg: ConfigFile | None,
    tunnel: str | None = None,
) -> TunnelCredentials:
    raw = cfg.raw if cfg is not None else {}
    token = token or (str(raw["token"]) if raw.get("token") else None)
    if token:
        return decode_token(token)
    path = credentials_file
    for key in ("credentials-file", "cred-file"):
        if path is None and raw.get(key):
            path = Path(str(raw[key])).expanduser()
    if path is None:
        # cloudflared looks for <tunnel-UUID>.json next to the config and in ~/.cloudflared.
        path = find_credentials_file(tunnel or raw.get("tunnel"), cfg.source if cfg else None)
    if path is None:
        raise ConfigError(
            "no tunnel credentials: pass --token (or TUNNEL_TOKEN) or --credentials-file "
            "(or credentials-file in the config file)"
        )
    return load_credentials_file(path)


def _ingress(url: str | None, hello_world: bool | None, cfg: ConfigFile | None) -> Ingress:
    raw = cfg.raw if cfg is not None else {}
    url = pick(url, raw, "url")
    hello_world = as_bool(pick(hello_world, raw, "hello-world", False), "hello-world")
    if url or hello_world:
        return Ingress.single(str(url) if url else None, hello_world=hello_world)
    if cfg is not None and cfg.ingress:
        return Ingress.parse(list(cfg.ingress), cfg.origin_request)
    return Ingress.single(None)


@tunnel_app.command("run")
def run(
    ctx: typer.Context,
    tunnel: str = typer.Argument(None, help="Tunnel name or UUID (with credentials)."),
    token: str = typer.Option(None, "--token", envvar="TUNNEL_TOKEN", help="Tunnel token."),
    credentials_file: Path = typer.Option(
        None, "--credentials-file", "--cred-file", envvar="TUNNEL_CRED_FILE"
    ),
    origincert: Path = typer.Option(
        None,
        "--origincert",
        envvar="TUNNEL_ORIGIN_CERT",
        help="cert.pem: looks a tunnel NAME up, supplies edge address and CA.",
    ),
    edge: list[str] = typer.Option(
        None, "--edge", envvar="TUNNEL_EDGE", help="Edge HOST:PORT, repeatable."
    ),
    cacert: Path = typer.Option(
        None, "--cacert", envvar="TUNNEL_CACERT", help="Trust only this CA for the edge."
    ),
    url: str = typer.Option(None, "--url", envvar="TUNNEL_URL", help="Single origin URL."),
    hello_world: bool = typer.Option(None, "--hello-world", help="Serve the built-in test origin."),
    origin_ca_pool: Path = typer.Option(
        None,
        "--origin-ca-pool",
        envvar="TUNNEL_ORIGIN_CA_POOL",
        help="One more CA (PEM) to trust for HTTPS origins.",
    ),
    config: Path = typer.Option(None, "--config", help="cloudflared-style config.yml."),
    ha_connections: int = typer.Option(
        None, "--ha-connections", help="Connections to the edge (default 4)."
    ),
    grace_period: str = typer.Option(
        None,
        "--grace-period",
        envvar="TUNNEL_GRACE_PERIOD",
        help="Time to finish in-flight requests on shutdown, e.g. 30s (default 30s).",
    ),
    retries: int = typer.Option(
        None,
        "--retries",
        envvar="TUNNEL_RETRIES",
        help="Connection attempts at start-up before giving up (default 5).",
    ),
    rehome_interval: float = typer.Option(
        10.0,
        "--rehome-interval",
        hidden=True,
        help="Seconds between attempts to move a connection back to its own edge address.",
    ),
    metrics: str = typer.Option(
        None,
        "--metrics",
        envvar="TUNNEL_METRICS",
        help="ADDR:PORT serving /metrics, /ready, /healthcheck, /config.",
    ),
    protocol: str = typer.Option(
        None, "--protocol", envvar="TUNNEL_TRANSPORT_PROTOCOL", help="http2 (default) or auto."
    ),
    loglevel: str = typer.Option(
        None, "--loglevel", envvar="TUNNEL_LOGLEVEL", help="debug, info (default), warn, error."
    ),
    output: str = typer.Option(
        None,
        "--output",
        envvar="TUNNEL_MANAGEMENT_OUTPUT",
        help="Log format: text (default) or json.",
    ),
    logfile: str = typer.Option(None, "--logfile", envvar="TUNNEL_LOGFILE"),
    no_autoupdate: bool = typer.Option(
        False, "--no-autoupdate", help="Accepted for cloudflared compatibility."
    ),
) -> None:
    """Run the connector: dial the edge and proxy requests to the origin(s)."""

    def go() -> None:
        config_path = config or (ctx.obj or {}).get("config") or find_default_config()
        cfg = load_config_file(config_path) if config_path else None
        raw: dict[str, Any] = dict(cfg.raw) if cfg is not None else {}
        setup_logging(
            str(pick(loglevel, raw, "loglevel", raw.get("log-level", "info"))),
            output=str(pick(output, raw, "output", "text")),
            logfile=pick(logfile, raw, "logfile"),
        )
        if cfg is not None and cfg.warnings:
            typer.echo(cfg.warnings, err=True)
        if cfg is not None and (warning := unknown_keys_warning(raw, cfg.source)):
            typer.echo(warning, err=True)
        proto = str(pick(protocol, raw, "protocol", "http2"))
        if proto not in ("http2", "auto"):
            raise ConfigError(
                f"protocol {proto!r} is not supported by burrow's connector (use http2)"
            )
        cred_path: Path | None = credentials_file
        ref, cert = tunnel, None
        if (ref or raw.get("tunnel")) and not (token or raw.get("token")):
            # cloudflared's `run NAME|UUID`: a name is looked up with cert.pem (burrow.cli.manage)
            from burrow.cli.manage import complete_credentials, resolve_for_run

            oc = origincert or (ctx.obj or {}).get("origincert") or raw.get("origincert")
            configured = cred_path or raw.get("credentials-file") or raw.get("cred-file")
            ref, cred_path, cert = resolve_for_run(
                str(ref or raw["tunnel"]),
                Path(str(oc)).expanduser() if oc else None,
                Path(str(configured)).expanduser() if configured else None,
            )
        creds = _credentials(token, cred_path, cfg, ref)
        if cert is not None:
            creds = complete_credentials(creds, cert)
        ca_pool = pick(origin_ca_pool, raw, "origin-ca-pool")
        edges = split_list(edge) or split_list(as_list(raw.get("edge")))
        ca = cacert or (Path(str(raw["cacert"])) if raw.get("cacert") else None)
        ha = ha_connections or int(raw.get("ha-connections", 4))
        grace = as_seconds(
            grace_period if grace_period is not None else raw.get("grace-period", 30),
            "grace-period",
        )
        tries = retries if retries is not None else int(raw.get("retries", 5))
        metrics_addr = metrics or (str(raw["metrics"]) if raw.get("metrics") else None)
        ingress = _ingress(url, hello_world, cfg)
        ingress_from_file = not (pick(url, raw, "url") or pick(hello_world, raw, "hello-world"))
        conf = ConnectorConfig(
            credentials=creds,
            ingress=ingress,
            edges=edges,
            cafile=ca,
            ha_connections=max(1, ha),
            grace_period=grace,
            retries=max(0, tries),
            metrics_address=metrics_addr,
            rehome_interval=rehome_interval,
            local_config={"ingress": [_rule_json(r) for r in ingress.rules]},
            # Ingress from the file is reloaded on SIGHUP and when the file changes.
            config_path=cfg.source
            if cfg is not None and cfg.source and ingress_from_file
            else None,
            watch_config=True,
            origin_ca_pool=str(Path(str(ca_pool)).expanduser()) if ca_pool else None,
        )

        async def main() -> None:
            connector = Connector(conf)
            log.info(
                "starting tunnel %s: %d connection(s) to %s",
                creds.tunnel_id,
                conf.ha_connections,
                ", ".join(f"{h}:{p}" for h, p in connector.edges),
            )
            with contextlib.suppress(NotImplementedError, RuntimeError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, connector.reload)
            await serve_until_signal(connector.stop, connector.run())

        try:
            run_async(main())
        except RegistrationError as exc:
            fail(f"the edge refused the tunnel: {exc.cause}", code=1)

    handle_errors(go)


def _rule_json(rule: Any) -> dict[str, str]:
    out = {"service": str(rule.service)}
    if rule.hostname:
        out["hostname"] = rule.hostname
    if rule.path is not None:
        out["path"] = rule.path.pattern
    return out
