"""Process plumbing for burrow's long-running processes, free of the CLI framework.

`burrow edge serve` and `burrow tunnel run` parse their flags with typer, then continue in a
fresh interpreter (same PID) that never imports typer, click, pydantic or rich: every module a
long-running process has loaded costs it RSS for its whole life (issue 9). What those processes
run (uvloop, signal handling, the GC tuning, error reporting) lives here so that the in-process
path (`burrow demo`, `BURROW_NO_REEXEC=1`) and the re-executed one share it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from burrow.errors import BurrowError

T = TypeVar("T")
log = logging.getLogger("burrow")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop when it is installed (`pip install burrow[fast]`) unless
    `BURROW_LOOP=asyncio` asks for the standard loop.

    uvloop spends ~10 % less CPU per proxied request and has lower latency; the standard loop
    is the fallback for deployments hit by uvloop's native memory growth on TLS server
    connections that receive while sending bulk (an HTTP/2 browser downloading large files
    from the edge's HTTPS listener: ~5 MB per 100 MB; docs/operations.md)."""
    if os.environ.get("BURROW_LOOP", "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


_LISTEN_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def die(message: str, code: int = 1) -> NoReturn:
    """`error: MESSAGE` on stderr and exit `code`: byte for byte what the CLI's `fail` prints,
    without the CLI framework."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def report_errors(fn: Callable[[], T]) -> T:
    """Run `fn`; a BurrowError (or a listener that cannot bind) becomes `error: ...` and exit
    status 1, Ctrl-C exit status 130, as in every other burrow command."""
    try:
        return fn()
    except BurrowError as exc:
        die(str(exc))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except OSError as exc:
        if exc.errno not in _LISTEN_ERRNOS:
            raise
        # A listener that cannot bind (port taken, privileged port): the address is in the
        # message; a traceback would only hide it.
        die(str(exc))


def tune_gc() -> None:
    """For long-running commands, once start-up is done: move everything allocated so far
    (modules, configuration) out of the collector's view with `gc.freeze`, and collect the
    youngest generation every 20,000 container allocations instead of 700. The proxy's
    per-request objects are acyclic and freed by reference counting (a collection of 20,000
    garbage objects takes 6-8 ms: tests/integration/test_request_garbage.py keeps requests
    from leaving any); with the default threshold the cyclic collector ran every few requests
    (~6 % of the connector's CPU)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


GC_INTERVAL = 1.0  # at most one full collection a second, and only after connections closed
_closed_connections = 0


def connection_closed() -> None:
    """A connection was lost: its objects may be cyclic garbage for `collect_cycles`."""
    global _closed_connections
    _closed_connections += 1


async def collect_cycles(interval: float | None = None) -> None:
    """A full collection within `interval` (default `GC_INTERVAL`) seconds of a connection
    closing.

    Why: with `tune_gc`'s thresholds a full collection comes only every few million
    allocations, which a bulk transfer never reaches, and a closed TLS connection is cyclic
    garbage (uvloop's SSLProtocol and its transport refer to each other, and so do our streams
    and their connection) that holds OpenSSL's buffers: up to ~6 MB each after a large HTTP/2
    download. They piled up in the edge (~5 MB per 100 MB served) until a full collection.
    The startup heap is frozen, so one collection costs milliseconds."""
    import gc

    global _closed_connections
    while True:
        await asyncio.sleep(interval or GC_INTERVAL)
        if _closed_connections:
            _closed_connections = 0
            gc.collect()


async def serve_until_signal(
    stop: Callable[[], Awaitable[None]], main: Awaitable[Any] | None = None
) -> None:
    """Wait for SIGINT/SIGTERM (or `main` to finish), then run `stop` for a graceful shutdown.
    A second signal exits at once."""
    tune_gc()
    collector = asyncio.ensure_future(collect_cycles())
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
    collector.cancel()
    dump_modules()
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


def dump_modules() -> None:
    """BURROW_DEBUG_MODULES=FILE: write the names of the modules this long-running process has
    loaded when it is asked to stop, before shutting down. Regression tests use it to keep
    optional stacks (alembic, aiohttp, joserfc, the CLI framework, ...) out of idle edges and
    connectors, which pay for every loaded module in RSS."""
    path = os.environ.get("BURROW_DEBUG_MODULES")
    if not path:
        return
    try:
        Path(path).write_text("\n".join(sorted(sys.modules)) + "\n")
    except OSError as exc:
        log.warning("cannot write BURROW_DEBUG_MODULES file %s: %s", path, exc)


# The child imports this very copy of burrow, also when it is not installed.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


async def run_child(
    module: str,
    *,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    limit_s: float | None = 60.0,
) -> tuple[int, bytes, bytes]:
    """Run `python -m module` (this burrow on its path) and return (status, stdout, stderr).

    For work a long-running process should not load the libraries for (schema upgrades,
    certificates): the child pays for them and exits. Inputs travel on stdin or in `env`, never
    on the command line (`ps` shows it). The child is killed if it outlives `limit_s` or the
    caller is cancelled (`limit_s` None: no time limit). Raises OSError when it cannot be started."""
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_PACKAGE_ROOT, child_env.get("PYTHONPATH")) if p
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        env=child_env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), limit_s)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err
