"""Outbox, webhook endpoints and deliveries

Revision ID: 0003f
Revises: 0003e
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import setia.adapters.db.tables

revision = "0003f"
down_revision = "0003e"
branch_labels = None
depends_on = None


def upgrade() -> None:
    UTC = setia.adapters.db.tables.UTCDateTime
    big = sa.BigInteger().with_variant(sa.Integer, "sqlite")
    op.create_table(
        "outbox",
        sa.Column("id", big, autoincrement=True, nullable=False),
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.String(length=128), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("occurred_at", UTC(), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("dispatched_at", UTC(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("program_id", "key", name="uq_outbox_program_key"),
    )
    op.create_index("ix_outbox_undispatched", "outbox", ["id"],
                    postgresql_where=sa.text("dispatched_at IS NULL"),
                    sqlite_where=sa.text("dispatched_at IS NULL"))
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=False),
        sa.Column("types", sa.JSON(), nullable=True),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("disabled_at", UTC(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", big, autoincrement=True, nullable=False),
        sa.Column("outbox_id", sa.BigInteger(), nullable=False),
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTC(), nullable=False),
        sa.Column("lease_until", UTC(), nullable=True),
        sa.Column("window_started_at", UTC(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("delivered_at", UTC(), nullable=True),
        sa.Column("created_at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("outbox_id", "channel", "target", name="uq_deliveries_target"),
    )
    op.create_index("ix_deliveries_due", "deliveries", ["status", "channel", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_due", table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_index("ix_outbox_undispatched", table_name="outbox")
    op.drop_table("outbox")
