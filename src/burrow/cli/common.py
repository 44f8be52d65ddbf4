"""Shared CLI plumbing: errors, list-valued options, the edge's state directory and store.

Running coroutines (uvloop), signals and GC tuning live in burrow.runtime, shared with the
long-running processes that run without the CLI (burrow.launch); they are re-exported here."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

from burrow.errors import BurrowError
from burrow.runtime import run_async as run_async
from burrow.runtime import serve_until_signal as serve_until_signal
from burrow.runtime import tune_gc as tune_gc

if TYPE_CHECKING:
    from burrow.store.sqlalchemy_store import SQLStore

T = TypeVar("T")
log = logging.getLogger("burrow")


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def as_list(value: Any) -> list[str]:
    """A config-file value that may be one string or a list of them."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def split_list(values: list[str] | None) -> list[str]:
    """Repeatable options that may also come comma-separated (environment variables)."""
    out: list[str] = []
    for value in values or []:
        out.extend(v.strip() for v in value.split(",") if v.strip())
    return out


def handle_errors(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except BurrowError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)


def edge_state_dir(state_dir: Path | None) -> Path:
    """The edge's state directory (default ~/.local/share/burrow/edge), created 0700."""
    from burrow.edge.server import default_state_dir

    path = (state_dir or default_state_dir()).expanduser()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


async def open_edge_store(state_dir: Path, store_url: str | None) -> SQLStore:
    """The edge's store: `store_url` when given, else the SQLite file in `state_dir`."""
    from burrow.edge.server import store_url_for
    from burrow.store.sqlalchemy_store import SQLStore

    return await SQLStore.open(store_url or store_url_for(state_dir))
