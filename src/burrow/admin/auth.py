"""Bearer-token authentication and the permission checks of the admin API.

A request carries ``Authorization: Bearer burrow_<id>_<secret>``. The id selects the stored
token; the secret is checked against its hash in constant time. What the token may do:

- ``operator`` (no account): everything, in every account;
- ``account:admin``: everything inside its account;
- ``tunnel:read``: list and inspect its account's tunnels and connections;
- ``tunnel:run``: fetch a tunnel's run token and look the tunnel up (only its tunnel when the
  token is bound to one).

Another account's resources are answered 403 when the URL names the other account and 404 when
a tunnel id of another account is used under one's own account, so ids cannot be probed.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass

from aiohttp import web

from burrow.errors import BurrowError, NotFound
from burrow.store.records import (
    SCOPE_ACCOUNT_ADMIN,
    SCOPE_OPERATOR,
    SCOPE_TUNNEL_READ,
    SCOPE_TUNNEL_RUN,
)
from burrow.store.secrets import hash_secret, parse_api_token, verify_secret
from burrow.store.sqlalchemy_store import SQLStore

__all__ = ["ApiError", "Principal", "authenticate"]

# Error codes in the envelope (Cloudflare's where one fits).
CODE_AUTH = 10000
CODE_FORBIDDEN = 10001
CODE_BAD_REQUEST = 1003
CODE_NOT_FOUND = 1004
CODE_CONFLICT = 1013
CODE_HAS_CONNECTIONS = 1022


class ApiError(BurrowError):
    """An error answered in the API envelope with an HTTP status and an error code."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message, status=status)
        self.code = code


def unauthorized(message: str) -> ApiError:
    return ApiError(401, CODE_AUTH, message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, CODE_FORBIDDEN, message)


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    account_id: str | None
    scopes: frozenset[str]
    tunnel_id: uuid.UUID | None

    @property
    def operator(self) -> bool:
        return SCOPE_OPERATOR in self.scopes

    def in_account(self, account_id: str) -> None:
        """403 unless the token may act in ``account_id``."""
        if self.operator:
            return
        if self.account_id is None or not hmac.compare_digest(
            self.account_id.encode(), account_id.encode()
        ):
            raise forbidden(f"this API token is not valid for account {account_id}")

    def require(self, *scopes: str) -> None:
        if self.operator or self.scopes & set(scopes):
            return
        raise forbidden(
            f"this API token lacks the scope for that ({' or '.join(scopes)}); "
            f"it has {', '.join(sorted(self.scopes))}"
        )

    def admin(self, account_id: str) -> None:
        self.in_account(account_id)
        self.require(SCOPE_ACCOUNT_ADMIN)

    def read(self, account_id: str) -> None:
        self.in_account(account_id)
        self.require(SCOPE_ACCOUNT_ADMIN, SCOPE_TUNNEL_READ, SCOPE_TUNNEL_RUN)

    def may_see(self, tunnel_id: uuid.UUID) -> bool:
        """Whether a tunnel-bound run token is bound to this tunnel (others see all)."""
        if self.operator or self.scopes & {SCOPE_ACCOUNT_ADMIN, SCOPE_TUNNEL_READ}:
            return True
        return self.tunnel_id is None or self.tunnel_id == tunnel_id

    def run(self, account_id: str, tunnel_id: uuid.UUID) -> None:
        self.in_account(account_id)
        self.require(SCOPE_ACCOUNT_ADMIN, SCOPE_TUNNEL_RUN)
        if not (self.operator or SCOPE_ACCOUNT_ADMIN in self.scopes) and (
            self.tunnel_id is not None and self.tunnel_id != tunnel_id
        ):
            raise forbidden("this API token may only run its own tunnel")


# A dummy hash to compare against when the token id is unknown, so that unknown and wrong
# tokens take the same time.
_DUMMY_HASH = hash_secret(b"\0" * 32)


async def authenticate(request: web.Request, store: SQLStore) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if not header:
        raise unauthorized("missing Authorization header (expected: Bearer <API token>)")
    if scheme.lower() != "bearer" or not value.strip():
        raise unauthorized("malformed Authorization header (expected: Bearer <API token>)")
    parsed = parse_api_token(value.strip())
    if parsed is None:
        raise unauthorized("malformed API token (expected burrow_<id>_<secret>)")
    try:
        token = await store.get_api_token(parsed.token_id)
        stored_hash = token.secret_hash
    except NotFound:
        token = None
        stored_hash = _DUMMY_HASH
    ok = verify_secret(parsed.secret, stored_hash)
    if token is None or not ok:
        raise unauthorized("invalid API token")
    if token.revoked:
        raise unauthorized("this API token has been revoked")
    return Principal(
        token_id=token.id,
        account_id=token.account_id,
        scopes=token.scopes,
        tunnel_id=token.tunnel_id,
    )
