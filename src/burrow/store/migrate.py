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

log = logging.getLogger("burrow.store")

_URL_ENV = "BURROW_MIGRATE_URL"


async def migrate_out_of_process(url: str) -> bool:
    """Bring the store at `url` to the latest revision in a child process unless it is there
    already. Returns whether the store is at the latest revision afterwards."""
    from burrow.runtime import run_child
    from burrow.store.sqlalchemy_store import at_head

    if await at_head(url):
        return True
    try:
        status, _, err = await run_child("burrow.store.migrate", env={_URL_ENV: url}, limit_s=None)
    except OSError as exc:
        log.debug("cannot start the migration child (migrating in-process): %s", exc)
        return False
    if status != 0:
        log.debug(
            "out-of-process migration failed (migrating in-process): %s",
            err.decode(errors="replace").strip().splitlines()[-1:] or status,
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
