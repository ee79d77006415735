"""Refunds on the Kopi Setia programme: points recomputed for what is left of the order."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from setia.domain.errors import RefundExceedsOrder, UnknownOrder
from setia.service.events import ingest_event
from setia.service.members import get_member, upsert_member
from setia.service.redemptions import redeem
from setia.service.run_due import run_due
from tests.conftest import assert_journal_ok, at, fixed_clock

P = "kopi-setia"
CLOCK = fixed_clock("2027-03-01T09:00:00+08:00")


def postings_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM postings")).scalar_one()


def order_state(engine: sa.Engine, order_id: str = "o1") -> tuple[int, dict[str, str], Any]:
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT refunded_e4, lines, awards FROM orders WHERE order_id = :o"), {"o": order_id}
        ).one()
    lines = row.lines if isinstance(row.lines, list) else json.loads(row.lines)
    awards = row.awards if isinstance(row.awards, dict) else json.loads(row.awards)
    return row.refunded_e4, {line["sku"]: line["refunded"] for line in lines}, awards


def balances(engine: sa.Engine, member: str = "cust-1") -> dict[str, int]:
    return get_member(engine, P, member, CLOCK)["balances"]


def given_the_coffee_and_croissant_order(engine: sa.Engine) -> None:
    # welcome 50 pending; order o1 RM 42.50 = LATTE 24.00 + CROISSANT 18.50 (pastry):
    # base 42 + pastry-bonus 18 + first-visit 100 = 160 pending
    upsert_member(engine, P, "cust-1", {"name": "Mei"}, CLOCK)
    ingest_event(engine, P, {
        "id": "e1", "type": "purchase", "member": "cust-1", "order_id": "o1",
        "occurred_at": "2027-03-02T10:00:00+08:00", "amount": "42.50",
        "lines": [{"sku": "LATTE", "category": "coffee", "quantity": 2, "amount": "24.00"},
                  {"sku": "CROISSANT", "category": "pastry", "quantity": 1, "amount": "18.50"}],
    }, CLOCK)


def refund(engine: sa.Engine, event_id: str, order_id: str = "o1", member: str = "cust-1",
           **fields: Any) -> dict[str, Any]:
    return ingest_event(engine, P, {
        "id": event_id, "type": "refund", "member": member, "order_id": order_id,
        "occurred_at": "2027-03-02T12:00:00+08:00", **fields}, CLOCK)


def by_rule(result: dict[str, Any]) -> dict[str, int]:
    return {p["rule"]: p["points"] for p in result["postings"]}


def test_a_refund_by_amount_is_spread_over_the_lines_and_claws_back_the_difference(kopi):
    given_the_coffee_and_croissant_order(kopi)

    # When RM 10.00 is refunded
    result = refund(kopi, "r1", amount="10.00")

    # Then 10.00 is spread 24.00:18.50 -> 5.647.. / 4.352.. -> 5.64 + 4.35 = 9.99, the last
    # cent to LATTE (largest remainder): LATTE 5.65, CROISSANT 4.35. What is left:
    # 32.50 (base 32: -10), CROISSANT 14.15 (pastry-bonus 14: -4), first-visit kept.
    assert by_rule(result) == {"base": -10, "pastry-bonus": -4}
    assert result["points"] == -14
    assert result["balances"] == {"available": 0, "pending": 210 - 14, "reserved": 0}
    refunded_e4, lines, awards = order_state(kopi)
    assert refunded_e4 == 100_000
    assert lines == {"LATTE": "5.65", "CROISSANT": "4.35"}
    assert awards == {"base": 32, "pastry-bonus": 14, "first-visit": 100}
    assert_journal_ok(kopi)


def test_a_refund_of_a_line_claws_back_its_category_bonus(kopi):
    given_the_coffee_and_croissant_order(kopi)

    # When the croissant line (18.50) is refunded
    result = refund(kopi, "r1", lines=[{"sku": "CROISSANT", "amount": "18.50"}])

    # Then 24.00 is left: base 24 (-18), pastry-bonus 0 (-18), first-visit kept
    assert by_rule(result) == {"base": -18, "pastry-bonus": -18}
    assert result["balances"]["pending"] == 210 - 36
    _, lines, _ = order_state(kopi)
    assert lines == {"LATTE": "0", "CROISSANT": "18.50"}
    assert_journal_ok(kopi)


def test_repeated_partial_refunds_add_up_to_the_whole_order_and_then_no_more(kopi):
    given_the_coffee_and_croissant_order(kopi)

    # When 10.00, then 20.00, then the last 12.50 are refunded
    first = refund(kopi, "r1", amount="10.00")
    second = refund(kopi, "r2", amount="20.00")
    third = refund(kopi, "r3", amount="12.50")

    # Then: first as above (-14). Second spreads 20.00 over LATTE 18.35 / CROISSANT 14.15:
    # 11.292.. / 8.707.. -> 11.29 + 8.70, the cent to CROISSANT: left 7.06 / 5.44, 12.50;
    # base 12 (-20), pastry-bonus 5 (-9), first-visit kept (12.50 >= 10.00).
    # Third leaves nothing: base -12, pastry-bonus -5, first-visit -100 (0 < 10.00).
    assert first["points"] == -14
    assert by_rule(second) == {"base": -20, "pastry-bonus": -9}
    assert by_rule(third) == {"base": -12, "first-visit": -100, "pastry-bonus": -5}
    assert balances(kopi) == {"available": 0, "pending": 50, "reserved": 0}
    refunded_e4, lines, awards = order_state(kopi)
    assert refunded_e4 == 425_000
    assert {sku: Decimal(v) for sku, v in lines.items()} == {
        "LATTE": Decimal("24.00"), "CROISSANT": Decimal("18.50")}
    assert awards == {"base": 0, "pastry-bonus": 0, "first-visit": 0}

    # When one more cent is refunded
    before = postings_count(kopi)
    with pytest.raises(RefundExceedsOrder) as error:
        refund(kopi, "r4", amount="0.01")

    # Then it is refused and nothing changed
    assert error.value.field == "amount"
    assert postings_count(kopi) == before
    assert balances(kopi) == {"available": 0, "pending": 50, "reserved": 0}
    assert order_state(kopi)[0] == 425_000
    assert_journal_ok(kopi)


def test_a_refund_larger_than_the_order_is_refused_and_changes_nothing(kopi):
    given_the_coffee_and_croissant_order(kopi)
    before = postings_count(kopi)

    # When 42.51 of a 42.50 order is refunded
    with pytest.raises(RefundExceedsOrder) as error:
        refund(kopi, "r1", amount="42.51")

    # Then it is refused naming amount, and nothing changed
    assert error.value.field == "amount"
    assert postings_count(kopi) == before
    assert balances(kopi) == {"available": 0, "pending": 210, "reserved": 0}
    assert order_state(kopi) == (0, {"LATTE": "0", "CROISSANT": "0"},
                                 {"base": 42, "pastry-bonus": 18, "first-visit": 100})
    assert_journal_ok(kopi)


def test_a_refund_larger_than_its_line_is_refused_and_changes_nothing(kopi):
    given_the_coffee_and_croissant_order(kopi)
    before = postings_count(kopi)

    # When 18.51 of the 18.50 croissant line is refunded
    with pytest.raises(RefundExceedsOrder) as error:
        refund(kopi, "r1", lines=[{"sku": "CROISSANT", "amount": "18.51"}])

    # Then it is refused naming the line, and nothing changed
    assert error.value.field == "lines[0].amount"
    assert postings_count(kopi) == before
    assert balances(kopi) == {"available": 0, "pending": 210, "reserved": 0}
    assert order_state(kopi)[0] == 0
    assert_journal_ok(kopi)


def test_a_refund_of_an_unknown_order_is_refused_and_changes_nothing(kopi):
    given_the_coffee_and_croissant_order(kopi)
    upsert_member(kopi, P, "cust-2", {}, CLOCK)
    before = postings_count(kopi)

    # When a refund names an order that does not exist, or another member's order
    with pytest.raises(UnknownOrder) as unknown:
        refund(kopi, "r1", order_id="no-such-order", amount="1.00")
    with pytest.raises(UnknownOrder) as foreign:
        refund(kopi, "r2", member="cust-2", amount="1.00")

    # Then both are refused naming order_id, and nothing changed
    assert unknown.value.field == "order_id"
    assert foreign.value.field == "order_id"
    assert postings_count(kopi) == before
    assert balances(kopi) == {"available": 0, "pending": 210, "reserved": 0}
    assert balances(kopi, "cust-2") == {"available": 0, "pending": 50, "reserved": 0}
    with kopi.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == 3
    assert_journal_ok(kopi)


def test_a_refund_claws_back_the_first_visit_bonus_when_the_rest_drops_below_min_amount(kopi):
    # Given a RM 12.00 first purchase: base 12 + first-visit 100
    upsert_member(kopi, P, "cust-1", {}, CLOCK)
    ingest_event(kopi, P, {
        "id": "e1", "type": "purchase", "member": "cust-1", "order_id": "o1",
        "occurred_at": "2027-03-02T10:00:00+08:00", "amount": "12.00"}, CLOCK)

    # When 2.00 is refunded the rest (10.00) still qualifies
    kept = refund(kopi, "r1", amount="2.00")
    assert by_rule(kept) == {"base": -2}

    # When 0.01 more is refunded the rest (9.99) is below 10.00
    lost = refund(kopi, "r2", amount="0.01")

    # Then base floor(9.99) = 9 (-1) and first-visit is taken back whole (-100)
    assert by_rule(lost) == {"base": -1, "first-visit": -100}
    assert balances(kopi) == {"available": 0, "pending": 50 + 112 - 2 - 101, "reserved": 0}
    assert_journal_ok(kopi)


def test_a_refund_after_the_points_were_spent_leaves_a_debt_that_later_earnings_pay(kopi):
    # Given a RM 12.00 purchase (112) activated with the welcome 50: 162 available,
    # and a free latte (150) redeemed: 12 left
    upsert_member(kopi, P, "cust-1", {}, CLOCK)
    ingest_event(kopi, P, {
        "id": "e1", "type": "purchase", "member": "cust-1", "order_id": "o1",
        "occurred_at": "2027-03-02T10:00:00+08:00", "amount": "12.00"}, CLOCK)
    run_due(kopi, at("2027-03-05T10:00:00+08:00"), P)
    redeem(kopi, P, {"member": "cust-1", "reward": "free-latte"}, "k1",
           fixed_clock("2027-03-05T11:00:00+08:00"))
    assert balances(kopi)["available"] == 12

    # When the whole order is refunded: 112 clawed back from 12 available
    result = refund(kopi, "r1", amount="12.00")

    # Then the balance is a debt of 100
    assert result["points"] == -112
    assert balances(kopi) == {"available": -100, "pending": 0, "reserved": 0}

    # When a RM 30.00 purchase (base 30, no first visit) becomes available
    ingest_event(kopi, P, {
        "id": "e2", "type": "purchase", "member": "cust-1", "order_id": "o2",
        "occurred_at": "2027-03-09T10:00:00+08:00", "amount": "30.00"}, CLOCK)
    run_due(kopi, at("2027-03-12T10:00:00+08:00"), P)

    # Then it pays the debt first
    assert balances(kopi) == {"available": -70, "pending": 0, "reserved": 0}
    assert_journal_ok(kopi)


def test_a_refund_lowers_the_tier_metric_but_keeps_the_tier_until_the_next_review(kopi):
    # Given a RM 400.00 purchase that made the member gold
    upsert_member(kopi, P, "cust-1", {}, CLOCK)
    ingest_event(kopi, P, {
        "id": "e1", "type": "purchase", "member": "cust-1", "order_id": "o1",
        "occurred_at": "2027-03-02T10:00:00+08:00", "amount": "400.00"}, CLOCK)

    # When 100.00 is refunded: spend 300.00 < 350
    result = refund(kopi, "r1", amount="100.00")

    # Then base 300 (-100), and the member stays gold with platinum 700.00 away
    assert result["points"] == -100
    assert result["tier"]["id"] == "gold"
    view = get_member(kopi, P, "cust-1", CLOCK)
    assert view["tier"]["id"] == "gold"
    assert view["tier"]["next"] == {"id": "platinum", "threshold": "1000.00",
                                    "metric": "spend", "remaining": "700.00"}

    # When run-due runs later in 2027, no review is due
    assert run_due(kopi, at("2027-12-31T23:59:00+08:00"), P).tiers_reviewed == 0
    assert get_member(kopi, P, "cust-1", CLOCK)["tier"]["id"] == "gold"

    # When the 2028 review runs: 2027's 300.00 reaches only member
    report = run_due(kopi, at("2028-01-01T00:00:00+08:00"), P)
    assert (report.tiers_reviewed, report.tiers_changed) == (1, 1)
    assert get_member(kopi, P, "cust-1", CLOCK)["tier"]["id"] == "member"
    assert_journal_ok(kopi)
