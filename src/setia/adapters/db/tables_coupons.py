"""Coupon tables: generated codes, total-use counters and the uses themselves.

A use is a row of ``coupon_uses``; giving it back (a refunded order) sets
``released_at`` and lowers the counters again. Discounts are money the shop
gives off a basket, not a balance anyone holds, so they are not journal postings.
"""

from __future__ import annotations

import sqlalchemy as sa

from setia.adapters.db.tables import UTCDateTime, metadata

coupon_batches = sa.Table(
    "coupon_batches", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("coupon_id", sa.String(64), nullable=False),
    sa.Column("prefix", sa.String(12), nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

coupon_codes = sa.Table(
    "coupon_codes", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("coupon_id", sa.String(64), nullable=False),
    sa.Column("batch_id", sa.String(40), nullable=False),
    sa.Column("uses", sa.Integer, nullable=False),  # 0 or 1: each generated code is one use
)
sa.Index("ix_coupon_codes_batch", coupon_codes.c.batch_id)

coupon_counters = sa.Table(
    "coupon_counters", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("coupon_id", sa.String(64), primary_key=True),
    sa.Column("uses", sa.Integer, nullable=False),
)

coupon_uses = sa.Table(
    "coupon_uses", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("coupon_id", sa.String(64), nullable=False),
    sa.Column("code", sa.String(32), nullable=False),
    sa.Column("member_pk", sa.BigInteger, nullable=False),
    sa.Column("member_id", sa.String(128), nullable=False),
    sa.Column("order_id", sa.String(128), nullable=False),
    sa.Column("discount", sa.Numeric(18, 4), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("used_at", UTCDateTime, nullable=False),
    sa.Column("released_at", UTCDateTime),
)
sa.Index("ix_coupon_uses_member", coupon_uses.c.member_pk, coupon_uses.c.coupon_id)
sa.Index("ix_coupon_uses_order", coupon_uses.c.program_id, coupon_uses.c.order_id)
