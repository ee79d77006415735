"""Outbox, deliveries and webhook endpoints (operations: webhooks, email, workers).

Every member-visible change writes one ``outbox`` row in the transaction that
made it. Workers turn each row into ``deliveries`` (one per webhook endpoint,
one email) and send them with retries; a delivery that keeps failing for 24 hours
is ``dead`` until an admin replays it.
"""

from __future__ import annotations

import sqlalchemy as sa

from setia.adapters.db.tables import UTCDateTime, metadata

outbox = sa.Table(
    "outbox", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    # what makes the message unique (type, member, cause): a repeat is skipped
    sa.Column("key", sa.String(300), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("member_id", sa.String(128), nullable=False),
    sa.Column("data", sa.Text, nullable=False),  # JSON text, exactly as webhooks send it
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("dispatched_at", UTCDateTime),  # deliveries made for it
    sa.UniqueConstraint("program_id", "key", name="uq_outbox_program_key"),
)
sa.Index("ix_outbox_undispatched", outbox.c.id,
         postgresql_where=outbox.c.dispatched_at.is_(None),
         sqlite_where=outbox.c.dispatched_at.is_(None))

webhook_endpoints = sa.Table(
    "webhook_endpoints", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("url", sa.String(2000), nullable=False),
    sa.Column("secret", sa.String(200), nullable=False),  # whsec_<base64>
    sa.Column("types", sa.JSON),  # None: every type
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("disabled_at", UTCDateTime),
)

deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("outbox_id", sa.BigInteger, nullable=False),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),  # webhook | email
    sa.Column("target", sa.String(40), nullable=False),  # endpoint id, or "member"
    # pending | delivered | dead | dropped (an email whose member has no address any more)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("lease_until", UTCDateTime),  # a worker is sending it until then
    sa.Column("window_started_at", UTCDateTime, nullable=False),  # retries stop 24 h after
    sa.Column("last_error", sa.String(500)),
    sa.Column("delivered_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("outbox_id", "channel", "target", name="uq_deliveries_target"),
)
sa.Index("ix_deliveries_due", deliveries.c.status, deliveries.c.channel,
         deliveries.c.next_attempt_at)
