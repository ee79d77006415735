"""Migration 0003e creates the web pages' tables exactly as tables_web.py declares them."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from setia.adapters.db import tables, tables_web

WEB_TABLES = {"staff_users", "web_sessions", "signin_links", "login_failures",
              "member_locales"}


def _table_of(diff: Any) -> str | None:
    """The table a difference from compare_metadata is about (changes of a column come
    as a list of tuples, the others as one tuple)."""
    if isinstance(diff, list):
        diff = diff[0]
    for part in diff:
        if isinstance(part, sa.Table):
            return str(part.name)
        if isinstance(part, sa.Index | sa.Column) and part.table is not None:
            return str(part.table.name)
        if isinstance(part, str) and part in WEB_TABLES:
            return part
    return None


def test_the_migration_matches_the_tables(engine: sa.Engine) -> None:
    assert {table.name for table in tables_web.metadata.sorted_tables} >= WEB_TABLES
    with engine.connect() as conn:
        present = set(sa.inspect(conn).get_table_names())
        assert present >= WEB_TABLES
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        diffs = compare_metadata(context, tables.metadata)
    ours = [diff for diff in diffs if _table_of(diff) in WEB_TABLES]
    assert ours == []
    with engine.connect() as conn:
        indexes = {index["name"] for index in sa.inspect(conn).get_indexes("login_failures")}
    assert indexes == {"ix_login_failures_key"}
