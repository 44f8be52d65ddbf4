"""Control plane: API tokens, live tunnel connections, login requests.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The tunnel secret sealed with the edge's key (store/sealing.py), so that `tunnel token`
    # can hand it out again; NULL for tunnels created without it (their token is not
    # recoverable, as with cloudflared's tunnels from before 2022.3).
    op.add_column("tunnels", sa.Column("secret_sealed", sa.Text, nullable=True))

    # API tokens: the public id is the lookup key, only a hash of the secret part is kept.
    # account_id NULL means an operator token (every account).
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "account_id",
            sa.String(32),
            sa.ForeignKey("accounts.id", name="fk_api_tokens_account"),
            nullable=True,
        ),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("scopes", sa.String(255), nullable=False),
        sa.Column(
            "tunnel_id",
            sa.Uuid,
            sa.ForeignKey("tunnels.id", name="fk_api_tokens_tunnel"),
            nullable=True,
        ),
        sa.Column("secret_hash", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_api_tokens_account", "api_tokens", ["account_id"])

    # Live tunnel connections as the edge nodes see them (one row per registered connection).
    op.create_table(
        "connections",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column(
            "tunnel_id",
            sa.Uuid,
            sa.ForeignKey("tunnels.id", name="fk_connections_tunnel"),
            nullable=False,
        ),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("connector_id", sa.Uuid, nullable=False),
        sa.Column("conn_index", sa.Integer, nullable=False),
        sa.Column("edge_node", sa.String(255), nullable=False),
        sa.Column("colo", sa.String(255), nullable=False),
        sa.Column("client_version", sa.String(255), nullable=False),
        sa.Column("arch", sa.String(64), nullable=False, server_default=""),
        sa.Column("origin_ip", sa.String(64), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_connections_tunnel", "connections", ["tunnel_id"])
    op.create_index("ix_connections_node", "connections", ["edge_node"])

    # Device-code style logins: a CLI asks, an administrator approves, the CLI collects.
    op.create_table(
        "login_requests",
        sa.Column("code", sa.String(32), primary_key=True),
        sa.Column("poll_hash", sa.String(128), nullable=False),
        sa.Column("client_name", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column(
            "account_id",
            sa.String(32),
            sa.ForeignKey("accounts.id", name="fk_login_requests_account"),
            nullable=True,
        ),
    )


def downgrade() -> None:
    op.drop_table("login_requests")
    op.drop_index("ix_connections_node", table_name="connections")
    op.drop_index("ix_connections_tunnel", table_name="connections")
    op.drop_table("connections")
    op.drop_index("ix_api_tokens_account", table_name="api_tokens")
    op.drop_table("api_tokens")
    with op.batch_alter_table("tunnels") as batch:
        batch.drop_column("secret_sealed")
