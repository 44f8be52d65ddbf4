"""The Typer apps of the `burrow` command; the command modules register themselves on them.

Kept out of burrow.cli.main, the console script's entry point, so that a long-running process
re-executed by burrow.launch starts without importing typer."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="burrow",
    help="Self-hosted tunnels: an edge and a connector speaking cloudflared's protocol.",
    no_args_is_help=True,
    add_completion=False,
)
edge_app = typer.Typer(help="Run and administer the edge.", no_args_is_help=True)
tunnel_app = typer.Typer(help="Run the connector and manage tunnels.", no_args_is_help=True)
access_app = typer.Typer(help="Access clients.", no_args_is_help=True)
app.add_typer(edge_app, name="edge")
app.add_typer(tunnel_app, name="tunnel")
app.add_typer(access_app, name="access")
