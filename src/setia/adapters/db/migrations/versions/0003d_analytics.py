"""Analytics: guest sales (purchases without a member)

Revision ID: 0003d
Revises: 0003c
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import setia.adapters.db.tables

revision = "0003d"
down_revision = "0003c"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "guest_sales",
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("occurred_at", setia.adapters.db.tables.UTCDateTime(), nullable=False),
        sa.Column("amount_e4", sa.BigInteger(), nullable=False),
        sa.Column("store", sa.String(length=128), nullable=True),
        sa.Column("channel", sa.String(length=128), nullable=True),
        sa.Column("partner", sa.String(length=128), nullable=True),
        sa.Column("recorded_at", setia.adapters.db.tables.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("program_id", "id"),
    )
    op.create_index("ix_guest_sales_time", "guest_sales", ["program_id", "occurred_at"])


def downgrade() -> None:
    op.drop_index("ix_guest_sales_time", table_name="guest_sales")
    op.drop_table("guest_sales")
