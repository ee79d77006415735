"""Money: amounts checked against the currency's minor unit."""

from __future__ import annotations

from decimal import Decimal

import pytest

from setia.domain.errors import InvalidAmount
from setia.domain.money import from_minor, known_currencies, minor_digits, parse_amount, to_minor


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
