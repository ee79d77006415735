"""Events as the till sends them (CONTRACT.md section 2): parse_event and its typed errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from setia.domain.errors import (
    CurrencyMismatch,
    DuplicateLineSku,
    InvalidAmount,
    InvalidField,
    InvalidTime,
)
from setia.domain.events import Line, RefundLine, parse_event


def purchase(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": "till-7-000123",
        "type": "purchase",
        "member": "cust-42",
        "occurred_at": "2027-03-01T10:00:00+08:00",
        "order_id": "ord-991",
        "amount": "42.50",
        "currency": "MYR",
        "store": "kl-01",
        "channel": "pos",
        "lines": [
            {"sku": "LATTE", "category": "coffee", "quantity": 2, "amount": "24.00"},
            {"sku": "CROISSANT", "category": "pastry", "quantity": 1, "amount": "18.50"},
        ],
    }
    raw.update(changes)
    return {key: value for key, value in raw.items() if value is not None}


def test_the_contract_example_purchase_parses():
    event = parse_event(purchase(), "MYR")
    assert event.id == "till-7-000123"
    assert event.type == "purchase"
    assert event.member == "cust-42"
    assert event.occurred_at == datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
    assert event.occurred_at.utcoffset() == timedelta(hours=8)
    assert event.order_id == "ord-991"
    assert event.amount == Decimal("42.50")
    assert event.store == "kl-01"
    assert event.channel == "pos"
    assert event.lines == (
        Line(sku="LATTE", category="coffee", quantity=2, amount=Decimal("24.00")),
        Line(sku="CROISSANT", category="pastry", quantity=1, amount=Decimal("18.50")),
    )


def test_a_negative_amount_is_refused():
    with pytest.raises(InvalidAmount) as info:
        parse_event(purchase(amount="-1.00", lines=None), "MYR")
    assert info.value.field == "amount"


def test_three_decimals_are_refused_for_myr():
    with pytest.raises(InvalidAmount) as info:
        parse_event(purchase(amount="42.505", lines=None), "MYR")
    assert info.value.field == "amount"
    assert "MYR" in info.value.detail


def test_three_decimals_on_a_line_name_the_line():
    lines = [{"sku": "LATTE", "amount": "24.005"}]
    with pytest.raises(InvalidAmount) as info:
        parse_event(purchase(amount=None, lines=lines), "MYR")
    assert info.value.field == "lines[0].amount"


def test_jpy_amounts_with_decimals_are_refused():
    with pytest.raises(InvalidAmount) as info:
        parse_event(purchase(amount="100.5", currency="JPY", lines=None), "JPY")
    assert info.value.field == "amount"


def test_jpy_whole_amounts_are_accepted():
    event = parse_event(purchase(amount="4250", currency="JPY", lines=None), "JPY")
    assert event.amount == Decimal("4250")


def test_two_decimals_are_accepted_for_usd():
    event = parse_event(purchase(amount="42.55", currency="USD", lines=None), "USD")
    assert event.amount == Decimal("42.55")


def test_a_float_json_amount_is_refused():
    with pytest.raises(InvalidAmount) as info:
        parse_event(purchase(amount=42.5, lines=None), "MYR")
    assert info.value.field == "amount"


def test_a_float_json_line_amount_is_refused():
    with pytest.raises(InvalidAmount) as info:
        parse_event(purchase(amount=None, lines=[{"sku": "LATTE", "amount": 24.0}]), "MYR")
    assert info.value.field == "lines[0].amount"


def test_an_integer_json_amount_is_accepted_as_whole_currency_units():
    event = parse_event(purchase(amount=42, lines=None), "MYR")
    assert event.amount == Decimal("42.00")


def test_a_boolean_amount_is_refused():
    with pytest.raises(InvalidAmount):
        parse_event(purchase(amount=True, lines=None), "MYR")


def test_an_amount_that_is_not_a_number_is_refused():
    with pytest.raises(InvalidAmount) as info:
        parse_event(purchase(amount="forty", lines=None), "MYR")
    assert info.value.field == "amount"


def test_a_non_finite_amount_is_refused():
    with pytest.raises(InvalidAmount):
        parse_event(purchase(amount="Infinity", lines=None), "MYR")


def test_a_currency_other_than_the_programmes_is_refused():
    with pytest.raises(CurrencyMismatch) as info:
        parse_event(purchase(currency="USD"), "MYR")
    assert info.value.field == "currency"
    assert info.value.type == "currency-mismatch"


def test_an_event_without_currency_takes_the_programmes():
    event = parse_event(purchase(currency=None), "MYR")
    assert event.currency == "MYR"


def test_a_missing_occurred_at_is_refused():
    with pytest.raises(InvalidTime) as info:
        parse_event(purchase(occurred_at=None), "MYR")
    assert info.value.field == "occurred_at"


def test_an_occurred_at_without_offset_is_refused():
    with pytest.raises(InvalidTime) as info:
        parse_event(purchase(occurred_at="2027-03-01T10:00:00"), "MYR")
    assert info.value.field == "occurred_at"
    assert "offset" in info.value.detail


def test_an_occurred_at_that_is_not_a_time_is_refused():
    with pytest.raises(InvalidTime) as info:
        parse_event(purchase(occurred_at="yesterday"), "MYR")
    assert info.value.field == "occurred_at"


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+14:00", "1899-12-31T23:59:59Z",
                                  "2200-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00"])
def test_an_occurred_at_out_of_range_is_refused(text: str):
    # near year 1 or 9999 a time overflows when moved to UTC or the programme's zone
    with pytest.raises(InvalidTime) as info:
        parse_event(purchase(occurred_at=text), "MYR")
    assert info.value.field == "occurred_at"
    assert info.value.detail == "occurred_at must fall in the years 1900 to 2199"


def test_an_occurred_at_at_the_ends_of_the_range_is_accepted():
    assert parse_event(purchase(occurred_at="1900-01-01T00:00:00Z"), "MYR").occurred_at.year == 1900
    assert parse_event(purchase(occurred_at="2199-12-31T23:59:59Z"), "MYR").occurred_at.year == 2199


def test_an_occurred_at_in_utc_z_is_accepted():
    event = parse_event(purchase(occurred_at="2027-03-01T02:00:00Z"), "MYR")
    assert event.occurred_at == datetime(2027, 3, 1, 10, 0, tzinfo=timezone(timedelta(hours=8)))


def test_two_lines_with_the_same_sku_are_refused():
    lines = [{"sku": "LATTE", "amount": "24.00"}, {"sku": "LATTE", "amount": "18.50"}]
    with pytest.raises(DuplicateLineSku) as info:
        parse_event(purchase(lines=lines), "MYR")
    assert info.value.field == "lines[1].sku"


def test_lines_that_do_not_add_up_to_the_amount_are_refused():
    # 24.00 + 18.00 = 42.00, not 42.50
    lines = [{"sku": "LATTE", "amount": "24.00"}, {"sku": "CROISSANT", "amount": "18.00"}]
    with pytest.raises(InvalidField) as info:
        parse_event(purchase(lines=lines), "MYR")
    assert info.value.field == "amount"


def test_lines_without_an_amount_give_the_amount():
    event = parse_event(purchase(amount=None), "MYR")
    assert event.amount == Decimal("42.50")  # 24.00 + 18.50


def test_a_purchase_needs_an_amount_or_lines():
    with pytest.raises(InvalidField) as info:
        parse_event(purchase(amount=None, lines=None), "MYR")
    assert info.value.field == "amount"


def test_a_purchase_needs_an_order_id():
    with pytest.raises(InvalidField) as info:
        parse_event(purchase(order_id=None), "MYR")
    assert info.value.field == "order_id"


@pytest.mark.parametrize("key", ["id", "type", "member"])
def test_id_type_and_member_are_required(key: str):
    raw = purchase()
    del raw[key]
    with pytest.raises(InvalidField) as info:
        parse_event(raw, "MYR")
    assert info.value.field == key


def test_an_unknown_field_is_refused():
    with pytest.raises(InvalidField) as info:
        parse_event(purchase(colour="red"), "MYR")
    assert info.value.field == "colour"


def test_a_line_quantity_must_be_a_positive_integer():
    lines = [{"sku": "LATTE", "quantity": 0, "amount": "42.50"}]
    with pytest.raises(InvalidField) as info:
        parse_event(purchase(lines=lines), "MYR")
    assert info.value.field == "lines[0].quantity"


def test_a_line_needs_an_amount():
    with pytest.raises(InvalidField) as info:
        parse_event(purchase(amount=None, lines=[{"sku": "LATTE"}]), "MYR")
    assert info.value.field == "lines[0].amount"


def test_a_refund_by_amount_parses():
    raw = {"id": "r-1", "type": "refund", "member": "cust-42",
           "occurred_at": "2027-03-02T10:00:00+08:00", "order_id": "ord-991", "amount": "18.50"}
    event = parse_event(raw, "MYR")
    assert event.amount == Decimal("18.50")
    assert event.refund_lines == ()


def test_a_refund_by_lines_parses():
    raw = {"id": "r-1", "type": "refund", "member": "cust-42",
           "occurred_at": "2027-03-02T10:00:00+08:00", "order_id": "ord-991",
           "lines": [{"sku": "CROISSANT", "amount": "18.50"}]}
    event = parse_event(raw, "MYR")
    assert event.amount is None
    assert event.refund_lines == (RefundLine(sku="CROISSANT", amount=Decimal("18.50")),)


def test_a_refund_of_zero_is_refused():
    raw = {"id": "r-1", "type": "refund", "member": "cust-42",
           "occurred_at": "2027-03-02T10:00:00+08:00", "order_id": "ord-991", "amount": "0.00"}
    with pytest.raises(InvalidAmount) as info:
        parse_event(raw, "MYR")
    assert info.value.field == "amount"


def test_a_refund_with_both_amount_and_lines_is_refused():
    raw = {"id": "r-1", "type": "refund", "member": "cust-42",
           "occurred_at": "2027-03-02T10:00:00+08:00", "order_id": "ord-991", "amount": "18.50",
           "lines": [{"sku": "CROISSANT", "amount": "18.50"}]}
    with pytest.raises(InvalidField) as info:
        parse_event(raw, "MYR")
    assert info.value.field == "amount"


def test_a_refund_naming_a_sku_twice_is_refused():
    raw = {"id": "r-1", "type": "refund", "member": "cust-42",
           "occurred_at": "2027-03-02T10:00:00+08:00", "order_id": "ord-991",
           "lines": [{"sku": "LATTE", "amount": "1.00"}, {"sku": "LATTE", "amount": "2.00"}]}
    with pytest.raises(DuplicateLineSku) as info:
        parse_event(raw, "MYR")
    assert info.value.field == "lines[1].sku"


def test_a_refund_needs_an_order_id():
    raw = {"id": "r-1", "type": "refund", "member": "cust-42",
           "occurred_at": "2027-03-02T10:00:00+08:00", "amount": "18.50"}
    with pytest.raises(InvalidField) as info:
        parse_event(raw, "MYR")
    assert info.value.field == "order_id"


def test_an_event_of_another_type_needs_no_amount():
    raw = {"id": "rv-1", "type": "review", "member": "cust-42",
           "occurred_at": "2027-03-02T10:00:00+08:00"}
    event = parse_event(raw, "MYR")
    assert event.type == "review"
    assert event.amount is None
    assert event.order_id is None


@pytest.mark.parametrize("text", ["a\x00b", "a\ud800b", "a\nb"])
def test_an_id_with_a_control_character_or_lone_surrogate_is_refused(text):
    raw = {"id": "e1", "type": "review", "member": text,
           "occurred_at": "2027-03-01T10:00:00+08:00"}
    with pytest.raises(InvalidField) as refused:
        parse_event(raw, "MYR")
    assert refused.value.field == "member"


def test_lines_that_add_up_past_the_largest_amount_are_refused():
    # each line is within the limit, and without an amount their sum went unchecked: an
    # order of 5e13, and the 19th such purchase overflowed the month's 64-bit spend
    lines = [{"sku": f"S{i}", "amount": "100000000000"} for i in range(500)]
    with pytest.raises(InvalidAmount) as info:
        parse_event(purchase(amount=None, lines=lines), "MYR")
    assert (info.value.field, info.value.detail) == (
        "lines", "the lines add up to more than 100,000,000,000")
    just = [{"sku": "A", "amount": "60000000000"}, {"sku": "B", "amount": "40000000000"}]
    assert parse_event(purchase(amount=None, lines=just), "MYR").amount == 100_000_000_000
