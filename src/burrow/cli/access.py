"""`burrow access tcp|ssh|rdp|smb` and `burrow access ssh-config`: TCP carried over WebSocket
to the edge, with cloudflared's flags and environment variables.

As in cloudflared, the four verbs are one command: with `--url` it listens locally and carries
each accepted connection over its own WebSocket; without it, it carries stdin/stdout (OpenSSH's
`ProxyCommand`). burrow adds `--edge` (where to connect when the name does not resolve to the
edge), `--cacert`, and `http://` hostnames for a plain-HTTP edge.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys

import typer

from burrow.access.tcp_client import (
    AccessError,
    AccessTarget,
    TCPForwarder,
    access_headers,
    make_target,
    run_stdio,
    stored_app_token,
)
from burrow.cli.apps import access_app
from burrow.cli.common import fail, run_async, serve_until_signal
from burrow.observability.logs import setup_logging

log = logging.getLogger("burrow.access")

_SSH_CONFIG = """
Add to your {home}/.ssh/config:

Host {hostname}
  ProxyCommand {burrow} access ssh --hostname {proxy_hostname}
"""


_HEADER_OPTION = typer.Option(
    None, "--header", "-H", help="Extra request header 'Name: value' (repeatable)."
)


def _listen_address(url: str) -> tuple[str, int]:
    """cloudflared's `--url` for the listener: `host:port`, optionally with a scheme."""
    text = url.split("://", 1)[1] if "://" in url else url
    text = text.split("/", 1)[0]
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise AccessError(f"--url must be host:port, got {url!r}")
    return host or "127.0.0.1", int(port)


def carry(
    hostname: str = typer.Option(
        None,
        "--hostname",
        "--tunnel-host",
        "-T",
        envvar="TUNNEL_SERVICE_HOSTNAME",
        help="The application's hostname (H, H:PORT, https://H, or http://H for a plain-HTTP "
        "edge).",
    ),
    url: str = typer.Option(
        None,
        "--url",
        "--listener",
        "-L",
        envvar="TUNNEL_SERVICE_URL",
        help="Listen on this host:port and forward each connection; without it, use stdin/stdout.",
    ),
    destination: str = typer.Option(
        None,
        "--destination",
        envvar="TUNNEL_SERVICE_DESTINATION",
        help="Destination host:port behind a bastion service (Cf-Access-Jump-Destination).",
    ),
    header: list[str] = _HEADER_OPTION,
    service_token_id: str = typer.Option(
        None, "--service-token-id", "--id", envvar="TUNNEL_SERVICE_TOKEN_ID"
    ),
    service_token_secret: str = typer.Option(
        None, "--service-token-secret", "--secret", envvar="TUNNEL_SERVICE_TOKEN_SECRET"
    ),
    edge: str = typer.Option(
        None,
        "--edge",
        envvar="BURROW_EDGE_ADDRESS",
        help="Connect to this ADDR[:PORT] instead of resolving the hostname (TLS name and Host "
        "stay the hostname). Names under .localhost always go to 127.0.0.1.",
    ),
    cacert: str = typer.Option(
        None, "--cacert", help="Also trust the CA certificates in this PEM file (wss://)."
    ),
    loglevel: str = typer.Option("info", "--loglevel", "--log-level"),
) -> None:
    """Carry TCP over a WebSocket to the edge (aliases: tcp, ssh, rdp, smb)."""
    setup_logging(loglevel)  # stderr: stdout may be the ssh data stream
    if not hostname:
        fail("--hostname is required")
    try:
        target = make_target(hostname, edge=edge, cacert=cacert)
        headers = access_headers(
            extra=header or (),
            service_token_id=service_token_id,
            service_token_secret=service_token_secret,
            destination=destination,
            token=stored_app_token(target.host),
        )
        target = dataclasses.replace(target, headers=tuple(headers))
        if url:
            host, port = _listen_address(url)
            run_async(_forward(target, host, port))
        else:
            run_async(run_stdio(target))
    except AccessError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)


async def _forward(target: AccessTarget, host: str, port: int) -> None:
    forwarder = TCPForwarder(target)
    try:
        bound = await forwarder.start(host, port)
    except OSError as exc:
        raise AccessError(f"cannot listen on {host}:{port}: {exc}") from None
    log.info("listening on %s:%d, forwarding to %s", bound[0], bound[1], target.url)
    await serve_until_signal(forwarder.stop)


for _name in ("tcp", "ssh", "rdp", "smb"):
    access_app.command(_name, help=f"Carry TCP over WebSocket ({_name}); see `access tcp`.")(carry)


def _burrow_path() -> str:
    exe = sys.argv[0] if sys.argv and os.path.isabs(sys.argv[0]) else None
    if exe and os.path.isfile(exe):
        return exe
    return shutil.which("burrow") or "burrow"


@access_app.command("ssh-config")
def ssh_config(
    hostname: str = typer.Option(None, "--hostname", help="The application's hostname."),
) -> None:
    """Print an ssh_config snippet that uses `burrow access ssh` as ProxyCommand."""
    shown = hostname or "[your hostname]"
    typer.echo(
        _SSH_CONFIG.format(
            home=os.environ.get("HOME", "~"),
            hostname=shown,
            burrow=_burrow_path(),
            proxy_hostname="%h",
        ).rstrip("\n")
    )
