"""Monthly partitions of the journal (``postings``) and ``events`` on PostgreSQL.

Both tables are partitioned by RANGE on ``occurred_at`` (UTC), one partition per
calendar month (``postings_2027_03`` holds March 2027), plus a DEFAULT partition
(``postings_default``) for any month that has none yet, so no insert ever fails
for want of a partition. ``ensure_months`` creates missing months; rows already
in the DEFAULT partition for such a month are moved into the new partition in
the same transaction (PostgreSQL refuses to attach a range that the DEFAULT
partition already holds rows for). SQLite tables are not partitioned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import sqlalchemy as sa

PARTITIONED = ("postings", "events")


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def partition_name(table: str, month: date) -> str:
    return f"{table}_{month.year:04d}_{month.month:02d}"


def is_partitioned(conn: sa.Connection, table: str) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.execute(sa.text(
        "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
        "WHERE c.relname = :name AND c.relnamespace = current_schema()::regnamespace"
    ), {"name": table}).first())


def existing_months(conn: sa.Connection, table: str) -> list[date]:
    rows = conn.execute(sa.text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :name"
    ), {"name": table}).scalars()
    months = []
    for name in rows:
        suffix = name[len(table) + 1:]
        if suffix != "default":
            year, month = suffix.split("_")
            months.append(date(int(year), int(month), 1))
    return sorted(months)


@dataclass
class PartitionReport:
    created: list[str] = field(default_factory=list)
    moved_rows: int = 0


def ensure_months(conn: sa.Connection, first: date, last: date) -> PartitionReport:
    """Create the monthly partitions from ``first`` to ``last`` (inclusive) that are missing
    on every partitioned table. Runs inside the caller's transaction."""
    report = PartitionReport()
    for table in PARTITIONED:
        if not is_partitioned(conn, table):
            continue
        have = set(existing_months(conn, table))
        month = month_start(first)
        while month <= last:
            if month not in have:
                report.moved_rows += _create_month(conn, table, month)
                report.created.append(partition_name(table, month))
            month = add_months(month, 1)
    return report


def _create_month(conn: sa.Connection, table: str, month: date) -> int:
    name = partition_name(table, month)
    start, end = month.isoformat(), add_months(month, 1).isoformat()
    default = f"{table}_default"
    waiting = conn.execute(sa.text(
        f'SELECT count(*) FROM "{default}" WHERE occurred_at >= :start AND occurred_at < :end'
    ), {"start": start, "end": end}).scalar_one()
    if not waiting:
        conn.execute(sa.text(
            f'CREATE TABLE "{name}" PARTITION OF "{table}" '
            f"FOR VALUES FROM ('{start}') TO ('{end}')"
        ))
        return 0
    # Rows of this month wait in the DEFAULT partition: take it out, make the month, move
    # the rows across, put it back. One transaction; readers of the table wait for it.
    conn.execute(sa.text(f'ALTER TABLE "{table}" DETACH PARTITION "{default}"'))
    conn.execute(sa.text(
        f'CREATE TABLE "{name}" PARTITION OF "{table}" FOR VALUES FROM (\'{start}\') TO (\'{end}\')'
    ))
    # Straight into the partition: the events table's trigger, a statement trigger on the
    # parent, does not fire, and the moved events' ids stay registered in event_ids as they are.
    conn.execute(sa.text(
        f'INSERT INTO "{name}" SELECT * FROM "{default}" '
        f"WHERE occurred_at >= :start AND occurred_at < :end"
    ), {"start": start, "end": end})
    conn.execute(sa.text(
        f'DELETE FROM "{default}" WHERE occurred_at >= :start AND occurred_at < :end'
    ), {"start": start, "end": end})
    conn.execute(sa.text(f'ALTER TABLE "{table}" ATTACH PARTITION "{default}" DEFAULT'))
    return int(waiting)


def drop_empty_months_before(conn: sa.Connection, table: str, before: date) -> list[str]:
    """Drop the monthly partitions that end on or before ``before`` and hold no rows (what
    retention left of them); an event for such a month later lands in DEFAULT."""
    dropped = []
    for month in existing_months(conn, table):
        if add_months(month, 1) > before:
            continue
        name = partition_name(table, month)
        if conn.execute(sa.text(f'SELECT EXISTS (SELECT 1 FROM "{name}")')).scalar_one():
            continue
        conn.execute(sa.text(f'DROP TABLE "{name}"'))
        dropped.append(name)
    return dropped
