"""Anniversaries celebrated, by member and year

Revision ID: 0003i
Revises: 0003h

Run-due chose the members whose anniversary had come by the absence of this year's
``anniversary:<member>:<year>`` event. Once event retention pruned that event, SQLite paid
the anniversary again, and on PostgreSQL the id, still registered, made run-due fail.
A row per member and year now records each anniversary celebrated; it is never pruned.
Anniversaries celebrated before this revision are found by their event (or its
registered id) the first time run-due meets them again, and recorded then.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from setia.adapters.db.tables import UTCDateTime

revision = "0003i"
down_revision = "0003h"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "anniversaries",
        sa.Column("member_pk", sa.BigInteger, primary_key=True),
        sa.Column("year", sa.Integer, primary_key=True),
        sa.Column("celebrated_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("anniversaries")
