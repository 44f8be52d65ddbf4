"""The `burrow` command: `burrow edge ...`, `burrow tunnel ...`, `burrow access ...`, `burrow demo`.

Each verb group lives in its own module and registers itself on the shared Typer apps here.
"""

from __future__ import annotations

import sys

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


def _register_commands() -> None:
    # Imported for their side effect of adding commands to the apps above.
    from burrow.cli import demo, edge, edge_ingress, ingress, tunnel  # noqa: F401
    from burrow.cli import access  # noqa: F401
    from burrow.cli import manage, operator  # noqa: F401
    from burrow.cli import edge_access  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    _register_commands()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="burrow")


if __name__ == "__main__":
    main()
