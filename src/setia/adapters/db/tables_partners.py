"""Partner settlement: a double-entry journal of the value points carry between partners.

Each row moves ``amount_e4`` (10^-4 of the programme's currency) from one
settlement account to another (``partner:<id>`` or ``coalition``), caused by
the points posting of the same ``ref`` (an event or a redemption). Append-only.
"""

from __future__ import annotations

import sqlalchemy as sa

from setia.adapters.db.tables import UTCDateTime, metadata

settlement_postings = sa.Table(
    "settlement_postings", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("debit", sa.String(80), nullable=False),
    sa.Column("credit", sa.String(80), nullable=False),
    sa.Column("amount_e4", sa.BigInteger, nullable=False),
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.Column("partner", sa.String(64), nullable=False),
    sa.Column("code", sa.String(16), nullable=False),
    sa.Column("ref", sa.String(200), nullable=False),
    sa.Column("program_version", sa.Integer, nullable=False),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("amount_e4 > 0", name="ck_settlement_amount_positive"),
)
sa.Index("ix_settlement_program_time", settlement_postings.c.program_id,
         settlement_postings.c.occurred_at)
sa.Index("ix_settlement_ref", settlement_postings.c.program_id, settlement_postings.c.ref)
