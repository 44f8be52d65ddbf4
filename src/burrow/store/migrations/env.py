"""Alembic environment for burrow's state store.

burrow runs migrations itself when it opens the store (``SQLStore.open``), handing Alembic an
already-open connection in ``config.attributes["connection"]``. Revisions are plain Alembic
revisions under ``versions/`` and use portable column types only (SQLite and PostgreSQL).
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "burrow migrations run from burrow.store.sqlalchemy_store.SQLStore.open(), which "
        "passes an open connection; they are not meant to be run by the alembic CLI"
    )

context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
