"""The state store interface. Implementations: :mod:`burrow.store.sqlalchemy_store`.

Every write bumps a single generation counter in the same transaction, so an edge can poll
:meth:`Store.change_counter` cheaply and rebuild its :class:`RoutingSnapshot` only on change.

Errors: :class:`burrow.errors.NotFound`, :class:`burrow.errors.Conflict`, and
:class:`burrow.errors.StoreError` when the database is locked or unreachable.
"""

from __future__ import annotations

import uuid
from typing import Protocol

from burrow.store.records import Account, Route, RoutingSnapshot, Tunnel

__all__ = ["Store"]


class Store(Protocol):
    async def create_account(self, name: str) -> Account: ...

    async def get_or_create_default_account(self) -> Account: ...

    async def get_account(self, account_id: str) -> Account: ...

    async def list_accounts(self) -> list[Account]: ...

    async def create_tunnel(self, account_id: str, name: str, secret_hash: str) -> Tunnel:
        """Conflict if a live tunnel of that name exists in the account; NotFound for an
        unknown account."""
        ...

    async def get_tunnel(self, tunnel_id: uuid.UUID) -> Tunnel:
        """The tunnel, deleted or not; NotFound if it never existed."""
        ...

    async def find_tunnel(self, account_id: str, name: str) -> Tunnel | None:
        """The live tunnel called ``name`` in the account, if any."""
        ...

    async def list_tunnels(
        self, account_id: str | None = None, include_deleted: bool = False
    ) -> list[Tunnel]: ...

    async def delete_tunnel(self, tunnel_id: uuid.UUID) -> Tunnel:
        """Soft delete (sets ``deleted_at``) and remove the tunnel's routes. NotFound if the
        tunnel does not exist or is already deleted."""
        ...

    async def add_route(
        self, hostname: str, tunnel_id: uuid.UUID, *, overwrite: bool = False
    ) -> Route:
        """Route ``hostname`` (normalised; ``*.example.com`` allowed) to a live tunnel.
        Conflict if it routes to another tunnel and not ``overwrite``; idempotent for the
        same tunnel."""
        ...

    async def delete_route(self, hostname: str) -> None:
        """NotFound if there is no such route."""
        ...

    async def list_routes(self, tunnel_id: uuid.UUID | None = None) -> list[Route]: ...

    async def snapshot(self) -> RoutingSnapshot:
        """Routes and live tunnels, read in one transaction."""
        ...

    async def change_counter(self) -> int: ...

    async def close(self) -> None: ...
