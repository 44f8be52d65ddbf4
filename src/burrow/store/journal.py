"""The edge's journal of live tunnel connections in the store.

The data path never waits on the store: the edge calls :meth:`ConnectionJournal.opened` and
:meth:`ConnectionJournal.closed` synchronously, and the writes run as background tasks. Writes
for one connection are chained (a close waits for its open to land) so a quick connect and
disconnect cannot leave a stale row. A failed write is logged and dropped; on start and stop
the node clears its own rows, which repairs whatever was lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from burrow.errors import StoreError
from burrow.store.records import ConnectionRecord
from burrow.store.sqlalchemy_store import SQLStore

log = logging.getLogger("burrow.edge.journal")

NODE_ID_FILE = "node-id"
MAX_PENDING = 10_000  # writes in flight; beyond that, rows are dropped (and repaired at restart)


def node_id_for(state_dir: Path) -> str:
    """A stable id for this edge node, kept in its state directory."""
    path = state_dir / NODE_ID_FILE
    try:
        text = path.read_text().strip()
        if text:
            return text
    except OSError:
        pass
    text = uuid.uuid4().hex
    try:
        path.write_text(text + "\n")
    except OSError as exc:
        log.warning("cannot record the edge node id in %s: %s", path, exc)
    return text


class ConnectionJournal:
    def __init__(self, store: SQLStore, node: str) -> None:
        self.store = store
        self.node = node
        self._tails: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._pending = 0

    async def start(self) -> None:
        """Forget rows this node left behind (a crash, a kill)."""
        await self.store.delete_connections(edge_node=self.node)

    def opened(self, record: ConnectionRecord) -> None:
        self._chain(record.id, self.store.add_connection(record))

    def closed(self, connection_id: uuid.UUID) -> None:
        self._chain(connection_id, self.store.remove_connection(connection_id))

    def _chain(self, key: uuid.UUID, write: Coroutine[Any, Any, None]) -> None:
        if self._pending >= MAX_PENDING:
            write.close()
            log.warning("connection journal backlog full; dropping a write")
            return
        previous = self._tails.get(key)

        async def run() -> None:
            try:
                if previous is not None:
                    await asyncio.shield(previous)
                await write
            except StoreError as exc:
                log.warning("could not record tunnel connection %s: %s", key, exc)
            except Exception:
                log.exception("recording tunnel connection %s failed", key)
            finally:
                self._pending -= 1
                if self._tails.get(key) is task:
                    del self._tails[key]

        self._pending += 1
        task = asyncio.get_running_loop().create_task(run())
        self._tails[key] = task

    async def flush(self, limit_s: float = 5.0) -> None:
        """Wait (bounded) for the writes in flight."""
        tasks = list(self._tails.values())
        if tasks:
            await asyncio.wait(tasks, timeout=limit_s)

    async def stop(self) -> None:
        await self.flush()
        try:
            await self.store.delete_connections(edge_node=self.node)
        except StoreError as exc:
            log.warning("could not clear this node's connections: %s", exc)


def record_for(conn: Any, node: str, colo: str) -> ConnectionRecord:
    """The row for a registered edge tunnel connection (duck-typed: the store does not import
    the edge)."""
    client_id: bytes = conn.client_id
    connector = (
        uuid.UUID(bytes=client_id)
        if len(client_id) == 16
        else uuid.uuid5(uuid.NAMESPACE_OID, client_id.hex())
    )
    since = float(conn.since) or time.time()
    return ConnectionRecord(
        id=conn.connection_id,
        tunnel_id=conn.tunnel_id,
        account_id=conn.account_id,
        connector_id=connector,
        conn_index=int(conn.conn_index),
        edge_node=node,
        colo=colo,
        client_version=str(conn.client_version)[:255],
        arch=str(getattr(conn, "client_arch", ""))[:64],
        origin_ip=str(conn.peer)[:64],
        opened_at=datetime.fromtimestamp(since, UTC),
    )
