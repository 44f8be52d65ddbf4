"""`burrow edge tunnel ingress set|show|clear NAME`: manage a tunnel's ingress on the edge.

A tunnel with an ingress set here is *remotely managed*: its connectors are told so at
registration and receive the configuration (and every later version) over their tunnel
connections, as cloudflared receives it from Cloudflare (PROTOCOL.md 3.4).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from burrow.cli.common import edge_state_dir, handle_errors, open_edge_store, run_async
from burrow.cli.edge import tunnel_cmd
from burrow.errors import ConfigError, NotFound
from burrow.ingress.config import load_config_file
from burrow.ingress.remote import encode_config_file, parse_remote_config
from burrow.store.sqlalchemy_store import SQLStore
from burrow.store.tunnel_configs import (
    delete_tunnel_config,
    get_tunnel_config,
    set_tunnel_config,
)

ingress_cmd = typer.Typer(
    help="Manage a tunnel's ingress on the edge (remotely managed tunnels).",
    no_args_is_help=True,
)
tunnel_cmd.add_typer(ingress_cmd, name="ingress")

NameArg = Annotated[str, typer.Argument(help="Tunnel name or id.")]
StateDirOpt = Annotated[Path | None, typer.Option("--state-dir")]
StoreUrlOpt = Annotated[str | None, typer.Option("--store-url", envvar="BURROW_STORE_URL")]


def read_ingress_file(path: Path) -> dict[str, Any]:
    """A config.yml (durations like `10s`) or a remote-config JSON document (durations in
    seconds, optionally wrapped as `{"config": {...}}`), validated, in the remote JSON form."""
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"open {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ConfigError(f"invalid JSON in {path}: {exc}") from None
        if isinstance(doc, dict) and isinstance(doc.get("config"), dict):
            doc = doc["config"]
        parse_remote_config(doc)
        return dict(doc)
    cfg = load_config_file(path)
    if cfg.warnings:
        typer.echo(cfg.warnings, err=True)
    return encode_config_file(cfg)


async def _find(store: SQLStore, name: str) -> Any:
    match = [t for t in await store.list_tunnels() if t.name == name or str(t.id) == name]
    if not match:
        raise NotFound(f"no tunnel named {name!r}")
    return match[0]


@ingress_cmd.command("set")
def ingress_set(
    name: NameArg,
    file: Annotated[Path, typer.Argument(help="config.yml (ingress, originRequest) or JSON.")],
    state_dir: StateDirOpt = None,
    store_url: StoreUrlOpt = None,
) -> None:
    """Set the tunnel's ingress; running connectors apply it within a second or so."""

    async def main() -> None:
        config = read_ingress_file(file)
        store = await open_edge_store(edge_state_dir(state_dir), store_url)
        try:
            tunnel = await _find(store, name)
            saved = await set_tunnel_config(store, tunnel.id, config)
        finally:
            await store.close()
        typer.echo(
            f"Tunnel {tunnel.name} ({tunnel.id}) ingress set: version {saved.version}, "
            f"{len(config['ingress'])} rule(s)"
        )

    handle_errors(lambda: run_async(main()))


@ingress_cmd.command("show")
def ingress_show(
    name: NameArg,
    state_dir: StateDirOpt = None,
    store_url: StoreUrlOpt = None,
) -> None:
    """Print the tunnel's remote configuration as `{"version": N, "config": {...}}`."""

    async def main() -> None:
        store = await open_edge_store(edge_state_dir(state_dir), store_url)
        try:
            tunnel = await _find(store, name)
            saved = await get_tunnel_config(store, tunnel.id)
        finally:
            await store.close()
        if saved is None:
            raise NotFound(f"tunnel {tunnel.name} is locally managed (no ingress set on the edge)")
        typer.echo(json.dumps({"version": saved.version, "config": saved.config}, indent=2))

    handle_errors(lambda: run_async(main()))


@ingress_cmd.command("clear")
def ingress_clear(
    name: NameArg,
    state_dir: StateDirOpt = None,
    store_url: StoreUrlOpt = None,
) -> None:
    """Make the tunnel locally managed again (takes effect when connectors reconnect)."""

    async def main() -> None:
        store = await open_edge_store(edge_state_dir(state_dir), store_url)
        try:
            tunnel = await _find(store, name)
            await delete_tunnel_config(store, tunnel.id)
        finally:
            await store.close()
        typer.echo(f"Tunnel {tunnel.name} is locally managed again")

    handle_errors(lambda: run_async(main()))
