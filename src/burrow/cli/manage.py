"""cloudflared's management verbs against a burrow edge's admin API: `burrow tunnel login`,
`create`, `list`, `info`, `delete`, `cleanup`, `route dns`, `token`.

They authenticate with cert.pem (`--origincert`, `TUNNEL_ORIGIN_CERT`, or cloudflared's default
locations) and talk to the same `/client/v4` endpoints as the official cloudflared, so both CLIs
behave alike against one edge.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import platform
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import typer

from burrow.admin.client import (
    CERT_FILE,
    ApiCallError,
    ApiClient,
    OriginCert,
    load_origin_cert,
    write_origin_cert,
)
from burrow.cli.apps import tunnel_app
from burrow.cli.common import fail, run_async
from burrow.connector.credentials import (
    MIN_SECRET_BYTES,
    TunnelCredentials,
    decode_token,
    generate_tunnel_secret,
    write_credentials_file,
)
from burrow.errors import BurrowError, ConfigError

T = TypeVar("T")

route_app = typer.Typer(help="Route traffic to a tunnel.", no_args_is_help=True)
tunnel_app.add_typer(route_app, name="route")

ORIGINCERT_HELP = "cert.pem from `tunnel login` (default: ~/.cloudflared/cert.pem and others)."


def _cert_path(ctx: typer.Context, origincert: Path | None) -> Path | None:
    if origincert is not None:
        return origincert
    obj = ctx.obj if isinstance(ctx.obj, dict) else {}
    found = obj.get("origincert")
    return Path(found) if found else None


def _api_base(cert: OriginCert, api_url: str | None) -> str:
    """`--api-url` / TUNNEL_API_URL (cloudflared's, ending in /client/v4) wins; otherwise the
    admin URL recorded in cert.pem by `burrow tunnel login`."""
    if api_url:
        base = api_url.rstrip("/")
        return base[: -len("/client/v4")] if base.endswith("/client/v4") else base
    if cert.api_url:
        return cert.api_url.rstrip("/")
    raise ConfigError("this cert.pem does not name a burrow edge; pass --api-url (TUNNEL_API_URL)")


def _run(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        return run_async(work())
    except ApiCallError as exc:
        fail(str(exc))
    except BurrowError as exc:
        fail(str(exc))


class Session:
    """cert.pem + API client for one command."""

    def __init__(self, ctx: typer.Context, origincert: Path | None, api_url: str | None) -> None:
        self.cert = load_origin_cert(_cert_path(ctx, origincert))
        self.base = _api_base(self.cert, api_url)
        self.client = ApiClient(self.base, self.cert.api_token)
        self.account = self.cert.account_id

    @property
    def tunnels(self) -> str:
        return f"/client/v4/accounts/{self.account}/cfd_tunnel"

    async def find_id(self, ref: str) -> uuid.UUID:
        """cloudflared's findID: a UUID as is, else the one live tunnel of that name."""
        try:
            return uuid.UUID(ref)
        except ValueError:
            pass
        found = await self.client.call(
            "GET", self.tunnels, params={"name": ref, "is_deleted": "false"}
        )
        if not found:
            raise ConfigError(f"{ref} is neither the ID nor the name of any of your tunnels")
        return uuid.UUID(found[0]["id"])

    async def get(self, tunnel_id: uuid.UUID) -> dict[str, Any]:
        result: dict[str, Any] = await self.client.call("GET", f"{self.tunnels}/{tunnel_id}")
        return result


API_URL_OPTION: Any = typer.Option(
    None, "--api-url", envvar="TUNNEL_API_URL", help="Admin API base URL."
)
ORIGINCERT_OPTION: Any = typer.Option(
    None, "--origincert", envvar="TUNNEL_ORIGIN_CERT", help=ORIGINCERT_HELP
)


def _print_json(value: Any, output: str | None) -> bool:
    if not output:
        return False
    if output == "json":
        typer.echo(json.dumps(value, indent=2))
        return True
    if output == "yaml":
        import yaml

        typer.echo(yaml.safe_dump(value, sort_keys=False).rstrip())
        return True
    fail(f"Unknown output format '{output}'")


def _colos(conns: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for c in conns:
        if not c.get("is_pending_reconnect"):
            counts[c.get("colo_name", "?")] = counts.get(c.get("colo_name", "?"), 0) + 1
    return ", ".join(f"{n}x{colo}" for colo, n in sorted(counts.items()))


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo(" ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# -- login ------------------------------------------------------------------------------------


@tunnel_app.command("login")
def login(
    ctx: typer.Context,
    edge: str = typer.Option(
        ..., "--edge", envvar="BURROW_EDGE_API", help="The edge's admin API URL."
    ),
    api_token: str = typer.Option(
        None, "--api-token", envvar="BURROW_API_TOKEN", help="Use this API token (no approval)."
    ),
    origincert: Path = ORIGINCERT_OPTION,
    wait: float = typer.Option(600.0, "--timeout", help="Seconds to wait for approval."),
) -> None:
    """Get an account credential (cert.pem). Interactively, an administrator approves the code
    printed here (`burrow edge login approve CODE`); with --api-token, no approval is needed."""
    base = edge.rstrip("/")
    if not base.startswith(("http://", "https://")):
        fail(f"--edge must be the admin API URL (http://HOST:PORT), not {edge!r}")
    target = (_cert_path(ctx, origincert) or Path("~/.cloudflared") / CERT_FILE).expanduser()
    if target.exists():
        fail(
            f"You have an existing certificate at {target} which login would overwrite.\n"
            "If this is intentional, please move or delete that file then run this command again."
        )

    async def main() -> OriginCert:
        if api_token:
            async with ApiClient(base, api_token.strip()) as client:
                me = await client.call("GET", "/api/v1/whoami")
                info = await client.call("GET", "/api/v1/edge")
            if not me.get("account_id"):
                raise ConfigError(
                    "an operator token is not an account credential; use an account token"
                )
            return OriginCert(
                account_id=me["account_id"],
                api_token=api_token.strip(),
                api_url=base,
                edges=tuple(info["tunnel_addresses"]),
                ca_pem=info["ca_pem"],
            )
        async with ApiClient(base, None) as client:
            started = await client.call(
                "POST", "/api/v1/login", body={"client_name": f"{platform.node()} (burrow CLI)"}
            )
            code = started["code"]
            typer.echo(
                f"Ask an administrator of the edge to approve this login:\n\n"
                f"    burrow edge login approve {code} --account ACCOUNT\n\n"
                f"(or POST {base}/api/v1/login/{code}/approve). Code: {code}\n"
                "Waiting for approval...",
                err=True,
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            interval = float(started.get("interval", 1.0))
            while True:
                result = await client.call(
                    "POST",
                    "/api/v1/login/poll",
                    body={"code": code, "poll_secret": started["poll_secret"]},
                )
                if result["status"] == "approved":
                    return OriginCert(
                        account_id=result["account_id"],
                        api_token=result["api_token"],
                        api_url=base,
                        edges=tuple(result["tunnel_addresses"]),
                        ca_pem=result["ca_pem"],
                    )
                if result["status"] == "denied":
                    raise ConfigError(f"login {code} was denied by an administrator")
                if result["status"] != "pending":
                    raise ConfigError(f"login {code} is {result['status']}; start again")
                if loop.time() >= deadline:
                    raise ConfigError(f"login {code} was not approved within {wait:g}s")
                await asyncio.sleep(interval)  # polling a remote server: no event to wait for

    cert = _run(main)
    _write_cert(target, cert)
    typer.echo(
        f"You have successfully logged in.\nIf you wish to copy your credentials to a server, "
        f"they have been saved to:\n{target}"
    )


def _write_cert(target: Path, cert: OriginCert) -> None:
    try:
        write_origin_cert(target, cert)
    except ConfigError as exc:
        fail(str(exc))


# -- create -----------------------------------------------------------------------------------


@tunnel_app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Name of the new tunnel."),
    origincert: Path = ORIGINCERT_OPTION,
    api_url: str = API_URL_OPTION,
    credentials_file: Path = typer.Option(
        None, "--credentials-file", "--cred-file", envvar="TUNNEL_CRED_FILE"
    ),
    output: str = typer.Option(None, "--output", "-o", help="json or yaml"),
    secret: str = typer.Option(None, "--secret", "-s", envvar="TUNNEL_CREATE_SECRET"),
) -> None:
    """Create a tunnel and write its credentials file (mode 0600)."""
    try:
        uuid.UUID(name)
    except ValueError:
        pass
    else:
        fail("you cannot use UUIDs as tunnel names")

    async def main() -> None:
        if secret:
            try:
                raw = base64.b64decode(secret, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError("Couldn't decode tunnel secret from base64") from None
            if len(raw) < MIN_SECRET_BYTES:
                raise ConfigError("Decoded tunnel secret must be at least 32 bytes long")
        else:
            raw = generate_tunnel_secret()
        s = Session(ctx, origincert, api_url)
        path = credentials_file
        chose = path is None
        if path is None:
            assert s.cert.path is not None
            path = s.cert.path.parent / "TUNNEL.json"  # replaced once the id is known
        async with s.client:
            try:
                made = await s.client.call(
                    "POST",
                    s.tunnels,
                    body={"name": name, "tunnel_secret": base64.b64encode(raw).decode()},
                )
            except ApiCallError as exc:
                raise ConfigError(f"Create Tunnel API call failed: {exc}") from None
            tunnel_id = uuid.UUID(made["id"])
            if chose:
                path = path.parent / f"{tunnel_id}.json"
            try:
                if path.exists():
                    raise ConfigError(f"{path} already exists")
                write_credentials_file(
                    path,
                    TunnelCredentials(
                        account_tag=s.account, tunnel_secret=raw, tunnel_id=tunnel_id
                    ),
                )
            except ConfigError as exc:
                # Nothing half-written: a tunnel nobody can run is removed again.
                await s.client.call(
                    "DELETE", f"{s.tunnels}/{tunnel_id}", params={"cascade": "true"}
                )
                raise ConfigError(
                    f"Your tunnel '{name}' was created with ID {tunnel_id}, but its credentials "
                    f"could not be written to {path}: {exc}. The tunnel was deleted."
                ) from None
        if _print_json(made, output):
            return
        typer.echo(
            f"Tunnel credentials written to {path}."
            + (
                " burrow chose this file based on where your origin certificate was found."
                if chose
                else ""
            )
            + " Keep this file secret. To revoke these credentials, delete the tunnel."
        )
        typer.echo(f"\nCreated tunnel {made['name']} with id {tunnel_id}")

    _run(main)


# -- list / info ------------------------------------------------------------------------------


@tunnel_app.command("list")
def list_tunnels(
    ctx: typer.Context,
    origincert: Path = ORIGINCERT_OPTION,
    api_url: str = API_URL_OPTION,
    output: str = typer.Option(None, "--output", "-o", help="json or yaml"),
    show_deleted: bool = typer.Option(False, "--show-deleted", "-d"),
    name: str = typer.Option(None, "--name", "-n"),
    name_prefix: str = typer.Option(None, "--name-prefix", "-np"),
    exclude_prefix: str = typer.Option(None, "--exclude-name-prefix", "-enp"),
    tunnel_id: str = typer.Option(None, "--id", "-i"),
) -> None:
    """List tunnels and their connections."""

    async def main() -> None:
        s = Session(ctx, origincert, api_url)
        params: dict[str, str] = {}
        if not show_deleted:
            params["is_deleted"] = "false"
        if name:
            params["name"] = name
        if name_prefix:
            params["name_prefix"] = name_prefix
        if exclude_prefix:
            params["exclude_prefix"] = exclude_prefix
        if tunnel_id:
            try:
                params["uuid"] = str(uuid.UUID(tunnel_id))
            except ValueError:
                raise ConfigError(f"{tunnel_id} is not a valid tunnel ID") from None
        tunnels: list[dict[str, Any]] = []
        async with s.client:
            page = 1
            while True:
                full = await s.client.call_full(
                    "GET", s.tunnels, params={**params, "page": str(page)}
                )
                tunnels += full["result"]
                info = full.get("result_info") or {}
                if info.get("count", 0) < info.get("per_page", 0) or len(tunnels) >= info.get(
                    "total_count", 0
                ):
                    break
                page += 1
        tunnels.sort(key=lambda t: t["name"])
        if _print_json(tunnels, output):
            return
        if not tunnels:
            typer.echo(
                "No tunnels were found for the given filter flags. You can use "
                "'burrow tunnel create' to create a tunnel."
            )
            return
        typer.echo(
            "You can obtain more detailed information for each tunnel with "
            "`burrow tunnel info <name/uuid>`"
        )
        rows = [["ID", "NAME", "CREATED", "CONNECTIONS"]]
        rows += [[t["id"], t["name"], t["created_at"], _colos(t["connections"])] for t in tunnels]
        _table(rows)

    _run(main)


@tunnel_app.command("info")
def info(
    ctx: typer.Context,
    tunnel: str = typer.Argument(..., help="Tunnel name or UUID."),
    origincert: Path = ORIGINCERT_OPTION,
    api_url: str = API_URL_OPTION,
    output: str = typer.Option(None, "--output", "-o", help="json or yaml"),
) -> None:
    """Show a tunnel's connectors and their connections."""

    async def main() -> None:
        s = Session(ctx, origincert, api_url)
        async with s.client:
            tunnel_id = await s.find_id(tunnel)
            clients = await s.client.call("GET", f"{s.tunnels}/{tunnel_id}/connections")
            t = await s.get(tunnel_id)
        result = {"id": t["id"], "name": t["name"], "createdAt": t["created_at"], "conns": clients}
        if _print_json(result, output):
            return
        if not clients:
            typer.echo(f"Your tunnel {tunnel_id} does not have any active connection.")
            return
        typer.echo(f"NAME:     {t['name']}\nID:       {t['id']}\nCREATED:  {t['created_at']}\n")
        rows = [["CONNECTOR ID", "CREATED", "ARCHITECTURE", "VERSION", "ORIGIN IP", "EDGE"]]
        for c in clients:
            conns = c["conns"]
            origin = conns[0]["origin_ip"] if conns else ""
            rows.append([c["id"], c["run_at"], c["arch"], c["version"], origin, _colos(conns)])
        _table(rows)
        # Every connection of every connector (replicas, several edge nodes on one store).
        typer.echo("")
        rows = [["CONNECTOR ID", "INDEX", "EDGE NODE", "LOCATION", "VERSION", "SINCE"]]
        for c in clients:
            for conn in c["conns"]:
                rows.append(
                    [
                        c["id"],
                        str(conn.get("conn_index", "")),
                        str(conn.get("edge_node", "")),
                        str(conn.get("colo_name", "")),
                        str(conn.get("client_version") or c["version"]),
                        str(conn.get("opened_at", "")),
                    ]
                )
        _table(rows)

    _run(main)


# -- delete / cleanup -------------------------------------------------------------------------


@tunnel_app.command("delete")
def delete(
    ctx: typer.Context,
    tunnels: list[str] = typer.Argument(..., help="Tunnel names or UUIDs."),
    origincert: Path = ORIGINCERT_OPTION,
    api_url: str = API_URL_OPTION,
    force: bool = typer.Option(False, "--force", "-f", help="Delete even while connected."),
    credentials_file: Path = typer.Option(None, "--credentials-file", "--cred-file"),
) -> None:
    """Delete tunnels (refused while connected unless --force) and their credentials files."""

    async def main() -> None:
        s = Session(ctx, origincert, api_url)
        async with s.client:
            ids = [await s.find_id(ref) for ref in tunnels]
            for tunnel_id in ids:
                t = await s.get(tunnel_id)
                if t.get("deleted_at"):
                    raise ConfigError(f"Tunnel {tunnel_id} has already been deleted")
                try:
                    await s.client.call(
                        "DELETE",
                        f"{s.tunnels}/{tunnel_id}",
                        params={"cascade": "true"} if force else None,
                    )
                except ApiCallError as exc:
                    raise ConfigError(f"Error deleting tunnel {tunnel_id}: {exc}") from None
                path = credentials_file
                if path is None and s.cert.path is not None:
                    path = s.cert.path.parent / f"{tunnel_id}.json"
                if path is not None and path.is_file():
                    try:
                        path.unlink()
                    except OSError as exc:
                        typer.echo(
                            f"Tunnel {tunnel_id} was deleted, but its credentials file {path} "
                            f"could not be removed: {exc.strerror}",
                            err=True,
                        )
                typer.echo(f"Deleted tunnel {t['name']} ({tunnel_id})")

    _run(main)


@tunnel_app.command("cleanup")
def cleanup(
    ctx: typer.Context,
    tunnels: list[str] = typer.Argument(..., help="Tunnel names or UUIDs."),
    origincert: Path = ORIGINCERT_OPTION,
    api_url: str = API_URL_OPTION,
    connector_id: str = typer.Option(None, "--connector-id", "-c"),
) -> None:
    """Drop a tunnel's connections (all, or one connector's)."""
    params: dict[str, str] = {}
    if connector_id:
        try:
            params["client_id"] = str(uuid.UUID(connector_id))
        except ValueError:
            fail(f"{connector_id} is not a valid client ID (must be a UUID)")

    async def main() -> None:
        s = Session(ctx, origincert, api_url)
        async with s.client:
            for ref in tunnels:
                tunnel_id = await s.find_id(ref)
                await s.client.call(
                    "DELETE", f"{s.tunnels}/{tunnel_id}/connections", params=params or None
                )
                typer.echo(f"Cleaned up connections for tunnel {tunnel_id}")

    _run(main)


# -- token / route ----------------------------------------------------------------------------


@tunnel_app.command("token")
def token(
    ctx: typer.Context,
    tunnel: str = typer.Argument(..., help="Tunnel name or UUID."),
    origincert: Path = ORIGINCERT_OPTION,
    api_url: str = API_URL_OPTION,
    credentials_file: Path = typer.Option(None, "--credentials-file", "--cred-file"),
) -> None:
    """Print the token that runs the tunnel (or write it as a credentials file)."""

    if credentials_file is not None and credentials_file.exists():
        fail(f"{credentials_file} already exists")

    async def main() -> None:
        s = Session(ctx, origincert, api_url)
        async with s.client:
            tunnel_id = await s.find_id(tunnel)
            text = await s.client.call("GET", f"{s.tunnels}/{tunnel_id}/token")
        if credentials_file is not None:
            write_credentials_file(credentials_file, decode_token(text))
            return
        typer.echo(text)

    _run(main)


@route_app.command("dns")
def route_dns(
    ctx: typer.Context,
    tunnel: str = typer.Argument(..., help="Tunnel name or UUID."),
    hostname: str = typer.Argument(..., help="Hostname to route to the tunnel."),
    origincert: Path = ORIGINCERT_OPTION,
    api_url: str = API_URL_OPTION,
    overwrite_dns: bool = typer.Option(False, "--overwrite-dns", "-f"),
) -> None:
    """Route a hostname to a tunnel (refused if another tunnel has it, unless --overwrite-dns;
    always refused for another account's hostname)."""
    from burrow.store.records import normalize_hostname

    try:
        normalize_hostname(hostname)
    except ConfigError:
        fail(f"{hostname} is not a valid hostname")

    async def main() -> None:
        s = Session(ctx, origincert, api_url)
        zone = s.cert.zone_id or s.account
        async with s.client:
            tunnel_id = await s.find_id(tunnel)
            try:
                res = await s.client.call(
                    "PUT",
                    f"/client/v4/zones/{zone}/tunnels/{tunnel_id}/routes",
                    body={
                        "type": "dns",
                        "user_hostname": hostname,
                        "overwrite_existing": overwrite_dns,
                    },
                )
            except ApiCallError as exc:
                raise ConfigError(f"Failed to add route: {exc}") from None
        host = res.get("name") or hostname
        message = {
            "new": f"Added CNAME {host} which will route to this tunnel",
            "updated": f"{host} updated to route to your tunnel",
            "unchanged": f"{host} is already configured to route to your tunnel",
        }.get(res.get("cname", ""), f"{host} routed")
        typer.echo(f"{message} tunnelID={tunnel_id}")

    _run(main)


# -- used by `burrow tunnel run NAME` ---------------------------------------------------------


def resolve_for_run(
    ref: str, origincert: Path | None, credentials_file: Path | None
) -> tuple[str, Path | None, OriginCert | None]:
    """cloudflared's `tunnel run NAME|UUID`: the tunnel id (a name is looked up with cert.pem),
    the credentials file found next to cert.pem (if any), and cert.pem itself (its edge
    address and CA complete a plain cloudflared credentials file)."""
    cert: OriginCert | None = None
    try:
        cert = load_origin_cert(origincert)
    except ConfigError:
        if origincert is not None:
            raise
    try:
        tunnel_id = uuid.UUID(ref)
    except ValueError:
        if cert is None:
            raise ConfigError(
                f"{ref} is not a tunnel UUID, and looking a name up needs cert.pem "
                "(run `burrow tunnel login` or pass --origincert)"
            ) from None

        async def lookup() -> uuid.UUID:
            assert cert is not None
            base = _api_base(cert, os.environ.get("TUNNEL_API_URL"))
            async with ApiClient(base, cert.api_token) as client:
                found = await client.call(
                    "GET",
                    f"/client/v4/accounts/{cert.account_id}/cfd_tunnel",
                    params={"name": ref, "is_deleted": "false"},
                )
            if not found:
                raise ConfigError(f"{ref} is neither the ID nor the name of any of your tunnels")
            return uuid.UUID(found[0]["id"])

        tunnel_id = run_async(lookup())
    path = credentials_file
    if path is None and cert is not None and cert.path is not None:
        candidate = cert.path.parent / f"{tunnel_id}.json"
        if candidate.is_file():
            path = candidate
    return str(tunnel_id), path, cert


def complete_credentials(creds: TunnelCredentials, cert: OriginCert | None) -> TunnelCredentials:
    """Fill the edge address and CA of a plain credentials file from cert.pem."""
    if cert is None or (creds.edge and creds.ca_pem):
        return creds
    return TunnelCredentials(
        account_tag=creds.account_tag,
        tunnel_secret=creds.tunnel_secret,
        tunnel_id=creds.tunnel_id,
        endpoint=creds.endpoint,
        edge=creds.edge or cert.edges,
        ca_pem=creds.ca_pem or cert.ca_pem,
    )
