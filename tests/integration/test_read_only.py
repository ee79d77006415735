"""Reads run in READ ONLY transactions that end with COMMIT (``transaction(..., read_only=True)``).

psycopg forgets every statement it prepared on a connection when a transaction on it ends
with ROLLBACK (and sends DEALLOCATE ALL). Reads used to end that way, so a member GET made
the next request on its pooled connection parse and plan its statements again. These tests
use a pool of one connection, so that every call below runs on the same one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from setia.adapters.db.engine import make_engine
from setia.service.common import transaction
from setia.service.events import ingest_event
from setia.service.members import get_member, upsert_member
from tests.conftest import KOPI_SETIA, assert_journal_ok, fixed_clock, load_programme
from tests.integration.test_events import coffee_and_croissant

P = "kopi-setia"
CLOCK = fixed_clock("2027-03-01T09:00:00+08:00")
LATER = fixed_clock("2027-03-02T12:00:00+08:00")

pytestmark = pytest.mark.postgres


@contextmanager
def pool_of_one(pg_engine: sa.Engine) -> Iterator[sa.Engine]:
    """Kopi Setia with member cust-1 after one purchase, behind a pool of one connection."""
    load_programme(pg_engine, KOPI_SETIA)
    upsert_member(pg_engine, P, "cust-1", {"name": "Mei"}, CLOCK)
    ingest_event(pg_engine, P, coffee_and_croissant(), LATER)
    engine = make_engine(pg_engine.url.render_as_string(hide_password=False),
                         pool_size=1, max_overflow=0)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def one_connection(pg_engine: sa.Engine) -> Iterator[sa.Engine]:
    with pool_of_one(pg_engine) as engine:
        yield engine


def prepared(engine: sa.Engine) -> dict[str, str]:
    """The statements the pooled connection holds prepared: name -> text. Read with a
    COMMIT, so that the look itself keeps them."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT name, statement FROM pg_prepared_statements").all()
        conn.commit()
    return {name: statement for name, statement in rows}


def balances(engine: sa.Engine) -> dict[str, int]:
    return get_member(engine, P, "cust-1", LATER)["balances"]  # type: ignore[no-any-return]


def test_a_member_read_keeps_the_statements_its_connection_prepared(one_connection):
    # Given the member read once: its two statements are prepared on the connection
    assert balances(one_connection) == {"available": 0, "pending": 210, "reserved": 0}
    first = prepared(one_connection)
    assert sum("FROM members JOIN programs" in text for text in first.values()) == 1
    assert sum("FROM metric_buckets" in text for text in first.values()) == 1

    # When it is read three times more
    for _ in range(3):
        assert balances(one_connection) == {"available": 0, "pending": 210, "reserved": 0}

    # Then the same statements, under the same names, served them: none was prepared again
    assert prepared(one_connection) == first
    assert_journal_ok(one_connection)


def test_a_rollback_would_have_dropped_them(one_connection):
    # The reason for the COMMIT: the same read ending with ROLLBACK empties the cache
    balances(one_connection)
    assert prepared(one_connection) != {}
    with one_connection.connect() as conn:
        conn.exec_driver_sql("SELECT 1").all()
        conn.rollback()
    assert prepared(one_connection) == {}
    assert_journal_ok(one_connection)


def test_a_write_in_a_read_only_transaction_is_refused_and_changes_nothing(one_connection):
    before = balances(one_connection)

    def work(uow):
        uow.execute(sa.text("UPDATE members SET name = 'Changed' WHERE id = 'cust-1'"))

    with pytest.raises(sa.exc.DBAPIError, match="read-only transaction"):
        transaction(one_connection, work, read_only=True)

    assert balances(one_connection) == before
    assert get_member(one_connection, P, "cust-1", LATER)["name"] == "Mei"
    assert_journal_ok(one_connection)


def test_the_connection_writes_again_after_a_read(one_connection):
    # Given a read on the only connection
    assert balances(one_connection) == {"available": 0, "pending": 210, "reserved": 0}

    # When a purchase is sent on it: base 42 + pastry-bonus 18 (the first visit is used)
    result = ingest_event(one_connection, P, coffee_and_croissant("e2", "o2"), LATER)

    # Then it is applied: the pool made the connection read-write again
    assert result["status"] == "applied"
    assert result["points"] == 60
    assert balances(one_connection) == {"available": 0, "pending": 270, "reserved": 0}
    assert_journal_ok(one_connection)
