"""Writing many coupon codes at once: COPY on PostgreSQL, executemany on SQLite.

A batch of 100,000 codes is written in well under a second this way; through
SQLAlchemy's per-row parameter processing the same insert took several seconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

COLUMNS = ("program_id", "code", "coupon_id", "batch_id", "uses")


def insert_codes(conn: sa.Connection, rows: Sequence[tuple[str, str, str, str, int]]) -> None:
    """Insert (program_id, code, coupon_id, batch_id, uses) rows into ``coupon_codes``.
    A duplicate code raises the database's unique violation, as a plain INSERT would."""
    if not rows:
        return
    driver = conn.connection.driver_connection
    assert driver is not None
    if conn.dialect.name == "postgresql" and hasattr(driver, "pipeline"):  # psycopg 3
        import psycopg

        names = ", ".join(COLUMNS)
        try:
            with driver.cursor() as cursor, cursor.copy(
                    f"COPY coupon_codes ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        except psycopg.errors.UniqueViolation as exc:
            raise sa.exc.IntegrityError("COPY coupon_codes", None, exc) from exc
        return
    marks = ", ".join("?" if conn.dialect.paramstyle == "qmark" else "%s" for _ in COLUMNS)
    conn.exec_driver_sql(f"INSERT INTO coupon_codes ({', '.join(COLUMNS)}) VALUES ({marks})",
                         list(rows))
