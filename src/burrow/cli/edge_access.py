"""`burrow edge access app|policy|service-token|idp ...`: manage Zero Trust access directly on
the edge's state (like `burrow edge tunnel`). A running edge picks the changes up within its
poll interval (about a second).

Rules are written `KIND=VALUE`: `email=alice@example.com`, `email_domain=example.com`,
`everyone`, `ip=10.0.0.0/8`, `service_token=NAME-OR-ID`, `any_valid_service_token`,
`group=admins`, `login_method=IDP-ID`, `auth_method=email`, `oidc_claim=NAME:VALUE`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import typer

from burrow.cli.apps import edge_app
from burrow.cli.common import edge_state_dir, handle_errors, open_edge_store, run_async
from burrow.errors import ConfigError
from burrow.store.access_store import AccessStore, SelectorSpec
from burrow.store.sealing import SecretBox

access_cmd = typer.Typer(
    help="Zero Trust access: applications, policies, tokens, IdPs.", no_args_is_help=True
)
app_cmd = typer.Typer(help="Access applications.", no_args_is_help=True)
policy_cmd = typer.Typer(help="Access policies of an application.", no_args_is_help=True)
token_cmd = typer.Typer(help="Service tokens (CF-Access-Client-Id/-Secret).", no_args_is_help=True)
idp_cmd = typer.Typer(help="Identity providers (oidc, onetimepin).", no_args_is_help=True)
edge_app.add_typer(access_cmd, name="access")
access_cmd.add_typer(app_cmd, name="app")
access_cmd.add_typer(policy_cmd, name="policy")
access_cmd.add_typer(token_cmd, name="service-token")
access_cmd.add_typer(idp_cmd, name="idp")

_STATE = typer.Option(None, "--state-dir", help="Default ~/.local/share/burrow/edge.")
_STORE = typer.Option(None, "--store-url", envvar="BURROW_STORE_URL")
_JSON = typer.Option(False, "--json", help="Machine-readable output.")


def _run(
    state_dir: Path | None, store_url: str | None, fn: Callable[[AccessStore], Awaitable[Any]]
) -> None:
    async def main() -> None:
        sd = edge_state_dir(state_dir)
        store = await open_edge_store(sd, store_url)
        try:
            await fn(AccessStore(store, SecretBox.load_or_create(sd)))
        finally:
            await store.close()

    handle_errors(lambda: run_async(main()))


def parse_rule(text: str) -> SelectorSpec:
    kind, _, value = text.partition("=")
    kind = kind.strip()
    claim = ""
    if kind == "oidc_claim":
        claim, sep, value = value.partition(":")
        if not sep:
            raise ConfigError("oidc_claim rules are oidc_claim=NAME:VALUE")
    return (kind, value.strip(), claim.strip())


def _out(as_json: bool, value: Any, text: str) -> None:
    typer.echo(json.dumps(value, default=str) if as_json else text)


# -- applications ------------------------------------------------------------------------------


@app_cmd.command("create")
def app_create(
    name: str = typer.Argument(...),
    domain: str = typer.Option(..., "--domain", help="host\\[/path], e.g. app.example.com/admin/*"),
    session_duration: float = typer.Option(24 * 3600.0, "--session-duration", help="Seconds."),
    idp: list[str] = typer.Option(
        None, "--idp", help="Allowed identity provider (name or id; default all)."
    ),
    cors: str = typer.Option(
        None,
        "--cors",
        help="CORS settings as a JSON object: allowed_origins, allowed_methods, allowed_headers "
        "(lists), allow_all_origins, allow_all_methods, allow_all_headers, allow_credentials, "
        "options_preflight_bypass (booleans), max_age (seconds).",
    ),
    state_dir: Path = _STATE,
    store_url: str = _STORE,
    as_json: bool = _JSON,
) -> None:
    """Protect a hostname (and optional path) with Access."""
    cors_settings = None
    if cors:
        try:
            cors_settings = json.loads(cors)
        except ValueError:
            cors_settings = None
        if not isinstance(cors_settings, dict):
            typer.echo("error: --cors must be a JSON object", err=True)
            raise typer.Exit(2)

    async def go(st: AccessStore) -> None:
        idps = [(await st.find_idp(i)).id for i in idp or []]
        a = await st.create_app(
            name,
            domain,
            session_duration=session_duration,
            allowed_idps=idps,
            cors=cors_settings,
        )
        _out(
            as_json,
            {"id": a.id, "name": a.name, "domain": a.domain, "aud": a.aud},
            f"Created access application {a.name} for {a.domain}\nAUD tag: {a.aud}",
        )

    _run(state_dir, store_url, go)


@app_cmd.command("list")
def app_list(state_dir: Path = _STATE, store_url: str = _STORE, as_json: bool = _JSON) -> None:
    async def go(st: AccessStore) -> None:
        rows = [
            {
                "id": a.id,
                "name": a.name,
                "domain": a.domain,
                "aud": a.aud,
                "session_duration": a.session_duration,
            }
            for a in await st.list_apps()
        ]
        _out(
            as_json,
            rows,
            "\n".join(f"{r['name']:20} {r['domain']:40} {r['aud']}" for r in rows)
            or "No applications.",
        )

    _run(state_dir, store_url, go)


@app_cmd.command("delete")
def app_delete(
    ref: str = typer.Argument(..., help="Name, id, domain or AUD."),
    state_dir: Path = _STATE,
    store_url: str = _STORE,
) -> None:
    async def go(st: AccessStore) -> None:
        a = await st.find_app(ref)
        await st.delete_app(a.id)
        typer.echo(f"Deleted access application {a.name}")

    _run(state_dir, store_url, go)


# -- policies --------------------------------------------------------------------------------


@policy_cmd.command("create")
def policy_create(
    app: str = typer.Argument(..., help="Application name, id or domain."),
    name: str = typer.Argument(...),
    action: str = typer.Option("allow", "--action", help="allow, block, bypass or non_identity."),
    include: list[str] = typer.Option(..., "--include", help="KIND=VALUE (repeatable, any)."),
    require: list[str] = typer.Option(None, "--require", help="KIND=VALUE (repeatable, all)."),
    exclude: list[str] = typer.Option(None, "--exclude", help="KIND=VALUE (repeatable, none)."),
    precedence: int = typer.Option(None, "--precedence"),
    state_dir: Path = _STATE,
    store_url: str = _STORE,
    as_json: bool = _JSON,
) -> None:
    """Add a policy to an application (evaluated in precedence order)."""

    async def go(st: AccessStore) -> None:
        a = await st.find_app(app)
        p = await st.create_policy(
            a.id,
            name,
            action,
            [parse_rule(r) for r in include],
            [parse_rule(r) for r in require or []],
            [parse_rule(r) for r in exclude or []],
            precedence=precedence,
        )
        if (
            action in ("allow", "bypass")
            and any(k == "everyone" for k, _, _ in p.include)
            and not p.require
            and not p.exclude
        ):
            typer.echo("warning: this policy lets anyone in", err=True)
        _out(
            as_json,
            {"id": p.id, "app_id": a.id, "precedence": p.precedence},
            f"Created policy {name} ({action}) on {a.name}, precedence {p.precedence}",
        )

    _run(state_dir, store_url, go)


@policy_cmd.command("list")
def policy_list(
    app: str = typer.Argument(None),
    state_dir: Path = _STATE,
    store_url: str = _STORE,
    as_json: bool = _JSON,
) -> None:
    async def go(st: AccessStore) -> None:
        app_id = (await st.find_app(app)).id if app else None
        rows = [
            {
                "id": p.id,
                "app_id": p.app_id,
                "name": p.name,
                "action": p.action,
                "precedence": p.precedence,
                "include": p.include,
                "require": p.require,
                "exclude": p.exclude,
            }
            for p in await st.list_policies(app_id)
        ]
        _out(
            as_json,
            rows,
            "\n".join(
                f"{r['precedence']:3} {r['name']:20} {r['action']:12} {r['id']}" for r in rows
            )
            or "No policies.",
        )

    _run(state_dir, store_url, go)


@policy_cmd.command("delete")
def policy_delete(
    policy_id: str = typer.Argument(...), state_dir: Path = _STATE, store_url: str = _STORE
) -> None:
    async def go(st: AccessStore) -> None:
        await st.delete_policy(policy_id)
        typer.echo(f"Deleted policy {policy_id}")

    _run(state_dir, store_url, go)


# -- service tokens ----------------------------------------------------------------------------


@token_cmd.command("create")
def token_create(
    name: str = typer.Argument(...),
    duration: float = typer.Option(
        None, "--duration", help="Seconds until it expires (default never)."
    ),
    state_dir: Path = _STATE,
    store_url: str = _STORE,
    as_json: bool = _JSON,
) -> None:
    """Create a service token; its secret is shown once (only a hash is kept)."""

    async def go(st: AccessStore) -> None:
        t, secret = await st.create_service_token(name, duration=duration)
        _out(
            as_json,
            {
                "id": t.id,
                "name": t.name,
                "client_id": t.client_id,
                "client_secret": secret,
                "expires_at": t.expires_at,
            },
            f"Created service token {t.name}\nCF-Access-Client-Id: {t.client_id}\n"
            f"CF-Access-Client-Secret: {secret}\n(the secret is not shown again)",
        )

    _run(state_dir, store_url, go)


@token_cmd.command("list")
def token_list(state_dir: Path = _STATE, store_url: str = _STORE, as_json: bool = _JSON) -> None:
    async def go(st: AccessStore) -> None:
        rows = [
            {"id": t.id, "name": t.name, "client_id": t.client_id, "expires_at": t.expires_at}
            for t in await st.list_service_tokens()
        ]
        _out(
            as_json,
            rows,
            "\n".join(
                f"{r['name']:20} {r['client_id']} expires {r['expires_at'] or 'never'}"
                for r in rows
            )
            or "No service tokens.",
        )

    _run(state_dir, store_url, go)


@token_cmd.command("delete")
def token_delete(
    ref: str = typer.Argument(..., help="Name, id or client id."),
    state_dir: Path = _STATE,
    store_url: str = _STORE,
) -> None:
    """Delete (revoke) a service token."""

    async def go(st: AccessStore) -> None:
        t = await st.find_service_token(ref)
        await st.delete_service_token(t.id)
        typer.echo(f"Deleted service token {t.name}")

    _run(state_dir, store_url, go)


# -- identity providers ------------------------------------------------------------------------


@idp_cmd.command("create")
def idp_create(
    name: str = typer.Argument(...),
    type_: str = typer.Option(..., "--type", help="onetimepin or oidc."),
    setting: list[str] = typer.Option(
        None,
        "--set",
        help="KEY=VALUE: smtp_host, smtp_port, smtp_from, smtp_username, smtp_password, smtp_starttls; issuer, client_id, client_secret, scopes, email_claim, groups_claim, claims (comma-separated), ca_file, token_auth.",
    ),
    state_dir: Path = _STATE,
    store_url: str = _STORE,
    as_json: bool = _JSON,
) -> None:
    async def go(st: AccessStore) -> None:
        cfg: dict[str, Any] = {}
        for item in setting or []:
            k, sep, v = item.partition("=")
            if not sep:
                raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
            cfg[k.strip()] = v
        i = await st.create_idp(name, type_, cfg)
        _out(as_json, i.public(), f"Created identity provider {i.name} ({i.type}) with id {i.id}")

    _run(state_dir, store_url, go)


@idp_cmd.command("list")
def idp_list(state_dir: Path = _STATE, store_url: str = _STORE, as_json: bool = _JSON) -> None:
    async def go(st: AccessStore) -> None:
        rows = [i.public() for i in await st.list_idps()]
        _out(
            as_json,
            rows,
            "\n".join(f"{r['name']:20} {r['type']:12} {r['id']}" for r in rows)
            or "No identity providers.",
        )

    _run(state_dir, store_url, go)


@idp_cmd.command("delete")
def idp_delete(
    ref: str = typer.Argument(...), state_dir: Path = _STATE, store_url: str = _STORE
) -> None:
    async def go(st: AccessStore) -> None:
        i = await st.find_idp(ref)
        await st.delete_idp(i.id)
        typer.echo(f"Deleted identity provider {i.name}")

    _run(state_dir, store_url, go)


@access_cmd.command("rotate-keys")
def rotate_keys(state_dir: Path = _STATE, store_url: str = _STORE) -> None:
    """Start signing with a new key; the previous one stays published until the next rotation."""
    from burrow.access.tokens import SigningKey

    async def go(st: AccessStore) -> None:
        key = SigningKey.generate()
        await st.add_key(key.kid, key.private_pem())
        typer.echo(f"New signing key {key.kid}")

    _run(state_dir, store_url, go)
