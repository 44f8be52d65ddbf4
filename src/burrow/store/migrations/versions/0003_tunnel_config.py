"""Remotely managed tunnel configuration: one versioned ingress document per tunnel.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # `config` is cloudflared's remote configuration JSON (durations in seconds); `version`
    # grows by one on every change and is what connectors compare (PROTOCOL.md 3.4).
    op.create_table(
        "tunnel_configs",
        sa.Column(
            "tunnel_id",
            sa.Uuid,
            sa.ForeignKey("tunnels.id", name="fk_tunnel_configs_tunnel"),
            primary_key=True,
        ),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tunnel_configs")
