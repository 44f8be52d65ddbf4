"""The state store interface. Implementations: :mod:`burrow.store.sqlalchemy_store`.

Every write bumps a single generation counter in the same transaction, so an edge can poll
:meth:`Store.change_counter` cheaply and rebuild its :class:`RoutingSnapshot` only on change.

Errors: :class:`burrow.errors.NotFound`, :class:`burrow.errors.Conflict`, and
:class:`burrow.errors.StoreError` when the database is locked or unreachable.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Protocol

from burrow.store.records import (
    Account,
    ApiToken,
    ConnectionRecord,
    LoginRequest,
    Route,
    RoutingSnapshot,
    Tunnel,
)

__all__ = ["Store"]


class Store(Protocol):
    async def create_account(self, name: str) -> Account: ...

    async def get_or_create_default_account(self) -> Account: ...

    async def get_account(self, account_id: str) -> Account: ...

    async def list_accounts(self) -> list[Account]: ...

    async def create_tunnel(
        self,
        account_id: str,
        name: str,
        secret_hash: str,
        *,
        tunnel_id: uuid.UUID | None = None,
        secret_sealed: str | None = None,
    ) -> Tunnel:
        """Conflict if a live tunnel of that name exists in the account; NotFound for an
        unknown account. ``tunnel_id`` lets the caller seal the secret to the id first."""
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
        self,
        hostname: str,
        tunnel_id: uuid.UUID,
        *,
        overwrite: bool = False,
        account_id: str | None = None,
    ) -> Route:
        """Route ``hostname`` (normalised; ``*.example.com`` allowed) to a live tunnel.
        Conflict if it routes to another tunnel and not ``overwrite``; idempotent for the
        same tunnel. With ``account_id`` (a tenant acting): NotFound unless the tunnel is that
        account's, and Conflict (status 403) if another account routes the hostname, whatever
        ``overwrite`` says."""
        ...

    async def delete_route(self, hostname: str) -> None:
        """NotFound if there is no such route."""
        ...

    async def list_routes(self, tunnel_id: uuid.UUID | None = None) -> list[Route]: ...

    # API tokens: ``burrow_<id>_<secret>``; only a hash of the secret is stored.

    async def create_api_token(
        self,
        account_id: str | None,
        scopes: Collection[str],
        *,
        name: str = "",
        tunnel_id: uuid.UUID | None = None,
    ) -> tuple[ApiToken, str]:
        """ConfigError (400) for unknown scopes, the operator scope with an account or other
        scopes without one; NotFound for an unknown account or a tunnel of another account."""
        ...

    async def get_api_token(self, token_id: str) -> ApiToken: ...

    async def list_api_tokens(self, account_id: str | None = None) -> list[ApiToken]: ...

    async def revoke_api_token(self, token_id: str) -> None: ...

    # Live connections, written by edge nodes off the data path. No generation bump.

    async def add_connection(self, record: ConnectionRecord) -> None:
        """Ignored when the tunnel was deleted meanwhile."""
        ...

    async def remove_connection(self, connection_id: uuid.UUID) -> None: ...

    async def list_connections(
        self, tunnel_id: uuid.UUID | None = None, *, account_id: str | None = None
    ) -> list[ConnectionRecord]: ...

    async def delete_connections(
        self,
        *,
        tunnel_id: uuid.UUID | None = None,
        connector_id: uuid.UUID | None = None,
        edge_node: str | None = None,
    ) -> list[ConnectionRecord]: ...

    # Device-code logins.

    async def create_login_request(
        self, client_name: str, *, ttl_s: float = 600.0
    ) -> tuple[LoginRequest, str]: ...

    async def get_login_request(self, code: str) -> LoginRequest: ...

    async def list_login_requests(self) -> list[LoginRequest]: ...

    async def decide_login_request(
        self, code: str, *, account_id: str | None, approve: bool
    ) -> LoginRequest: ...

    async def redeem_login_request(
        self, code: str, poll_secret: str, *, scopes: Collection[str]
    ) -> tuple[LoginRequest, str | None]: ...

    async def snapshot(self) -> RoutingSnapshot:
        """Routes and live tunnels, read in one transaction."""
        ...

    async def change_counter(self) -> int: ...

    async def close(self) -> None: ...
