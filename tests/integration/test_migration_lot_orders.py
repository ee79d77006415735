"""Revision 0003k clears the order of lots that no purchase earned (an event that only
named an order), and leaves a purchase's lots their order."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from setia.adapters.db.engine import make_engine
from setia.adapters.db.migrate import upgrade
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from tests.conftest import assert_journal_ok, fixed_clock, load_programme
from tests.integration.test_trust_fraud import PROGRAMME, P, purchase

CLOCK = fixed_clock("2027-03-01T12:00:00+00:00")


def test_lots_of_events_that_only_named_an_order_lose_it(tmp_path: Path) -> None:
    # Given a database at 0003j holding a purchase's lot, and the lot of a review event
    # that named the purchase's order, as lots were written before 0003k
    engine = make_engine(f"sqlite:///{tmp_path / 'setia.db'}")
    upgrade(engine, "0003j")
    load_programme(engine, {key: value for key, value in PROGRAMME.items() if key != "fraud"})
    upsert_member(engine, P, "m1", {}, CLOCK)
    ingest_event(engine, P, purchase("e1", "m1", "2027-03-01T10:00:00+00:00", "10.00"), CLOCK)
    ingest_event(engine, P, {"id": "v1", "type": "review", "member": "m1", "order_id": "o-e1",
                             "occurred_at": "2027-03-01T10:40:00+00:00"}, CLOCK)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE lots SET order_id = 'o-e1' WHERE source = 'v1'"))

    # When the database is upgraded
    upgrade(engine)

    # Then the review's lot names no order, and the purchase's still does
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT source, order_id FROM lots ORDER BY seq")).all() \
            == [("e1", "o-e1"), ("v1", None)]
    assert_journal_ok(engine)
    engine.dispose()
