"""`burrow tunnel run`: the connector, with cloudflared's flags, environment variables and
config file (`tunnel`, `credentials-file`, `ingress`, `originRequest`, ...)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from burrow.cli.common import fail, handle_errors, run_async, serve_until_signal, split_list
from burrow.cli.main import tunnel_app
from burrow.connector.credentials import TunnelCredentials, decode_token, load_credentials_file
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
) -> None:
    """cloudflared's form `burrow tunnel --config F VERB ...`."""
    ctx.obj = {"config": str(config) if config else None}


def _credentials(
    token: str | None, credentials_file: Path | None, cfg: ConfigFile | None
) -> TunnelCredentials:
    if token:
        return decode_token(token)
    path = credentials_file
    if path is None and cfg is not None and cfg.raw.get("credentials-file"):
        path = Path(str(cfg.raw["credentials-file"])).expanduser()
    if path is None:
        raise ConfigError(
            "no tunnel credentials: pass --token (or TUNNEL_TOKEN) or --credentials-file "
            "(or credentials-file in the config file)"
        )
    return load_credentials_file(path)


def _ingress(url: str | None, hello_world: bool, cfg: ConfigFile | None) -> Ingress:
    if url or hello_world:
        return Ingress.single(url, hello_world=hello_world)
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
    edge: list[str] = typer.Option(None, "--edge", envvar="TUNNEL_EDGE", help="Edge HOST:PORT, repeatable."),
    cacert: Path = typer.Option(None, "--cacert", envvar="TUNNEL_CACERT", help="Trust only this CA for the edge."),
    url: str = typer.Option(None, "--url", envvar="TUNNEL_URL", help="Single origin URL."),
    hello_world: bool = typer.Option(False, "--hello-world", help="Serve the built-in test origin."),
    config: Path = typer.Option(None, "--config", help="cloudflared-style config.yml."),
    ha_connections: int = typer.Option(None, "--ha-connections", help="Connections to the edge (default 4)."),
    grace_period: float = typer.Option(None, "--grace-period", help="Seconds to finish in-flight requests on shutdown."),
    protocol: str = typer.Option("http2", "--protocol", envvar="TUNNEL_TRANSPORT_PROTOCOL"),
    loglevel: str = typer.Option("info", "--loglevel", envvar="TUNNEL_LOGLEVEL"),
    output: str = typer.Option("text", "--output"),
    logfile: str = typer.Option(None, "--logfile", envvar="TUNNEL_LOGFILE"),
    no_autoupdate: bool = typer.Option(False, "--no-autoupdate", help="Accepted for cloudflared compatibility."),
) -> None:
    """Run the connector: dial the edge and proxy requests to the origin(s)."""

    def go() -> None:
        setup_logging(loglevel, output=output, logfile=logfile)
        if protocol not in ("http2", "auto"):
            raise ConfigError(f"protocol {protocol!r} is not supported by burrow's connector (use http2)")
        config_path = config or (ctx.obj or {}).get("config") or find_default_config()
        cfg = load_config_file(config_path) if config_path else None
        if cfg is not None and cfg.warnings:
            typer.echo(cfg.warnings, err=True)
        creds = _credentials(token, credentials_file, cfg)
        raw: dict[str, Any] = dict(cfg.raw) if cfg is not None else {}
        edges = split_list(edge) or split_list(_as_list(raw.get("edge")))
        ca = cacert or (Path(str(raw["cacert"])) if raw.get("cacert") else None)
        ha = ha_connections or int(raw.get("ha-connections", 4))
        grace = grace_period if grace_period is not None else _seconds(raw.get("grace-period", 30))
        ingress = _ingress(url, hello_world, cfg)
        conf = ConnectorConfig(
            credentials=creds,
            ingress=ingress,
            edges=edges,
            cafile=ca,
            ha_connections=max(1, ha),
            grace_period=grace,
            local_config={"ingress": [_rule_json(r) for r in ingress.rules]},
        )

        async def main() -> None:
            connector = Connector(conf)
            log.info(
                "starting tunnel %s: %d connection(s) to %s",
                creds.tunnel_id,
                conf.ha_connections,
                ", ".join(f"{h}:{p}" for h, p in connector.edges),
            )
            await serve_until_signal(connector.stop, connector.run())

        try:
            run_async(main())
        except RegistrationError as exc:
            fail(f"the edge refused the tunnel: {exc.cause}", code=1)

    handle_errors(go)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _seconds(value: Any) -> float:
    from burrow.ingress.config import parse_duration

    if isinstance(value, (int, float)):
        return float(value)
    return parse_duration(str(value))


def _rule_json(rule: Any) -> dict[str, str]:
    out = {"service": str(rule.service)}
    if rule.hostname:
        out["hostname"] = rule.hostname
    if rule.path is not None:
        out["path"] = rule.path.pattern
    return out
