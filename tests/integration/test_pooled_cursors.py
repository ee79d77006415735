"""The unit of work keeps two psycopg cursors per pooled connection (``UnitOfWork._cursors``)
instead of making three per event. A cursor holds no server state; these tests show that
events on one connection share them, that a refused event leaves them usable, and that a
connection the pool discards takes its cursors with it. A pool of one connection makes
every call below run on the same one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from setia.domain.errors import IdempotencyConflict
from setia.service.events import ingest_event
from tests.conftest import assert_journal_ok
from tests.integration.test_events import coffee_and_croissant
from tests.integration.test_read_only import LATER, P, balances, pool_of_one

pytestmark = pytest.mark.postgres


@pytest.fixture
def one(pg_engine: sa.Engine) -> Iterator[sa.Engine]:
    with pool_of_one(pg_engine) as engine:
        yield engine


def cursors(engine: sa.Engine) -> tuple[Any, Any] | None:
    """The cursors kept on the pool's one connection, and checks they belong to it."""
    with engine.connect() as conn:
        found = conn.connection.info.get("setia_cursors")
        if found is not None:
            assert all(cursor.connection is conn.connection.driver_connection
                       for cursor in found)
        conn.commit()
    return found


def test_events_on_one_share_its_two_cursors(one):
    # Given one purchase sent on the connection (the fixture's first one was made on
    # another pool): base 42 + pastry-bonus 18, the first visit already used
    assert ingest_event(one, P, coffee_and_croissant("e2", "o2"), LATER)["points"] == 60
    kept = cursors(one)
    assert kept is not None
    assert kept[0] is not kept[1]

    # When the same event id comes with another body, it is refused ...
    changed = coffee_and_croissant("e2", "o9")
    with pytest.raises(IdempotencyConflict):
        ingest_event(one, P, changed, LATER)
    assert balances(one) == {"available": 0, "pending": 270, "reserved": 0}

    # ... and a new purchase after it earns exactly as the one before
    assert ingest_event(one, P, coffee_and_croissant("e3", "o3"), LATER)["points"] == 60

    # Then both ran on the same two cursors, and each was recorded once
    assert cursors(one) == kept
    assert all(a is b for a, b in zip(cursors(one) or (), kept, strict=True))
    assert balances(one) == {"available": 0, "pending": 330, "reserved": 0}
    assert ingest_event(one, P, coffee_and_croissant("e3", "o3"),
                        LATER)["status"] == "replayed"
    assert_journal_ok(one)


def test_a_discarded_connection_takes_its_cursors_with_it(one):
    # Given the connection's cursors after one purchase
    ingest_event(one, P, coffee_and_croissant("e2", "o2"), LATER)
    old = cursors(one)
    assert old is not None

    # When the pool discards the connection (as after a lost connection)
    with one.connect() as conn:
        conn.invalidate()

    # Then the next purchase runs on a new connection with new cursors, and earns the same
    assert ingest_event(one, P, coffee_and_croissant("e3", "o3"), LATER)["points"] == 60
    new = cursors(one)
    assert new is not None
    assert new[0] is not old[0] and new[1] is not old[1]
    assert old[0].closed or old[0].connection.closed
    assert balances(one) == {"available": 0, "pending": 330, "reserved": 0}
    assert_journal_ok(one)
