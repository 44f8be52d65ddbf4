"""An idle `burrow edge serve` and `burrow tunnel run` do not load optional stacks.

Every loaded module costs a long-running process RSS for its whole life (issue 9: edge and
connector together under 100 MB idle). These stacks are only needed when their feature is
used, so a plain edge + connector that has proxied a request must not have them loaded:
alembic (schema upgrades run in a child process), aiohttp (the admin API is built on its first
connection; the connector only uses it for a metrics server or hello_world), joserfc and
smtplib (Access), prometheus_client (built on the first scrape), the SQLAlchemy ORM (the store
uses Core through burrow.store.aio_engine). Nor the CLI framework (typer
with click, pydantic, rich and shellingham) or burrow's CLI modules: the commands parse their
flags, then re-execute themselves (same PID, same command line) into an interpreter that only
runs the server (burrow.launch). The processes write their `sys.modules` on SIGTERM when
BURROW_DEBUG_MODULES names a file.
"""

from __future__ import annotations

from pathlib import Path

from e2e_world import E2E, dumped_modules, dumped_packages

HOST = "idle.localhost"

# Top-level packages neither process needs until a feature asks for them.
NOT_IN_EITHER = {"alembic", "mako", "pygments", "joserfc", "smtplib", "prometheus_client"}
# The CLI framework, gone with the re-execution.
NOT_IN_EITHER |= {"typer", "click", "pydantic", "pydantic_core", "rich", "shellingham"}
NOT_IN_CONNECTOR = NOT_IN_EITHER | {"aiohttp", "sqlalchemy", "aiosqlite", "cryptography"}
NOT_IN_EDGE = NOT_IN_EITHER | {"aiohttp"}
# Submodules: the store uses SQLAlchemy Core through burrow.store.aio_engine, not through
# sqlalchemy.ext.asyncio, which would import the ORM (~8 MB).
NOT_IN_EDGE_SUBMODULES = {"sqlalchemy.orm", "sqlalchemy.ext.asyncio"}


# The console script's entry point, which takes the hand-over; no command module.
CLI_MODULES_ALLOWED = {"burrow.cli", "burrow.cli.main"}


def _cli_modules(path: Path) -> set[str]:
    return {m for m in dumped_modules(path) if m == "burrow.cli" or m.startswith("burrow.cli.")}


def _proc_file(pid: int, name: str) -> list[str]:
    return Path(f"/proc/{pid}/{name}").read_bytes().decode(errors="replace").split("\0")


def test_idle_edge_and_connector_leave_optional_stacks_unloaded(e2e: E2E, tmp_path: Path) -> None:
    edge_dump, conn_dump = tmp_path / "edge.modules", tmp_path / "connector.modules"
    sd = tmp_path / "edge-state"
    # Not `start_edge`: that waits on /healthz, which loads the admin API.
    edge = e2e.start_edge_dumping_modules(sd, edge_dump)
    made = e2e.create_tunnel(edge, "idle", HOST)
    conn = e2e.run_connector(
        "--token", made["token"], "--url", e2e.origin, env={"BURROW_DEBUG_MODULES": str(conn_dump)}
    )
    r, _ = e2e.wait_status(edge.url("/echo"), 200, host=HOST, timeout=20)
    assert r.json()["host"] == HOST

    # The re-executed processes show the command line that was run (the PID is the one
    # started: the test signals it below), and the hand-over put no secret in the environment.
    for proc in (conn, edge.proc):
        cmdline = _proc_file(proc.pid, "cmdline")[:-1]  # a script's starts with its interpreter
        assert cmdline[-len(proc.argv) :] == proc.argv, cmdline
        environ = _proc_file(proc.pid, "environ")
        assert not any(made["token"] in v for v in environ)
        assert not any(v.startswith("BURROW_NO_REEXEC=") for v in environ)

    conn.stop_cleanly()

    # BURROW_NO_REEXEC=1, the escape hatch: the connector runs in the CLI process, as it did.
    inproc_dump = tmp_path / "inprocess.modules"
    env = {"BURROW_DEBUG_MODULES": str(inproc_dump), "BURROW_NO_REEXEC": "1"}
    inproc = e2e.run_connector("--token", made["token"], "--url", e2e.origin, env=env)
    r, _ = e2e.wait_status(edge.url("/echo"), 200, host=HOST, timeout=20)  # only it serves now
    inproc.stop_cleanly()
    assert "typer" in dumped_packages(inproc_dump)
    assert "burrow.cli.tunnel" in _cli_modules(inproc_dump)

    edge.proc.stop_cleanly()

    edge_mods, conn_mods = dumped_packages(edge_dump), dumped_packages(conn_dump)
    # The dumps are real: each process has the stack it does need.
    assert {"burrow", "capnp"} <= conn_mods
    assert {"burrow", "sqlalchemy", "capnp"} <= edge_mods
    assert not edge_mods & NOT_IN_EDGE, sorted(edge_mods & NOT_IN_EDGE)
    assert not dumped_modules(edge_dump) & NOT_IN_EDGE_SUBMODULES, sorted(
        dumped_modules(edge_dump) & NOT_IN_EDGE_SUBMODULES
    )
    assert not conn_mods & NOT_IN_CONNECTOR, sorted(conn_mods & NOT_IN_CONNECTOR)
    assert _cli_modules(edge_dump) <= CLI_MODULES_ALLOWED, sorted(_cli_modules(edge_dump))
    assert _cli_modules(conn_dump) <= CLI_MODULES_ALLOWED, sorted(_cli_modules(conn_dump))

    # The admin API still answers after a restart on the same state (loaded on first use).
    again = e2e.start_edge(state_dir=sd)  # waits for /healthz through the lazily built API
    health = again.healthz()
    assert health is not None and health["status"] == "ok"
