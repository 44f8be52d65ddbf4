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


# Which command modules serve which top-level group. Only the group being run is imported:
# `burrow tunnel run` must not pay (in start-up time and ~50 MB of idle RSS) for the edge's
# store, admin API and PKI stacks, nor `burrow edge serve` for the connector's admin client.
_GROUP_MODULES: dict[str, tuple[str, ...]] = {
    "demo": ("demo",),
    "edge": ("edge", "edge_ingress", "operator", "edge_access", "edge_waf"),
    "tunnel": ("ingress", "tunnel", "manage"),
    "access": ("access", "access_login"),
}
_ALL_MODULES = (
    "demo",
    "edge",
    "edge_ingress",
    "ingress",
    "tunnel",
    "access",
    "access_login",
    "manage",
    "operator",
    "edge_access",
    "edge_waf",
)


def _register_commands(argv: list[str] | None = None) -> None:
    """Import the command modules (they add their commands to the apps above as a side effect).

    With `argv`, only the modules of the group named by its first word are imported; anything
    else (no arguments, `--help`, an unknown word) imports them all so help and errors list
    every command exactly as before."""
    import importlib

    group = argv[0] if argv else None
    names = _GROUP_MODULES.get(group, _ALL_MODULES) if group is not None else _ALL_MODULES
    for name in names:
        importlib.import_module(f"burrow.cli.{name}")


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    _register_commands(args)
    app(args=args, prog_name="burrow")


if __name__ == "__main__":
    main()
