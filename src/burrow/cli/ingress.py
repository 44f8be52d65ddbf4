"""`burrow tunnel [--config F] ingress validate|rule URL`, as cloudflared's hidden subcommands."""

from __future__ import annotations

from typing import Annotated

import typer

from burrow.cli.apps import tunnel_app
from burrow.ingress.validate import CommandResult, rule_command, validate_command

ingress_app = typer.Typer(
    help="Validate and test the tunnel's ingress configuration.", no_args_is_help=True
)

ConfigOption = Annotated[
    str | None,
    typer.Option("--config", help="Path to the config file (default: cloudflared's locations)."),
]


def _config_path(ctx: typer.Context, own: str | None) -> str | None:
    """The subcommand's --config, else the one given to `tunnel` (stored in ctx.obj)."""
    if own is not None:
        return own
    while ctx is not None:
        obj = ctx.obj
        if isinstance(obj, dict) and obj.get("config"):
            return str(obj["config"])
        ctx = ctx.parent  # type: ignore[assignment]
    return None


def _finish(result: CommandResult) -> None:
    if result.stdout:
        typer.echo(result.stdout, nl=False)
    if result.error is not None:
        typer.echo(result.error, err=True)
    raise typer.Exit(result.exit_code)


@ingress_app.command("validate")
def validate(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Validate the ingress rules of the config file."""
    _finish(validate_command(_config_path(ctx, config)))


@ingress_app.command("rule")
def rule(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="The request URL to test.")] = "",
    config: ConfigOption = None,
) -> None:
    """Check which ingress rule matches a given request URL."""
    _finish(rule_command(_config_path(ctx, config), url))


tunnel_app.add_typer(ingress_app, name="ingress")
