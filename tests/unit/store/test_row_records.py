"""`from_row`: the store's one mapping from a row to a record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

from burrow.store.records import Account, ApiToken, from_row


def test_columns_by_field_name_with_times_made_aware_utc() -> None:
    naive = datetime(2026, 1, 2, 3, 4, 5)  # what SQLite hands back
    acct = from_row(Account, SimpleNamespace(id="a" * 32, name="n", created_at=naive, extra=1))
    assert acct == Account(id="a" * 32, name="n", created_at=naive.replace(tzinfo=UTC))
    plus2 = datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    again = from_row(Account, SimpleNamespace(id="b" * 32, name="m", created_at=plus2))
    assert again.created_at.tzinfo is UTC and again.created_at == plus2


def test_converted_fields_replace_their_columns() -> None:
    row = SimpleNamespace(
        id="t", account_id=None, name="ci", scopes="tunnel:read,tunnel:run", tunnel_id=None,
        secret_hash="h", created_at=datetime(2026, 1, 1), revoked_at=None,
    )  # fmt: skip
    token = from_row(ApiToken, row, scopes=frozenset(row.scopes.split(",")))
    assert token.scopes == frozenset({"tunnel:read", "tunnel:run"})
    assert token.revoked_at is None and token.created_at.tzinfo is UTC
