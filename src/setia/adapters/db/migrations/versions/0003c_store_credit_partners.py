"""Store credit (cashback, rebates, till holds) and coalition partners

Revision ID: 0003c
Revises: 0003b
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import setia.adapters.db.tables

revision = "0003c"
down_revision = "0003b"
branch_labels = None
depends_on = None


def upgrade() -> None:
    utc = setia.adapters.db.tables.UTCDateTime
    op.add_column("events", sa.Column("partner", sa.String(length=64), nullable=True))
    op.add_column("orders", sa.Column("partner", sa.String(length=64), nullable=True))
    op.create_table(
        "credit_accounts",
        sa.Column("member_pk", sa.BigInteger(), nullable=False),
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("available", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("member_pk"),
    )
    op.create_table(
        "credit_holds",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("member_pk", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("captured", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=True),
        sa.Column("created_at", utc(), nullable=False),
        sa.Column("hold_expires_at", utc(), nullable=False),
        sa.Column("updated_at", utc(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_credit_holds_open", "credit_holds",
                    ["program_id", "status", "hold_expires_at"])
    op.create_table(
        "rebate_runs",
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("rebate_id", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("ran_at", utc(), nullable=False),
        sa.PrimaryKeyConstraint("program_id", "rebate_id", "period"),
    )
    op.create_table(
        "settlement_postings",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("debit", sa.String(length=80), nullable=False),
        sa.Column("credit", sa.String(length=80), nullable=False),
        sa.Column("amount_e4", sa.BigInteger(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("partner", sa.String(length=64), nullable=False),
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("ref", sa.String(length=200), nullable=False),
        sa.Column("program_version", sa.Integer(), nullable=False),
        sa.Column("occurred_at", utc(), nullable=False),
        sa.CheckConstraint("amount_e4 > 0", name="ck_settlement_amount_positive"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_settlement_program_time", "settlement_postings",
                    ["program_id", "occurred_at"])
    op.create_index("ix_settlement_ref", "settlement_postings", ["program_id", "ref"])


def downgrade() -> None:
    op.drop_index("ix_settlement_ref", table_name="settlement_postings")
    op.drop_index("ix_settlement_program_time", table_name="settlement_postings")
    op.drop_table("settlement_postings")
    op.drop_table("rebate_runs")
    op.drop_index("ix_credit_holds_open", table_name="credit_holds")
    op.drop_table("credit_holds")
    op.drop_table("credit_accounts")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("partner")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("partner")
