"""Money: amounts checked against the currency's minor unit."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from setia.domain.errors import InvalidAmount
from setia.domain.money import (
    allocate,
    from_minor,
    known_currencies,
    minor_digits,
    parse_amount,
    to_minor,
)


@pytest.mark.parametrize(("currency", "digits"), [("MYR", 2), ("USD", 2), ("JPY", 0)])
def test_minor_digits_follow_iso_4217(currency: str, digits: int):
    assert minor_digits(currency) == digits


def test_known_currencies_include_myr_and_exclude_made_up_codes():
    assert "MYR" in known_currencies()
    assert "XYZ" not in known_currencies()


def test_an_amount_is_quantized_to_the_minor_unit():
    assert str(parse_amount("42.5", "MYR", "amount")) == "42.50"
    assert str(parse_amount("4250", "JPY", "amount")) == "4250"


def test_trailing_zeros_beyond_the_minor_unit_are_not_extra_precision():
    assert parse_amount("42.500", "MYR", "amount") == Decimal("42.50")


def test_an_over_precise_amount_names_the_field_given():
    with pytest.raises(InvalidAmount) as info:
        parse_amount("0.001", "USD", "lines[3].amount")
    assert info.value.field == "lines[3].amount"


def test_to_minor_and_back():
    assert to_minor(Decimal("42.50"), "MYR") == 4250
    assert to_minor(Decimal("4250"), "JPY") == 4250
    assert from_minor(4250, "MYR") == Decimal("42.50")
    assert str(from_minor(5, "MYR")) == "0.05"
    assert from_minor(4250, "JPY") == Decimal("4250")


def test_allocate_splits_by_largest_remainder_with_earlier_weight_first_on_a_tie():
    # 10.00 over 3 equal lines: 3.33 each, the cent left goes to the first
    assert allocate(Decimal("10.00"), [Decimal("5"), Decimal("5"), Decimal("5")], 2) == [
        Decimal("3.34"), Decimal("3.33"), Decimal("3.33")]
    # 2.85 over 12.00 and 16.50: exact 1.2 and 1.65 -> 1.20 and 1.65
    assert allocate(Decimal("2.85"), [Decimal("12.00"), Decimal("16.50")], 2) == [
        Decimal("1.20"), Decimal("1.65")]
    # 1.00 over 1, 1, 1 at 0 digits (JPY-like): 0.333.. each, remainder 1 to the first
    assert allocate(Decimal("1"), [Decimal("1"), Decimal("1"), Decimal("1")], 0) == [
        Decimal("1"), Decimal("0"), Decimal("0")]
    # the larger remainder wins over the earlier line: 0.05 over 1 and 2 -> 0.0166/0.0333
    assert allocate(Decimal("0.05"), [Decimal("1"), Decimal("2")], 2) == [
        Decimal("0.02"), Decimal("0.03")]


def test_allocate_of_nothing_or_over_nothing():
    assert allocate(Decimal("0.00"), [Decimal("3"), Decimal("4")], 2) == [Decimal(0), Decimal(0)]
    assert allocate(Decimal("5.00"), [], 2) == []


@given(
    total_minor=st.integers(min_value=0, max_value=10_000_000),
    weights_minor=st.lists(st.integers(min_value=1, max_value=1_000_000), min_size=1,
                           max_size=12),
)
def test_allocate_adds_up_and_stays_within_a_unit_of_the_exact_share(
        total_minor: int, weights_minor: list[int]):
    total = Decimal(total_minor).scaleb(-2)
    weights = [Decimal(w).scaleb(-2) for w in weights_minor]
    parts = allocate(total, weights, 2)
    assert sum(parts, Decimal(0)) == total
    base = sum(weights, Decimal(0))
    for part, weight in zip(parts, weights, strict=True):
        assert part.as_tuple().exponent >= -2
        assert abs(part - total * weight / base) < Decimal("0.01")
