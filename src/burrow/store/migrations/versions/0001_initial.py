"""Initial schema: meta (generation counter), accounts, tunnels, routes.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    meta = op.create_table(
        "meta",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("generation", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("default_account_id", sa.String(32), nullable=True),
    )
    op.bulk_insert(meta, [{"id": 1, "generation": 0, "default_account_id": None}])

    op.create_table(
        "accounts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )

    op.create_table(
        "tunnels",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column(
            "account_id",
            sa.String(32),
            sa.ForeignKey("accounts.id", name="fk_tunnels_account"),
            nullable=False,
        ),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("secret_hash", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_tunnels_account", "tunnels", ["account_id"])
    # A name is unique per account among live (not deleted) tunnels.
    op.create_index(
        "uq_tunnels_account_name_live",
        "tunnels",
        ["account_id", "name"],
        unique=True,
        sqlite_where=sa.text("deleted_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NULL"),
    )

    op.create_table(
        "routes",
        sa.Column("hostname", sa.String(255), primary_key=True),
        sa.Column(
            "tunnel_id",
            sa.Uuid,
            sa.ForeignKey("tunnels.id", name="fk_routes_tunnel"),
            nullable=False,
        ),
        sa.Column(
            "account_id",
            sa.String(32),
            sa.ForeignKey("accounts.id", name="fk_routes_account"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_routes_tunnel", "routes", ["tunnel_id"])


def downgrade() -> None:
    op.drop_table("routes")
    op.drop_index("uq_tunnels_account_name_live", table_name="tunnels")
    op.drop_table("tunnels")
    op.drop_table("accounts")
    op.drop_table("meta")
