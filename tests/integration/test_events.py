"""Earning through ingest_event on the Kopi Setia programme (pending_days 3, MYR, +08:00)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from setia.domain.errors import UnknownMember
from setia.service.events import ingest_event, simulate_event
from setia.service.members import get_member, upsert_member
from setia.service.run_due import run_due
from tests.conftest import assert_journal_ok, at, fixed_clock

P = "kopi-setia"
CLOCK = fixed_clock("2027-03-01T09:00:00+08:00")  # Monday


def postings_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM postings")).scalar_one()


def enrol(engine: sa.Engine, member: str = "cust-1") -> None:
    # enrolment posts signup: welcome 50, pending until 2027-03-04T09:00+08:00
    upsert_member(engine, P, member, {"name": "Mei"}, CLOCK)


def coffee_and_croissant(event_id: str = "e1", order_id: str = "o1", member: str = "cust-1",
                         when: str = "2027-03-02T10:00:00+08:00") -> dict[str, Any]:
    # Tuesday: no weekend rule; store kl-01 but the anniversary is only in June.
    return {
        "id": event_id, "type": "purchase", "member": member, "order_id": order_id,
        "occurred_at": when, "amount": "42.50", "currency": "MYR", "store": "kl-01",
        "channel": "pos",
        "lines": [{"sku": "LATTE", "category": "coffee", "quantity": 2, "amount": "24.00"},
                  {"sku": "CROISSANT", "category": "pastry", "quantity": 1, "amount": "18.50"}],
    }


def test_a_purchase_earns_one_posting_per_matching_rule_with_its_explanation(kopi):
    # Given a member with the welcome 50 pending
    enrol(kopi)

    # When a RM 42.50 purchase with a RM 18.50 pastry line arrives
    result = ingest_event(kopi, P, coffee_and_croissant(), CLOCK)

    # Then base floor(1 x 42.50) = 42, pastry-bonus floor(1 x 18.50) = 18,
    # first-visit 100 (42.50 >= 10.00): 160 in all, pending for 3 days
    assert result["status"] == "applied"
    assert result["points"] == 160
    assert sorted(result["postings"], key=lambda p: p["rule"]) == [
        {"rule": "base", "points": 42, "explanation": "1 × RM 42.50 = 42 Beans (base)"},
        {"rule": "first-visit", "points": 100, "explanation": "100 Beans (first-visit)"},
        {"rule": "pastry-bonus", "points": 18,
         "explanation": "1 × RM 18.50 = 18 Beans (pastry-bonus)"},
    ]
    assert result["balances"] == {"available": 0, "pending": 50 + 160, "reserved": 0}
    assert result["tier"]["id"] == "member"
    assert get_member(kopi, P, "cust-1", CLOCK)["balances"] == result["balances"]
    assert_journal_ok(kopi)


def test_pending_points_become_available_only_when_run_due_reaches_their_time(kopi):
    # Given welcome 50 (available 2027-03-04T09:00) and a purchase worth 160
    # (available 2027-03-05T10:00)
    enrol(kopi)
    ingest_event(kopi, P, coffee_and_croissant(), CLOCK)

    # When run-due runs one minute before the purchase's points are due
    first = run_due(kopi, at("2027-03-05T09:59:00+08:00"), P)

    # Then only the welcome points are available
    assert first.points_activated == 50
    assert get_member(kopi, P, "cust-1", CLOCK)["balances"] == {
        "available": 50, "pending": 160, "reserved": 0}

    # When run-due reaches the purchase's time
    second = run_due(kopi, at("2027-03-05T10:00:00+08:00"), P)

    # Then the 160 are available too
    assert second.points_activated == 160
    assert get_member(kopi, P, "cust-1", CLOCK)["balances"] == {
        "available": 210, "pending": 0, "reserved": 0}
    assert_journal_ok(kopi)


def test_reads_do_not_activate_pending_points_on_their_own(kopi):
    # Given welcome 50 due at 2027-03-04T09:00
    enrol(kopi)

    # When the member is read long after, without run-due
    view = get_member(kopi, P, "cust-1", fixed_clock("2027-04-01T00:00:00+08:00"))

    # Then the points are still pending
    assert view["balances"] == {"available": 0, "pending": 50, "reserved": 0}
    assert_journal_ok(kopi)


def test_the_purchase_that_crosses_a_tier_earns_at_the_old_tier_and_the_next_at_the_new(kopi):
    # Given a member
    enrol(kopi)

    # When a RM 400.00 purchase crosses gold (350)
    crossing = ingest_event(kopi, P, {
        "id": "e1", "type": "purchase", "member": "cust-1", "order_id": "o1",
        "occurred_at": "2027-03-02T10:00:00+08:00", "amount": "400.00"}, CLOCK)

    # Then it earns at Member: base 400 + first-visit 100, and the member is gold
    assert crossing["points"] == 500
    assert crossing["tier"] == {"id": "gold", "name": "Gold", "multiplier": "1.25"}

    # When a RM 10.00 signature drink follows
    after = ingest_event(kopi, P, {
        "id": "e2", "type": "purchase", "member": "cust-1", "order_id": "o2",
        "occurred_at": "2027-03-03T10:00:00+08:00", "amount": "10.00",
        "lines": [{"sku": "KOPI-SETIA", "category": "coffee", "quantity": 1,
                   "amount": "10.00"}]}, CLOCK)

    # Then base floor(1 x 10.00 x 1.25) = 12 and signature-drink floor(10 x 1.25) = 12
    assert {p["rule"]: p["points"] for p in after["postings"]} == {
        "base": 12, "signature-drink": 12}
    assert after["points"] == 24
    assert after["balances"] == {"available": 0, "pending": 50 + 500 + 24, "reserved": 0}
    assert_journal_ok(kopi)


def test_weekend_and_app_rules_add_to_the_base_rule(kopi):
    # Given a member
    enrol(kopi)

    # When a RM 20.00 app order arrives on Saturday 2027-03-06
    result = ingest_event(kopi, P, {
        "id": "e1", "type": "purchase", "member": "cust-1", "order_id": "o1",
        "occurred_at": "2027-03-06T10:00:00+08:00", "amount": "20.00", "channel": "app"},
        CLOCK)

    # Then base 20, weekend 20, app-orders floor(0.5 x 20) = 10, first-visit 100
    assert {p["rule"]: p["points"] for p in result["postings"]} == {
        "base": 20, "weekend": 20, "app-orders": 10, "first-visit": 100}
    assert result["points"] == 150
    assert_journal_ok(kopi)


def test_a_limited_rule_pays_only_up_to_its_limit_per_month(kopi):
    # Given a member; review pays 5, at most 3 times a month
    enrol(kopi)

    # When four reviews arrive in March
    results = [
        ingest_event(kopi, P, {"id": f"rev-{i}", "type": "review", "member": "cust-1",
                               "occurred_at": f"2027-03-0{i + 2}T10:00:00+08:00"}, CLOCK)
        for i in range(4)
    ]

    # Then the first three pay 5 and the fourth nothing; April pays again
    assert [r["points"] for r in results] == [5, 5, 5, 0]
    april = ingest_event(kopi, P, {"id": "rev-apr", "type": "review", "member": "cust-1",
                                   "occurred_at": "2027-04-01T10:00:00+08:00"}, CLOCK)
    assert april["points"] == 5
    assert get_member(kopi, P, "cust-1", CLOCK)["balances"]["pending"] == 50 + 15 + 5
    assert_journal_ok(kopi)


def test_an_event_for_an_unknown_member_is_refused_and_changes_nothing(kopi):
    # Given one member and the journal as it stands
    enrol(kopi)
    before = postings_count(kopi)

    # When an event names a member who is not enrolled (auto_enroll is false)
    with pytest.raises(UnknownMember) as error:
        ingest_event(kopi, P, coffee_and_croissant(member="nobody"), CLOCK)

    # Then it is refused naming the member field, and nothing was written
    assert error.value.field == "member"
    assert postings_count(kopi) == before
    with kopi.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM members")).scalar_one() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM orders")).scalar_one() == 0
    assert_journal_ok(kopi)


@pytest.mark.parametrize("event_type", ["birthday", "signup", "anniversary"])
def test_an_event_setia_posts_itself_cannot_be_sent(kopi, event_type):
    # Given a member (enrolment posted her signup) and the journal as it stands
    from setia.domain.errors import InvalidField
    from setia.service.batch import ingest_batch

    enrol(kopi)
    before = postings_count(kopi)
    sent = {"id": f"x-{event_type}", "type": event_type, "member": "cust-1",
            "occurred_at": "2027-03-01T10:00:00+08:00"}

    # When a till sends one, alone, in a batch or to simulate
    with pytest.raises(InvalidField) as alone:
        ingest_event(kopi, P, sent, CLOCK)
    with pytest.raises(InvalidField) as simulated:
        simulate_event(kopi, P, sent, CLOCK)
    (in_batch,) = ingest_batch(kopi, P, [sent], CLOCK)

    # Then each is refused naming the type (run-due's birthday bonus is paid once a year,
    # not for every event a till sends), and nothing was written
    assert alone.value.field == simulated.value.field == "type"
    assert str(alone.value).startswith(f"{event_type} events cannot be sent: ")
    assert (in_batch["status"], in_batch["problem"]["field"]) == ("rejected", "events[0].type")
    assert postings_count(kopi) == before
    with kopi.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT count(*) FROM events WHERE id LIKE 'x-%'")).scalar_one() == 0
    assert_journal_ok(kopi)


def test_a_birthday_event_stored_before_it_was_refused_replays_when_sent_again(kopi):
    # Given a birthday event a till sent while such events were still taken (stored as
    # an earlier version of Setia stored it: applied as sent)
    from setia.domain.events import parse_event
    from setia.service.common import require_programme, transaction
    from setia.service.events import apply_event

    enrol(kopi)
    sent = {"id": "b-1", "type": "birthday", "member": "cust-1",
            "occurred_at": "2027-03-01T10:00:00+08:00"}

    def earlier(uow: Any) -> dict[str, Any]:
        programme = require_programme(uow, P)
        result = apply_event(uow, programme, parse_event(sent, "MYR"), sent, CLOCK())
        uow.commit()
        return result

    first = transaction(kopi, earlier)
    before = postings_count(kopi)

    # When the till retries it
    again = ingest_event(kopi, P, sent, CLOCK)

    # Then it replays the first answer (the same key and request), and pays nothing more
    assert again == {**first, "status": "replayed"}
    assert postings_count(kopi) == before
    assert_journal_ok(kopi)


def test_an_amount_or_quantity_past_what_can_be_stored_is_refused_alone_in_its_batch(kopi):
    # Given a member
    from setia.service.batch import ingest_batch

    enrol(kopi)

    # When a batch holds a good purchase between one of RM 1e30, one of more than 100
    # billion and one of a billion coffees
    good = coffee_and_croissant()
    huge = [dict(good, id="h1", order_id="o-h1", amount="1e30", lines=[]),
            dict(good, id="h2", order_id="o-h2", amount="100000000000.01", lines=[]),
            dict(good, id="h3", order_id="o-h3", lines=[
                {"sku": "LATTE", "category": "coffee", "quantity": 1_000_000_001,
                 "amount": "42.50"}])]
    results = ingest_batch(kopi, P, [huge[0], good, *huge[1:]], CLOCK)

    # Then the good one is applied and each other refused naming its field (the database
    # would have failed the whole batch on them), and none of them wrote anything
    assert [(r["status"], r.get("problem", {}).get("field")) for r in results] == [
        ("rejected", "events[0].amount"), ("applied", None), ("rejected", "events[2].amount"),
        ("rejected", "events[3].lines[0].quantity")]
    with kopi.connect() as conn:
        assert conn.execute(sa.text("SELECT order_id FROM orders")).scalars().all() == [
            good["order_id"]]
    assert_journal_ok(kopi)


@pytest.mark.parametrize(("window", "dated", "tier"), [
    ({"window": "calendar_year"}, "2025-12-20", "member"),  # 2025's status ended with 2026
    ({"window": "calendar_year"}, "2026-01-10", "gold"),  # 2026's lasts through 2027
    ({"window": "rolling_months", "window_months": 12}, "2026-03-10", "member"),
    ({"window": "rolling_months", "window_months": 12}, "2026-04-10", "gold"),
])
def test_a_purchase_sent_late_lifts_the_tier_only_by_a_window_still_in_force(engine, window,
                                                                           dated, tier):
    # Given Gold at RM 350 of spend, and a member enrolled in 2025
    from tests.conftest import load_programme

    load_programme(engine, {
        "id": "late", "name": "Late", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
        "earn": [{"id": "base", "on": "purchase", "rate": 1}],
        "tiers": {"metric": "spend", **window, "levels": [
            {"id": "member", "name": "Member", "threshold": 0},
            {"id": "gold", "name": "Gold", "threshold": 350}]}})
    upsert_member(engine, "late", "m1", {"enrolled_at": "2025-01-05T09:00:00+08:00"},
                  fixed_clock("2025-01-05T09:00:00+08:00"))

    # When a till sends on 2027-03-01 a purchase of RM 400 made long before
    result = ingest_event(engine, "late", {
        "id": "old-1", "type": "purchase", "member": "m1", "order_id": "o-old",
        "occurred_at": f"{dated}T10:00:00+08:00", "amount": "400.00"}, CLOCK)

    # Then it earns its points, and lifts her only if its window still counts now
    assert result["points"] == 400
    assert result["tier"]["id"] == tier
    assert_journal_ok(engine)


def test_simulating_an_event_answers_its_points_and_writes_nothing(kopi):
    # Given a member
    enrol(kopi)
    before = postings_count(kopi)

    # When the purchase is simulated
    result = simulate_event(kopi, P, coffee_and_croissant(), CLOCK)

    # Then it answers the 160 points but the balance and journal are untouched
    assert result["status"] == "simulated"
    assert result["points"] == 160
    assert postings_count(kopi) == before
    assert get_member(kopi, P, "cust-1", CLOCK)["balances"] == {
        "available": 0, "pending": 50, "reserved": 0}
    # and the real event is then applied, not replayed
    assert ingest_event(kopi, P, coffee_and_croissant(), CLOCK)["status"] == "applied"
    assert_journal_ok(kopi)


def test_a_refund_in_a_batch_takes_the_stored_lot_that_expires_first_across_zones(engine):
    from setia.service.batch import ingest_batch
    from tests.conftest import load_programme

    # Given a programme in Los Angeles whose lots expire 6 months after they are earned,
    # and a lot e1 of 100 stored by an earlier event: it expires 1 December 09:00 PST
    # (17:00 UTC), and is read back from the database in UTC
    load_programme(engine, {
        "id": "la", "name": "LA", "currency": "USD", "timezone": "America/Los_Angeles",
        "points": {"pending_days": 0, "expiry": {"policy": "rolling", "months": 6}},
        "earn": [{"id": "base", "on": "purchase", "rate": 1}]})
    clock = fixed_clock("2027-06-01T12:00:00-07:00")
    upsert_member(engine, "la", "cust-1", {}, clock)
    ingest_event(engine, "la", {"id": "e1", "type": "purchase", "member": "cust-1",
                                "order_id": "o1", "occurred_at": "2027-06-01T09:00:00-07:00",
                                "amount": "100.00"}, clock)

    # When one batch earns a lot e2 of 50 expiring 1 December 11:00 PST (19:00 UTC, kept
    # in Los Angeles time while the batch runs) and then refunds its order whole
    results = ingest_batch(engine, "la", [
        {"id": "e2", "type": "purchase", "member": "cust-1", "order_id": "o2",
         "occurred_at": "2027-06-01T11:00:00-07:00", "amount": "50.00"},
        {"id": "r2", "type": "refund", "member": "cust-1", "order_id": "o2",
         "occurred_at": "2027-06-01T11:30:00-07:00", "amount": "50.00"}], clock)

    # Then the 50 clawed back come from e1, the lot that expires first, and e2 keeps its 50
    assert [r["status"] for r in results] == ["applied", "applied"]
    with engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT source, remaining FROM lots ORDER BY seq")).all() == [("e1", 50), ("e2", 50)]
    assert get_member(engine, "la", "cust-1", clock)["balances"] == {
        "available": 100, "pending": 0, "reserved": 0}
    assert_journal_ok(engine)
