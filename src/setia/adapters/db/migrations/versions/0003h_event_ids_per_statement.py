"""Event ids registered once per statement instead of once per row (PostgreSQL)

Revision ID: 0003h
Revises: 0003g

0003g registered every new event's id in event_ids with a BEFORE INSERT row trigger:
one PL/pgSQL call and one single-row INSERT per event, about a fifth of PostgreSQL's
CPU per event in a batch of 1,000. An AFTER INSERT statement trigger with a transition
table inserts the whole statement's ids with one INSERT ... SELECT. A duplicate id
still fails the statement that brings it (event_ids' primary key), inside the same
transaction, so a concurrent writer of the same id still gets the unique violation and
retries into a replay.

A statement trigger on the partitioned table fires for statements on that table, not
for rows written straight into a partition: moving rows between partitions
(partitions.py) no longer registers their ids again, and need not delete them first.
SQLite has no event_ids table (its events table keeps ids unique itself): unchanged.
"""

from __future__ import annotations

from alembic import op

revision = "0003h"
down_revision = "0003g"
branch_labels = None
depends_on = None

PER_STATEMENT = """
CREATE FUNCTION setia_register_event_ids() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO event_ids (program_id, id) SELECT program_id, id FROM new_events;
  RETURN NULL;
END $$;
CREATE TRIGGER events_register_ids AFTER INSERT ON events
  REFERENCING NEW TABLE AS new_events
  FOR EACH STATEMENT EXECUTE FUNCTION setia_register_event_ids();
"""

PER_ROW = """
CREATE FUNCTION setia_register_event_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO event_ids (program_id, id) VALUES (NEW.program_id, NEW.id);
  RETURN NEW;
END $$;
CREATE TRIGGER events_register_id BEFORE INSERT ON events
  FOR EACH ROW EXECUTE FUNCTION setia_register_event_id();
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER events_register_id ON events")
    op.execute("DROP FUNCTION setia_register_event_id()")
    op.execute(PER_STATEMENT)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER events_register_ids ON events")
    op.execute("DROP FUNCTION setia_register_event_ids()")
    op.execute(PER_ROW)
