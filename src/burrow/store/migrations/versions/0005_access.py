"""Zero Trust access: applications, policies, service tokens, identity providers, signing keys,
revocations and short-lived login state.

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Lists and settings are JSON text: they are read whole when the edge compiles its access
    # snapshot and never queried by their contents.
    op.create_table(
        "access_apps",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("domain", sa.String(512), nullable=False, unique=True),
        sa.Column("aud", sa.String(64), nullable=False, unique=True),
        sa.Column("session_duration", sa.Float, nullable=False),
        sa.Column("allowed_idps", sa.Text, nullable=False),
        sa.Column("cors", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "access_policies",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "app_id",
            sa.String(32),
            sa.ForeignKey("access_apps.id", name="fk_access_policies_app", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("precedence", sa.Integer, nullable=False),
        sa.Column("include", sa.Text, nullable=False),
        sa.Column("require", sa.Text, nullable=False),
        sa.Column("exclude", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "access_service_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False, unique=True),
        sa.Column("secret_hash", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "access_idps",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("config", sa.Text, nullable=False),  # secrets inside are sealed
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "access_keys",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("seal_id", sa.Uuid, nullable=False),  # associated data of the sealed key
        sa.Column("private_sealed", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "access_revocations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),  # session | user | app
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "access_pending",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),  # otp | oidc | code | flow
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "access_pending",
        "access_revocations",
        "access_keys",
        "access_idps",
        "access_service_tokens",
        "access_policies",
        "access_apps",
    ):
        op.drop_table(table)
