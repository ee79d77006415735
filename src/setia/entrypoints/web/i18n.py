"""Languages of the web pages: babel catalogues (read from the .po files at start, no
compile step), the choice of language, and locale-formatted numbers, money and dates."""

from __future__ import annotations

import io
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date, format_datetime
from babel.numbers import format_decimal, get_currency_symbol
from babel.support import Translations

LOCALES = ("en", "ms", "id", "zh_Hant")
DEFAULT = "en"
NAMES = {"en": "English", "ms": "Bahasa Melayu", "id": "Bahasa Indonesia", "zh_Hant": "繁體中文"}
HTML_LANG = {"en": "en", "ms": "ms", "id": "id", "zh_Hant": "zh-Hant"}
CATALOGUES = Path(__file__).parent / "locales"
# How each currency is written on a receipt where it is used: its local sign (a space
# after RM and Rp, none after NT$) and the decimals people write (none for rupiah and
# New Taiwan dollars). Other currencies: babel's sign for the locale and ISO decimals.
CURRENCY_STYLE: dict[str, tuple[str, int]] = {
    "MYR": ("RM ", 2),
    "IDR": ("Rp ", 0),
    "TWD": ("NT$", 0),
    "SGD": ("S$", 2),
    "USD": ("US$", 2),
}


@cache
def translations(locale: str) -> Translations:
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    if locale == DEFAULT:
        return Translations()  # the templates are written in English
    with (CATALOGUES / locale / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        catalogue = read_po(handle, locale=locale)
    buffer = io.BytesIO()
    write_mo(buffer, catalogue)
    buffer.seek(0)
    return Translations(buffer)


def normalise(tag: str | None) -> str | None:
    """One of LOCALES for a language tag (``zh-TW``, ``ms_MY``, ``in``...), or None."""
    if not tag:
        return None
    tag = tag.strip().replace("_", "-").lower()
    primary = tag.split("-")[0]
    if primary == "zh":
        return "zh_Hant"  # the only Chinese the pages have
    if primary == "in":
        return "id"
    return primary if primary in ("en", "ms", "id") else None


def from_accept_language(header: str | None) -> str | None:
    """The best of LOCALES for an Accept-Language header, by its q values."""
    if not header:
        return None
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        locale = normalise(tag)
        if locale and quality > 0:
            ranked.append((-quality, index, locale))
    return sorted(ranked)[0][2] if ranked else None


def choose(*candidates: str | None) -> str:
    for candidate in candidates:
        locale = normalise(candidate) if candidate not in LOCALES else candidate
        if locale:
            return locale
    return DEFAULT


def _babel(locale: str) -> Locale:
    return Locale.parse(locale)


def number(value: int | Decimal | float, locale: str) -> str:
    return format_decimal(value, locale=_babel(locale))


def money(amount: Decimal | int | str, currency: str, locale: str, *,
          exact: bool = False) -> str:
    """``RM 1,234.50``, ``Rp 150.000``, ``NT$1,200``: the currency's sign and decimals,
    the locale's grouping and decimal mark. ``exact``: a rate such as a cost per point
    keeps the decimals it has beyond those (``RM 0.005``, up to 6), not rounded away."""
    value = Decimal(str(amount))
    sign, digits = CURRENCY_STYLE.get(currency, (None, 2))
    if exact and value.is_finite():
        exponent = value.normalize().as_tuple().exponent
        digits = max(digits, min(-exponent if isinstance(exponent, int) else 0, 6))
    if sign is None:
        sign = get_currency_symbol(currency, locale=_babel(locale))
    pattern = "#,##0" + ("." + "0" * digits if digits else "")
    text = format_decimal(abs(value), format=pattern, locale=_babel(locale))
    return f"{'-' if value < 0 else ''}{sign}{text}"


def day(value: date | datetime | str | None, locale: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        value = value.date()
    return format_date(value, format="medium", locale=_babel(locale))


def moment(value: datetime | str | None, locale: str, tz: str = "UTC") -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return format_datetime(value, format="medium", tzinfo=ZoneInfo(tz), locale=_babel(locale))
