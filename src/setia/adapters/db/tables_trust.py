"""Tables for operations and trust: the audit log, member tokens, the fraud review queue,
and the event-id register that keeps event ids unique once ``events`` is partitioned.

Imported from the bottom of tables.py so that they share ``tables.metadata``.
"""

from __future__ import annotations

import sqlalchemy as sa

from setia.adapters.db.tables import UTCDateTime, metadata

_pk = sa.BigInteger().with_variant(sa.Integer, "sqlite")

# Append-only: a trigger refuses UPDATE and DELETE on both databases (migration 0003g).
audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("id", _pk, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(120), nullable=False),  # "key:<id>" or "cli:<os user>"
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("program_id", sa.String(64)),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("before", sa.JSON),
    sa.Column("after", sa.JSON),
)
sa.Index("ix_audit_log_program", audit_log.c.program_id, audit_log.c.id)

member_tokens = sa.Table(
    "member_tokens", metadata,
    sa.Column("id", sa.String(24), primary_key=True),  # the public prefix of the token
    sa.Column("secret_hash", sa.String(64), nullable=False),  # SHA-256 of the whole token
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("member_pk", sa.BigInteger, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
)
sa.Index("ix_member_tokens_member", member_tokens.c.member_pk)

fraud_reviews = sa.Table(
    "fraud_reviews", metadata,
    sa.Column("id", _pk, primary_key=True, autoincrement=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("member_pk", sa.BigInteger, nullable=False),
    sa.Column("event_id", sa.String(128), nullable=False),
    sa.Column("lot_seq", sa.Integer, nullable=False),
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.Column("reasons", sa.JSON, nullable=False),
    sa.Column("available_at", UTCDateTime, nullable=False),  # when the points were due
    sa.Column("status", sa.String(16), nullable=False),  # open | approved | rejected
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("decided_at", UTCDateTime),
    sa.Column("decided_by", sa.String(120)),
    sa.UniqueConstraint("program_id", "event_id", name="uq_fraud_reviews_event"),
)
sa.Index("ix_fraud_reviews_queue", fraud_reviews.c.program_id, fraud_reviews.c.status,
         fraud_reviews.c.id)

# On PostgreSQL ``events`` is partitioned by month, and a partitioned table's unique keys
# must include the partition key; a trigger registers each (program_id, id) here so that
# an event id stays unique across every month (SQLite keeps the plain primary key).
event_ids = sa.Table(
    "event_ids", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(128), primary_key=True),
)
