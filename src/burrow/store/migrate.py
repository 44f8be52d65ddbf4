"""Schema migrations in a short-lived child process, for long-running processes.

Alembic (with mako and pygments) costs a long-running edge ~10 MB of RSS for as long as it
runs once imported, although it is only needed for the few hundred milliseconds of an upgrade.
`SQLStore.open` skips alembic when the database is already at the latest revision, so
`burrow edge serve` first brings the store to that revision in a child interpreter
(`python -m burrow.store.migrate`, the URL in the environment, never on the command line
where `ps` shows it) and then opens it in-process without importing alembic.

When the child fails, nothing is reported here: the in-process `SQLStore.open` that follows
runs the migrations itself and raises the same error it always did.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("burrow.store")

_URL_ENV = "BURROW_MIGRATE_URL"
# The child imports this very copy of burrow, also when it is not installed.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


async def migrate_out_of_process(url: str) -> bool:
    """Bring the store at `url` to the latest revision in a child process unless it is there
    already. Returns whether the store is at the latest revision afterwards."""
    from burrow.store.sqlalchemy_store import at_head

    if await at_head(url):
        return True
    env = dict(os.environ)
    env[_URL_ENV] = url
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "burrow.store.migrate",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        log.debug(
            "out-of-process migration failed (migrating in-process): %s",
            err.decode(errors="replace").strip().splitlines()[-1:] or proc.returncode,
        )
        return False
    return True


def _main() -> None:
    url = os.environ.pop(_URL_ENV, "")
    if not url:
        sys.exit(f"{_URL_ENV} is not set")

    from burrow.store.sqlalchemy_store import SQLStore

    async def go() -> None:
        store = await SQLStore.open(url)
        await store.close()

    asyncio.run(go())


if __name__ == "__main__":
    _main()
