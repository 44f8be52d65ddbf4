"""Shared CLI plumbing: running a coroutine under uvloop when installed, signals, errors."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

from burrow.errors import BurrowError

if TYPE_CHECKING:
    from burrow.store.sqlalchemy_store import SQLStore

T = TypeVar("T")
log = logging.getLogger("burrow")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop when it is installed (`pip install burrow[fast]`)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


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


def tune_gc() -> None:
    """For long-running commands, once start-up is done: move everything allocated so far
    (modules, configuration) out of the collector's view with `gc.freeze`, and collect the
    youngest generation every 20,000 container allocations instead of 700. The proxy's
    per-request objects are acyclic and freed by reference counting; with the default
    threshold the cyclic collector ran every few requests (~6 % of the connector's CPU)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


async def serve_until_signal(
    stop: Callable[[], Awaitable[None]], main: Awaitable[Any] | None = None
) -> None:
    """Wait for SIGINT/SIGTERM (or `main` to finish), then run `stop` for a graceful shutdown.
    A second signal exits at once."""
    tune_gc()
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("shutting down gracefully (signal again to force)")
            stop_requested.set()
        else:
            log.warning("forced shutdown")
            os._exit(130)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    waiter = asyncio.ensure_future(stop_requested.wait())
    tasks: list[asyncio.Future[Any]] = [waiter]
    main_task = asyncio.ensure_future(main) if main is not None else None
    if main_task is not None:
        tasks.append(main_task)
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    _dump_modules()
    if main_task is not None and main_task.done():
        waiter.cancel()
        await stop()
        main_task.result()  # re-raise a fatal error
        return
    await stop()
    if main_task is not None:
        try:
            await asyncio.wait_for(main_task, 5)
        except (TimeoutError, asyncio.CancelledError):
            main_task.cancel()


def _dump_modules() -> None:
    """BURROW_DEBUG_MODULES=FILE: write the names of the modules this long-running process has
    loaded when it is asked to stop, before shutting down. Regression tests use it to keep
    optional stacks (alembic, aiohttp, joserfc, ...) out of idle edges and connectors, which
    pay for every loaded module in RSS."""
    path = os.environ.get("BURROW_DEBUG_MODULES")
    if not path:
        return
    try:
        Path(path).write_text("\n".join(sorted(sys.modules)) + "\n")
    except OSError as exc:
        log.warning("cannot write BURROW_DEBUG_MODULES file %s: %s", path, exc)


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
