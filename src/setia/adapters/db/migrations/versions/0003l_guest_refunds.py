"""Analytics: refunds of guest sales

Revision ID: 0003l
Revises: 0003k

A guest sale (a purchase without a member) could not be refunded, so the non-member
sales and average order value kept what was given back. Each refund names its sale and
an amount; the analytics count a guest sale net of its refunds, as a member's order.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import setia.adapters.db.tables

revision = "0003l"
down_revision = "0003k"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "guest_refunds",
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("sale_id", sa.String(length=128), nullable=False),
        sa.Column("occurred_at", setia.adapters.db.tables.UTCDateTime(), nullable=False),
        sa.Column("amount_e4", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", setia.adapters.db.tables.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("program_id", "id"),
    )
    op.create_index("ix_guest_refunds_sale", "guest_refunds", ["program_id", "sale_id"])


def downgrade() -> None:
    op.drop_index("ix_guest_refunds_sale", table_name="guest_refunds")
    op.drop_table("guest_refunds")
