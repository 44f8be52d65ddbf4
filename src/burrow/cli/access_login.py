"""`burrow access login URL`, `burrow access token -app URL`, `burrow access curl URL [args]`
(cloudflared's verbs): an Access app token for command-line use, obtained through the browser
and stored with mode 0600 (see burrow.access.cli_login)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import typer

from burrow.access.cli_login import AppURL, login, valid_stored_token
from burrow.access.tcp_client import AccessError
from burrow.cli.apps import access_app
from burrow.cli.common import fail, run_async

_NO_BROWSER = typer.Option(
    False,
    "--no-browser",
    envvar="BURROW_NO_BROWSER",
    help="Only print the login URL; do not try to open a browser.",
)
_CACERT = typer.Option(None, "--cacert", help="Also trust the CA certificates in this PEM file.")


@access_app.command("login")
def login_cmd(
    url: str = typer.Argument(..., help="The application's URL (https://H[/path])."),
    no_browser: bool = _NO_BROWSER,
    cacert: str = _CACERT,
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for the browser."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print the token."),
) -> None:
    """Log in through the browser and store the application token for `access tcp|ssh|curl`."""
    try:
        token = run_async(login(url, open_browser=not no_browser, cacert=cacert, wait=timeout))
    except AccessError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)
    typer.echo("Successfully fetched your token:", err=True)
    if not quiet:
        typer.echo(token)


@access_app.command("token")
def token_cmd(
    app: str = typer.Option(..., "--app", "-app", help="The application's URL."),
) -> None:
    """Print the stored (unexpired) application token for URL."""
    try:
        host = AppURL.parse(app).host
    except AccessError as exc:
        fail(str(exc))
    token = valid_stored_token(host)
    if token is None:
        fail(f"no valid token for {host}: run `burrow access login {app}`")
    typer.echo(token)


@access_app.command(
    "curl",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def curl_cmd(
    ctx: typer.Context,
    url: str = typer.Argument(..., help="The application's URL (also given to curl)."),
    no_browser: bool = _NO_BROWSER,
    cacert: str = _CACERT,
) -> None:
    """Run curl URL \\[curl args] with the stored token (logging in first when there is none)."""
    curl = shutil.which("curl")
    if curl is None:
        fail("curl is not installed")
    try:
        host = AppURL.parse(url).host
        token = valid_stored_token(host) or run_async(
            login(url, open_browser=not no_browser, cacert=cacert)
        )
    except AccessError as exc:
        fail(str(exc))
    argv = [curl, "-H", f"cf-access-token: {token}", *ctx.args, url]
    if cacert:
        argv[1:1] = ["--cacert", cacert]
    sys.stdout.flush()
    rc = subprocess.call(argv, env=os.environ)
    raise typer.Exit(rc)
