"""Operator commands on the edge host, straight on the state store: accounts, API tokens and the
approval of `burrow tunnel login` requests.

    burrow edge account create NAME | list
    burrow edge token create --account A --scope account:admin [--tunnel T] [--name N]
    burrow edge token list [--account A] | revoke ID
    burrow edge login list | approve CODE [--account A] | deny CODE
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import typer

from burrow.cli.apps import edge_app
from burrow.cli.common import edge_state_dir, fail, open_edge_store, run_async
from burrow.errors import BurrowError, ConfigError
from burrow.store.records import SCOPES, Account
from burrow.store.sqlalchemy_store import SQLStore

T = TypeVar("T")

account_cmd = typer.Typer(help="Accounts (tenants) of this edge.", no_args_is_help=True)
token_cmd = typer.Typer(help="API tokens for the admin API.", no_args_is_help=True)
login_cmd = typer.Typer(help="Approve `burrow tunnel login` requests.", no_args_is_help=True)
edge_app.add_typer(account_cmd, name="account")
edge_app.add_typer(token_cmd, name="token")
edge_app.add_typer(login_cmd, name="login")

STATE_DIR: Any = typer.Option(None, "--state-dir", help="Default ~/.local/share/burrow/edge.")
STORE_URL: Any = typer.Option(None, "--store-url", envvar="BURROW_STORE_URL")
AS_JSON: Any = typer.Option(False, "--json", help="Machine-readable output.")


def _with_store(
    state_dir: Path | None,
    store_url: str | None,
    work: Callable[[SQLStore], Coroutine[Any, Any, T]],
) -> T:
    async def main() -> T:
        store = await open_edge_store(edge_state_dir(state_dir), store_url)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return run_async(main())
    except BurrowError as exc:
        fail(str(exc))


async def _account(store: SQLStore, ref: str) -> Account:
    """An account by id or by (unique) name."""
    accounts = await store.list_accounts()
    by_id = [a for a in accounts if a.id == ref]
    if by_id:
        return by_id[0]
    by_name = [a for a in accounts if a.name == ref]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise ConfigError(f"several accounts are named {ref!r}; use the account id")
    raise ConfigError(f"no account {ref!r} (see `burrow edge account list`)")


@account_cmd.command("create")
def account_create(
    name: str = typer.Argument(..., help="A name for the account."),
    state_dir: Path = STATE_DIR,
    store_url: str = STORE_URL,
    as_json: bool = AS_JSON,
) -> None:
    """Create an account and print its id (the account tag)."""
    if not name.strip() or len(name) > 255:
        fail("an account needs a name of 1-255 characters")
    acct = _with_store(state_dir, store_url, lambda s: s.create_account(name.strip()))
    if as_json:
        typer.echo(json.dumps({"id": acct.id, "name": acct.name}))
    else:
        typer.echo(f"Created account {acct.name} with id {acct.id}")


@account_cmd.command("list")
def account_list(
    state_dir: Path = STATE_DIR, store_url: str = STORE_URL, as_json: bool = AS_JSON
) -> None:
    """List accounts."""
    accounts = _with_store(state_dir, store_url, lambda s: s.list_accounts())
    rows = [{"id": a.id, "name": a.name, "created_at": a.created_at.isoformat()} for a in accounts]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("No accounts.")
        return
    for row in rows:
        typer.echo(f"{row['id']}  {row['name']}  {row['created_at']}")


_SCOPE_HELP = f"Repeatable: {', '.join(SCOPES)}."


@token_cmd.command("create")
def token_create(
    account: str = typer.Option(None, "--account", help="Account id or name (omit for operator)."),
    scope: list[str] = typer.Option(..., "--scope", help=_SCOPE_HELP),
    tunnel: str = typer.Option(None, "--tunnel", help="Bind a tunnel:run token to this tunnel id."),
    name: str = typer.Option("", "--name", help="A label for the token."),
    state_dir: Path = STATE_DIR,
    store_url: str = STORE_URL,
    as_json: bool = AS_JSON,
) -> None:
    """Create an API token and print it (shown once; only its hash is stored)."""
    tunnel_id = None
    if tunnel:
        try:
            tunnel_id = uuid.UUID(tunnel)
        except ValueError:
            fail(f"--tunnel must be a tunnel id (UUID), not {tunnel!r}")

    async def work(store: SQLStore) -> tuple[Any, str]:
        account_id = (await _account(store, account)).id if account else None
        return await store.create_api_token(account_id, scope, name=name, tunnel_id=tunnel_id)

    token, text = _with_store(state_dir, store_url, work)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "id": token.id,
                    "account_id": token.account_id,
                    "scopes": sorted(token.scopes),
                    "token": text,
                }
            )
        )
    else:
        typer.echo(text)


@token_cmd.command("list")
def token_list(
    account: str = typer.Option(None, "--account"),
    state_dir: Path = STATE_DIR,
    store_url: str = STORE_URL,
    as_json: bool = AS_JSON,
) -> None:
    """List API tokens (ids and scopes; never the secrets)."""

    async def work(store: SQLStore) -> list[Any]:
        account_id = (await _account(store, account)).id if account else None
        return await store.list_api_tokens(account_id)

    tokens = _with_store(state_dir, store_url, work)
    rows = [
        {
            "id": t.id,
            "account_id": t.account_id,
            "name": t.name,
            "scopes": sorted(t.scopes),
            "tunnel_id": str(t.tunnel_id) if t.tunnel_id else None,
            "revoked": t.revoked,
        }
        for t in tokens
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        state = "revoked" if r["revoked"] else "active"
        typer.echo(
            f"{r['id']}  {r['account_id'] or '(operator)'}  {','.join(r['scopes'])}  {state}  {r['name']}"
        )


@token_cmd.command("revoke")
def token_revoke(
    token_id: str = typer.Argument(..., help="The token id (the part after burrow_)."),
    state_dir: Path = STATE_DIR,
    store_url: str = STORE_URL,
) -> None:
    """Revoke an API token."""
    _with_store(state_dir, store_url, lambda s: s.revoke_api_token(token_id))
    typer.echo(f"Revoked API token {token_id}")


@login_cmd.command("list")
def login_list(state_dir: Path = STATE_DIR, store_url: str = STORE_URL) -> None:
    """Pending `burrow tunnel login` requests."""
    for r in _with_store(state_dir, store_url, lambda s: s.list_login_requests()):
        typer.echo(f"{r.code}  {r.client_name}  expires {r.expires_at.isoformat()}")


@login_cmd.command("approve")
def login_approve(
    code: str = typer.Argument(..., help="The code `burrow tunnel login` printed."),
    account: str = typer.Option(
        None, "--account", help="Account id or name (default: the only account, if just one)."
    ),
    state_dir: Path = STATE_DIR,
    store_url: str = STORE_URL,
) -> None:
    """Approve a login: the waiting CLI receives an account:admin token for the account."""

    async def work(store: SQLStore) -> Any:
        if account:
            acct = await _account(store, account)
        else:
            accounts = await store.list_accounts()
            if len(accounts) != 1:
                raise ConfigError("several accounts exist (or none): pass --account")
            acct = accounts[0]
        return await store.decide_login_request(code, account_id=acct.id, approve=True), acct

    _, acct = _with_store(state_dir, store_url, work)
    typer.echo(f"Approved login {code.strip().upper()} for account {acct.name} ({acct.id})")


@login_cmd.command("deny")
def login_deny(
    code: str = typer.Argument(...),
    state_dir: Path = STATE_DIR,
    store_url: str = STORE_URL,
) -> None:
    """Deny a login request."""
    _with_store(
        state_dir, store_url, lambda s: s.decide_login_request(code, account_id=None, approve=False)
    )
    typer.echo(f"Denied login {code.strip().upper()}")
