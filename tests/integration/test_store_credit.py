"""Store credit: instant cashback and its clawback, tiered rebates by run-due, holds at the
till, statements; on SQLite and PostgreSQL, every test ending with the journal check."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.domain.errors import (
    IdempotencyConflict,
    InvalidAmount,
    InvalidField,
    UnknownMember,
)
from setia.domain.store_credit import CreditHoldNotOpen, InsufficientCredit, UnknownCreditHold
from setia.service import store_credit
from setia.service.check import check
from setia.service.events import ingest_event
from setia.service.members import get_member, upsert_member
from setia.service.run_due import run_due
from tests.conftest import assert_journal_ok, at, fixed_clock, load_programme

P = "credit-cafe"
CREDIT_CAFE: dict[str, Any] = {
    "id": P, "name": "Credit Cafe", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "earn": [{"id": "base", "on": "purchase", "rate": 1}],
    "cashback": {
        "instant": [{"id": "all", "percent": 1},
                    {"id": "pastry", "categories": ["pastry"], "percent": "5"}],
        "tiered": [{"id": "quarterly", "per": "quarter",
                    "bands": [{"up_to": "500.00", "percent": 1}, {"percent": 2}]}],
    },
}
TILL = fixed_clock("2027-03-15T12:00:00+08:00")
LINES = [{"sku": "LATTE", "category": "coffee", "quantity": 2, "amount": "24.00"},
         {"sku": "CROISSANT", "category": "pastry", "quantity": 1, "amount": "18.50"}]


@pytest.fixture
def cafe(engine: sa.Engine) -> sa.Engine:
    load_programme(engine, CREDIT_CAFE)
    for member in ("ana", "bob"):
        upsert_member(engine, P, member, {"enrolled_at": "2027-01-01T09:00:00+08:00"},
                      fixed_clock("2027-01-01T09:00:00+08:00"))
    return engine


def purchase(event_id: str, member: str, when: str, **body: Any) -> dict[str, Any]:
    return {"id": event_id, "type": "purchase", "member": member, "occurred_at": when,
            "order_id": f"ord-{event_id}", **body}


def credit(engine: sa.Engine, member: str) -> dict[str, str]:
    view = store_credit.balance(engine, P, member)
    return {"available": view["available"], "reserved": view["reserved"]}


def credit_postings(engine: sa.Engine) -> list[tuple[str, str, str, int, str | None]]:
    p = t.postings
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(  # type: ignore[misc]
            sa.select(p.c.code, p.c.debit, p.c.credit, p.c.points, p.c.rule_id)
            .where(p.c.asset == "credit:MYR").order_by(p.c.id))]


def hold(engine: sa.Engine, member: str, amount: Any, key: str) -> dict[str, Any]:
    return store_credit.hold(engine, P, {"member": member, "amount": amount}, key, TILL)


def test_a_purchase_earns_cashback_per_rule_floored_to_the_sen(cafe):
    # all: 1% of 42.50 = 0.425 -> 0.42; pastry: 5% of 18.50 = 0.925 -> 0.92
    result = ingest_event(cafe, P, purchase("e1", "ana", "2027-01-10T10:00:00+08:00",
                                            lines=LINES))
    assert result["points"] == 42  # the points path is unchanged
    assert credit(cafe, "ana") == {"available": "1.34", "reserved": "0.00"}
    assert credit_postings(cafe) == [("cashback", "issued", "available", 42, "all"),
                                     ("cashback", "issued", "available", 92, "pastry")]
    assert get_member(cafe, P, "ana")["balances"] == {"available": 42, "pending": 0,
                                                       "reserved": 0}
    assert_journal_ok(cafe)


def test_a_refund_claws_back_the_cashback_of_what_was_refunded(cafe):
    ingest_event(cafe, P, purchase("e1", "ana", "2027-01-10T10:00:00+08:00", lines=LINES))
    # the croissant back: all now 1% of 24.00 = 0.24 (0.18 back), pastry 0 (0.92 back)
    ingest_event(cafe, P, {"id": "r1", "type": "refund", "member": "ana",
                           "occurred_at": "2027-01-11T10:00:00+08:00", "order_id": "ord-e1",
                           "lines": [{"sku": "CROISSANT", "amount": "18.50"}]})
    assert credit(cafe, "ana") == {"available": "0.24", "reserved": "0.00"}
    assert credit_postings(cafe)[2:] == [("clawback", "available", "issued", 18, "all"),
                                         ("clawback", "available", "issued", 92, "pastry")]
    # then the rest: 0.24 back, nothing left
    ingest_event(cafe, P, {"id": "r2", "type": "refund", "member": "ana",
                           "occurred_at": "2027-01-12T10:00:00+08:00", "order_id": "ord-e1",
                           "amount": "24.00"})
    assert credit(cafe, "ana") == {"available": "0.00", "reserved": "0.00"}
    assert_journal_ok(cafe)


def test_partial_refunds_of_an_order_without_lines_claw_back_only_their_share(cafe):
    # Given RM 100.00 bought without lines: all 1% = RM 1.00 cashback (pastry needs lines)
    ingest_event(cafe, P, purchase("e1", "ana", "2027-01-10T10:00:00+08:00", amount="100.00"))
    assert credit(cafe, "ana") == {"available": "1.00", "reserved": "0.00"}

    # When RM 30.00 of it is refunded, then RM 50.00 more
    ingest_event(cafe, P, {"id": "r1", "type": "refund", "member": "ana",
                           "occurred_at": "2027-01-11T10:00:00+08:00", "order_id": "ord-e1",
                           "amount": "30.00"})
    after_first = credit(cafe, "ana")
    ingest_event(cafe, P, {"id": "r2", "type": "refund", "member": "ana",
                           "occurred_at": "2027-01-12T10:00:00+08:00", "order_id": "ord-e1",
                           "amount": "50.00"})

    # Then the first takes back 1.00 - 0.70 = 0.30 and the second only 0.70 - 0.20 = 0.50
    # (the cashback of what was left of the order before it, not of the whole order): the
    # RM 20.00 kept still earns its 0.20, and no more than the 1.00 given comes back
    assert after_first == {"available": "0.70", "reserved": "0.00"}
    assert credit(cafe, "ana") == {"available": "0.20", "reserved": "0.00"}
    assert credit_postings(cafe) == [("cashback", "issued", "available", 100, "all"),
                                     ("clawback", "available", "issued", 30, "all"),
                                     ("clawback", "available", "issued", 50, "all")]
    assert_journal_ok(cafe)


def test_a_clawback_after_the_credit_was_spent_leaves_a_debt(cafe):
    ingest_event(cafe, P, purchase("e1", "ana", "2027-01-10T10:00:00+08:00", amount="100.00"))
    held = hold(cafe, "ana", "1.00", "k1")
    store_credit.capture_or_release(cafe, P, held["id"], "capture", None, "k2", TILL)
    ingest_event(cafe, P, {"id": "r1", "type": "refund", "member": "ana",
                           "occurred_at": "2027-03-16T10:00:00+08:00", "order_id": "ord-e1",
                           "amount": "100.00"})
    assert credit(cafe, "ana") == {"available": "-1.00", "reserved": "0.00"}
    with pytest.raises(InsufficientCredit):
        hold(cafe, "ana", "0.01", "k3")
    assert_journal_ok(cafe)


def test_hold_then_capture_part_spends_it_and_releases_the_rest(cafe):
    ingest_event(cafe, P, purchase("e1", "bob", "2027-02-01T10:00:00+08:00", amount="800.00"))
    assert credit(cafe, "bob") == {"available": "8.00", "reserved": "0.00"}
    held = hold(cafe, "bob", "5.00", "k1")
    assert held["status"] == "held"
    assert held["hold_expires_at"] == "2027-03-15T12:15:00+08:00"
    assert held["balances"] == {"available": "3.00", "reserved": "5.00"}
    assert hold(cafe, "bob", "5.00", "k1") == held  # the same key answers the same hold
    done = store_credit.capture_or_release(cafe, P, held["id"], "capture", {"amount": "4.00"},
                                           "k2", TILL)
    assert (done["status"], done["captured"]) == ("captured", "4.00")
    assert done["balances"] == {"available": "4.00", "reserved": "0.00"}
    assert [p[:4] for p in credit_postings(cafe)[1:]] == [
        ("hold", "available", "reserved", 500), ("capture", "reserved", "redeemed", 400),
        ("release", "reserved", "available", 100)]
    assert_journal_ok(cafe)


def test_refused_holds_and_captures_change_nothing(cafe):
    ingest_event(cafe, P, purchase("e1", "bob", "2027-02-01T10:00:00+08:00", amount="800.00"))
    held = hold(cafe, "bob", "2.00", "k1")
    before = (credit(cafe, "bob"), credit_postings(cafe))
    cases: list[tuple[Any, type[Exception], str]] = [
        (lambda: hold(cafe, "bob", "6.01", "k2"), InsufficientCredit, "amount"),
        (lambda: hold(cafe, "bob", "-1.00", "k3"), InvalidAmount, "amount"),
        (lambda: hold(cafe, "bob", "0.001", "k4"), InvalidAmount, "amount"),
        (lambda: hold(cafe, "bob", "0", "k5"), InvalidAmount, "amount"),
        (lambda: hold(cafe, "nobody", "1.00", "k6"), UnknownMember, "member"),
        (lambda: hold(cafe, "bob", None, "k7"), InvalidField, "amount"),
        (lambda: store_credit.hold(cafe, P, {"member": "bob", "amount": "1.00", "tip": 1},
                                   "k8", TILL), InvalidField, "tip"),
        (lambda: store_credit.capture_or_release(cafe, P, "crh_nope", "capture", None, "k9",
                                                 TILL), UnknownCreditHold, "hold"),
        (lambda: store_credit.capture_or_release(cafe, P, held["id"], "capture",
                                                 {"amount": "2.01"}, "k10", TILL),
         InvalidAmount, "amount"),
        (lambda: hold(cafe, "bob", "1.00", "k1"), Exception, "Idempotency-Key"),
    ]
    for call, error, field in cases:
        with pytest.raises(error) as caught:
            call()
        assert getattr(caught.value, "field", None) == field
        assert (credit(cafe, "bob"), credit_postings(cafe)) == before
    store_credit.capture_or_release(cafe, P, held["id"], "release", None, "k11", TILL)
    with pytest.raises(CreditHoldNotOpen):
        store_credit.capture_or_release(cafe, P, held["id"], "capture", None, "k12", TILL)
    assert credit(cafe, "bob") == {"available": "8.00", "reserved": "0.00"}
    assert_journal_ok(cafe)


def test_run_due_releases_holds_left_open(cafe):
    ingest_event(cafe, P, purchase("e1", "bob", "2027-02-01T10:00:00+08:00", amount="800.00"))
    hold(cafe, "bob", "3.00", "k1")
    assert run_due(cafe, at("2027-03-15T12:14:59+08:00"), P).credit_holds_released == 0
    assert run_due(cafe, at("2027-03-15T12:15:00+08:00"), P).credit_holds_released == 1
    assert run_due(cafe, at("2027-03-15T12:16:00+08:00"), P).credit_holds_released == 0
    assert credit(cafe, "bob") == {"available": "8.00", "reserved": "0.00"}
    assert_journal_ok(cafe)


def test_tiered_rebate_is_credited_once_when_the_quarter_has_ended(cafe):
    ingest_event(cafe, P, purchase("e1", "bob", "2027-02-01T10:00:00+08:00", amount="700.00"))
    ingest_event(cafe, P, purchase("e2", "bob", "2027-03-31T23:30:00+08:00", amount="100.00"))
    ingest_event(cafe, P, purchase("e3", "ana", "2027-01-05T10:00:00+08:00", amount="300.00"))
    ingest_event(cafe, P, {"id": "r3", "type": "refund", "member": "ana", "order_id": "ord-e3",
                           "occurred_at": "2027-01-06T10:00:00+08:00", "amount": "50.00"})
    # Q2 purchase: not in Q1's spend
    ingest_event(cafe, P, purchase("e4", "bob", "2027-04-01T00:00:00+08:00", amount="100.00"))
    assert run_due(cafe, at("2027-03-31T23:59:59+08:00"), P).rebates_credited == 0
    report = run_due(cafe, at("2027-04-01T00:00:00+08:00"), P)
    assert report.rebates_credited == 2
    # bob: 800 -> 1% of 500 + 2% of 300 = 5.00 + 6.00; ana: 250 net -> 2.50
    # instant cashback: bob 7.00 + 1.00 + 1.00, ana 3.00 - 0.50
    assert credit(cafe, "bob") == {"available": "20.00", "reserved": "0.00"}
    assert credit(cafe, "ana") == {"available": "5.00", "reserved": "0.00"}
    assert run_due(cafe, at("2027-07-02T00:00:00+08:00"), P).rebates_credited == 1  # Q2: bob
    assert run_due(cafe, at("2027-07-03T00:00:00+08:00"), P).rebates_credited == 0
    assert credit(cafe, "bob") == {"available": "21.00", "reserved": "0.00"}
    rebates = [p for p in credit_postings(cafe) if p[0] == "rebate"]
    assert rebates == [("rebate", "issued", "available", 250, "quarterly"),
                       ("rebate", "issued", "available", 1100, "quarterly"),
                       ("rebate", "issued", "available", 100, "quarterly")]
    assert_journal_ok(cafe)


def test_statement_per_period_as_json_and_csv(cafe):
    ingest_event(cafe, P, purchase("e1", "bob", "2027-02-01T10:00:00+08:00", amount="800.00"))
    held = hold(cafe, "bob", "5.00", "k1")
    store_credit.capture_or_release(cafe, P, held["id"], "capture", {"amount": "4.00"}, "k2",
                                    TILL)
    run_due(cafe, at("2027-04-02T00:00:00+08:00"), P)
    q1 = store_credit.statement(cafe, P, "bob", "2027-Q1")
    assert {k: v for k, v in q1.items() if k != "lines"} == {
        "member": "bob", "asset": "credit:MYR", "currency": "MYR", "period": "2027-Q1",
        "from": "2027-01-01T00:00:00+08:00", "until": "2027-04-01T00:00:00+08:00",
        "opening_balance": "0.00", "earned": "8.00", "clawed_back": "0.00", "spent": "4.00",
        "adjusted": "0.00", "closing_balance": "4.00"}
    assert [(line["code"], line["amount"], line["balance"]) for line in q1["lines"]] == [
        ("cashback", "8.00", "8.00"), ("capture", "-4.00", "4.00")]
    q2 = store_credit.statement(cafe, P, "bob", "2027-Q2")
    assert (q2["opening_balance"], q2["earned"], q2["spent"], q2["closing_balance"]) == (
        "4.00", "11.00", "0.00", "15.00")
    assert store_credit.statement_csv(q1) == (
        "occurred_at,code,rule,ref,explanation,amount,balance\n"
        "2027-01-01T00:00:00+08:00,opening,,,opening balance 2027-Q1,,0.00\n"
        "2027-02-01T10:00:00+08:00,cashback,all,e1,1% of RM 800.00 = RM 8.00 cashback (all),"
        "8.00,8.00\n"
        f"2027-03-15T12:00:00+08:00,capture,,{held['id']},spent 4.00 at the till "
        f"(hold {held['id']}),-4.00,4.00\n"
        "2027-04-01T00:00:00+08:00,closing,,,closing balance 2027-Q1,,4.00\n"
        ",total-earned,,,,8.00,\n"
        ",total-clawed-back,,,,0.00,\n"
        ",total-spent,,,,4.00,\n"
        ",total-adjusted,,,,0.00,\n")
    for bad in ("2027-Q5", "27-01", "2027-13", "", "next"):
        with pytest.raises(InvalidField) as caught:
            store_credit.statement(cafe, P, "bob", bad)
        assert caught.value.field == "period"
    with pytest.raises(UnknownMember):
        store_credit.statement(cafe, P, "nobody", "2027-Q1")
    assert_journal_ok(cafe)


def test_check_finds_a_cached_credit_balance_that_disagrees_with_the_journal(cafe):
    ingest_event(cafe, P, purchase("e1", "bob", "2027-02-01T10:00:00+08:00", amount="800.00"))
    with cafe.begin() as conn:
        conn.execute(sa.text("UPDATE credit_accounts SET available = 801"))
    assert check(cafe).problems == [
        "credit-cafe/bob: cached store credit available 801 but the journal says 800"]
    with cafe.begin() as conn:
        conn.execute(sa.text("UPDATE credit_accounts SET available = 800, reserved = 100"))
    assert check(cafe).problems == [
        "credit-cafe/bob: cached store credit reserved 100 but the journal says 0",
        "credit-cafe/bob: open store-credit holds reserve 0, reserved store credit is 100"]
    with cafe.begin() as conn:
        conn.execute(sa.text("UPDATE credit_accounts SET reserved = 0"))
    assert_journal_ok(cafe)


def rebate_runs(engine: sa.Engine) -> list[tuple[str, int, int]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(  # type: ignore[misc]
            "SELECT period, members, amount FROM rebate_runs ORDER BY period"))]


def test_a_rebate_switched_from_monthly_to_quarterly_credits_no_spend_twice(engine):
    # Given a monthly rebate `spend` (1% up to RM 500, 2% above) credited for April 2027
    monthly = {**CREDIT_CAFE, "cashback": {"tiered": [
        {"id": "spend", "per": "month",
         "bands": [{"up_to": "500.00", "percent": 1}, {"percent": 2}]}]}}
    load_programme(engine, monthly)
    for member in ("ana", "bob"):
        upsert_member(engine, P, member, {"enrolled_at": "2027-01-01T09:00:00+08:00"},
                      fixed_clock("2027-01-01T09:00:00+08:00"))
    ingest_event(engine, P, purchase("e1", "ana", "2027-04-10T10:00:00+08:00", amount="400.00"))
    ingest_event(engine, P, purchase("e2", "bob", "2027-04-20T10:00:00+08:00", amount="200.00"))
    assert run_due(engine, at("2027-05-01T00:00:00+08:00"), P).rebates_credited == 2
    assert credit(engine, "ana") == {"available": "4.00", "reserved": "0.00"}
    assert credit(engine, "bob") == {"available": "2.00", "reserved": "0.00"}

    # When version 2 makes the same rebate quarterly, ana spends in May and June, and
    # run-due runs once the second quarter (April to June) has ended
    quarterly = {**monthly, "cashback": {"tiered": [
        {**monthly["cashback"]["tiered"][0], "per": "quarter"}]}}
    assert load_programme(engine, quarterly)["version"] == 2
    ingest_event(engine, P, purchase("e3", "ana", "2027-05-05T10:00:00+08:00", amount="300.00"))
    ingest_event(engine, P, purchase("e4", "ana", "2027-06-30T23:59:00+08:00", amount="350.55"))
    assert run_due(engine, at("2027-06-30T23:59:59+08:00"), P).rebates_credited == 0
    report = run_due(engine, at("2027-07-01T00:00:00+08:00"), P)

    # Then 2027-Q2 is credited from May 1st on, April having been credited by month:
    # ana 650.55 -> 1% of 500 + 2% of 150.55 = 5.00 + 3.011, floored to 8.01;
    # bob spent only in April, so nothing more
    assert report.rebates_credited == 1
    assert credit(engine, "ana") == {"available": "12.01", "reserved": "0.00"}
    assert credit(engine, "bob") == {"available": "2.00", "reserved": "0.00"}
    p = t.postings
    with engine.connect() as conn:
        rebates = [tuple(row) for row in conn.execute(
            sa.select(t.members.c.id, p.c.code, p.c.debit, p.c.credit, p.c.points, p.c.rule_id,
                      p.c.ref, p.c.program_version, p.c.explanation)
            .join(t.members, t.members.c.pk == p.c.member_pk)
            .where(p.c.asset == "credit:MYR").order_by(p.c.id))]
    assert rebates == [
        ("ana", "rebate", "issued", "available", 400, "spend", "rebate:spend:2027-04", 1,
         "spend rebate on RM 400.00 spent in 2027-04"),
        ("bob", "rebate", "issued", "available", 200, "spend", "rebate:spend:2027-04", 1,
         "spend rebate on RM 200.00 spent in 2027-04"),
        ("ana", "rebate", "issued", "available", 801, "spend", "rebate:spend:2027-Q2", 2,
         "spend rebate on RM 650.55 spent in 2027-Q2 from 2027-05-01 to 2027-06-30, "
         "the rest of it credited before"),
    ]
    assert rebate_runs(engine) == [("2027-04", 2, 600), ("2027-Q2", 1, 801)]
    q3 = store_credit.statement(engine, P, "ana", "2027-Q3")
    assert (q3["opening_balance"], q3["earned"], q3["closing_balance"]) == (
        "4.00", "8.01", "12.01")

    # And running again, now or later in the quarter, credits nothing more
    assert run_due(engine, at("2027-07-01T00:00:00+08:00"), P).rebates_credited == 0
    assert run_due(engine, at("2027-09-30T12:00:00+08:00"), P).rebates_credited == 0
    assert credit(engine, "ana") == {"available": "12.01", "reserved": "0.00"}
    assert credit(engine, "bob") == {"available": "2.00", "reserved": "0.00"}
    assert len(credit_postings(engine)) == 3
    assert rebate_runs(engine) == [("2027-04", 2, 600), ("2027-Q2", 1, 801)]
    assert_journal_ok(engine)


def test_a_rebate_added_to_a_running_programme_rebates_spend_from_the_day_it_came(engine):
    # Given a programme without rebates since 2025, and ana's orders of 2025 to March 2027
    from setia.service.programmes import store_programme

    plain = {**CREDIT_CAFE, "cashback": {"instant": []}}
    store_programme(engine, plain, clock=fixed_clock("2025-01-01T09:00:00+08:00"))
    upsert_member(engine, P, "ana", {"enrolled_at": "2025-01-01T09:00:00+08:00"},
                  fixed_clock("2025-01-01T09:00:00+08:00"))
    for number, when in enumerate(["2025-02-10", "2026-11-10", "2027-03-10", "2027-03-20"]):
        ingest_event(engine, P, purchase(f"e{number}", "ana", f"{when}T10:00:00+08:00",
                                         amount="1000.00"))
    # When a monthly 2% rebate comes with a version stored on 15 March 2027, and run-due
    # runs once March has ended
    monthly = {**plain, "cashback": {"instant": [], "tiered": [
        {"id": "m", "per": "month", "bands": [{"percent": 2}]}]}}
    store_programme(engine, monthly, clock=fixed_clock("2027-03-15T12:00:00+08:00"))
    report = run_due(engine, at("2027-04-01T00:00:00+08:00"), P)
    # Then only the spend from 15 March on is rebated: 2% of RM 1,000.00 (it was every
    # month back to February 2025: RM 80.00 over 26 runs)
    assert report.rebates_credited == 1
    assert credit(engine, "ana") == {"available": "20.00", "reserved": "0.00"}
    with engine.connect() as conn:
        assert [tuple(row) for row in conn.execute(
            sa.select(t.postings.c.points, t.postings.c.ref, t.postings.c.explanation)
            .where(t.postings.c.asset == "credit:MYR"))] == [
            (2000, "rebate:m:2027-03",
             "m rebate on RM 1000.00 spent in 2027-03 from 2027-03-15 to 2027-03-31, "
             "since the rebate began")]
        assert conn.execute(sa.text("SELECT count(*) FROM rebate_runs")).scalar_one() == 1

    # When a version of 10 April drops it, one of 15 June brings it back, and ana spends in
    # April, May and June
    store_programme(engine, plain, clock=fixed_clock("2027-04-10T12:00:00+08:00"))
    for number, when in enumerate(["2027-04-05", "2027-05-05", "2027-06-20"], start=10):
        ingest_event(engine, P, purchase(f"e{number}", "ana", f"{when}T10:00:00+08:00",
                                         amount="100.00"))
    run_due(engine, at("2027-05-01T00:00:00+08:00"), P)
    store_programme(engine, monthly, clock=fixed_clock("2027-06-15T12:00:00+08:00"))
    run_due(engine, at("2027-07-01T00:00:00+08:00"), P)
    # Then June from the 15th is rebated (RM 2.00), the months without it are not
    assert credit(engine, "ana") == {"available": "22.00", "reserved": "0.00"}
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.text("SELECT period FROM rebate_runs")).scalars()
                      ) == ["2027-03", "2027-06"]
    assert_journal_ok(engine)


def test_a_currency_change_is_refused_once_the_programme_has_orders(cafe):
    # Given ana's RM 5.50 of cashback (1% of RM 550.00)
    ingest_event(cafe, P, purchase("e1", "ana", "2027-03-01T10:00:00+08:00", amount="550.00"))
    assert credit(cafe, "ana") == {"available": "5.50", "reserved": "0.00"}
    with cafe.connect() as conn:
        versions = conn.execute(sa.text("SELECT count(*) FROM program_versions")).scalar_one()
    # When a version in Singapore dollars is stored, Then it is refused (it made the
    # 550 sen S$ 5.50, and with yen JPY 550)
    with pytest.raises(InvalidField) as refused:
        load_programme(cafe, {**CREDIT_CAFE, "currency": "SGD"})
    assert (refused.value.field, refused.value.detail) == (
        "currency", "currency cannot change from MYR to SGD: the programme has orders or "
                    "postings in it already")
    assert credit(cafe, "ana") == {"available": "5.50", "reserved": "0.00"}
    with cafe.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM program_versions")
                            ).scalar_one() == versions
    assert_journal_ok(cafe)


def test_a_time_zone_change_is_refused_once_the_programme_has_orders(cafe):
    # (a refund lowered the tier metric's month in the new zone, not the one its purchase
    # raised: RM 400.00 bought at 00:30 on 1 January in Kuala Lumpur came off December)
    ingest_event(cafe, P, purchase("e1", "ana", "2027-03-01T10:00:00+08:00", amount="10.00"))
    with pytest.raises(InvalidField) as refused:
        load_programme(cafe, {**CREDIT_CAFE, "timezone": "Europe/London"})
    assert (refused.value.field, refused.value.detail) == (
        "timezone", "timezone cannot change from Asia/Kuala_Lumpur to Europe/London: the "
                    "programme has orders or postings in it already")
    assert_journal_ok(cafe)


def test_a_programme_without_orders_or_postings_may_change_its_currency(engine):
    load_programme(engine, CREDIT_CAFE)
    assert load_programme(engine, {**CREDIT_CAFE, "currency": "USD"})["version"] == 2


def test_an_admin_corrects_store_credit_both_ways_with_a_reason(cafe):
    # Given ana's RM 5.50 of cashback
    ingest_event(cafe, P, purchase("e1", "ana", "2027-03-01T10:00:00+08:00", amount="550.00"))
    when = fixed_clock("2027-03-02T10:00:00+08:00")
    # When an admin gives her RM 2.25 for a mistaken refund, then takes RM 1.00 back
    given = store_credit.adjust(cafe, P, {"member": "ana", "amount": "2.25",
                                          "reason": "refund entered twice"}, "adj-1", when)
    taken = store_credit.adjust(cafe, P, {"member": "ana", "amount": "-1.00",
                                          "reason": "goodwill given twice"}, "adj-2", when)
    # Then each is posted against the adjustments account, with its reason
    assert (given["amount"], given["balances"]) == ("2.25", {"available": "7.75",
                                                             "reserved": "0.00"})
    assert (taken["amount"], taken["ref"], taken["balances"]) == (
        "-1.00", "credit-adjust:adj-2", {"available": "6.75", "reserved": "0.00"})
    assert credit_postings(cafe)[-2:] == [
        ("adjust", "adjustments", "available", 225, None),
        ("adjust", "available", "adjustments", 100, None)]
    view = store_credit.statement(cafe, P, "ana", "2027-03")
    assert (view["earned"], view["adjusted"], view["closing_balance"]) == ("5.50", "1.25", "6.75")
    assert [line["amount"] for line in view["lines"]] == ["5.50", "2.25", "-1.00"]
    # and a replay answers the first result and changes nothing; the same key with another
    # body, or taking back more than she has, is refused and changes nothing
    assert store_credit.adjust(cafe, P, {"member": "ana", "amount": "-1.00",
                                         "reason": "goodwill given twice"}, "adj-2", when) == taken
    journal = len(credit_postings(cafe))
    with pytest.raises(IdempotencyConflict):
        store_credit.adjust(cafe, P, {"member": "ana", "amount": "-2.00",
                                      "reason": "goodwill given twice"}, "adj-2", when)
    with pytest.raises(InsufficientCredit) as refused:
        store_credit.adjust(cafe, P, {"member": "ana", "amount": "-6.76", "reason": "x"},
                            "adj-3", when)
    assert refused.value.field == "amount"
    for body, field in [({"member": "ana", "amount": "0", "reason": "x"}, "amount"),
                        ({"member": "ana", "amount": "-0.001", "reason": "x"}, "amount"),
                        ({"member": "ana", "amount": "1.00"}, "reason"),
                        ({"member": "nobody", "amount": "1.00", "reason": "x"}, "member"),
                        ({"member": "ana", "amount": "1.00", "reason": "x", "y": 1}, "y")]:
        with pytest.raises((InvalidField, InvalidAmount, UnknownMember)) as bad:
            store_credit.adjust(cafe, P, body, "adj-4", when)
        assert bad.value.field == field
    assert len(credit_postings(cafe)) == journal
    assert credit(cafe, "ana") == {"available": "6.75", "reserved": "0.00"}
    with cafe.connect() as conn:
        messages = conn.execute(sa.text(
            "SELECT data FROM outbox WHERE type = 'credit.adjusted' ORDER BY id")).scalars()
        assert [json.loads(data)["amount"] for data in messages] == ["2.25", "-1.00"]
        assert conn.execute(sa.text("SELECT count(*) FROM audit_log WHERE action = "
                                    "'credit.adjust'")).scalar_one() == 2
    assert_journal_ok(cafe)


def test_a_credit_adjustment_is_not_reversed_as_points(cafe):
    # Given ana's RM 5.50 of cashback and her points, and RM 2.00 of it taken by an admin
    from setia.service.reversals import reverse

    ingest_event(cafe, P, purchase("e1", "ana", "2027-03-01T10:00:00+08:00", amount="550.00"))
    when = fixed_clock("2027-03-02T10:00:00+08:00")
    store_credit.adjust(cafe, P, {"member": "ana", "amount": "-2.00", "reason": "typo"},
                        "adj-1", when)
    points = get_member(cafe, P, "ana", when)["balances"]
    with cafe.connect() as conn:
        postings = conn.execute(sa.text("SELECT count(*) FROM postings")).scalar_one()
    # When an admin reverses the credit adjustment's reference (it gave 200 points before)
    with pytest.raises(InvalidField) as refused:
        reverse(cafe, P, {"ref": "credit-adjust:adj-1", "reason": "undo"}, "rev-1", when)
    # Then it is refused by name, and neither points nor credit nor the journal moved
    assert (refused.value.field, refused.value.detail) == (
        "ref", "store credit is not reversed; a credit adjustment corrects it")
    assert get_member(cafe, P, "ana", when)["balances"] == points
    assert credit(cafe, "ana") == {"available": "3.50", "reserved": "0.00"}
    with cafe.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM postings")).scalar_one() == postings
    assert_journal_ok(cafe)
