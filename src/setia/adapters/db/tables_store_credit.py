"""Store credit (cashback and rebates): cached balances, till holds and rebate runs.

The postings of store credit are in the one journal (``postings``, asset
``credit:<currency>``, amounts in minor units); these tables hold what the
journal alone cannot: the cached balances each write locks, the holds a till
opened, and the periods whose tiered rebates run-due has credited.
"""

from __future__ import annotations

import sqlalchemy as sa

from setia.adapters.db.tables import UTCDateTime, metadata

credit_accounts = sa.Table(
    "credit_accounts", metadata,
    sa.Column("member_pk", sa.BigInteger, primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("available", sa.BigInteger, nullable=False),
    sa.Column("reserved", sa.BigInteger, nullable=False),
)

credit_holds = sa.Table(
    "credit_holds", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("member_pk", sa.BigInteger, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("captured", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reference", sa.String(200)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("hold_expires_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)
sa.Index("ix_credit_holds_open", credit_holds.c.program_id, credit_holds.c.status,
         credit_holds.c.hold_expires_at)

rebate_runs = sa.Table(
    "rebate_runs", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("rebate_id", sa.String(64), primary_key=True),
    sa.Column("period", sa.String(16), primary_key=True),
    sa.Column("members", sa.Integer, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("ran_at", UTCDateTime, nullable=False),
)
