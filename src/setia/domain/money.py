"""Money: Decimal amounts checked against the currency's minor unit (ISO 4217 via CLDR)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from functools import cache

from babel.numbers import get_currency_precision, get_currency_symbol, list_currencies

from setia.domain.errors import InvalidAmount


@cache
def known_currencies() -> frozenset[str]:
    return frozenset(list_currencies())


@cache
def minor_digits(currency: str) -> int:
    """Digits after the decimal point: MYR 2, USD 2, JPY 0, as CLDR gives them."""
    return int(get_currency_precision(currency))


@cache
def currency_symbol(currency: str) -> str:
    symbol = get_currency_symbol(currency, locale="ms" if currency == "MYR" else "en")
    return str(symbol)


_parsed: dict[tuple[str, str], Decimal] = {}


def parse_amount(value: object, currency: str, field: str) -> Decimal:
    """A non-negative amount as a decimal string (or integer) within the currency's precision."""
    if type(value) is str:
        # Tills send the same prices over and over: remember the good ones (a Decimal is
        # immutable, so one can be shared). Refused amounts are checked every time.
        found = _parsed.get((value, currency))
        if found is None:
            found = _parse_amount(value, currency, field)
            if len(_parsed) > 65536:
                _parsed.clear()
            _parsed[(value, currency)] = found
        return found
    return _parse_amount(value, currency, field)


# The most one amount may be, in any currency (100 billion: a purchase in rupiah or won
# too). Amounts are kept in ten-thousandths in 64-bit columns (orders, tier buckets,
# analytics), which hold up to about 922 trillion: sums of a member's month have room to
# spare, and an amount such as "1e30" (past Decimal's 28 digits) or "1e15" (past the
# columns) is refused here rather than failing its batch at the database.
MAX_AMOUNT = Decimal(100_000_000_000)


def _parse_amount(value: object, currency: str, field: str) -> Decimal:
    if isinstance(value, bool | float):
        raise InvalidAmount(
            f'{field} must be a decimal string such as "42.50", not a JSON number with a fraction',
            field=field,
        )
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            raise InvalidAmount(
                f"{field} is not a decimal number: {value!r}", field=field
            ) from None
    else:
        raise InvalidAmount(f"{field} must be a decimal string", field=field)
    if not amount.is_finite():
        raise InvalidAmount(f"{field} must be a finite number", field=field)
    if amount < 0:
        raise InvalidAmount(f"{field} must not be negative", field=field)
    if amount > MAX_AMOUNT:
        raise InvalidAmount(f"{field} is more than {MAX_AMOUNT:,} (the most one amount may be)",
                            field=field)
    digits = minor_digits(currency)
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > digits and amount != amount.quantize(Decimal(1).scaleb(-digits)):
        raise InvalidAmount(
            f"{field} has more decimals than {currency} allows ({digits})", field=field
        )
    return amount.quantize(Decimal(1).scaleb(-digits))


def to_minor(amount: Decimal, currency: str) -> int:
    return int(amount.scaleb(minor_digits(currency)))


def from_minor(amount_minor: int, currency: str) -> Decimal:
    digits = minor_digits(currency)
    return (Decimal(amount_minor).scaleb(-digits)).quantize(Decimal(1).scaleb(-digits))


def format_money(amount: Decimal, currency: str) -> str:
    return f"{currency_symbol(currency)} {amount}"


def allocate(total: Decimal, weights: Sequence[Decimal], digits: int) -> list[Decimal]:
    """``total`` split over ``weights`` in proportion, each part rounded down to the minor
    unit (``digits`` places) and the units left over given by largest remainder (the
    earlier weight first on a tie), so the parts add up to ``total`` exactly. Weights must
    be positive; an empty list of weights takes nothing."""
    base = sum(weights, Decimal(0))
    if not weights or total == 0:
        return [Decimal(0)] * len(weights)
    unit = Decimal(1).scaleb(-digits)
    parts: list[Decimal] = []
    remainders: list[tuple[Decimal, int]] = []
    for index, weight in enumerate(weights):
        exact = total * weight / base
        floored = exact.quantize(unit, rounding=ROUND_FLOOR)
        parts.append(floored)
        remainders.append((exact - floored, -index))
    short = total - sum(parts, Decimal(0))
    for _, negative_index in sorted(remainders, reverse=True):
        if short <= 0:
            break
        parts[-negative_index] += unit
        short -= unit
    assert sum(parts, Decimal(0)) == total
    return parts
