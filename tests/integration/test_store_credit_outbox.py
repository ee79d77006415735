"""Store credit leaves its outbox messages: cashback and rebates earned (``credit.earned``),
cashback clawed back by a refund (``credit.clawed_back``) and credit spent at the till
(``credit.spent``), in the transaction that made them. Holds and releases move credit
between the member's own accounts and say nothing; a replay, a re-run or a refusal writes
nothing again."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from setia.domain.store_credit import InsufficientCredit
from setia.service import store_credit
from setia.service.events import ingest_event
from setia.service.run_due import run_due
from tests.conftest import assert_journal_ok, at, fixed_clock
from tests.integration.test_store_credit import LINES, TILL, P, cafe, hold, purchase

__all__ = ["cafe"]  # the fixture, used by name

APPLIED = "2027-01-10 02:00:05"  # when the purchase below is applied: 10:00:05 in KL, as UTC


def credit_messages(engine: sa.Engine) -> list[tuple[Any, ...]]:
    """(type, member, key, data without ``program``, told at) of the credit rows, in order."""
    with engine.connect() as conn:
        found = conn.execute(sa.text(
            "SELECT type, member_id, key, data, occurred_at FROM outbox "
            "WHERE type LIKE 'credit.%' ORDER BY id")).all()
    out = []
    for kind, member, key, data, told_at in found:
        parsed = json.loads(data)
        assert parsed.pop("program") == P
        out.append((kind, member, key, parsed, str(told_at)[:19]))
    return out


def message(kind: str, member: str, ref: str, amount: str, available: str, told_at: str,
            reserved: str = "0.00") -> tuple[Any, ...]:
    return (kind, member, f"{kind}:{member}:{ref}", {
        "member": member, "ref": ref, "amount": amount, "currency": "MYR",
        "balances": {"available": available, "reserved": reserved}}, told_at)


def test_cashback_a_refund_and_a_capture_each_tell_the_member_once(cafe):
    # Given ana's purchase with cashback (1.34), applied five seconds after it happened
    applied = fixed_clock("2027-01-10T10:00:05+08:00")
    sale = purchase("e1", "ana", "2027-01-10T10:00:00+08:00", lines=LINES)
    ingest_event(cafe, P, sale, applied)
    # and the croissant refunded (1.10 back: 0.18 of "all", 0.92 of "pastry")
    refund = {"id": "r1", "type": "refund", "member": "ana", "order_id": "ord-e1",
              "occurred_at": "2027-01-11T10:00:00+08:00",
              "lines": [{"sku": "CROISSANT", "amount": "18.50"}]}
    ingest_event(cafe, P, refund, fixed_clock("2027-01-11T10:00:00+08:00"))
    # and bob's 800.00 (8.00 back), 5.00 held at the till and 4.00 of it captured
    ingest_event(cafe, P, purchase("e2", "bob", "2027-02-01T10:00:00+08:00", amount="800.00"),
                 fixed_clock("2027-02-01T10:00:00+08:00"))
    held = hold(cafe, "bob", "5.00", "k1")
    store_credit.capture_or_release(cafe, P, held["id"], "capture", {"amount": "4.00"}, "k2",
                                    TILL)
    expected = [
        message("credit.earned", "ana", "e1", "1.34", "1.34", APPLIED),
        message("credit.clawed_back", "ana", "r1", "1.10", "0.24", "2027-01-11 02:00:00"),
        message("credit.earned", "bob", "e2", "8.00", "8.00", "2027-02-01 02:00:00"),
        message("credit.spent", "bob", held["id"], "4.00", "4.00", "2027-03-15 04:00:00"),
    ]
    assert credit_messages(cafe) == expected

    # When each is sent again, a hold is refused, and another is held then released
    ingest_event(cafe, P, sale, applied)
    ingest_event(cafe, P, refund)
    hold(cafe, "bob", "5.00", "k1")
    store_credit.capture_or_release(cafe, P, held["id"], "capture", {"amount": "4.00"}, "k2",
                                    TILL)
    with pytest.raises(InsufficientCredit):
        hold(cafe, "bob", "4.01", "k3")
    second = hold(cafe, "bob", "1.00", "k4")
    store_credit.capture_or_release(cafe, P, second["id"], "release", None, "k5", TILL)

    # Then nothing more was told
    assert credit_messages(cafe) == expected
    assert_journal_ok(cafe)


def test_a_rebate_is_told_when_run_due_credits_it(cafe):
    # Given bob's 800.00 in the first quarter (cashback 8.00 told with the purchase)
    ingest_event(cafe, P, purchase("e1", "bob", "2027-02-01T10:00:00+08:00", amount="800.00"),
                 fixed_clock("2027-02-01T10:00:00+08:00"))

    # When run-due credits the quarter's rebate two days after it ended, and runs again
    report = run_due(cafe, at("2027-04-03T00:00:00+08:00"), P)
    again = run_due(cafe, at("2027-04-04T00:00:00+08:00"), P)

    # Then the rebate (5.00 + 6.00) is told once, at run-due's time
    assert (report.rebates_credited, again.rebates_credited) == (1, 0)
    assert credit_messages(cafe) == [
        message("credit.earned", "bob", "e1", "8.00", "8.00", "2027-02-01 02:00:00"),
        message("credit.earned", "bob", "rebate:quarterly:2027-Q1", "11.00", "19.00",
                "2027-04-02 16:00:00"),
    ]
    assert_journal_ok(cafe)
