"""Store credit under concurrency on real PostgreSQL: threads started together by a barrier,
each with its own connection (one service call per task)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from setia.domain.store_credit import CreditHoldNotOpen, InsufficientCredit
from setia.service import store_credit
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from setia.service.run_due import run_due
from tests.conftest import assert_journal_ok, at, fixed_clock, load_programme
from tests.integration.test_concurrency import all_at_once

pytestmark = pytest.mark.postgres

P = "credit-race"
TILL = fixed_clock("2027-03-15T12:00:00+08:00")
PROGRAMME = {"id": P, "name": "Credit race", "currency": "MYR",
             "timezone": "Asia/Kuala_Lumpur",
             "cashback": {"instant": [{"id": "ten", "percent": 10}]}}


@pytest.fixture
def funded(pg_engine: sa.Engine) -> sa.Engine:
    """Member ana with 10.00 of store credit (10% of a 100.00 purchase)."""
    load_programme(pg_engine, PROGRAMME)
    upsert_member(pg_engine, P, "ana", {}, TILL)
    ingest_event(pg_engine, P, {"id": "e1", "type": "purchase", "member": "ana",
                                "occurred_at": "2027-03-01T10:00:00+08:00", "order_id": "o1",
                                "amount": "100.00"})
    return pg_engine


def spent(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT coalesce(sum(points), 0) FROM postings WHERE asset = 'credit:MYR' "
            "AND credit = 'redeemed'")).scalar_one())


def outcomes(results: list[tuple[str, Any]]) -> Counter[str]:
    return Counter(kind if kind == "ok" else type(value).__name__ for kind, value in results)


def test_twenty_tills_holding_one_ringgit_each_reserve_exactly_the_balance(funded):
    tasks = [lambda i=i: store_credit.hold(funded, P, {"member": "ana", "amount": "1.00"},
                                           f"hold-{i}", TILL) for i in range(20)]
    results = all_at_once(tasks, workers=10)
    assert outcomes(results) == Counter({"ok": 10, "InsufficientCredit": 10})
    assert all(isinstance(value, InsufficientCredit) for kind, value in results
               if kind == "error")
    assert store_credit.balance(funded, P, "ana")["available"] == "0.00"
    assert store_credit.balance(funded, P, "ana")["reserved"] == "10.00"
    held = [value["id"] for kind, value in results if kind == "ok"]

    # every hold captured by two tills at once, and run-due releasing timed-out holds too:
    # each hold ends captured exactly once
    captures = [lambda h=h, n=n: store_credit.capture_or_release(
        funded, P, h, "capture", None, f"cap-{h}-{n}", TILL) for h in held for n in (1, 2)]
    captures.append(lambda: run_due(funded, at("2027-03-15T12:14:00+08:00"), P))
    results = all_at_once(captures, workers=10)
    assert outcomes(results) == Counter({"ok": 11, "CreditHoldNotOpen": 10})
    assert all(isinstance(value, CreditHoldNotOpen) for kind, value in results
               if kind == "error")
    assert store_credit.balance(funded, P, "ana") == {
        "member": "ana", "asset": "credit:MYR", "currency": "MYR",
        "available": "0.00", "reserved": "0.00"}
    assert spent(funded) == 1000
    assert_journal_ok(funded)


def test_the_same_hold_sent_ten_times_at_once_reserves_once(funded):
    body = {"member": "ana", "amount": "3.00"}
    results = all_at_once([lambda: store_credit.hold(funded, P, body, "same", TILL)] * 10,
                          workers=10)
    assert outcomes(results) == Counter({"ok": 10})
    assert len({value["id"] for _, value in results}) == 1
    assert store_credit.balance(funded, P, "ana")["reserved"] == "3.00"
    assert_journal_ok(funded)


def test_captures_racing_run_due_release_end_either_captured_or_released(funded):
    holds = [store_credit.hold(funded, P, {"member": "ana", "amount": "2.00"}, f"h{i}", TILL)
             for i in range(5)]
    tasks: list[Any] = [lambda h=h: store_credit.capture_or_release(
        funded, P, h["id"], "capture", None, f"c-{h['id']}", TILL) for h in holds]
    tasks += [lambda: run_due(funded, at("2027-03-15T12:30:00+08:00"), P)] * 3
    results = all_at_once(tasks, workers=8)
    captured = sum(1 for kind, _ in results[:5] if kind == "ok")
    assert all(isinstance(value, CreditHoldNotOpen) for kind, value in results[:5]
               if kind == "error")
    released = sum(value.credit_holds_released for _, value in results[5:])
    assert captured + released == 5
    assert spent(funded) == 200 * captured
    assert store_credit.balance(funded, P, "ana")["available"] == \
        f"{(1000 - 200 * captured) / 100:.2f}"
    assert_journal_ok(funded)
