"""Database tables (SQLAlchemy Core). Alembic migrations mirror this file.

Money is stored as integer minor units, points as integers, times as UTC.
The journal (``postings``) is append-only: nothing updates or deletes a row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

metadata = sa.MetaData()


def naive_utc(value: datetime) -> datetime:
    """An aware time as stored: naive UTC (by combine, a third of the cost of
    replace(tzinfo=None), which parses keywords; a batch converts several per event)."""
    utc = value.astimezone(UTC)
    return datetime.combine(utc.date(), utc.time())


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out; stored as naive UTC on every database."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        assert value.tzinfo is not None, "times are stored from aware datetimes only"
        return naive_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        # combine, not replace(tzinfo=UTC): a quarter of the cost (replace parses keywords),
        # and every member, lot and order a batch reads has times
        return datetime.combine(value.date(), value.time(), UTC)


programs = sa.Table(
    "programs", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("current_version", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

program_versions = sa.Table(
    "program_versions", metadata,
    sa.Column("program_id", sa.String(64), sa.ForeignKey("programs.id"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("definition", sa.Text, nullable=False),
    sa.Column("definition_hash", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

members = sa.Table(
    "members", metadata,
    sa.Column("pk", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("id", sa.String(128), nullable=False),
    sa.Column("name", sa.String(200)),
    sa.Column("email", sa.String(320)),
    sa.Column("phone", sa.String(40)),
    sa.Column("birthday", sa.Date),
    sa.Column("attributes", sa.JSON, nullable=False),
    sa.Column("enrolled_at", UTCDateTime, nullable=False),
    sa.Column("tier_id", sa.String(64), nullable=False),
    sa.Column("tier_reviewed", sa.String(16), nullable=False),
    sa.Column("available", sa.BigInteger, nullable=False),
    sa.Column("pending", sa.BigInteger, nullable=False),
    sa.Column("reserved", sa.BigInteger, nullable=False),
    sa.Column("lot_seq", sa.Integer, nullable=False),
    sa.Column("purchases", sa.Integer, nullable=False),
    sa.Column("last_activity_at", UTCDateTime),
    sa.Column("birthday_year", sa.Integer),
    sa.UniqueConstraint("program_id", "id", name="uq_members_program_id"),
)

lots = sa.Table(
    "lots", metadata,
    sa.Column("member_pk", sa.BigInteger, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("order_id", sa.String(128)),
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.Column("remaining", sa.BigInteger, nullable=False),
    sa.Column("available_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime),
    sa.Column("pending", sa.Boolean, nullable=False),
)
sa.Index("ix_lots_open", lots.c.program_id, lots.c.pending, lots.c.available_at)
sa.Index("ix_lots_expiry", lots.c.program_id, lots.c.expires_at)

postings = sa.Table(
    "postings", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("asset", sa.String(16), nullable=False),
    sa.Column("member_pk", sa.BigInteger, nullable=False),
    sa.Column("debit", sa.String(16), nullable=False),
    sa.Column("credit", sa.String(16), nullable=False),
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.Column("code", sa.String(16), nullable=False),
    sa.Column("ref", sa.String(200), nullable=False),
    sa.Column("rule_id", sa.String(64)),
    sa.Column("program_version", sa.Integer, nullable=False),
    sa.Column("explanation", sa.String(400), nullable=False),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("debit_balance_after", sa.BigInteger),
    sa.Column("credit_balance_after", sa.BigInteger),
    sa.CheckConstraint("points > 0", name="ck_postings_points_positive"),
)
sa.Index("ix_postings_member", postings.c.member_pk, postings.c.id)
sa.Index("ix_postings_program_code", postings.c.program_id, postings.c.code)

orders = sa.Table(
    "orders", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("order_id", sa.String(128), primary_key=True),
    sa.Column("member_pk", sa.BigInteger, nullable=False),
    sa.Column("event_id", sa.String(128), nullable=False),
    sa.Column("program_version", sa.Integer, nullable=False),
    sa.Column("tier_id", sa.String(64), nullable=False),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("amount_e4", sa.BigInteger, nullable=False),
    sa.Column("refunded_e4", sa.BigInteger, nullable=False),
    sa.Column("lines", sa.JSON, nullable=False),
    sa.Column("awards", sa.JSON, nullable=False),
    sa.Column("event", sa.JSON, nullable=False),
    sa.Column("partner", sa.String(64)),  # the coalition partner of the purchase, if any
)

metric_buckets = sa.Table(
    "metric_buckets", metadata,
    sa.Column("member_pk", sa.BigInteger, primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("spend_e4", sa.BigInteger, nullable=False),
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.Column("visits", sa.Integer, nullable=False),
)

rule_usage = sa.Table(
    "rule_usage", metadata,
    sa.Column("member_pk", sa.BigInteger, primary_key=True),
    sa.Column("rule_id", sa.String(64), primary_key=True),
    sa.Column("period", sa.String(16), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
)

events = sa.Table(
    "events", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("member_id", sa.String(128), nullable=False),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("result", sa.JSON, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Column("partner", sa.String(64)),  # the coalition partner the event came from, if any
)

commands = sa.Table(
    "commands", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("operation", sa.String(64), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("result", sa.JSON, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
)

redemptions = sa.Table(
    "redemptions", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("member_pk", sa.BigInteger, nullable=False),
    sa.Column("reward_id", sa.String(64)),
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("voucher_code", sa.String(32)),
    sa.Column("allocations", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("hold_expires_at", UTCDateTime),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # The programme version the redemption was made under: a hold is captured or released
    # by its reward as it was then (None before revision 0003j: the current version).
    sa.Column("program_version", sa.Integer),
)
sa.Index("ix_redemptions_member_reward", redemptions.c.member_pk, redemptions.c.reward_id)
sa.Index("ix_redemptions_holds", redemptions.c.program_id, redemptions.c.status,
         redemptions.c.hold_expires_at)

vouchers = sa.Table(
    "vouchers", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("redemption_id", sa.String(40), nullable=False),
    sa.Column("member_pk", sa.BigInteger, nullable=False),
    sa.Column("reward_id", sa.String(64), nullable=False),
    sa.Column("benefit", sa.JSON, nullable=False),
    sa.Column("issued_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime),
    sa.Column("used_at", UTCDateTime),
    sa.Column("used_ref", sa.String(200)),
)

reward_stock = sa.Table(
    "reward_stock", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("reward_id", sa.String(64), primary_key=True),
    sa.Column("redeemed", sa.Integer, nullable=False),
)

api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.String(24), primary_key=True),  # the public prefix of the key
    sa.Column("secret_hash", sa.String(64), nullable=False),  # SHA-256 of the whole key
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("program_id", sa.String(64)),  # None: every programme
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
)

# Tables of referrals, coupons, surveys and donations, on the same metadata.
# Tables of feature areas, on the same metadata (kept in their own modules).
# Tables of other areas, on the same metadata.
from setia.adapters.db import (  # noqa: E402, F401  # noqa: E402, F401
    tables_analytics,  # noqa: E402,F401  (its tables join metadata)
    tables_coupons,
    tables_donations,
    tables_outbox,  # noqa: E402, F401  (outbox, deliveries, webhooks)
    tables_partners,
    tables_referrals,
    tables_store_credit,
    tables_surveys,
    tables_trust,  # noqa: E402,F401
)
from setia.adapters.db import tables_engagement as tables_engagement  # noqa: E402,F401
from setia.adapters.db import tables_web as tables_web  # noqa: E402,F401 - web pages' tables
