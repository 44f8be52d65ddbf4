"""`burrow edge waf rule create|list|delete|test`: WAF custom rules kept in the edge's state
store, so every edge node sharing it applies them (within its poll interval, about a second).

They run after the rules of a `--waf-rules` file, in creation order. `test` tries an expression,
or the stored rules, against a sample request without sending one.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from burrow.cli.apps import edge_app
from burrow.cli.common import edge_state_dir, fail, handle_errors, open_edge_store, run_async
from burrow.errors import ConfigError
from burrow.store.sqlalchemy_store import SQLStore
from burrow.store.waf_rules import (
    compile_records,
    create_waf_rule,
    delete_waf_rule,
    list_waf_rules,
)
from burrow.waf.parse import RuleSyntaxError
from burrow.waf.rules import ACTIONS
from burrow.waf.trial import SampleRequest, evaluate_rules, expression_matches

waf_cmd = typer.Typer(help="Web application firewall (WAF).", no_args_is_help=True)
rule_cmd = typer.Typer(
    help="WAF custom rules stored in the control plane (every edge node applies them).",
    no_args_is_help=True,
)
edge_app.add_typer(waf_cmd, name="waf")
waf_cmd.add_typer(rule_cmd, name="rule")

StateDirOpt = Annotated[
    Path | None, typer.Option("--state-dir", help="Default ~/.local/share/burrow/edge.")
]
StoreUrlOpt = Annotated[str | None, typer.Option("--store-url", envvar="BURROW_STORE_URL")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _run(
    state_dir: Path | None, store_url: str | None, fn: Callable[[SQLStore], Awaitable[Any]]
) -> None:
    async def main() -> None:
        sd = edge_state_dir(state_dir)
        store = await open_edge_store(sd, store_url)
        try:
            await fn(store)
        finally:
            await store.close()

    handle_errors(lambda: run_async(main()))


def _syntax_fail(exc: RuleSyntaxError) -> None:
    """Exit status 2 with the message, the expression and a caret under the position."""
    fail(f"invalid expression: {exc}", 2)


def _dump(value: Any) -> str:
    return json.dumps(value, default=str)


@rule_cmd.command("create")
def rule_create(
    expression: Annotated[str, typer.Argument(help='e.g. http.request.uri.path contains "/admin"')],
    action: Annotated[str, typer.Option("--action", help=" | ".join(ACTIONS))] = "block",
    rule_id: Annotated[
        str | None, typer.Option("--id", help="Rule id (default generated).")
    ] = None,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Only for this hostname (repeatable; default every one)."),
    ] = None,
    description: Annotated[str, typer.Option("--description")] = "",
    disabled: Annotated[
        bool, typer.Option("--disabled", help="Store it, do not apply it.")
    ] = False,
    state_dir: StateDirOpt = None,
    store_url: StoreUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a rule after the existing ones (refused with the position if malformed)."""

    async def go(store: SQLStore) -> None:
        try:
            record = await create_waf_rule(
                store,
                expression,
                action,
                rule_id=rule_id,
                hostnames=host or [],
                description=description,
                enabled=not disabled,
            )
        except RuleSyntaxError as exc:
            _syntax_fail(exc)
            return
        if as_json:
            typer.echo(_dump(record.as_json()))
        else:
            scope = ", ".join(record.hostnames) or "every hostname"
            typer.echo(f"Created WAF rule {record.id} ({record.action}, {scope})")

    _run(state_dir, store_url, go)


@rule_cmd.command("list")
def rule_list(
    state_dir: StateDirOpt = None, store_url: StoreUrlOpt = None, as_json: JsonOpt = False
) -> None:
    """The managed rules in evaluation order."""

    async def go(store: SQLStore) -> None:
        records = await list_waf_rules(store)
        if as_json:
            typer.echo(_dump([r.as_json() for r in records]))
            return
        if not records:
            typer.echo("No WAF rules.")
            return
        typer.echo(f"{'ID':<20} {'ACTION':<6} {'HOSTNAMES':<30} EXPRESSION")
        for r in records:
            hosts = ",".join(r.hostnames) or "*"
            flag = "" if r.enabled else " (disabled)"
            typer.echo(f"{r.id:<20} {r.action:<6} {hosts:<30} {r.expression}{flag}")

    _run(state_dir, store_url, go)


@rule_cmd.command("delete")
def rule_delete(
    rule_id: Annotated[str, typer.Argument(help="Rule id.")],
    state_dir: StateDirOpt = None,
    store_url: StoreUrlOpt = None,
) -> None:
    """Remove a rule; edges stop applying it within their poll interval."""

    async def go(store: SQLStore) -> None:
        await delete_waf_rule(store, rule_id)
        typer.echo(f"Deleted WAF rule {rule_id}")

    _run(state_dir, store_url, go)


def _headers(values: list[str] | None) -> tuple[tuple[str, str], ...]:
    out = []
    for item in values or []:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ConfigError(f"--header takes 'Name: value', got {item!r}")
        out.append((name.strip(), value.strip()))
    return tuple(out)


@rule_cmd.command("test")
def rule_test(
    expression: Annotated[
        str | None, typer.Argument(help="An expression to try (default: the stored rules).")
    ] = None,
    host: Annotated[str, typer.Option("--host")] = "example.com",
    path: Annotated[str, typer.Option("--path", help="Path and optional ?query.")] = "/",
    method: Annotated[str, typer.Option("--method")] = "GET",
    ip: Annotated[str, typer.Option("--ip", help="Client address (ip.src).")] = "192.0.2.1",
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="'Name: value' (repeatable).")
    ] = None,
    plain_http: Annotated[bool, typer.Option("--http", help="As plain HTTP (ssl false).")] = False,
    state_dir: StateDirOpt = None,
    store_url: StoreUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Try an expression, or the stored rules, against a sample request."""
    sample = SampleRequest(
        host=host,
        path=path,
        method=method,
        ip=ip,
        headers=handle_errors(lambda: _headers(header)),
        ssl=not plain_http,
    )
    if expression is not None:
        try:
            matched = expression_matches(expression, sample)
        except RuleSyntaxError as exc:
            _syntax_fail(exc)
            return
        typer.echo(_dump({"matched": matched}) if as_json else ("match" if matched else "no match"))
        return

    async def go(store: SQLStore) -> None:
        result = evaluate_rules(compile_records(await list_waf_rules(store)), sample)
        if as_json:
            typer.echo(_dump(result))
            return
        if result["blocked_by"]:
            typer.echo(f"blocked by {result['blocked_by']}")
        else:
            typer.echo("allowed")
        for rid in result["logged_by"]:
            typer.echo(f"logged by {rid}")

    _run(state_dir, store_url, go)
