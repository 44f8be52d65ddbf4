"""`burrow edge serve` and the operator's `burrow edge tunnel create|list|delete`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
import yaml

from burrow.cli.apps import edge_app
from burrow.cli.common import (
    as_list,
    edge_state_dir,
    fail,
    handle_errors,
    open_edge_store,
    run_async,
    split_list,
)
from burrow.cli.edge_front import FrontDoorOptions, apply_front_door
from burrow.connector.credentials import write_credentials_file
from burrow.edge.provision import advertised_edges, create_tunnel
from burrow.edge.server import EdgeConfig
from burrow.errors import BurrowError, ConfigError, NotFound
from burrow.launch import EdgeLaunch, LogSettings, handoff, run_edge
from burrow.observability.logs import setup_logging
from burrow.pki.ca import EdgePKI

tunnel_cmd = typer.Typer(help="Manage tunnels directly on the edge's state.", no_args_is_help=True)
edge_app.add_typer(tunnel_cmd, name="tunnel")

_CONFIG_KEYS = {
    "state-dir",
    "tunnel-listen",
    "http-listen",
    "admin-listen",
    "names",
    "location",
    "store-url",
    "grace-period",
    "loglevel",
}


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of settings")
    unknown = set(data) - _CONFIG_KEYS
    if unknown:
        typer.echo(f"warning: unknown keys in {path}: {', '.join(sorted(unknown))}", err=True)
    return data


def build_edge_config(
    config: Path | None,
    state_dir: Path | None,
    tunnel_listen: list[str] | None,
    http_listen: list[str] | None,
    admin_listen: str | None,
    names: list[str] | None,
    location: str | None,
    store_url: str | None,
) -> EdgeConfig:
    """Flags win over the YAML file, which wins over the defaults."""
    file: dict[str, Any] = _load_yaml(config) if config else {}
    cfg = EdgeConfig()
    if state_dir or file.get("state-dir"):
        cfg.state_dir = Path(state_dir or file["state-dir"]).expanduser()
    cfg.tunnel_listen = (
        split_list(tunnel_listen) or as_list(file.get("tunnel-listen")) or cfg.tunnel_listen
    )
    cfg.http_listen = split_list(http_listen) or as_list(file.get("http-listen")) or cfg.http_listen
    cfg.admin_listen = admin_listen or file.get("admin-listen", cfg.admin_listen)
    extra = split_list(names) or as_list(file.get("names"))
    if extra:
        cfg.names = list(dict.fromkeys([*cfg.names, *extra]))
    cfg.location = location or file.get("location", cfg.location)
    cfg.store_url = store_url or file.get("store-url")
    if "grace-period" in file:
        try:
            cfg.grace_period = float(file["grace-period"])
        except (TypeError, ValueError):
            raise ConfigError("grace-period must be a number of seconds") from None
    return cfg


@edge_app.command("serve")
def serve(
    config: Path = typer.Option(None, "--config", help="YAML file with the same settings."),
    state_dir: Path = typer.Option(None, "--state-dir", help="Default ~/.local/share/burrow/edge."),
    tunnel_listen: list[str] = typer.Option(
        None, "--tunnel-listen", help="ADDR:PORT, repeatable (default 0.0.0.0:7844)."
    ),
    http_listen: list[str] = typer.Option(
        None, "--http-listen", help="Public HTTP ADDR:PORT (default 0.0.0.0:8080)."
    ),
    admin_listen: str = typer.Option(
        None, "--admin-listen", help="Admin ADDR:PORT (default 127.0.0.1:7845)."
    ),
    name: list[str] = typer.Option(
        None, "--name", help="Extra DNS name or IP for the tunnel certificate."
    ),
    location: str = typer.Option(None, "--location", help="Location label reported to connectors."),
    store_url: str = typer.Option(
        None, "--store-url", envvar="BURROW_STORE_URL", help="SQLAlchemy URL of the state store."
    ),
    loglevel: str = typer.Option("info", "--loglevel"),
    output: str = typer.Option("text", "--output", help="Log format: text or json."),
    logfile: str = typer.Option(
        None, "--logfile", help="Write logs to this file instead of stderr."
    ),
    grace_period: float = typer.Option(
        None, "--grace-period", help="Seconds in-flight requests get on shutdown (default 30)."
    ),
    header_timeout: float = typer.Option(
        None,
        "--header-timeout",
        help="Seconds an eyeball gets to send a request head (default 30).",
    ),
    idle_timeout: float = typer.Option(
        None,
        "--idle-timeout",
        help="Seconds an idle keep-alive connection stays open (default 120).",
    ),
    max_conns_per_ip: int = typer.Option(
        None,
        "--max-conns-per-ip",
        help="Open eyeball connections per source address (default 512, 0 = no limit).",
    ),
    rate_per_ip: str = typer.Option(
        None,
        "--rate-per-ip",
        help="Requests per second per source address, RATE or RATE/BURST (default off).",
    ),
    rate_per_host: str = typer.Option(
        None,
        "--rate-per-host",
        help="Requests per second per hostname, RATE or RATE/BURST (default off).",
    ),
    max_body: str = typer.Option(
        None, "--max-body", help="Request body limit, e.g. 100M (default none)."
    ),
    body_limit: list[str] = typer.Option(
        None, "--body-limit", help="Per-hostname body limit HOST=SIZE (repeatable)."
    ),
    max_streams_per_tunnel: int = typer.Option(
        None,
        "--max-streams-per-tunnel",
        help="Concurrent requests per tunnel (default 0 = no limit).",
    ),
    waf_rules: Path = typer.Option(
        None, "--waf-rules", help="YAML file of WAF custom rules (re-read when it changes)."
    ),
    https_listen: list[str] = typer.Option(
        None, "--https-listen", help="Public HTTPS ADDR:PORT (repeatable; default off, port 443)."
    ),
    tls_cert: list[Path] = typer.Option(
        None, "--tls-cert", help="Certificate chain PEM for HTTPS (repeatable; chosen by SNI)."
    ),
    tls_key: list[Path] = typer.Option(
        None, "--tls-key", help="Private key PEM for the --tls-cert at the same position."
    ),
    redirect_https: bool = typer.Option(
        False, "--redirect-https", help="Redirect plain HTTP requests to HTTPS."
    ),
    acme_directory: str = typer.Option(
        None,
        "--acme-directory",
        help="ACME directory URL: get certificates for routed hostnames automatically (http-01).",
    ),
    acme_email: str = typer.Option(
        None, "--acme-email", help="Contact e-mail for the ACME account."
    ),
    acme_ca_bundle: Path = typer.Option(
        None, "--acme-ca-bundle", help="CA file trusted for the ACME server's HTTPS (test CAs)."
    ),
    acme_challenge: list[str] = typer.Option(
        None,
        "--acme-challenge",
        help="ACME challenge types in order of preference (repeatable): http-01, tls-alpn-01, dns-01 (default http-01 then tls-alpn-01).",
    ),
    acme_dns_hook: str = typer.Option(
        None,
        "--acme-dns-hook",
        help="PROGRAM run as 'PROGRAM present|cleanup DOMAIN VALUE' to publish dns-01 TXT records: certificates for wildcard routes.",
    ),
    team_domain: str = typer.Option(
        None,
        "--team-domain",
        help="Hostname serving the Access login pages (e.g. auth.example.com).",
    ),
) -> None:
    """Run the edge."""

    def go() -> EdgeLaunch:
        setup_logging(loglevel, output=output, logfile=logfile)
        cfg = build_edge_config(
            config, state_dir, tunnel_listen, http_listen, admin_listen, name, location, store_url
        )
        if grace_period is not None:
            cfg.grace_period = grace_period
        if team_domain:
            cfg.access_team_domain = team_domain.strip().lower().rstrip(".")
        apply_front_door(
            cfg,
            FrontDoorOptions(
                header_timeout=header_timeout,
                idle_timeout=idle_timeout,
                max_conns_per_ip=max_conns_per_ip,
                rate_per_ip=rate_per_ip,
                rate_per_host=rate_per_host,
                max_body=max_body,
                body_limit=body_limit or [],
                max_streams_per_tunnel=max_streams_per_tunnel,
                waf_rules=waf_rules,
                https_listen=https_listen or [],
                tls_cert=tls_cert or [],
                tls_key=tls_key or [],
                redirect_https=redirect_https,
                acme_directory=acme_directory,
                acme_email=acme_email,
                acme_ca_bundle=acme_ca_bundle,
                acme_dns_hook=acme_dns_hook,
                acme_challenges=acme_challenge or [],
            ),
        )
        return EdgeLaunch(cfg, LogSettings(loglevel, output, logfile))

    spec = handle_errors(go)
    # The edge runs in a re-execution of this command without the CLI; if that cannot be,
    # `handoff` returns and it runs here.
    handoff(spec)
    run_edge(spec)


@tunnel_cmd.command("create")
def tunnel_create(
    name: str = typer.Argument(..., help="Tunnel name (unique in the account)."),
    hostname: list[str] = typer.Option(
        None, "--hostname", help="Route this hostname to the tunnel (repeatable)."
    ),
    state_dir: Path = typer.Option(None, "--state-dir"),
    store_url: str = typer.Option(None, "--store-url", envvar="BURROW_STORE_URL"),
    edge_address: list[str] = typer.Option(
        None, "--edge-address", help="Edge tunnel address(es) to put in the token."
    ),
    credentials_file: Path = typer.Option(
        None, "--credentials-file", help="Where to write the credentials JSON."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print {id, name, token, credentials_file}."
    ),
) -> None:
    """Create a tunnel, route hostnames to it, write its credentials and print its token."""

    async def main() -> None:
        sd = edge_state_dir(state_dir)
        pki = EdgePKI.for_ca(sd)  # the tunnel certificate belongs to `edge serve` and its names
        store = await open_edge_store(sd, store_url)
        try:
            edges = split_list(edge_address) or list(advertised_edges(sd))
            result = await create_tunnel(store, pki, sd, name, hostname or [], edges=edges)
        finally:
            await store.close()
        path = credentials_file or (sd / "tunnels" / f"{result.tunnel.id}.json")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_credentials_file(path, result.credentials)
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "id": str(result.tunnel.id),
                        "name": result.tunnel.name,
                        "token": result.token,
                        "credentials_file": str(path),
                        "hostnames": list(result.hostnames),
                    }
                )
            )
            return
        typer.echo(f"Created tunnel {result.tunnel.name} with id {result.tunnel.id}")
        for host in result.hostnames:
            typer.echo(f"Routed {host} to it")
        typer.echo(f"Credentials written to {path}")
        typer.echo("Run it with:\n  burrow tunnel run --token " + result.token)

    handle_errors(lambda: run_async(main()))


@tunnel_cmd.command("list")
def tunnel_list(
    state_dir: Path = typer.Option(None, "--state-dir"),
    store_url: str = typer.Option(None, "--store-url", envvar="BURROW_STORE_URL"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List tunnels and their hostnames."""

    async def main() -> None:
        store = await open_edge_store(edge_state_dir(state_dir), store_url)
        try:
            tunnels = await store.list_tunnels()
            routes = await store.list_routes()
        finally:
            await store.close()
        by_tunnel: dict[Any, list[str]] = {}
        for r in routes:
            by_tunnel.setdefault(r.tunnel_id, []).append(r.hostname)
        rows = [
            {
                "id": str(t.id),
                "name": t.name,
                "created_at": t.created_at.isoformat(),
                "hostnames": sorted(by_tunnel.get(t.id, [])),
            }
            for t in tunnels
        ]
        if as_json:
            typer.echo(json.dumps(rows))
            return
        if not rows:
            typer.echo("No tunnels.")
            return
        typer.echo(f"{'ID':36}  {'NAME':20}  HOSTNAMES")
        for row in rows:
            typer.echo(f"{row['id']:36}  {row['name']:20}  {', '.join(row['hostnames'])}")

    handle_errors(lambda: run_async(main()))


@tunnel_cmd.command("delete")
def tunnel_delete(
    name: str = typer.Argument(..., help="Tunnel name or id."),
    state_dir: Path = typer.Option(None, "--state-dir"),
    store_url: str = typer.Option(None, "--store-url", envvar="BURROW_STORE_URL"),
) -> None:
    """Delete a tunnel and its routes; connected connectors are refused from then on."""

    async def main() -> None:
        store = await open_edge_store(edge_state_dir(state_dir), store_url)
        try:
            match = [t for t in await store.list_tunnels() if t.name == name or str(t.id) == name]
            if not match:
                raise NotFound(f"no tunnel named {name!r}")
            tunnel = await store.delete_tunnel(match[0].id)
        finally:
            await store.close()
        typer.echo(f"Deleted tunnel {tunnel.name} ({tunnel.id})")

    def go() -> None:
        try:
            run_async(main())
        except NotFound as exc:
            fail(str(exc))

    handle_errors(go)


__all__ = ["BurrowError", "build_edge_config"]
