"""Refunds: spreading over lines, limits, and points recomputed for what remains."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from setia.domain.earning import recompute_after_refund
from setia.domain.errors import InvalidField, RefundExceedsOrder
from setia.domain.events import Event, Line, parse_event
from setia.domain.programme import Programme, compile_programme, validate_document
from setia.domain.refunds import OrderLine, remaining_lines, split_refund

D = Decimal


def refund(amount: str | None = None, lines: list[dict[str, Any]] | None = None,
           currency: str = "MYR") -> Event:
    raw: dict[str, Any] = {"id": "r-1", "type": "refund", "member": "cust-42",
                           "occurred_at": "2027-03-02T10:00:00+08:00", "order_id": "ord-991"}
    if amount is not None:
        raw["amount"] = amount
    if lines is not None:
        raw["lines"] = lines
    return parse_event(raw, currency)


def order_lines(latte_refunded: str = "0.00", croissant_refunded: str = "0.00") -> list[OrderLine]:
    """The contract's order ord-991: LATTE 24.00 (coffee) and CROISSANT 18.50 (pastry)."""
    return [
        OrderLine(sku="LATTE", category="coffee", quantity=2, amount=D("24.00"),
                  refunded=D(latte_refunded)),
        OrderLine(sku="CROISSANT", category="pastry", quantity=1, amount=D("18.50"),
                  refunded=D(croissant_refunded)),
    ]


# -- by amount ------------------------------------------------------------------------------

def test_a_refund_by_amount_is_spread_in_proportion_with_largest_remainder():
    # 10.00 x 24.00 / 42.50 = 5.6470... -> 5.64 (remainder .0070...)
    # 10.00 x 18.50 / 42.50 = 4.3529... -> 4.35 (remainder .0029...)
    # 9.99 so far: the missing 0.01 goes to the larger remainder, LATTE
    split = split_refund(refund("10.00"), D("42.50"), D("0.00"), order_lines(), 2)
    assert split.total == D("10.00")
    assert split.per_line == {"LATTE": D("5.65"), "CROISSANT": D("4.35")}


def test_a_second_partial_refund_is_spread_over_what_is_left_of_each_line():
    # Left after the first refund: LATTE 18.35, CROISSANT 14.15 (32.50)
    # 10.00 x 18.35 / 32.50 = 5.6461... -> 5.64 (.0061...); 10.00 x 14.15 / 32.50 = 4.3538...
    # -> 4.35 (.0038...); the missing 0.01 goes to LATTE
    lines = order_lines(latte_refunded="5.65", croissant_refunded="4.35")
    split = split_refund(refund("10.00"), D("42.50"), D("10.00"), lines, 2)
    assert split.per_line == {"LATTE": D("5.65"), "CROISSANT": D("4.35")}


def test_refunding_exactly_what_is_left_empties_every_line():
    # Left after two refunds: LATTE 24.00 - 11.30 = 12.70, CROISSANT 18.50 - 8.70 = 9.80
    lines = order_lines(latte_refunded="11.30", croissant_refunded="8.70")
    split = split_refund(refund("22.50"), D("42.50"), D("20.00"), lines, 2)
    assert split.per_line == {"LATTE": D("12.70"), "CROISSANT": D("9.80")}


def test_a_refund_larger_than_what_is_left_of_the_order_is_refused():
    lines = order_lines(latte_refunded="11.30", croissant_refunded="8.70")
    # 42.50 - 20.00 = 22.50 left
    with pytest.raises(RefundExceedsOrder) as info:
        split_refund(refund("22.51"), D("42.50"), D("20.00"), lines, 2)
    assert info.value.field == "amount"
    assert info.value.type == "refund-exceeds-order"


def test_a_refund_larger_than_the_order_is_refused():
    with pytest.raises(RefundExceedsOrder) as info:
        split_refund(refund("42.51"), D("42.50"), D("0.00"), order_lines(), 2)
    assert info.value.field == "amount"


def test_a_fully_refunded_line_gets_nothing_of_a_later_refund():
    lines = order_lines(croissant_refunded="18.50")
    split = split_refund(refund("4.00"), D("42.50"), D("18.50"), lines, 2)
    assert split.per_line == {"LATTE": D("4.00")}


def test_equal_remainders_go_to_the_earlier_line():
    lines = [OrderLine(sku=s, category=None, quantity=1, amount=D("1.00"), refunded=D(0))
             for s in ("A", "B", "C")]
    # 1.00 / 3 = 0.3333... each -> 0.33 each, 0.01 short: the first line takes it
    split = split_refund(refund("1.00"), D("3.00"), D(0), lines, 2)
    assert split.per_line == {"A": D("0.34"), "B": D("0.33"), "C": D("0.33")}


def test_a_jpy_refund_is_spread_in_whole_yen():
    lines = [OrderLine(sku=s, category=None, quantity=1, amount=D("1000"), refunded=D(0))
             for s in ("A", "B", "C")]
    # 1000 / 3 = 333.33... each -> 333 each, 1 yen short: the first line takes it
    split = split_refund(refund("1000", currency="JPY"), D("3000"), D(0), lines, 0)
    assert split.per_line == {"A": D("334"), "B": D("333"), "C": D("333")}
    assert sum(split.per_line.values()) == D("1000")


def test_an_order_without_lines_is_refunded_by_amount_only():
    split = split_refund(refund("10.00"), D("42.50"), D(0), [], 2)
    assert split.total == D("10.00")
    assert split.per_line == {}


# -- by lines -------------------------------------------------------------------------------

def test_a_refund_by_sku_takes_only_that_line():
    event = refund(lines=[{"sku": "CROISSANT", "amount": "18.50"}])
    split = split_refund(event, D("42.50"), D(0), order_lines(), 2)
    assert split.total == D("18.50")
    assert split.per_line == {"CROISSANT": D("18.50")}


def test_a_refund_by_sku_of_several_lines():
    event = refund(lines=[{"sku": "LATTE", "amount": "12.00"},
                          {"sku": "CROISSANT", "amount": "5.00"}])
    split = split_refund(event, D("42.50"), D(0), order_lines(), 2)
    assert split.total == D("17.00")
    assert split.per_line == {"LATTE": D("12.00"), "CROISSANT": D("5.00")}


def test_a_refund_by_sku_of_more_than_is_left_of_the_line_is_refused():
    event = refund(lines=[{"sku": "LATTE", "amount": "1.00"},
                          {"sku": "CROISSANT", "amount": "10.01"}])
    # 18.50 - 8.50 = 10.00 left of CROISSANT
    with pytest.raises(RefundExceedsOrder) as info:
        split_refund(event, D("42.50"), D("8.50"), order_lines(croissant_refunded="8.50"), 2)
    assert info.value.field == "lines[1].amount"


def test_a_refund_naming_an_unknown_sku_is_refused():
    event = refund(lines=[{"sku": "MUFFIN", "amount": "5.00"}])
    with pytest.raises(InvalidField) as info:
        split_refund(event, D("42.50"), D(0), order_lines(), 2)
    assert info.value.field == "lines[0].sku"


def test_a_refund_by_sku_of_nothing_is_refused():
    event = refund(lines=[{"sku": "LATTE", "amount": "0.00"}])
    with pytest.raises(InvalidField) as info:
        split_refund(event, D("42.50"), D(0), order_lines(), 2)
    assert info.value.field == "lines"


def test_remaining_lines_subtract_this_refund_from_what_was_left():
    lines = order_lines(latte_refunded="5.65", croissant_refunded="4.35")
    left = remaining_lines(lines, {"LATTE": D("5.65"), "CROISSANT": D("4.35")})
    assert left == (
        Line(sku="LATTE", category="coffee", quantity=2, amount=D("12.70")),
        Line(sku="CROISSANT", category="pastry", quantity=1, amount=D("9.80")),
    )


# -- points recomputed after a refund -------------------------------------------------------

LEVELS = [
    {"id": "member", "name": "Member", "threshold": 0},
    {"id": "gold", "name": "Gold", "threshold": 350, "multiplier": 1.25},
]


def programme() -> Programme:
    doc = {
        "id": "kopi-setia", "name": "Kopi Setia", "currency": "MYR",
        "timezone": "Asia/Kuala_Lumpur", "tiers": {"levels": LEVELS},
        "earn": [
            {"id": "base", "on": "purchase", "rate": 1},
            {"id": "pastry-bonus", "on": "purchase", "categories": ["pastry"], "rate": 1},
            {"id": "first-visit", "on": "purchase", "first_purchase": True,
             "min_amount": "10.00", "points": 100},
            {"id": "app-orders", "on": "purchase", "channels": ["app"], "points": 20},
            {"id": "pastry-stamp", "on": "purchase", "categories": ["pastry"], "points": 10},
        ],
    }
    return compile_programme(validate_document(doc), version=1)


PURCHASE = parse_event({
    "id": "till-7-000123", "type": "purchase", "member": "cust-42",
    "occurred_at": "2027-03-01T10:00:00+08:00", "order_id": "ord-991", "amount": "42.50",
    "channel": "app",
    "lines": [
        {"sku": "LATTE", "category": "coffee", "quantity": 2, "amount": "24.00"},
        {"sku": "CROISSANT", "category": "pastry", "quantity": 1, "amount": "18.50"},
    ],
}, "MYR")


def after(refunded: dict[str, str]) -> tuple[tuple[Line, ...], Decimal]:
    left = remaining_lines(order_lines(), {sku: D(v) for sku, v in refunded.items()})
    return left, sum((line.amount for line in left), D(0))


def test_a_rate_rule_is_recomputed_on_the_remaining_amount_at_the_original_tier():
    prog = programme()
    left, amount = after({"CROISSANT": "18.50"})  # 24.00 left
    # awarded 1 x 42.50 x 1.25 = 53; now 1 x 24.00 x 1.25 = 30 (53 - 30 = 23 clawed back)
    assert recompute_after_refund(prog, "base", 53, PURCHASE, left, amount,
                                  prog.level("gold")) == 30


def test_a_category_rate_rule_is_recomputed_on_its_remaining_lines():
    prog = programme()
    left, amount = after({"CROISSANT": "10.00"})  # pastry 8.50 left
    # awarded 18 (18.50); now floor(8.50) = 8
    assert recompute_after_refund(prog, "pastry-bonus", 18, PURCHASE, left, amount,
                                  prog.level("member")) == 8


def test_a_category_rate_rule_drops_to_zero_when_its_lines_are_refunded():
    prog = programme()
    left, amount = after({"CROISSANT": "18.50"})
    assert recompute_after_refund(prog, "pastry-bonus", 18, PURCHASE, left, amount,
                                  prog.level("member")) == 0


def test_a_fixed_bonus_is_clawed_back_whole_below_its_min_amount():
    prog = programme()
    left, amount = after({"LATTE": "24.00", "CROISSANT": "11.00"})  # 7.50 left < 10.00
    assert recompute_after_refund(prog, "first-visit", 100, PURCHASE, left, amount,
                                  prog.level("member")) == 0


def test_a_fixed_bonus_stays_whole_while_its_min_amount_still_holds():
    prog = programme()
    left, amount = after({"LATTE": "24.00", "CROISSANT": "8.50"})  # exactly 10.00 left
    assert recompute_after_refund(prog, "first-visit", 100, PURCHASE, left, amount,
                                  prog.level("member")) == 100


def test_a_fixed_bonus_without_min_amount_stays_until_the_order_is_fully_refunded():
    prog = programme()
    left, amount = after({"LATTE": "24.00", "CROISSANT": "18.00"})  # 0.50 left
    assert recompute_after_refund(prog, "app-orders", 20, PURCHASE, left, amount,
                                  prog.level("member")) == 20
    left, amount = after({"LATTE": "24.00", "CROISSANT": "18.50"})
    assert recompute_after_refund(prog, "app-orders", 20, PURCHASE, left, amount,
                                  prog.level("member")) == 0


def test_a_fixed_line_bonus_goes_when_its_lines_are_refunded():
    prog = programme()
    left, amount = after({"CROISSANT": "18.50"})
    assert recompute_after_refund(prog, "pastry-stamp", 10, PURCHASE, left, amount,
                                  prog.level("member")) == 0
    left, amount = after({"LATTE": "24.00"})
    assert recompute_after_refund(prog, "pastry-stamp", 10, PURCHASE, left, amount,
                                  prog.level("member")) == 10


def test_a_recomputed_award_is_never_more_than_was_awarded():
    prog = programme()
    left, amount = after({"LATTE": "1.00"})  # 41.50 left -> 41 at Member
    # Given the rule awarded only 30 for the order (e.g. earned at a lower rate)
    assert recompute_after_refund(prog, "base", 30, PURCHASE, left, amount,
                                  prog.level("member")) == 30


def test_a_rule_no_longer_in_the_programme_keeps_its_award():
    prog = programme()
    left, amount = after({"LATTE": "24.00"})
    assert recompute_after_refund(prog, "retired-rule", 15, PURCHASE, left, amount,
                                  prog.level("member")) == 15
