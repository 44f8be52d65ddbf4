"""The `burrow` command: `burrow edge ...`, `burrow tunnel ...`, `burrow access ...`, `burrow demo`.

Each verb group lives in its own module and registers itself on the shared Typer apps of
burrow.cli.apps. This module imports no CLI framework at load time: `burrow edge serve` and
`burrow tunnel run` re-execute themselves once their flags are parsed (burrow.launch), and the
re-executed process must reach `main` and run the server without typer, click or pydantic.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typer import Typer

    app: Typer
    edge_app: Typer
    tunnel_app: Typer
    access_app: Typer

_APPS = ("app", "edge_app", "tunnel_app", "access_app")

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


def __getattr__(name: str) -> Any:
    """`from burrow.cli.main import app` (and the group apps), loaded on first use."""
    if name in _APPS:
        from burrow.cli import apps

        return getattr(apps, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    if "BURROW_HANDOFF" in os.environ:  # burrow.launch.HANDOFF_ENV
        from burrow.launch import resume

        resume()  # runs the server handed over to this process and exits, if there is one
    args = argv if argv is not None else sys.argv[1:]
    _register_commands(args)
    from burrow.cli.apps import app

    app(args=args, prog_name="burrow")


if __name__ == "__main__":
    main()
