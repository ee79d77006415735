"""Referral tables: each member's referral code, and the referrals themselves."""

from __future__ import annotations

import sqlalchemy as sa

from setia.adapters.db.tables import UTCDateTime, metadata

referral_codes = sa.Table(
    "referral_codes", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("code", sa.String(16), primary_key=True),
    sa.Column("member_pk", sa.BigInteger, nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# status: review (a fraud guard tripped; waits for approve/reject), linked (waits for a
# qualifying purchase), qualified (its purchase waits out pending_days), paid,
# clawed_back (the purchase was refunded after payment), rejected.
referrals = sa.Table(
    "referrals", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("referrer_pk", sa.BigInteger, nullable=False),
    sa.Column("referee_pk", sa.BigInteger, nullable=False, unique=True),
    sa.Column("code", sa.String(16), nullable=False),
    sa.Column("ip", sa.String(64)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("guards", sa.JSON, nullable=False),
    sa.Column("order_id", sa.String(128)),
    sa.Column("qualifies_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("decided_at", UTCDateTime),
    sa.Column("decided_reason", sa.String(300)),
    sa.Column("paid_at", UTCDateTime),
    sa.Column("clawed_back_at", UTCDateTime),
)
sa.Index("ix_referrals_referrer", referrals.c.referrer_pk, referrals.c.created_at)
sa.Index("ix_referrals_ip", referrals.c.program_id, referrals.c.ip, referrals.c.created_at)
sa.Index("ix_referrals_due", referrals.c.program_id, referrals.c.status, referrals.c.qualifies_at)
