"""Languages of the web pages: every message of the templates and the Python code is
translated in every catalogue (no English left on a page in another language), with the
same placeholders; money, numbers and dates are formatted per locale."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from setia.entrypoints.web import i18n

WEB = Path(i18n.__file__).parent
PLACEHOLDER = re.compile(r"%\([a-z_]+\)s|%%")


def source_messages() -> set[str]:
    """The messages pybabel extracts, with the project's babel.cfg methods."""
    found: set[str] = set()
    methods = [("**.py", "python"), ("templates/**.html", "jinja2")]
    options = {"templates/**.html": {"extensions": "jinja2.ext.i18n", "trim_blocks": "true",
                                     "lstrip_blocks": "true"}}
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "translate": None}
    for _, _, message, _, _ in extract_from_dir(str(WEB), methods, options, keywords):
        found.add(message if isinstance(message, str) else message[0])
    return found


def test_the_sources_have_the_messages_the_pages_show() -> None:
    messages = source_messages()
    assert len(messages) > 150
    assert {"Record a purchase", "Download my data", "Your sign-in link for %(programme)s",
            "This voucher was used already."} <= messages


@pytest.mark.parametrize("locale", ["ms", "id", "zh_Hant"])
def test_every_catalogue_is_complete(locale: str) -> None:
    with (WEB / "locales" / locale / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        catalogue = read_po(handle, locale=locale)
    translated = {m.id: m for m in catalogue if m.id}
    missing = sorted(source_messages() - set(translated))
    assert missing == [], f"{locale} lacks {missing}"
    for message_id, message in translated.items():
        assert message.string, f"{locale}: {message_id!r} is not translated"
        assert not message.fuzzy, f"{locale}: {message_id!r} is fuzzy"
        assert sorted(PLACEHOLDER.findall(message.string)) == sorted(
            PLACEHOLDER.findall(message_id)), f"{locale}: placeholders of {message_id!r}"
        if len(message_id) > 12:  # short words (Status, Program) may be the same
            assert message.string != message_id, f"{locale}: {message_id!r} left in English"


def test_translations_are_used() -> None:
    assert i18n.translations("ms").gettext("Record a purchase") == "Rekod pembelian"
    assert i18n.translations("id").gettext("Record a purchase") == "Catat pembelian"
    assert i18n.translations("zh_Hant").gettext("Record a purchase") == "記錄消費"
    assert i18n.translations("en").gettext("Record a purchase") == "Record a purchase"


@pytest.mark.parametrize(("amount", "currency", "locale", "text"), [
    ("1234.5", "MYR", "en", "RM 1,234.50"),
    ("1234.5", "MYR", "ms", "RM 1,234.50"),
    ("150000", "IDR", "id", "Rp 150.000"),
    ("1200", "TWD", "zh_Hant", "NT$1,200"),
    ("1234.5", "MYR", "id", "RM 1.234,50"),
    ("-3", "MYR", "en", "-RM 3.00"),
    ("0.5", "IDR", "id", "Rp 0"),
])
def test_money_per_locale(amount: str, currency: str, locale: str, text: str) -> None:
    assert i18n.money(Decimal(amount), currency, locale) == text


def test_numbers_and_dates_per_locale() -> None:
    assert i18n.number(1234567, "en") == "1,234,567"
    assert i18n.number(1234567, "id") == "1.234.567"
    assert i18n.day(date(2027, 3, 4), "en") == "Mar 4, 2027"
    assert i18n.day(date(2027, 3, 4), "ms") == "4 Mac 2027"
    assert i18n.day(date(2027, 3, 4), "id") == "4 Mar 2027"
    assert i18n.day(date(2027, 3, 4), "zh_Hant") == "2027年3月4日"


@pytest.mark.parametrize(("header", "locale"), [
    ("zh-TW,zh;q=0.9,en;q=0.8", "zh_Hant"),
    ("fr-FR, id;q=0.5, en;q=0.4", "id"),
    ("en;q=0.2, ms-MY;q=0.9", "ms"),
    ("in", "id"),
    ("fr, de", None),
    ("", None),
])
def test_language_from_the_browser(header: str, locale: str | None) -> None:
    assert i18n.from_accept_language(header) == locale


def test_choice_order() -> None:
    assert i18n.choose(None, "ms", "id") == "ms"
    assert i18n.choose("xx", None, "zh-HK") == "zh_Hant"
    assert i18n.choose(None, None) == "en"


@pytest.mark.parametrize(("amount", "currency", "locale", "text"), [
    ("0.005", "MYR", "en", "RM 0.005"),  # a cost per point under a sen showed RM 0.00
    ("0.5", "IDR", "id", "Rp 0,5"),
    ("0.01", "MYR", "en", "RM 0.01"),
    ("2", "TWD", "zh_Hant", "NT$2"),
    ("1.23456789", "MYR", "ms", "RM 1.234568"),
])
def test_an_exact_rate_keeps_the_decimals_it_has(amount, currency, locale, text):
    assert i18n.money(Decimal(amount), currency, locale, exact=True) == text
