"""Campaigns, stamp cards and paid memberships

Revision ID: 0003b
Revises: 0003a
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from setia.adapters.db.tables import UTCDateTime

revision = "0003b"
down_revision = "0003a"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaign_budgets",
        sa.Column("program_id", sa.String(64), primary_key=True),
        sa.Column("campaign_id", sa.String(40), primary_key=True),
        sa.Column("used", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "campaign_awards",
        sa.Column("program_id", sa.String(64), primary_key=True),
        sa.Column("campaign_id", sa.String(64), primary_key=True),
        sa.Column("ref", sa.String(200), primary_key=True),
        sa.Column("member_pk", sa.BigInteger, nullable=False),
        sa.Column("order_id", sa.String(128)),
        sa.Column("program_version", sa.Integer, nullable=False),
        sa.Column("awarded", sa.BigInteger, nullable=False),
        sa.Column("kept", sa.BigInteger, nullable=False),
        sa.Column("voucher_code", sa.String(32)),
        sa.Column("awarded_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_campaign_awards_member", "campaign_awards",
                    ["member_pk", "campaign_id"])
    op.create_index("ix_campaign_awards_order", "campaign_awards", ["program_id", "order_id"])
    op.create_table(
        "campaign_holdouts",
        sa.Column("program_id", sa.String(64), primary_key=True),
        sa.Column("campaign_id", sa.String(40), primary_key=True),
        sa.Column("member_pk", sa.BigInteger, primary_key=True),
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "stamp_progress",
        sa.Column("program_id", sa.String(64), primary_key=True),
        sa.Column("card_id", sa.String(40), primary_key=True),
        sa.Column("member_pk", sa.BigInteger, primary_key=True),
        sa.Column("period", sa.String(16), primary_key=True),
        sa.Column("stamps", sa.BigInteger, nullable=False),
        sa.Column("completions", sa.Integer, nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "stamp_orders",
        sa.Column("program_id", sa.String(64), primary_key=True),
        sa.Column("card_id", sa.String(40), primary_key=True),
        sa.Column("order_id", sa.String(128), primary_key=True),
        sa.Column("member_pk", sa.BigInteger, nullable=False),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("stamps", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "membership_purchases",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("program", sa.String(64), nullable=False),
        sa.Column("member", sa.String(128), nullable=False),
        sa.Column("member_pk", sa.BigInteger, nullable=False),
        sa.Column("plan_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("fee", sa.Numeric(18, 4), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("starts_at", UTCDateTime(), nullable=False),
        sa.Column("ends_at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("tier_before", sa.String(64)),
        sa.Column("vouchers_issued", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("cancelled_at", UTCDateTime()),
    )
    op.create_index("ix_membership_purchases_member", "membership_purchases",
                    ["member_pk", "status"])
    op.create_index("ix_membership_purchases_due", "membership_purchases",
                    ["program", "status", "ends_at"])


def downgrade() -> None:
    op.drop_table("membership_purchases")
    op.drop_table("stamp_orders")
    op.drop_table("stamp_progress")
    op.drop_table("campaign_holdouts")
    op.drop_table("campaign_awards")
    op.drop_table("campaign_budgets")
