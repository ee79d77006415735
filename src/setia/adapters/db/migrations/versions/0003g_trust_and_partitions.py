"""Audit log, member tokens, fraud review queue; monthly partitions on PostgreSQL

Revision ID: 0003g
Revises: 0003f

On PostgreSQL the journal (postings) and events become tables partitioned by
month of occurred_at (see adapters/db/partitions.py). A partitioned table's
primary key must contain the partition key, so postings' key becomes
(id, occurred_at) (ids still come from the one sequence) and events' key
(program_id, id, occurred_at); a trigger registers every event id in
event_ids, whose primary key keeps event ids unique across months. SQLite is
unchanged apart from the new tables.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import setia.adapters.db.tables
from setia.adapters.db.partitions import add_months, ensure_months, month_start

revision = "0003g"
down_revision = "0003f"
branch_labels = None
depends_on = None

UTC_TIME = setia.adapters.db.tables.UTCDateTime
PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

APPEND_ONLY_PG = """
CREATE FUNCTION setia_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'the audit log is append-only: % refused', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION setia_append_only();
"""

EVENT_IDS_PG = """
CREATE FUNCTION setia_register_event_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO event_ids (program_id, id) VALUES (NEW.program_id, NEW.id);
  RETURN NEW;
END $$;
CREATE TRIGGER events_register_id BEFORE INSERT ON events
  FOR EACH ROW EXECUTE FUNCTION setia_register_event_id();
"""


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", PK, autoincrement=True, nullable=False),
        sa.Column("at", UTC_TIME(), nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("program_id", sa.String(length=64), nullable=True),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_log_program", "audit_log", ["program_id", "id"])
    op.create_table(
        "member_tokens",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("member_pk", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTC_TIME(), nullable=False),
        sa.Column("expires_at", UTC_TIME(), nullable=False),
        sa.Column("revoked_at", UTC_TIME(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_member_tokens_member", "member_tokens", ["member_pk"])
    op.create_table(
        "fraud_reviews",
        sa.Column("id", PK, autoincrement=True, nullable=False),
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("member_pk", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("lot_seq", sa.Integer(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("available_at", UTC_TIME(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTC_TIME(), nullable=False),
        sa.Column("decided_at", UTC_TIME(), nullable=True),
        sa.Column("decided_by", sa.String(length=120), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("program_id", "event_id", name="uq_fraud_reviews_event"),
    )
    op.create_index("ix_fraud_reviews_queue", "fraud_reviews", ["program_id", "status", "id"])
    op.create_table(
        "event_ids",
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("program_id", "id"),
    )
    # Duplicate receipts are looked up by amount and time (fraud rules).
    op.create_index("ix_orders_amount_time", "orders", ["program_id", "amount_e4", "occurred_at"])

    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{operation.lower()} BEFORE {operation} ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
            )
        return
    op.execute(APPEND_ONLY_PG)
    _partition_postings()
    _partition_events()
    op.execute(EVENT_IDS_PG)
    this_month = month_start(datetime.now(UTC).date())
    ensure_months(bind, add_months(this_month, -1), add_months(this_month, 12))


def _partition_postings() -> None:
    op.execute("DROP INDEX ix_postings_member")
    op.execute("DROP INDEX ix_postings_program_code")
    op.execute("ALTER TABLE postings RENAME CONSTRAINT postings_pkey TO postings_old_pkey")
    op.execute("ALTER TABLE postings RENAME TO postings_old")
    op.execute("CREATE TABLE postings (LIKE postings_old INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
               " PARTITION BY RANGE (occurred_at)")
    op.execute("ALTER TABLE postings ADD CONSTRAINT postings_pkey PRIMARY KEY (id, occurred_at)")
    op.execute("CREATE INDEX ix_postings_member ON postings (member_pk, id)")
    op.execute("CREATE INDEX ix_postings_program_code ON postings (program_id, code)")
    op.execute("CREATE TABLE postings_default PARTITION OF postings DEFAULT")
    op.execute("INSERT INTO postings SELECT * FROM postings_old")
    op.execute("ALTER SEQUENCE postings_id_seq OWNED BY postings.id")
    op.execute("DROP TABLE postings_old")


def _partition_events() -> None:
    op.execute("ALTER TABLE events RENAME CONSTRAINT events_pkey TO events_old_pkey")
    op.execute("ALTER TABLE events RENAME TO events_old")
    op.execute("CREATE TABLE events (LIKE events_old INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
               " PARTITION BY RANGE (occurred_at)")
    op.execute("ALTER TABLE events ADD CONSTRAINT events_pkey "
               "PRIMARY KEY (program_id, id, occurred_at)")
    op.execute("CREATE TABLE events_default PARTITION OF events DEFAULT")
    op.execute("INSERT INTO events SELECT * FROM events_old")
    op.execute("INSERT INTO event_ids (program_id, id) SELECT program_id, id FROM events_old")
    op.execute("DROP TABLE events_old")


def _unpartition(table: str, key: str, indexes: list[str]) -> None:
    for index in indexes:
        op.execute(f"DROP INDEX IF EXISTS {index.split(' ')[0]}")
    op.execute(f"ALTER TABLE {table} RENAME CONSTRAINT {table}_pkey TO {table}_part_pkey")
    op.execute(f"ALTER TABLE {table} RENAME TO {table}_part")
    op.execute(f"CREATE TABLE {table} (LIKE {table}_part INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({key})")
    for index in indexes:
        op.execute(f"CREATE INDEX {index}")
    op.execute(f"INSERT INTO {table} SELECT * FROM {table}_part")
    if table == "postings":
        op.execute("ALTER SEQUENCE postings_id_seq OWNED BY postings.id")
    op.execute(f"DROP TABLE {table}_part CASCADE")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_register_id ON events")
        op.execute("DROP FUNCTION IF EXISTS setia_register_event_id()")
        _unpartition("events", "program_id, id", [])
        _unpartition("postings", "id", ["ix_postings_member ON postings (member_pk, id)",
                                        "ix_postings_program_code ON postings (program_id, code)"])
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS setia_append_only()")
    op.drop_index("ix_orders_amount_time", table_name="orders")
    op.drop_table("event_ids")
    op.drop_index("ix_fraud_reviews_queue", table_name="fraud_reviews")
    op.drop_table("fraud_reviews")
    op.drop_index("ix_member_tokens_member", table_name="member_tokens")
    op.drop_table("member_tokens")
    op.drop_index("ix_audit_log_program", table_name="audit_log")
    op.drop_table("audit_log")
