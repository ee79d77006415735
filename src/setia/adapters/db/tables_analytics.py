"""Tables of the analytics area: sales without a member (the non-member side of the
average order value) and their refunds. Everything else analytics reads is the journal,
orders and members."""

from __future__ import annotations

import sqlalchemy as sa

from setia.adapters.db.tables import UTCDateTime, metadata

guest_sales = sa.Table(
    "guest_sales", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(128), primary_key=True),  # the caller's sale id: idempotency key
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("amount_e4", sa.BigInteger, nullable=False),
    sa.Column("store", sa.String(128)),
    sa.Column("channel", sa.String(128)),
    sa.Column("partner", sa.String(128)),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
)
sa.Index("ix_guest_sales_time", guest_sales.c.program_id, guest_sales.c.occurred_at)

# A refund of (part of) a guest sale; together they never exceed the sale's amount.
guest_refunds = sa.Table(
    "guest_refunds", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(128), primary_key=True),  # the caller's refund id: idempotency key
    sa.Column("sale_id", sa.String(128), nullable=False),  # the guest sale it refunds
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("amount_e4", sa.BigInteger, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
)
sa.Index("ix_guest_refunds_sale", guest_refunds.c.program_id, guest_refunds.c.sale_id)
