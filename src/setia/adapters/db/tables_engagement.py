"""Tables of campaigns, stamp cards and paid memberships (docs/engagement.md).

Points these features give or take back are ordinary postings in the journal
(rule ids ``campaign:<id>``, ``stamp:<id>``, ``membership:<plan>``); these
tables hold the counters and history the rules need beside it.
"""

from __future__ import annotations

import sqlalchemy as sa

from setia.adapters.db.tables import UTCDateTime, metadata

# How much of each campaign's budget is used: one row per campaign, the only row two
# members' events contend for (locked FOR UPDATE after the member, so never exceeded).
campaign_budgets = sa.Table(
    "campaign_budgets", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("campaign_id", sa.String(40), primary_key=True),
    sa.Column("used", sa.BigInteger, nullable=False),
)

# One row per campaign award (points or a voucher), for caps, clawbacks and reports.
campaign_awards = sa.Table(
    "campaign_awards", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("campaign_id", sa.String(64), primary_key=True),
    sa.Column("ref", sa.String(200), primary_key=True),  # the event id
    sa.Column("member_pk", sa.BigInteger, nullable=False),
    sa.Column("order_id", sa.String(128)),
    sa.Column("program_version", sa.Integer, nullable=False),
    sa.Column("awarded", sa.BigInteger, nullable=False),  # points, or 1 for a voucher
    sa.Column("kept", sa.BigInteger, nullable=False),  # after refunds
    sa.Column("voucher_code", sa.String(32)),
    sa.Column("awarded_at", UTCDateTime, nullable=False),
)
sa.Index("ix_campaign_awards_member", campaign_awards.c.member_pk, campaign_awards.c.campaign_id)
sa.Index("ix_campaign_awards_order", campaign_awards.c.program_id, campaign_awards.c.order_id)

# Members held out of a campaign (at random, deterministically) so that analytics can
# compare their spend with the members the campaign reached.
campaign_holdouts = sa.Table(
    "campaign_holdouts", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("campaign_id", sa.String(40), primary_key=True),
    sa.Column("member_pk", sa.BigInteger, primary_key=True),
    sa.Column("member_id", sa.String(128), nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
)

stamp_progress = sa.Table(
    "stamp_progress", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("card_id", sa.String(40), primary_key=True),
    sa.Column("member_pk", sa.BigInteger, primary_key=True),
    sa.Column("period", sa.String(16), primary_key=True),
    sa.Column("stamps", sa.BigInteger, nullable=False),  # net of refunds
    sa.Column("completions", sa.Integer, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# What each order gave a card, so that a refund lowers exactly that.
stamp_orders = sa.Table(
    "stamp_orders", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("card_id", sa.String(40), primary_key=True),
    sa.Column("order_id", sa.String(128), primary_key=True),
    sa.Column("member_pk", sa.BigInteger, nullable=False),
    sa.Column("period", sa.String(16), nullable=False),
    sa.Column("stamps", sa.BigInteger, nullable=False),
)

# Every purchase or renewal of a paid membership, with its fee: revenue for analytics.
membership_purchases = sa.Table(
    "membership_purchases", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("program", sa.String(64), nullable=False),
    sa.Column("member", sa.String(128), nullable=False),
    sa.Column("member_pk", sa.BigInteger, nullable=False),
    sa.Column("plan_id", sa.String(40), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),  # buy | renew
    sa.Column("fee", sa.Numeric(18, 4), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("starts_at", UTCDateTime, nullable=False),
    sa.Column("ends_at", UTCDateTime, nullable=False),
    sa.Column("status", sa.String(12), nullable=False),  # active | expired | cancelled
    sa.Column("tier_before", sa.String(64)),
    sa.Column("vouchers_issued", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("cancelled_at", UTCDateTime),
)
sa.Index("ix_membership_purchases_member", membership_purchases.c.member_pk,
         membership_purchases.c.status)
sa.Index("ix_membership_purchases_due", membership_purchases.c.program,
         membership_purchases.c.status, membership_purchases.c.ends_at)

# Each enrolment anniversary run-due has celebrated, by member and year. The anniversary
# event itself may be pruned (privacy.event_retention_months); this row stays, so a year's
# anniversary is never paid twice.
anniversaries = sa.Table(
    "anniversaries", metadata,
    sa.Column("member_pk", sa.BigInteger, primary_key=True),
    sa.Column("year", sa.Integer, primary_key=True),
    sa.Column("celebrated_at", UTCDateTime, nullable=False),
)
