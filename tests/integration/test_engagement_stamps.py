"""Stamp cards and challenges: progress per member and period, a reward on completion,
restart or once only, progress lowered by refunds."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from setia.service.engagement_views import member_stamp_cards
from tests.conftest import assert_journal_ok, fixed_clock
from tests.integration.test_engagement_campaigns import (
    P,
    available,
    buy,
    enrol,
    programme,
    refund,
    rules_of,
)

COFFEE = {"id": "coffee", "name": "Tenth coffee free", "count": "quantity",
          "categories": ["coffee"], "target": 9,
          "reward": {"voucher": {"free_item": "coffee", "valid_days": 30}}}
MARCH = {"id": "march-visits", "name": "Visit 5 times in March", "count": "visits",
         "target": 5, "from": "2027-03-01", "until": "2027-03-31", "repeat": False,
         "reward": {"points": 100}}
QUARTER = {"id": "quarter-spend", "name": "Spend RM 200 in a quarter", "count": "spend",
           "target": "200.00", "period": "quarter", "reward": {"points": 300}}


def coffees(n: int, price: str = "5.00") -> list[dict[str, Any]]:
    return [{"sku": "KOPI", "category": "coffee", "quantity": n,
             "amount": f"{int(n) * float(price):.2f}"},
            {"sku": "CAKE", "category": "pastry", "quantity": 1, "amount": "3.00"}]


def cards(engine: sa.Engine, member: str, now: str) -> dict[str, dict[str, Any]]:
    found = member_stamp_cards(engine, P, member, fixed_clock(now))["stamp_cards"]
    return {card["id"]: card for card in found}


def vouchers(engine: sa.Engine, source: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM vouchers WHERE reward_id = :r"),
                                {"r": source}).scalar_one())


def test_the_tenth_coffee_is_free_and_the_card_restarts(engine):
    programme(engine, stamp_cards=[COFFEE])
    enrol(engine, "m1")
    day = "2027-02-0{}T10:00:00+08:00"
    # 4 + 4 coffees: 8 stamps, no reward yet
    buy(engine, "m1", "o1", day.format(1), "23.00", coffees(4))
    buy(engine, "m1", "o2", day.format(2), "23.00", coffees(4))
    assert cards(engine, "m1", day.format(2))["coffee"]["stamps"] == 8
    assert vouchers(engine, "stamp:coffee") == 0
    # 2 more: the card fills (9) and restarts with 1 stamp; one voucher for a free coffee
    buy(engine, "m1", "o3", day.format(3), "13.00", coffees(2))
    card = cards(engine, "m1", day.format(3))["coffee"]
    assert (card["stamps"], card["remaining"], card["completions"]) == (1, 8, 1)
    assert vouchers(engine, "stamp:coffee") == 1
    assert_journal_ok(engine)


def test_a_refund_lowers_progress_by_what_the_order_gave(engine):
    programme(engine, stamp_cards=[COFFEE])
    enrol(engine, "m1")
    buy(engine, "m1", "o1", "2027-02-01T10:00:00+08:00", "33.00", coffees(6))
    # Refund RM 10.00 of the coffee line (RM 30.00 for 6): 4 coffees are left
    from setia.service.events import ingest_event
    from tests.integration.test_engagement_campaigns import CLOCK

    ingest_event(engine, P, {"id": "r1", "type": "refund", "member": "m1", "order_id": "o1",
                             "occurred_at": "2027-02-02T10:00:00+08:00",
                             "lines": [{"sku": "KOPI", "amount": "10.00"}]}, CLOCK)
    assert cards(engine, "m1", "2027-02-03T00:00:00+08:00")["coffee"]["stamps"] == 4
    # The whole order refunded: none left
    refund(engine, "m1", "o1", "23.00")
    assert cards(engine, "m1", "2027-02-03T00:00:00+08:00")["coffee"]["stamps"] == 0
    assert_journal_ok(engine)


def test_a_once_only_challenge_pays_once_within_its_dates(engine):
    programme(engine, stamp_cards=[MARCH])
    enrol(engine, "m1")
    buy(engine, "m1", "feb", "2027-02-28T10:00:00+08:00", "5.00")  # before the window
    results = [buy(engine, "m1", f"m{d}", f"2027-03-{d:02d}T10:00:00+08:00", "5.00")
               for d in range(1, 8)]
    # the fifth visit in March completes it: 100 points, once; the 6th and 7th give nothing
    assert [rules_of(r).get("stamp:march-visits", 0) for r in results] == [0, 0, 0, 0, 100, 0, 0]
    card = cards(engine, "m1", "2027-03-20T00:00:00+08:00")["march-visits"]
    assert (card["completions"], card["finished"], card["remaining"]) == (1, True, 0)
    assert available(engine, "m1") == 8 * 5 + 100
    assert_journal_ok(engine)


def test_spend_per_quarter_restarts_each_quarter(engine):
    programme(engine, stamp_cards=[QUARTER])
    enrol(engine, "m1")
    buy(engine, "m1", "a", "2027-01-10T10:00:00+08:00", "150.00")  # now Gold (x2)
    done = buy(engine, "m1", "b", "2027-03-31T23:00:00+08:00", "60.50")
    assert rules_of(done) == {"base": 121, "stamp:quarter-spend": 300}
    # 1 April local: a new quarter starts from nothing
    april = buy(engine, "m1", "c", "2027-03-31T16:30:00+00:00", "199.99")
    assert rules_of(april) == {"base": 399}
    card = cards(engine, "m1", "2027-04-02T00:00:00+08:00")["quarter-spend"]
    assert (card["period"], card["stamps"], card["remaining"]) == ("2027-Q2", "199.99", "0.01")
    q1 = cards(engine, "m1", "2027-03-31T23:30:00+08:00")["quarter-spend"]
    assert (q1["period"], q1["stamps"], q1["completions"]) == ("2027-Q1", "10.50", 1)
    assert_journal_ok(engine)


def test_a_refund_leaves_the_stamps_that_what_is_left_of_the_order_earns(engine):
    # Given a coffee card (quantity), a visits card for pastry, and one for baskets of 12.00
    programme(engine, stamp_cards=[
        COFFEE,
        {"id": "bun-visits", "name": "Five bun visits", "count": "visits",
         "categories": ["pastry"], "target": 5, "reward": {"points": 50}},
        {"id": "big-basket", "name": "Five big baskets", "count": "visits",
         "min_amount": "12.00", "target": 5, "reward": {"points": 50}},
    ])
    enrol(engine, "m1")
    # When m1 buys 2 lattes, a free coffee and a bun (15.00: base 15, pastry 5)
    lines = [{"sku": "LATTE", "category": "coffee", "quantity": 2, "amount": "10.00"},
             {"sku": "FREE", "category": "coffee", "quantity": 1, "amount": "0.00"},
             {"sku": "BUN", "category": "pastry", "quantity": 1, "amount": "5.00"}]
    buy(engine, "m1", "o1", "2027-02-01T10:00:00+08:00", "15.00", lines)
    now = "2027-02-03T00:00:00+08:00"
    assert {k: v["stamps"] for k, v in cards(engine, "m1", now).items()} == {
        "coffee": 3, "bun-visits": 1, "big-basket": 1}
    assert available(engine, "m1") == 20
    # and the bun is refunded in full: 10.00 is left, with 2 lattes and the free coffee
    from setia.service.events import ingest_event
    from tests.integration.test_engagement_campaigns import CLOCK

    ingest_event(engine, P, {"id": "r1", "type": "refund", "member": "m1", "order_id": "o1",
                             "occurred_at": "2027-02-02T10:00:00+08:00",
                             "lines": [{"sku": "BUN", "amount": "5.00"}]}, CLOCK)
    # Then the coffees keep their 3 stamps; no bun visit; 10.00 is no longer a big basket
    assert {k: v["stamps"] for k, v in cards(engine, "m1", now).items()} == {
        "coffee": 3, "bun-visits": 0, "big-basket": 0}
    with engine.connect() as conn:
        kept = dict(conn.execute(sa.text(
            "SELECT card_id, stamps FROM stamp_orders WHERE program_id = :p AND order_id = 'o1'"),
            {"p": P}).all())
    assert kept == {"coffee": 3, "bun-visits": 0, "big-basket": 0}
    assert available(engine, "m1") == 10
    assert_journal_ok(engine)


def test_a_refund_counts_the_stamps_left_under_the_card_the_order_earned_them_by(engine):
    # Given the coffee card counting coffees, and 6 coffees bought (6 stamps)
    programme(engine, stamp_cards=[COFFEE])
    enrol(engine, "m1")
    buy(engine, "m1", "o1", "2027-02-01T10:00:00+08:00", "33.00", coffees(6))
    # and then a version of the card counting visits instead
    programme(engine, stamp_cards=[{**COFFEE, "count": "visits"}])

    # When RM 10.00 of the coffee line is refunded (4 coffees left)
    from setia.service.events import ingest_event
    from tests.integration.test_engagement_campaigns import CLOCK

    ingest_event(engine, P, {"id": "r1", "type": "refund", "member": "m1", "order_id": "o1",
                             "occurred_at": "2027-02-02T10:00:00+08:00",
                             "lines": [{"sku": "KOPI", "amount": "10.00"}]}, CLOCK)

    # Then the order keeps the 4 stamps its 4 coffees earn by the card it was bought under
    # (by the new card it would keep 1, a visit)
    assert cards(engine, "m1", "2027-02-03T00:00:00+08:00")["coffee"]["stamps"] == 4
    assert_journal_ok(engine)
