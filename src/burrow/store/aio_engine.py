"""SQLAlchemy Core on asyncio, without `sqlalchemy.ext.asyncio`.

Why: importing `sqlalchemy.ext.asyncio` imports the ORM (its session module), ~8 MB of RSS for
the whole life of an edge that only ever uses Core. What that package does for Core is small:
run the synchronous `Engine`/`Connection` API over an async DBAPI adapter (aiosqlite, asyncpg)
inside `greenlet_spawn`, where the adapter's `await_only` can suspend. This module does exactly
that for the handful of calls the store makes, with the same cleanup guarantees (a connection
is returned to its pool even if the awaiting task is cancelled).

Results are plain `sqlalchemy.Result`s: the async adapters buffer every row when a statement
executes, so reading them needs no further awaiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.util.concurrency import greenlet_spawn

T = TypeVar("T")

__all__ = ["AioConnection", "AioEngine", "create_aio_engine"]


class AioConnection:
    """The awaitable face of one pooled `sqlalchemy.Connection`."""

    __slots__ = ("sync_connection",)

    def __init__(self, sync_connection: sa.Connection) -> None:
        self.sync_connection = sync_connection

    async def execute(self, statement: Any, parameters: Any = None) -> sa.CursorResult[Any]:
        return await greenlet_spawn(self.sync_connection.execute, statement, parameters)

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Call `fn(sync_connection, *args)` where it may use the blocking API."""
        return await greenlet_spawn(fn, self.sync_connection, *args)

    async def execution_options(self, **options: Any) -> AioConnection:
        await greenlet_spawn(self.sync_connection.execution_options, **options)
        return self

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AioConnection]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        transaction = await greenlet_spawn(self.sync_connection.begin)
        try:
            yield self
        except BaseException as exc:
            await _to_completion(greenlet_spawn(transaction.__exit__, type(exc), exc, None))
            raise
        await _to_completion(greenlet_spawn(transaction.__exit__, None, None, None))


class AioEngine:
    """The awaitable face of a `sqlalchemy.Engine` built on an async DBAPI."""

    def __init__(self, sync_engine: sa.Engine) -> None:
        self.sync_engine = sync_engine

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AioConnection]:
        sync_connection = await greenlet_spawn(self.sync_engine.connect)
        try:
            yield AioConnection(sync_connection)
        finally:
            # Closing rolls back what was not committed and returns the DBAPI connection.
            await _to_completion(greenlet_spawn(sync_connection.close))

    async def dispose(self) -> None:
        await greenlet_spawn(self.sync_engine.dispose)


def create_aio_engine(url: str | URL, **kwargs: Any) -> AioEngine:
    """Like `sqlalchemy.ext.asyncio.create_async_engine` for URLs naming an async driver
    (`sqlite+aiosqlite`, `postgresql+asyncpg`); anything else is an `ArgumentError`."""
    engine = sa.create_engine(url, **kwargs)
    if not engine.dialect.is_async:
        engine.dispose()
        raise sa.exc.ArgumentError(
            f"the {engine.dialect.driver} driver is not asynchronous: "
            "use sqlite+aiosqlite:// or postgresql+asyncpg://"
        )
    return AioEngine(engine)


async def _to_completion(coro: Coroutine[Any, Any, T]) -> T:
    """Finish `coro` even if the awaiting task is cancelled meanwhile (the cancellation is
    re-raised afterwards), so cleanup is never abandoned halfway."""
    task = asyncio.ensure_future(coro)
    cancelled: BaseException | None = None
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError as err:
            if task.done():
                raise
            cancelled = err
        else:
            break
    if cancelled is not None:
        raise cancelled
    return result
