"""Store credit in the pure domain: cashback rounding, marginal rebate bands, periods,
the credit account's postings, and the programme section's errors."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from setia.domain.errors import InvalidField, InvalidProgramme
from setia.domain.events import Line
from setia.domain.programme import validate_document
from setia.domain.store_credit import (
    CashbackConfig,
    CreditAccount,
    InsufficientCredit,
    RebateBand,
    instant_cashback,
    member_delta,
    parse_period,
    tiered_rebate,
)

BANDS = [RebateBand(up_to=Decimal("500.00"), percent=Decimal(1)),
         RebateBand(percent=Decimal(2))]
CONFIG = CashbackConfig.model_validate({"instant": [
    {"id": "all", "percent": "1"}, {"id": "pastry", "categories": ["pastry"], "percent": "5"}]})
LINES = (Line("LATTE", "coffee", 2, Decimal("24.00")),
         Line("CROISSANT", "pastry", 1, Decimal("18.50")))


@pytest.mark.parametrize(("spend", "rebate_minor"), [
    ("0", 0), ("-10.00", 0), ("499.99", 499), ("500.00", 500), ("500.50", 501),
    ("800.00", 1100), ("1000.00", 1500)])
def test_tiered_rebate_applies_each_band_to_the_part_of_the_spend_inside_it(spend, rebate_minor):
    assert tiered_rebate(BANDS, Decimal(spend), 2) == rebate_minor


def test_three_bands():
    bands = [RebateBand(up_to=Decimal(100), percent=Decimal(0)),
             RebateBand(up_to=Decimal(200), percent=Decimal(10)),
             RebateBand(percent=Decimal(50))]
    assert tiered_rebate(bands, Decimal(150), 2) == 500
    assert tiered_rebate(bands, Decimal(300), 2) == 1000 + 5000


def test_instant_cashback_floors_each_rule_to_the_minor_unit():
    awards = instant_cashback(CONFIG, LINES, Decimal("42.50"), 2, "RM")
    assert [(a.rule_id, a.amount_minor, a.explanation) for a in awards] == [
        ("all", 42, "1% of RM 42.50 = RM 0.42 cashback (all)"),
        ("pastry", 92, "5% of RM 18.50 = RM 0.92 cashback (pastry)")]
    # a purchase without lines counts its amount for rules without categories only
    assert [(a.rule_id, a.amount_minor) for a in
            instant_cashback(CONFIG, (), Decimal("10.00"), 2, "RM")] == [("all", 10)]
    assert instant_cashback(CONFIG, (), Decimal("0.99"), 2, "RM") == []
    assert instant_cashback(None, LINES, Decimal("42.50"), 2, "RM") == []


@pytest.mark.parametrize(("text", "key", "first", "after"), [
    ("2027-03", "2027-03", date(2027, 3, 1), date(2027, 4, 1)),
    ("2027-12", "2027-12", date(2027, 12, 1), date(2028, 1, 1)),
    ("2027-Q1", "2027-Q1", date(2027, 1, 1), date(2027, 4, 1)),
    ("2027-Q4", "2027-Q4", date(2027, 10, 1), date(2028, 1, 1)),
    ("2027", "2027", date(2027, 1, 1), date(2028, 1, 1)),
])
def test_periods(text, key, first, after):
    period = parse_period(text)
    assert (period.key, period.first_day, period.next_first_day) == (key, first, after)
    start, end = period.bounds(ZoneInfo("Asia/Kuala_Lumpur"))
    assert start.isoformat() == f"{first.isoformat()}T00:00:00+08:00"
    assert end.isoformat() == f"{after.isoformat()}T00:00:00+08:00"


@pytest.mark.parametrize("text", ["2027-Q0", "2027-Q5", "2027-13", "2027-00", "27", "2027-3",
                                  "", None, 2027, "2027-W01"])
def test_a_bad_period_names_the_field(text):
    with pytest.raises(InvalidField) as caught:
        parse_period(text)
    assert caught.value.field == "period"


@pytest.mark.parametrize("text", ["0001-01", "0001", "1899-Q4", "2200", "9999-12"])
def test_a_period_out_of_the_years_1900_to_2199_is_refused(text):
    # near year 1 a period's bounds overflowed when moved to UTC: a 500
    with pytest.raises(InvalidField) as caught:
        parse_period(text)
    assert (caught.value.field, caught.value.detail) == (
        "period", f"period {text!r} must fall in the years 1900 to 2199")


def test_the_following_period():
    assert parse_period("2027-Q4").following().key == "2028-Q1"
    assert parse_period("2027-12").following().key == "2028-01"


def test_credit_account_postings_and_balances_after():
    account = CreditAccount(member_pk=1)
    account.earn(500, code="cashback", rule_id="all", explanation="x")
    account.hold(300, "h")
    with pytest.raises(InsufficientCredit) as caught:
        account.hold(201, "h2")
    assert (caught.value.field, caught.value.extra) == (
        "amount", {"available": 200, "required": 201})
    account.capture(250, "c")
    account.release(50, "r")
    account.clawback(400, rule_id="all", explanation="refund")
    assert (account.available, account.reserved) == (-150, 0)
    assert [(p.code, p.debit, p.credit, p.points, p.debit_balance_after,
             p.credit_balance_after) for p in account.postings] == [
        ("cashback", "issued", "available", 500, None, 500),
        ("hold", "available", "reserved", 300, 200, 300),
        ("capture", "reserved", "redeemed", 250, 50, None),
        ("release", "reserved", "available", 50, 0, 250),
        ("clawback", "available", "issued", 400, -150, None)]
    assert sum(member_delta(p.debit, p.credit, p.points) for p in account.postings) == -150


def _errors(cashback: object) -> list[tuple[str, str]]:
    with pytest.raises(InvalidProgramme) as caught:
        validate_document({"id": "p", "name": "P", "currency": "MYR", "cashback": cashback})
    return caught.value.errors


def test_cashback_section_errors():
    assert _errors({"instant": [{"id": "a", "percent": 1}, {"id": "a", "percent": 2,
                                                            "categories": []}]}) == [
        ("cashback.instant[1].id", "duplicate rule id 'a'"),
        ("cashback.instant[1].categories", "must not be empty; omit it to match every line")]
    assert _errors({"tiered": [{"id": "q", "per": "quarter", "bands": [
        {"percent": 1}, {"up_to": "100.001", "percent": 2}]}]}) == [
        ("cashback.tiered[0].bands[0].up_to", "required on every band but the last"),
        ("cashback.tiered[0].bands[1].up_to", "the last band has no upper bound; omit it"),
        ("cashback.tiered[0].bands[1].up_to", "more decimals than the currency allows")]
    assert _errors({"tiered": [{"id": "q", "per": "quarter", "bands": [
        {"up_to": "500", "percent": 1}, {"up_to": "400", "percent": 1}, {"percent": 2}]}]}) == [
        ("cashback.tiered[0].bands[1].up_to", "must be greater than the previous band's (500)")]
    assert _errors({"instant": [{"id": "a", "percent": 101}]})[0][0] == \
        "cashback.instant[0].percent"
    assert _errors({"tiered": [{"id": "q", "per": "week", "bands": [{"percent": 1}]}]})[0][0] \
        == "cashback.tiered[0].per"
    assert _errors({"refund_policy": "x"}) == [("cashback.refund_policy", "unknown key")]


@given(st.decimals(min_value=0, max_value=10**6, places=2),
       st.decimals(min_value=0, max_value=10**6, places=2))
def test_a_larger_spend_never_gets_a_smaller_rebate(a, b):
    low, high = sorted((a, b))
    assert tiered_rebate(BANDS, low, 2) <= tiered_rebate(BANDS, high, 2)
    # never more than the top band's percent of the whole spend, never less than the first's
    assert tiered_rebate(BANDS, high, 2) <= high * 2
    assert tiered_rebate(BANDS, high, 2) >= int(high)  # 1% of the spend, in sen
