"""Running the edge and the connector, and handing them over to a lean interpreter.

`burrow edge serve` and `burrow tunnel run` parse and validate their flags, environment and
config files with typer (burrow.cli). typer brings click, pydantic, rich and shellingham along,
~7.5 MB of RSS, plus the CLI modules and what they import; a long-running process would carry
all of that for its whole life although it is done with it once the flags are parsed (issue 9:
edge and connector together under 100 MB idle). So once a command has built the plain inputs
of its server (`EdgeLaunch`, `ConnectorLaunch`), `handoff` re-executes the very same command
line (`sys.orig_argv`: same interpreter flags, same `sys.path`, same PID, and `ps` shows what
the user ran) with those inputs pickled in an inherited file descriptor: a memfd, never the
command line or the environment, where the tunnel secret would show in `ps` or
/proc/PID/environ. Only the descriptor's number travels in the environment, with the PID, so a
variable inherited by some other process is never taken for a hand-over. `burrow.cli.main`
looks for it before it imports typer, and `resume` runs the server.

`BURROW_NO_REEXEC=1` keeps the server in the parsing process, as does any failure to
re-execute (logged at debug level); `run_edge` / `run_connector` are the same code either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from burrow.errors import RegistrationError
from burrow.runtime import die, report_errors, run_async, serve_until_signal

if TYPE_CHECKING:
    from burrow.connector.settings import IngressSpec
    from burrow.connector.supervisor import ConnectorConfig
    from burrow.edge.server import EdgeConfig

log = logging.getLogger("burrow")

HANDOFF_ENV = "BURROW_HANDOFF"  # "PID:FD" of a pending hand-over (see module docstring)
NO_REEXEC_ENV = "BURROW_NO_REEXEC"
_PIPE_LIMIT = 16 * 1024  # without memfd: what surely fits a pipe that nobody reads yet
_resume_failed = False


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    output: str = "text"
    logfile: str | None = None

    def apply(self) -> None:
        from burrow.observability.logs import setup_logging

        setup_logging(self.level, output=self.output, logfile=self.logfile)


@dataclass(frozen=True, slots=True)
class EdgeLaunch:
    """Everything `burrow edge serve` runs the edge with, once its flags are parsed."""

    config: EdgeConfig
    logging: LogSettings = field(default_factory=LogSettings)


@dataclass(frozen=True, slots=True)
class ConnectorLaunch:
    """Everything `burrow tunnel run` runs the connector with, once its flags are parsed: the
    ingress as plain data (compiled rules cannot be pickled), the other `ConnectorConfig`
    fields as they are."""

    ingress: IngressSpec
    options: dict[str, Any]  # ConnectorConfig's fields except `ingress`
    logging: LogSettings = field(default_factory=LogSettings)

    def config(self) -> ConnectorConfig:
        from burrow.connector.supervisor import ConnectorConfig

        return ConnectorConfig(ingress=self.ingress.build(), **self.options)


# --------------------------------------------------------------------------- running the servers


def run_edge(spec: EdgeLaunch) -> None:
    """Run the edge until SIGINT/SIGTERM (logging is already set up)."""
    cfg = spec.config

    async def main() -> None:
        from burrow.edge.provision import record_addresses
        from burrow.edge.server import EdgeServer, store_url_for

        # Upgrade the schema in a child process so alembic never loads into this one.
        from burrow.store.migrate import migrate_out_of_process

        await migrate_out_of_process(cfg.store_url or store_url_for(cfg.state_dir))
        server = EdgeServer(cfg)
        await server.start()
        record_addresses(cfg.state_dir, server.tunnel_addresses)
        await serve_until_signal(server.stop)

    report_errors(lambda: run_async(main()))


def run_connector(spec: ConnectorLaunch, conf: ConnectorConfig | None = None) -> None:
    """Run the connector until SIGINT/SIGTERM or a fatal error (logging is already set up).
    SIGHUP reloads the config file's ingress. `conf`: the config already built from `spec`."""
    import asyncio
    import signal

    from burrow.connector.supervisor import Connector

    config = conf if conf is not None else report_errors(spec.config)
    clog = logging.getLogger("burrow.connector")

    async def main() -> None:
        connector = Connector(config)
        clog.info(
            "starting tunnel %s: %d connection(s) to %s",
            config.credentials.tunnel_id,
            config.ha_connections,
            ", ".join(f"{h}:{p}" for h, p in connector.edges),
        )
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, connector.reload)
        await serve_until_signal(connector.stop, connector.run())

    def go() -> None:
        try:
            run_async(main())
        except RegistrationError as exc:
            die(f"the edge refused the tunnel: {exc.cause}", code=1)

    report_errors(go)


# --------------------------------------------------------------------------- the hand-over


def _entry_is_burrow_main() -> bool:
    """Whether re-running `sys.orig_argv` reaches `burrow.cli.main.main` again: the console
    script and `python -c "from burrow.cli.main import main; main()"` import it into
    `__main__`, `python -m burrow.cli.main` runs that module as `__main__`. Anything else (a
    test runner invoking the CLI in-process, an embedding program) is not re-executed."""
    main_mod = sys.modules.get("__main__")
    if main_mod is None:
        return False
    spec = getattr(main_mod, "__spec__", None)
    if spec is not None and spec.name == "burrow.cli.main":
        return True
    from burrow.cli import main as cli_main

    return getattr(main_mod, "main", None) is cli_main.main


def _why_not_reexec() -> str | None:
    if os.environ.get(NO_REEXEC_ENV, "") not in ("", "0"):
        return f"{NO_REEXEC_ENV} is set"
    if os.name != "posix":  # pragma: no cover - elsewhere exec starts a new process (new PID)
        return "exec does not keep the PID here"
    if _resume_failed:
        return "the hand-over to this process failed"
    if _pending_handoff() is not None:
        return "this process was re-executed already"  # its entry did not resume: no loop
    if threading.current_thread() is not threading.main_thread():
        return "not on the main thread"
    if len(sys.orig_argv) < 2 or sys.flags.interactive or sys.argv[0] in ("", "-"):
        return "no command line to re-execute"
    if not _entry_is_burrow_main():
        return "the process did not start at burrow.cli.main"
    return None


def _payload_fd(data: bytes) -> int | None:
    """An inheritable descriptor positioned at the start of `data`."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("burrow-handoff", 0)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.lseek(fd, 0, os.SEEK_SET)
        except OSError:
            os.close(fd)
            raise
    else:  # pragma: no cover - non-Linux
        if len(data) > _PIPE_LIMIT:
            return None
        fd, w = os.pipe()
        try:
            os.write(w, data)
        finally:
            os.close(w)
    os.set_inheritable(fd, True)
    return fd


def _flush_output() -> None:
    """exec discards what Python has buffered: warnings printed and records logged so far."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


# glibc serves allocations above a dynamic threshold with mmap and trims the heap top when
# 2x that threshold is free: a proxy that allocates and frees a 1 MiB body buffer per DATA frame
# then pays page faults and zero-fill for every megabyte it relays (~25 % of the edge's CPU on
# a download, measured with perf). Fixed, larger thresholds keep those buffers in the heap and
# reuse them. Only read by glibc at start, hence set for the re-executed server (the user's own
# values win); memory stays bounded by the flow-control windows.
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(32 << 20)}


def handoff(spec: EdgeLaunch | ConnectorLaunch) -> None:
    """Re-execute this process's command line, which `resume` turns into running `spec` in an
    interpreter without the CLI. Returns only when that is not possible (the caller then runs
    `spec` in-process)."""
    why = _why_not_reexec()
    if why is not None:
        log.debug("running in the CLI process: %s", why)
        return
    try:
        fd = _payload_fd(pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL))
    except (OSError, pickle.PicklingError, TypeError, AttributeError) as exc:
        log.debug("running in the CLI process: cannot hand the settings over: %s", exc)
        return
    if fd is None:
        log.debug("running in the CLI process: settings too large for a pipe")
        return
    env = dict(os.environ)
    env[HANDOFF_ENV] = f"{os.getpid()}:{fd}"
    for name, value in MALLOC_TUNING.items():
        env.setdefault(name, value)
    _flush_output()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.close(fd)
        log.debug("running in the CLI process: cannot re-execute %s: %s", sys.executable, exc)


def _pending_handoff() -> int | None:
    """The descriptor of a hand-over addressed to this very process, if any."""
    pid, _, fd = os.environ.get(HANDOFF_ENV, "").partition(":")
    if not (pid.isdigit() and fd.isdigit()) or int(pid) != os.getpid():
        return None
    return int(fd)


def resume() -> None:
    """Called by `burrow.cli.main.main` before anything else: when this process is the
    re-execution of `handoff`, run the server it handed over and exit; otherwise return (and
    also when the settings cannot be read, after which the CLI runs the command in-process)."""
    global _resume_failed
    fd = _pending_handoff()
    os.environ.pop(HANDOFF_ENV, None)  # not for the processes this one starts
    if fd is None:
        return
    try:
        with os.fdopen(fd, "rb") as f:
            spec = pickle.load(f)
    except Exception as exc:
        _resume_failed = True
        log.debug("cannot read the settings handed over: %s", exc)
        return
    _run(spec)


def _run(spec: object) -> NoReturn:
    if isinstance(spec, EdgeLaunch):
        spec.logging.apply()
        run_edge(spec)
    elif isinstance(spec, ConnectorLaunch):
        spec.logging.apply()
        run_connector(spec)
    else:
        die(f"unknown hand-over {type(spec).__name__}")
    raise SystemExit(0)
