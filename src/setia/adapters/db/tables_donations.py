"""Donations: one row per captured donation redemption (the journal holds the points)."""

from __future__ import annotations

import sqlalchemy as sa

from setia.adapters.db.tables import UTCDateTime, metadata

donations = sa.Table(
    "donations", metadata,
    sa.Column("redemption_id", sa.String(40), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("cause_id", sa.String(64), nullable=False),
    sa.Column("member_pk", sa.BigInteger, nullable=False),
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.Column("amount", sa.Numeric(18, 4), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("donated_at", UTCDateTime, nullable=False),
)
sa.Index("ix_donations_cause", donations.c.program_id, donations.c.cause_id)
