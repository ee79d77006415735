"""Concurrency on real PostgreSQL: real threads started together by a barrier, one service
call per task. Only the expected domain errors may surface: no deadlock, no IntegrityError."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from setia.domain.errors import InsufficientPoints, RewardSoldOut, SetiaError
from setia.service.batch import ingest_batch
from setia.service.events import ingest_event
from setia.service.members import get_member, upsert_member
from setia.service.redemptions import adjust, redeem
from setia.service.run_due import run_due
from tests.conftest import (
    KOPI_SETIA,
    assert_journal_ok,
    at,
    fixed_clock,
    load_programme,
    wait_for_lock_waiters,
)

pytestmark = pytest.mark.postgres

P = "kopi-setia"
CLOCK = fixed_clock("2027-03-01T09:00:00+08:00")

SHOP = {
    "id": "shop", "name": "Shop", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "earn": [{"id": "base", "on": "purchase", "rate": 1}],
    "rewards": [{"id": "mug", "name": "Mug", "cost": 100, "stock": 5}],
}


def all_at_once(tasks: list[Callable[[], Any]], workers: int) -> list[tuple[str, Any]]:
    """Run the tasks on ``workers`` threads whose first tasks start together; ("ok", result)
    or ("error", exception) per task, in task order."""
    barrier = threading.Barrier(min(workers, len(tasks)))
    started = threading.local()

    def run(task: Callable[[], Any]) -> tuple[str, Any]:
        if not getattr(started, "yes", False):
            # each thread's first task waits for all threads; later ones follow at once
            started.yes = True
            barrier.wait(timeout=30)
        try:
            return "ok", task()
        except Exception as exc:  # noqa: BLE001 - the test asserts what came out
            return "error", exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, tasks))


def postings_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM postings")).scalar_one()


def balances(engine: sa.Engine, member: str, program: str = P) -> dict[str, int]:
    return get_member(engine, program, member, CLOCK)["balances"]


def only_expected_errors(outcomes: list[tuple[str, Any]], *expected: type[SetiaError]) -> None:
    unexpected = [value for kind, value in outcomes
                  if kind == "error" and not isinstance(value, expected)]
    assert unexpected == []


def test_concurrent_redemptions_never_spend_more_than_the_balance(pg_engine):
    # Given a member with 1000 available (welcome 50 stays pending)
    load_programme(pg_engine, KOPI_SETIA)
    upsert_member(pg_engine, P, "cust-1", {}, CLOCK)
    adjust(pg_engine, P, {"member": "cust-1", "points": 1000, "reason": "opening"}, "open", CLOCK)

    # When 64 free lattes (150 each) are redeemed at once
    outcomes = all_at_once([
        (lambda i=i: redeem(pg_engine, P, {"member": "cust-1", "reward": "free-latte"},
                            f"latte-{i}", CLOCK))
        for i in range(64)
    ], workers=64)

    # Then floor(1000 / 150) = 6 succeed, 58 are refused for points, 100 are left
    only_expected_errors(outcomes, InsufficientPoints)
    kinds = Counter(kind for kind, _ in outcomes)
    assert kinds == {"ok": 6, "error": 58}
    assert len({value["voucher"]["code"] for kind, value in outcomes if kind == "ok"}) == 6
    assert balances(pg_engine, "cust-1") == {"available": 100, "pending": 50, "reserved": 0}
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM redemptions")).scalar_one() == 6
        assert conn.execute(sa.text(
            "SELECT sum(points) FROM postings WHERE code = 'redeem'")).scalar_one() == 900
    assert_journal_ok(pg_engine)


def test_concurrent_redemptions_of_a_reward_never_exceed_its_stock(pg_engine):
    # Given a mug with a stock of 5 and 20 members with 1000 each
    load_programme(pg_engine, SHOP)
    members = [f"m{i:02d}" for i in range(20)]
    for member in members:
        upsert_member(pg_engine, "shop", member, {}, CLOCK)
        adjust(pg_engine, "shop", {"member": member, "points": 1000, "reason": "rich"},
               f"open-{member}", CLOCK)

    # When all 20 redeem it at once
    outcomes = all_at_once([
        (lambda m=m: redeem(pg_engine, "shop", {"member": m, "reward": "mug"}, f"mug-{m}",
                            CLOCK))
        for m in members
    ], workers=20)

    # Then exactly 5 succeed, 15 are sold out and keep their points
    only_expected_errors(outcomes, RewardSoldOut)
    winners = [m for m, (kind, _) in zip(members, outcomes, strict=True) if kind == "ok"]
    assert len(winners) == 5
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT redeemed FROM reward_stock WHERE reward_id = 'mug'")).scalar_one() == 5
    for member in members:
        expected = 900 if member in winners else 1000
        assert balances(pg_engine, member, "shop") == {
            "available": expected, "pending": 0, "reserved": 0}
    assert_journal_ok(pg_engine)


def test_the_same_event_sent_twenty_times_at_once_is_applied_once(pg_engine):
    # Given a member
    load_programme(pg_engine, KOPI_SETIA)
    upsert_member(pg_engine, P, "cust-1", {}, CLOCK)
    event = {"id": "till-7-000123", "type": "purchase", "member": "cust-1", "order_id": "o1",
             "occurred_at": "2027-03-02T10:00:00+08:00", "amount": "42.50"}

    # When the same purchase arrives 20 times at once
    outcomes = all_at_once([lambda: ingest_event(pg_engine, P, dict(event), CLOCK)] * 20,
                           workers=20)

    # Then one applied and 19 replayed the same result; base 42 + first-visit 100 once
    only_expected_errors(outcomes)
    statuses = Counter(value["status"] for _, value in outcomes)
    assert statuses == {"applied": 1, "replayed": 19}
    assert {value["points"] for _, value in outcomes} == {142}
    assert balances(pg_engine, "cust-1") == {"available": 0, "pending": 50 + 142, "reserved": 0}
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM orders")).scalar_one() == 1
        # signup 1 posting, purchase 2 postings
        assert conn.execute(sa.text("SELECT count(*) FROM postings")).scalar_one() == 3
    assert_journal_ok(pg_engine)


def distinct_events(member: str) -> list[dict[str, Any]]:
    # 24 purchases of 10.00 + 0.25 i (all >= 10.00, so first-visit pays 100 whichever
    # comes first; 309.00 in all stays below gold) and 6 March reviews (3 pay)
    purchases = [
        {"id": f"{member}-p{i}", "type": "purchase", "member": member, "order_id": f"{member}-o{i}",
         "occurred_at": f"2027-03-{2 + i % 4:02d}T1{i % 10}:00:00+08:00",
         "amount": f"{10 + i * 0.25:.2f}"}
        for i in range(24)
    ]
    reviews = [{"id": f"{member}-r{i}", "type": "review", "member": member,
                "occurred_at": f"2027-03-1{i}T10:00:00+08:00"} for i in range(6)]
    return purchases + reviews


def journal_sums(engine: sa.Engine, member: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT p.code, p.debit, p.credit, p.rule_id, count(*), sum(p.points) "
            "FROM postings p JOIN members m ON m.pk = p.member_pk WHERE m.id = :m "
            "GROUP BY p.code, p.debit, p.credit, p.rule_id "
            "ORDER BY p.code, p.debit, p.credit, p.rule_id"), {"m": member}).all()
    return [tuple(row) for row in rows]


def test_concurrent_distinct_events_end_as_if_sent_one_by_one(pg_engine):
    # Given two members; a gets its events from 8 threads, b the same events one by one
    load_programme(pg_engine, KOPI_SETIA)
    upsert_member(pg_engine, P, "a", {}, CLOCK)
    upsert_member(pg_engine, P, "b", {}, CLOCK)

    outcomes = all_at_once([
        (lambda e=e: ingest_event(pg_engine, P, e, CLOCK)) for e in distinct_events("a")
    ], workers=8)
    for event in distinct_events("b"):
        ingest_event(pg_engine, P, event, CLOCK)

    # Then every event was applied once and both members end the same:
    # base sum(floor(10 + 0.25 i)) = 240 + (0+0+0+0+1+1+1+1+2+...+5) = 240 + 60 = 300,
    # first-visit 100, reviews 3 x 5 = 15, welcome 50: 465 pending
    only_expected_errors(outcomes)
    assert Counter(value["status"] for _, value in outcomes) == {"applied": 30}
    assert balances(pg_engine, "a") == balances(pg_engine, "b") == {
        "available": 0, "pending": 465, "reserved": 0}
    assert journal_sums(pg_engine, "a") == journal_sums(pg_engine, "b")
    assert get_member(pg_engine, P, "a", CLOCK)["tier"] == get_member(pg_engine, P, "b",
                                                                       CLOCK)["tier"]
    assert_journal_ok(pg_engine)


def test_several_run_due_workers_at_once_release_each_hold_once(pg_engine):
    # Given 10 members each with an open hold of 150 out of 1000, and pending welcome 50
    load_programme(pg_engine, KOPI_SETIA)
    members = [f"m{i}" for i in range(10)]
    for member in members:
        upsert_member(pg_engine, P, member, {}, CLOCK)
        adjust(pg_engine, P, {"member": member, "points": 1000, "reason": "opening"},
               f"open-{member}", CLOCK)
        redeem(pg_engine, P, {"member": member, "reward": "free-latte", "hold": True},
               f"hold-{member}", CLOCK)
    before = postings_count(pg_engine)

    # When 4 workers run run-due with the same time at once
    as_of = at("2027-03-05T00:00:00+08:00")
    outcomes = all_at_once([lambda: run_due(pg_engine, as_of, P)] * 4, workers=4)

    # Then each hold was released once and each welcome activated once
    only_expected_errors(outcomes)
    reports = [value for _, value in outcomes]
    assert sum(r.holds_released for r in reports) == 10
    assert sum(r.points_activated for r in reports) == 10 * 50
    assert postings_count(pg_engine) == before + 10 + 10
    for member in members:
        assert balances(pg_engine, member) == {"available": 1050, "pending": 0, "reserved": 0}
    assert_journal_ok(pg_engine)


def test_mixed_writes_on_shared_members_surface_only_domain_errors(pg_engine):
    # Given 4 members with 300 each
    load_programme(pg_engine, KOPI_SETIA)
    members = [f"m{i}" for i in range(4)]
    for member in members:
        upsert_member(pg_engine, P, member, {}, CLOCK)
        adjust(pg_engine, P, {"member": member, "points": 300, "reason": "opening"},
               f"open-{member}", CLOCK)

    # When purchases, redemptions, holds and adjustments for them interleave on 16 threads
    tasks: list[Callable[[], Any]] = []
    for i in range(48):
        member = members[i % 4]
        kind = i % 4
        if kind == 0:
            tasks.append(lambda i=i, m=member: ingest_event(pg_engine, P, {
                "id": f"p{i}", "type": "purchase", "member": m, "order_id": f"o{i}",
                "occurred_at": "2027-03-02T10:00:00+08:00", "amount": "20.00"}, CLOCK))
        elif kind == 1:
            tasks.append(lambda i=i, m=member: redeem(
                pg_engine, P, {"member": m, "reward": "free-latte"}, f"r{i}", CLOCK))
        elif kind == 2:
            tasks.append(lambda i=i, m=member: redeem(
                pg_engine, P, {"member": m, "points": 40, "hold": True}, f"h{i}", CLOCK))
        else:
            tasks.append(lambda i=i, m=member: adjust(
                pg_engine, P, {"member": m, "points": -30, "reason": "fix"}, f"a{i}", CLOCK))
    outcomes = all_at_once(tasks, workers=16)

    # Then only "not enough points" refusals came out and no balance went below zero
    only_expected_errors(outcomes, InsufficientPoints)
    for member in members:
        view = balances(pg_engine, member)
        assert view["available"] >= 0
        assert view["available"] + view["reserved"] <= 300
    assert_journal_ok(pg_engine)


def test_concurrent_batches_naming_one_new_order_record_it_once(pg_engine):
    # Batches look up which of their purchases' orders exist before they lock members
    # (service/batch.py). Given 8 members, and 8 batches at once, each with a purchase of
    # order "shared" for its own member, and a purchase of an order of its own
    load_programme(pg_engine, KOPI_SETIA)
    members = [f"m{i}" for i in range(8)]
    for member in members:
        upsert_member(pg_engine, P, member, {}, CLOCK)

    def purchase(event_id: str, member: str, order_id: str) -> dict[str, Any]:
        return {"id": event_id, "type": "purchase", "member": member, "order_id": order_id,
                "occurred_at": "2027-03-02T10:00:00+08:00", "amount": "20.00"}

    tasks = [(lambda i=i, m=m: ingest_batch(pg_engine, P, [
        purchase(f"own-{i}", m, f"own-{i}"), purchase(f"shared-{i}", m, "shared")], CLOCK))
        for i, m in enumerate(members)]
    outcomes = all_at_once(tasks, workers=8)

    # Then no error came out, every batch recorded its own order, and exactly one of them
    # recorded "shared": the others were refused as already recorded
    only_expected_errors(outcomes)
    results = [value for _, value in outcomes]
    assert [batch[0]["status"] for batch in results] == ["applied"] * 8
    shared = Counter(batch[1]["status"] for batch in results)
    assert shared == {"applied": 1, "rejected": 7}
    refusals = {batch[1]["problem"]["detail"] for batch in results
                if batch[1]["status"] == "rejected"}
    assert refusals == {"order 'shared' was already recorded by another event"}
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT count(*) FROM orders WHERE order_id = 'shared'")).scalar_one() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM orders")).scalar_one() == 9
    assert_journal_ok(pg_engine)


@pytest.mark.parametrize("also_named_by", [None, "a purchase refused early"])
def test_a_batch_refunds_an_order_a_purchase_holding_the_member_records(pg_engine,
                                                                        also_named_by):
    # A refund's order is read under its member's lock, so a batch that waits for the lock
    # finds the order the holder of the lock recorded, even when a purchase of the batch
    # names the same order and is refused before it gets to record it (so that no clash on
    # the orders' key makes the batch run again). Given a shop that keeps events 12 months
    # and a member
    load_programme(pg_engine, {**SHOP, "privacy": {"event_retention_months": 12}})
    upsert_member(pg_engine, "shop", "m", {}, CLOCK)
    purchase = {"id": "p1", "type": "purchase", "member": "m", "order_id": "o1",
                "occurred_at": "2027-03-01T08:00:00+08:00", "amount": "20.00"}
    refund = {"id": "r1", "type": "refund", "member": "m", "order_id": "o1",
              "occurred_at": "2027-03-01T08:30:00+08:00", "amount": "5.00"}
    batch = [refund]
    if also_named_by:
        batch = [{**purchase, "id": "p-old", "occurred_at": "2025-01-01T08:00:00+08:00"},
                 refund]
    with ThreadPoolExecutor(max_workers=2) as pool, pg_engine.connect() as gate:
        # the purchase locks the member, then waits to write its outbox row
        gate.execute(sa.text("LOCK TABLE outbox IN EXCLUSIVE MODE"))
        bought = pool.submit(ingest_event, pg_engine, "shop", purchase, CLOCK)
        wait_for_lock_waiters(pg_engine, 1)
        # the batch reads what it reads before locking members, then waits for the member
        refunded = pool.submit(ingest_batch, pg_engine, "shop", batch, CLOCK)
        wait_for_lock_waiters(pg_engine, 2)
        gate.commit()
        assert bought.result(timeout=30)["status"] == "applied"
        results = refunded.result(timeout=30)

    # Then the refund found the order: applied, RM 5.00 of it refunded, 5 of 20 points
    # clawed back; the old purchase was refused for its age
    if also_named_by:
        assert results[0]["status"] == "rejected"
        assert results[0]["problem"]["field"] == "events[0].occurred_at"
    assert results[-1]["status"] == "applied", results
    assert results[-1]["points"] == -5
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT refunded_e4 FROM orders WHERE order_id = 'o1'")).scalar_one() == 50000
    assert balances(pg_engine, "m", "shop") == {"available": 15, "pending": 0, "reserved": 0}
    assert_journal_ok(pg_engine)


def shop_with_a_member(engine: sa.Engine) -> dict[str, Any]:
    """The shop, its member "m", and a purchase of RM 20.00 by her (not sent yet)."""
    load_programme(engine, SHOP)
    upsert_member(engine, "shop", "m", {}, CLOCK)
    return {"id": "p1", "type": "purchase", "member": "m", "order_id": "o1",
            "occurred_at": "2027-03-01T08:00:00+08:00", "amount": "20.00"}


def applied_once_and_replayed(engine: sa.Engine, first: dict[str, Any],
                              second: dict[str, Any]) -> None:
    """The purchase earned 20 points once; the other copy answered the same, replayed."""
    assert first["status"] == "applied" and first["points"] == 20
    assert second == {**first, "status": "replayed"}
    assert balances(engine, "m", "shop") == {"available": 20, "pending": 0, "reserved": 0}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events WHERE id = 'p1'")
                            ).scalar_one() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM orders")).scalar_one() == 1
    assert_journal_ok(engine)


def test_a_batch_replays_an_event_the_holder_of_its_members_lock_applies(pg_engine):
    # A till sends the same purchase twice at once: alone, and in a batch (or in a group of
    # single events, which goes through the same apply_batch). The batch reads stored
    # events under the member's lock, so it finds the event the holder of the lock applied
    # and replays it, instead of finding its order "recorded by another event". Given a
    # shop and a member
    purchase = shop_with_a_member(pg_engine)
    with ThreadPoolExecutor(max_workers=2) as pool, pg_engine.connect() as gate:
        # the single event locks the member, then waits to write its outbox row
        gate.execute(sa.text("LOCK TABLE outbox IN EXCLUSIVE MODE"))
        alone = pool.submit(ingest_event, pg_engine, "shop", purchase, CLOCK)
        wait_for_lock_waiters(pg_engine, 1)
        # the batch does what it does before locking members, then waits for the member
        batched = pool.submit(ingest_batch, pg_engine, "shop", [purchase], CLOCK)
        wait_for_lock_waiters(pg_engine, 2)
        gate.commit()
        first = alone.result(timeout=30)
        [second] = batched.result(timeout=30)

    # Then one applied it and the other replayed the same result: 20 points, once
    applied_once_and_replayed(pg_engine, first, second)


def test_a_batch_replays_an_event_applied_between_its_first_reads(pg_engine):
    # The narrower window: the other copy of the event commits after the batch's first
    # read and before it reads which orders exist, so the batch finds the order before it
    # locks the member. Stored events read before the lock would miss the event and call
    # its order "recorded by another event" (two API processes that both got the same
    # event once answered 422 so). The other copy is applied from inside the batch's
    # transaction, on another pooled connection, just before that orders statement runs.
    purchase = shop_with_a_member(pg_engine)
    other: list[dict[str, Any]] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not other and statement.startswith("SELECT orders.order_id"):
            other.append(ingest_event(pg_engine, "shop", purchase, CLOCK))

    sa.event.listen(pg_engine, "before_cursor_execute", before)
    try:
        [batched] = ingest_batch(pg_engine, "shop", [purchase], CLOCK)
    finally:
        sa.event.remove(pg_engine, "before_cursor_execute", before)

    # Then the other copy applied it, and the batch replayed the same result
    applied_once_and_replayed(pg_engine, other[0], batched)


def test_drafts_saved_at_once_from_one_version_store_one_and_refuse_the_rest(pg_engine):
    # Given the shop at version 1, and eight owners each editing a draft of it
    from setia.domain.errors import VersionConflict
    from setia.service.programmes import store_programme

    load_programme(pg_engine, SHOP)
    drafts = [{**SHOP, "name": f"Shop {n}"} for n in range(8)]

    # When all eight save at once, each from version 1
    outcomes = all_at_once([lambda d=d: store_programme(pg_engine, d, base_version=1)
                            for d in drafts], workers=8)

    # Then one is stored as version 2, and the seven others are refused naming it
    stored = [value for kind, value in outcomes if kind == "ok"]
    refused = [value for kind, value in outcomes if kind == "error"]
    assert [s["version"] for s in stored] == [2]
    assert len(refused) == 7 and all(isinstance(e, VersionConflict) for e in refused)
    assert {(e.field, e.extra["current_version"]) for e in refused} == {("base", 2)}
    with pg_engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT version FROM program_versions WHERE program_id = 'shop' ORDER BY version"
        )).scalars().all()
        names = conn.execute(sa.text(
            "SELECT count(*) FROM audit_log WHERE action = 'programme.store'")).scalar_one()
    assert (rows, names) == ([1, 2], 2)
    assert_journal_ok(pg_engine)
