"""The duplicate-receipt check under concurrency, on real PostgreSQL: two members' purchases
at the same store with the same amount and time, applied by transactions in flight at once
(threads started together by a barrier, each with its own connection). Exactly one of the
two is held for review, round after round, whether the purchases come as single events or
in batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from setia.service import fraud
from setia.service.batch import ingest_batch
from setia.service.common import lock_key
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from setia.service.till import purchase_with_coupon
from tests.conftest import assert_journal_ok, fixed_clock, load_programme
from tests.integration.test_concurrency import all_at_once, only_expected_errors
from tests.integration.test_trust_fraud import balances, journal, purchase

pytestmark = pytest.mark.postgres

P = "fraud-cafe"
CLOCK = fixed_clock("2027-03-01T12:00:00+00:00")
ROUNDS = 30
DUPLICATE = ("duplicate receipt: 1 other purchase(s) with the same store and amount "
             "within 10 minutes")
PROGRAMME: dict[str, Any] = {
    "id": P, "name": "Fraud Cafe", "currency": "MYR", "timezone": "UTC",
    "points": {"pending_days": 0},
    "earn": [{"id": "base", "on": "purchase", "rate": 1}],
    "fraud": {"duplicate_receipts": {"window_minutes": 10}},
}


def single(engine: sa.Engine, event: dict[str, Any]) -> dict[str, Any]:
    return ingest_event(engine, P, event, CLOCK)


def batched(engine: sa.Engine, event: dict[str, Any]) -> dict[str, Any]:
    (result,) = ingest_batch(engine, P, [event], CLOCK)
    return result


@pytest.mark.parametrize("send", [single, batched], ids=["single", "batch"])
def test_two_members_claiming_one_receipt_at_once_have_exactly_one_held(
        pg_engine: sa.Engine, send: Callable[[sa.Engine, dict[str, Any]], dict[str, Any]],
) -> None:
    # Given two members and a programme that screens duplicate receipts (held for review)
    load_programme(pg_engine, PROGRAMME)
    for member in ("m1", "m2"):
        upsert_member(pg_engine, P, member, {}, CLOCK)
    expected = {"m1": {"available": 0, "pending": 0, "reserved": 0},
                "m2": {"available": 0, "pending": 0, "reserved": 0}}
    held_points = 0
    doubly_held: list[int] = []
    for n in range(ROUNDS):
        # When both claim a receipt of the same store, amount and time at once (a new
        # amount each round: RM 20.00, 21.00, ..., so rounds do not see each other)
        amount = 20 + n
        when = f"2027-03-01T10:{n:02d}:00+00:00"
        events = [purchase(f"r{n}-{m}", m, when, f"{amount}.00") for m in ("m1", "m2")]
        outcomes = all_at_once([lambda e=e: send(pg_engine, e) for e in events], workers=2)

        # Then both are applied with their points, and exactly one is held for review
        only_expected_errors(outcomes)
        results = [value for _, value in outcomes]
        assert [r["status"] for r in results] == ["applied", "applied"]
        assert [r["points"] for r in results] == [amount, amount]
        held = [r for r in results if "review" in r]
        if len(held) != 1:
            doubly_held.append(n)
            continue
        (review,) = held
        assert review["review"]["reasons"] == [DUPLICATE]
        assert review["review"]["held"] is True
        for member, result in zip(("m1", "m2"), results, strict=True):
            expected[member]["pending" if "review" in result else "available"] += amount
        held_points += amount
    assert doubly_held == [], f"rounds where both or neither were held: {doubly_held}"
    assert balances(pg_engine, "m1") == expected["m1"]
    assert balances(pg_engine, "m2") == expected["m2"]
    assert sum(b["pending"] for b in expected.values()) == held_points == sum(
        20 + n for n in range(ROUNDS))
    queue = fraud.reviews(pg_engine, P)
    assert len(queue) == ROUNDS
    assert sorted(r["points"] for r in queue) == [20 + n for n in range(ROUNDS)]
    assert {tuple(r["reasons"]) for r in queue} == {(DUPLICATE,)}
    assert journal(pg_engine, "review_hold") == [
        ("available", "pending", r["points"]) for r in queue]
    assert_journal_ok(pg_engine)


def test_two_batches_taking_receipt_locks_in_opposite_orders_both_finish(
        pg_engine: sa.Engine) -> None:
    # Given two members, and one batch for each of the same ten receipts (RM 30.00 to
    # 39.00 at kl-01), m1's in rising order of amount and m2's in falling order (a batch
    # takes its receipt locks in the order of their keys, not of its events)
    load_programme(pg_engine, PROGRAMME)
    for member in ("m1", "m2"):
        upsert_member(pg_engine, P, member, {}, CLOCK)
    amounts = list(range(30, 40))
    when = "2027-03-01T11:00:00+00:00"
    batches = {
        "m1": [purchase(f"m1-{a}", "m1", when, f"{a}.00") for a in amounts],
        "m2": [purchase(f"m2-{a}", "m2", when, f"{a}.00") for a in reversed(amounts)],
    }

    # When both are sent at once
    outcomes = all_at_once([lambda b=b: ingest_batch(pg_engine, P, b, CLOCK)
                            for b in batches.values()], workers=2)

    # Then both are applied in full, and of each receipt exactly one of the two is held
    only_expected_errors(outcomes)
    results = {member: {r["event"]: r for r in value}
               for member, (_, value) in zip(batches, outcomes, strict=True)}
    assert {r["status"] for member in results for r in results[member].values()} == {
        "applied"}
    held = {a: sorted(m for m in ("m1", "m2") if "review" in results[m][f"{m}-{a}"])
            for a in amounts}
    assert all(len(members) == 1 for members in held.values()), held
    pending = {m: sum(a for a in amounts if held[a] == [m]) for m in ("m1", "m2")}
    for member in ("m1", "m2"):
        assert balances(pg_engine, member) == {
            "available": sum(amounts) - pending[member], "pending": pending[member],
            "reserved": 0}
    assert len(fraud.reviews(pg_engine, P)) == 10
    assert_journal_ok(pg_engine)



def test_a_batch_takes_its_receipt_locks_at_once_in_the_order_of_their_keys(
        pg_engine: sa.Engine) -> None:
    # Given m1 and a batch of ten receipts (RM 30.00 to 39.00 at kl-01, two of RM 35.00),
    # in falling order of amount
    load_programme(pg_engine, PROGRAMME)
    upsert_member(pg_engine, P, "m1", {}, CLOCK)
    amounts = [39, 38, 37, 36, 35, 35, 34, 33, 32, 31, 30]
    events = [purchase(f"e{n}", "m1", f"2027-03-01T{n:02d}:00:00+00:00", f"{a}.00")
              for n, a in enumerate(amounts)]
    keys: list[list[int]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if "pg_advisory_xact_lock" in statement:
            keys.append(parameters.get("keys") or [parameters["key"]])

    # When it is applied
    sa.event.listen(pg_engine, "before_cursor_execute", seen)
    try:
        results = ingest_batch(pg_engine, P, events, CLOCK)
    finally:
        sa.event.remove(pg_engine, "before_cursor_execute", seen)

    # Then each receipt's lock was taken once, all in one statement and in the order of
    # their keys (batches taking them in the order of their events could deadlock), and
    # the second RM 35.00 an hour later is no duplicate (10 minutes)
    expected = {lock_key("receipt", P, "kl-01", a * 10_000) for a in amounts}
    assert keys == [sorted(expected)] and len(keys[0]) == 10
    assert [r["status"] for r in results] == ["applied"] * 11
    assert fraud.reviews(pg_engine, P) == []
    assert balances(pg_engine, "m1") == {"available": sum(amounts), "pending": 0,
                                         "reserved": 0}
    assert_journal_ok(pg_engine)

def test_only_a_programme_that_screens_duplicates_takes_the_receipt_lock(
        pg_engine: sa.Engine) -> None:
    # Given the duplicate-screening programme and one screening velocity only
    load_programme(pg_engine, PROGRAMME)
    velocity = {**PROGRAMME, "id": "velocity-cafe",
                "fraud": {"velocity": [{"per": "hour", "max_events": 5}]}}
    load_programme(pg_engine, velocity)
    for program in (P, "velocity-cafe"):
        upsert_member(pg_engine, program, "m1", {}, CLOCK)
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    # When each gets a purchase (and the first a refund, which is not screened)
    sa.event.listen(pg_engine, "before_cursor_execute", seen)
    try:
        ingest_event(pg_engine, "velocity-cafe",
                     purchase("v1", "m1", "2027-03-01T10:00:00+00:00", "30.00"), CLOCK)
        without = len([s for s in statements if "pg_advisory_xact_lock" in s])
        ingest_event(pg_engine, P, purchase("d1", "m1", "2027-03-01T10:00:00+00:00", "30.00"),
                     CLOCK)
        ingest_event(pg_engine, P, {"id": "d2", "type": "refund", "member": "m1",
                                    "order_id": "o-d1", "amount": "10.00",
                                    "occurred_at": "2027-03-01T10:05:00+00:00"}, CLOCK)
    finally:
        sa.event.remove(pg_engine, "before_cursor_execute", seen)

    # Then only the screened purchase took it, once
    assert without == 0
    assert len([s for s in statements if "pg_advisory_xact_lock" in s]) == 1
    assert balances(pg_engine, "m1") == {"available": 20, "pending": 0, "reserved": 0}
    assert balances(pg_engine, "m1", "velocity-cafe") == {
        "available": 30, "pending": 0, "reserved": 0}
    assert_journal_ok(pg_engine)


def lock_keys_in_order(engine: sa.Engine, statements: list[str], *,
                       budget: str = "FROM campaign_budgets") -> Callable[..., None]:
    """A cursor listener noting each advisory lock's keys, and a budget row lock as
    "budget", in the order they are sent (a budget read again at once, as when its row is
    made by the first award, once)."""

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if "pg_advisory_xact_lock" in statement:
            statements.extend(map(str, parameters.get("keys") or [parameters["key"]]))
        elif budget in statement and "FOR UPDATE" in statement and statements[-1:] != [
                "budget"]:
            statements.append("budget")

    sa.event.listen(engine, "before_cursor_execute", seen)
    return seen


def test_every_path_takes_the_receipt_lock_before_budget_and_coupon_locks(
        pg_engine: sa.Engine) -> None:
    # Given a programme that screens duplicate receipts, with a budgeted campaign and a
    # RM 5.00 coupon, and m1 and m2
    document = {**PROGRAMME,
                "campaigns": [{"id": "promo", "name": "Promo", "points": 10, "budget": 1000}],
                "coupons": [{"id": "five", "name": "RM 5 off", "code": "FIVE",
                             "discount": {"amount_off": "5.00"}}]}
    load_programme(pg_engine, document)
    for member in ("m1", "m2"):
        upsert_member(pg_engine, P, member, {}, CLOCK)
    statements: list[str] = []
    listener = lock_keys_in_order(pg_engine, statements)
    try:
        # When m1 buys for RM 30.00 alone, and m2 for RM 30.00 less the coupon at the till
        ingest_event(pg_engine, P, purchase("e1", "m1", "2027-03-01T10:00:00+00:00",
                                            "30.00"), CLOCK)
        single = list(statements)
        statements.clear()
        purchase_with_coupon(pg_engine, P, purchase("e2", "m2", "2027-03-01T11:00:00+00:00",
                                                    "30.00"), "FIVE", "till-1", CLOCK)
    finally:
        sa.event.remove(pg_engine, "before_cursor_execute", listener)

    # Then the single event locked its receipt before the campaign's budget row, and the
    # till its receipt of the amount paid (RM 25.00) before the coupon's order lock and
    # the budget row: one order on every path, so none waits for another in reverse
    assert single == [str(lock_key("receipt", P, "kl-01", 300_000)), "budget"]
    assert statements == [str(lock_key("receipt", P, "kl-01", 250_000)),
                          str(lock_key("coupon-order", P, "o-e2")), "budget"]
    assert balances(pg_engine, "m1") == {"available": 40, "pending": 0, "reserved": 0}
    assert balances(pg_engine, "m2") == {"available": 35, "pending": 0, "reserved": 0}
    assert_journal_ok(pg_engine)
