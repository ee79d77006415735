"""Paid memberships: buy, renew, cancel, expire by run-due; benefits (multiplier, monthly
voucher, tier floor) only while active; every fee recorded."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from setia.domain.engagement import MembershipActive, NoActiveMembership, UnknownPlan
from setia.domain.errors import IdempotencyConflict, InvalidField, UnknownMember
from setia.service import memberships
from setia.service.events import ingest_event
from setia.service.run_due import run_due
from tests.conftest import assert_journal_ok, at, fixed_clock
from tests.integration.test_engagement_campaigns import P, buy, enrol, programme, rules_of

PLUS = {"id": "plus", "name": "Kopi+", "fee": "49.00", "months": 3, "multiplier": "1.5",
        "monthly_voucher": {"free_item": "latte", "valid_days": 30}, "tier_floor": "gold"}
LITE = {"id": "lite", "name": "Lite", "fee": "9.90", "months": 1}
T0 = "2027-01-31T10:00:00+08:00"


def setup(engine: sa.Engine) -> None:
    programme(engine, memberships=[PLUS, LITE])
    enrol(engine, "m1")


def bought(engine: sa.Engine, when: str = T0, plan: str = "plus",
           key: str = "k-buy") -> dict[str, Any]:
    return memberships.buy(engine, P, "m1", {"plan": plan}, key, fixed_clock(when))


def state(engine: sa.Engine) -> tuple[Any, ...]:
    with engine.connect() as conn:
        return tuple(tuple(conn.execute(sa.text(sql)).all()) for sql in (
            "SELECT id, status, ends_at FROM membership_purchases ORDER BY id",
            "SELECT count(*) FROM postings", "SELECT count(*) FROM vouchers",
            "SELECT tier_id, available FROM members ORDER BY pk"))


def test_buying_records_the_fee_and_gives_every_benefit_while_active(engine):
    setup(engine)
    view = bought(engine)
    # 31 January + 3 months = 30 April (end of a shorter month), 10:00 local
    assert (view["status"], view["plan"], view["tier"]) == ("active", "plus", "gold")
    assert view["ends_at"] == "2027-04-30T02:00:00+00:00"
    assert view["purchases"] == [{
        "id": view["purchases"][0]["id"], "plan": "plus", "kind": "buy", "fee": "49.00",
        "currency": "MYR", "starts_at": "2027-01-31T02:00:00+00:00",
        "ends_at": "2027-04-30T02:00:00+00:00", "status": "active", "vouchers_issued": 1}]
    with engine.connect() as conn:
        fee = conn.execute(sa.text("SELECT fee, currency, program, member, plan_id FROM "
                                   "membership_purchases")).one()
    assert (Decimal(fee[0]), *fee[1:]) == (Decimal("49.00"), "MYR", P, "m1", "plus")
    # A RM 20.00 purchase as Gold (x2): base 40, membership (1.5 - 1) x 40 = 20
    result = buy(engine, "m1", "o1", "2027-02-01T10:00:00+08:00", "20.00")
    assert rules_of(result) == {"base": 40, "membership:plus": 20}
    # Run-due a month later: the second monthly voucher (28 February 10:00 local)
    report = run_due(engine, at("2027-02-28T10:00:00+08:00"), P)
    assert report.engagement["membership_vouchers"] == 1
    assert memberships.get_membership(engine, P, "m1", fixed_clock(
        "2027-03-01T00:00:00+08:00"))["purchases"][0]["vouchers_issued"] == 2
    assert_journal_ok(engine)


def test_at_expiry_the_benefits_stop_and_the_tier_is_what_the_member_earned(engine):
    setup(engine)
    bought(engine)
    run_due(engine, at("2027-04-30T09:59:00+08:00"), P)  # a minute before the end
    after = buy(engine, "m1", "o1", "2027-04-30T10:00:00+08:00", "20.00")
    # the purchase at the very end earns without the multiplier, though still at Gold
    # until run-due ends the membership
    assert rules_of(after) == {"base": 40}
    report = run_due(engine, at("2027-04-30T10:00:00+08:00"), P)
    assert report.engagement["memberships_expired"] == 1
    view = memberships.get_membership(engine, P, "m1", fixed_clock("2027-05-01T00:00:00+08:00"))
    assert (view["status"], view["tier"], view["purchases"][0]["status"]) == (
        "none", "member", "expired")
    assert view["purchases"][0]["vouchers_issued"] == 3  # January, February, March
    assert run_due(engine, at("2027-05-30T10:00:00+08:00"), P).engagement == {
        "memberships_expired": 0, "membership_vouchers": 0, "anniversaries": 0}
    assert_journal_ok(engine)


def test_renewal_starts_when_the_current_period_ends_and_cancel_stops_both(engine):
    setup(engine)
    bought(engine)
    renewed = memberships.renew(engine, P, "m1", {"plan": "lite"}, "k-renew",
                                fixed_clock("2027-04-01T10:00:00+08:00"))
    assert [(p["kind"], p["plan"], p["fee"], p["starts_at"], p["ends_at"])
            for p in renewed["purchases"]] == [
        ("buy", "plus", "49.00", "2027-01-31T02:00:00+00:00", "2027-04-30T02:00:00+00:00"),
        # 31 January + 4 months: counted from the start of the run of periods
        ("renew", "lite", "9.90", "2027-04-30T02:00:00+00:00", "2027-05-31T02:00:00+00:00")]
    assert renewed["ends_at"] == "2027-05-31T02:00:00+00:00"
    cancelled = memberships.cancel(engine, P, "m1", {"reason": "moving away"}, "k-cancel",
                                   fixed_clock("2027-04-02T10:00:00+08:00"))
    assert (cancelled["status"], cancelled["tier"]) == ("none", "member")
    assert [p["status"] for p in cancelled["purchases"]] == ["cancelled", "cancelled"]
    result = buy(engine, "m1", "o1", "2027-04-03T10:00:00+08:00", "20.00")
    assert rules_of(result) == {"base": 20}
    assert_journal_ok(engine)


def test_monthly_renewals_of_a_plan_bought_on_the_31st_keep_to_month_ends(engine):
    # Given Lite (one month) bought on 31 January
    setup(engine)
    bought(engine, plan="lite")

    # When it is renewed twice
    for n in (1, 2):
        view = memberships.renew(engine, P, "m1", {}, f"k-renew-{n}",
                                 fixed_clock(f"2027-02-0{n}T10:00:00+08:00"))

    # Then the periods end on 28 February, 31 March and 30 April (they drifted to the 28th
    # of each month: renewals counted from the clamped end before them)
    assert [(p["starts_at"], p["ends_at"]) for p in view["purchases"]] == [
        ("2027-01-31T02:00:00+00:00", "2027-02-28T02:00:00+00:00"),
        ("2027-02-28T02:00:00+00:00", "2027-03-31T02:00:00+00:00"),
        ("2027-03-31T02:00:00+00:00", "2027-04-30T02:00:00+00:00")]
    assert_journal_ok(engine)


@pytest.mark.parametrize("renewal", [None, "plus"])
def test_cancelling_a_plan_without_a_floor_leaves_the_tier_earned_to_its_review(engine,
                                                                                 renewal):
    # Given m1 at Gold by her RM 120.00 of February, on the Lite plan (no tier floor) since
    # March (with or without a renewal to Plus queued after it, whose floor never applied),
    # and RM 50.00 of it refunded (RM 70.00 counted: Gold is kept until her review)
    setup(engine)
    buy(engine, "m1", "o1", "2027-02-10T10:00:00+08:00", "120.00")
    bought(engine, "2027-03-01T10:00:00+08:00", plan="lite")
    if renewal is not None:
        memberships.renew(engine, P, "m1", {"plan": renewal}, "k-renew",
                          fixed_clock("2027-03-02T10:00:00+08:00"))
    ingest_event(engine, P, {"id": "r-o1", "type": "refund", "member": "m1", "order_id": "o1",
                             "occurred_at": "2027-03-05T10:00:00+08:00", "amount": "50.00"},
                 fixed_clock("2027-03-05T10:00:00+08:00"))
    assert memberships.get_membership(engine, P, "m1", fixed_clock(
        "2027-03-06T00:00:00+08:00"))["tier"] == "gold"

    # When she cancels the plan
    cancelled = memberships.cancel(engine, P, "m1", {"reason": "moving away"}, "k-cancel",
                                   fixed_clock("2027-03-10T10:00:00+08:00"))

    # Then she stays Gold (the cancel reviewed her tier: Member, in mid-year)
    assert (cancelled["status"], cancelled["tier"]) == ("none", "gold")
    assert_journal_ok(engine)


@pytest.mark.parametrize(("call", "error", "field"), [
    (lambda e: memberships.buy(e, P, "m1", {"plan": "gold"}, "x1", fixed_clock(T0)),
     UnknownPlan, "plan"),
    (lambda e: memberships.buy(e, P, "m1", {}, "x2", fixed_clock(T0)), InvalidField, "plan"),
    (lambda e: memberships.buy(e, P, "m1", {"plan": "plus", "fee": "1"}, "x3",
                               fixed_clock(T0)), InvalidField, "fee"),
    (lambda e: memberships.buy(e, P, "ghost", {"plan": "plus"}, "x4", fixed_clock(T0)),
     UnknownMember, "member"),
    (lambda e: memberships.buy(e, P, "m1", {"plan": "lite"}, "x5", fixed_clock(T0)),
     MembershipActive, "plan"),
    (lambda e: memberships.buy(e, P, "m1", {"plan": "lite"}, "k-buy", fixed_clock(T0)),
     IdempotencyConflict, "Idempotency-Key"),
])
def test_bad_requests_are_refused_and_change_nothing(engine, call, error, field):
    setup(engine)
    bought(engine)
    before = state(engine)
    with pytest.raises(error) as caught:
        call(engine)
    assert caught.value.field == field
    assert state(engine) == before
    assert_journal_ok(engine)


def test_renew_or_cancel_without_a_membership_is_refused(engine):
    setup(engine)
    before = state(engine)
    for command in (memberships.renew, memberships.cancel):
        with pytest.raises(NoActiveMembership):
            command(engine, P, "m1", {}, f"k-{command.__name__}", fixed_clock(T0))
    assert state(engine) == before
    assert_journal_ok(engine)


def test_a_cancellation_keeps_its_reason_and_refuses_one_that_is_not_words(engine):
    # Given Plus bought
    setup(engine)
    bought(engine)
    before = state(engine)
    # When a cancellation gives a reason that is not text, Then it is refused, naming it
    for reason in (5, "", "x" * 301):
        with pytest.raises(InvalidField) as refused:
            memberships.cancel(engine, P, "m1", {"reason": reason}, f"c-{reason!r}",
                               fixed_clock("2027-02-01T10:00:00+08:00"))
        assert refused.value.field == "reason"
    assert state(engine) == before
    # When it gives one, Then it is cancelled and the audit log keeps the reason
    memberships.cancel(engine, P, "m1", {"reason": "moved away"}, "c-1",
                       fixed_clock("2027-02-01T10:00:00+08:00"))
    with engine.connect() as conn:
        kept = conn.execute(sa.text(
            "SELECT target, after FROM audit_log WHERE action = 'membership.cancel'")).one()
    after = kept.after if isinstance(kept.after, dict) else json.loads(kept.after)
    assert kept.target.startswith("member #") and after == {"reason": "moved away"}
    assert_journal_ok(engine)


def test_the_same_key_replays_the_first_answer(engine):
    setup(engine)
    first = bought(engine)
    again = bought(engine, when="2027-02-05T10:00:00+08:00")
    assert again == first
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM membership_purchases")).scalar() == 1
    assert_journal_ok(engine)


def test_a_purchase_made_in_the_period_and_sent_after_run_due_expired_it_is_multiplied(engine):
    # Given Plus (x1.5) from 31 January to 30 April 10:00, which run-due has expired
    setup(engine)
    bought(engine)
    assert run_due(engine, at("2027-05-01T09:00:00+08:00"), P).engagement[
        "memberships_expired"] == 1

    # When a purchase of 29 April is sent only now, and one of 1 May
    late = buy(engine, "m1", "o1", "2027-04-29T10:00:00+08:00", "20.00")
    after = buy(engine, "m1", "o2", "2027-05-01T10:00:00+08:00", "20.00")

    # Then the one made in the period earns the multiplier, (1.5 - 1) x 20 = 10 (at the
    # tier she holds now, Member: the floor ended with the membership), the other does not
    assert rules_of(late) == {"base": 20, "membership:plus": 10}
    assert rules_of(after) == {"base": 20}
    assert_journal_ok(engine)


def test_a_purchase_made_before_a_cancel_and_sent_after_it_is_multiplied(engine):
    # Given Plus (x1.5) bought on 31 January and cancelled on 10 February 10:00
    setup(engine)
    bought(engine)
    memberships.cancel(engine, P, "m1", {}, "k-cancel", fixed_clock("2027-02-10T10:00:00+08:00"))

    # When a purchase of 10 February 09:59 is sent only now, and one of 10:00
    before = buy(engine, "m1", "o1", "2027-02-10T09:59:00+08:00", "20.00")
    at_cancel = buy(engine, "m1", "o2", "2027-02-10T10:00:00+08:00", "20.00")

    # Then the one made before the cancel earns the multiplier (at Member, her tier now),
    # the one made as it was cancelled does not
    assert rules_of(before) == {"base": 20, "membership:plus": 10}
    assert rules_of(at_cancel) == {"base": 20}
    assert_journal_ok(engine)
