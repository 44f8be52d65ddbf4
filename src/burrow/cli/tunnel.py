"""`burrow tunnel run`: the connector, with cloudflared's flags, environment variables and
config file (`tunnel`, `credentials-file`, `ingress`, `originRequest`, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from burrow.cli.apps import tunnel_app
from burrow.cli.common import as_list, handle_errors, split_list
from burrow.connector.credentials import TunnelCredentials, decode_token, load_credentials_file
from burrow.connector.settings import (
    as_seconds,
    find_credentials_file,
    ingress_spec,
    pick,
    unknown_keys_warning,
)
from burrow.connector.supervisor import ConnectorConfig
from burrow.errors import ConfigError
from burrow.ingress.config import ConfigFile, load_config_file
from burrow.ingress.validate import find_default_config
from burrow.launch import ConnectorLaunch, LogSettings, handoff, run_connector


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

    def go() -> tuple[ConnectorLaunch, ConnectorConfig]:
        config_path = config or (ctx.obj or {}).get("config") or find_default_config()
        cfg = load_config_file(config_path) if config_path else None
        raw: dict[str, Any] = dict(cfg.raw) if cfg is not None else {}
        logs = LogSettings(
            str(pick(loglevel, raw, "loglevel", raw.get("log-level", "info"))),
            output=str(pick(output, raw, "output", "text")),
            logfile=pick(logfile, raw, "logfile"),
        )
        logs.apply()
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
        spec = ingress_spec(url, hello_world, cfg)
        ingress = spec.build()  # validated here; the connector's process builds it again
        ingress_from_file = not (pick(url, raw, "url") or pick(hello_world, raw, "hello-world"))
        options: dict[str, Any] = dict(
            credentials=creds,
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
        launch = ConnectorLaunch(spec, options, logs)
        return launch, ConnectorConfig(ingress=ingress, **options)

    launch, conf = handle_errors(go)
    # The connector runs in a re-execution of this command without the CLI; if that cannot
    # be, `handoff` returns and it runs here.
    handoff(launch)
    run_connector(launch, conf)


def _rule_json(rule: Any) -> dict[str, str]:
    out = {"service": str(rule.service)}
    if rule.hostname:
        out["hostname"] = rule.hostname
    if rule.path is not None:
        out["path"] = rule.path.pattern
    return out
