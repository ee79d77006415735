"""The pure rules of campaigns, stamp cards and paid memberships."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from setia.domain import engagement as rules
from setia.domain.engagement_sections import Audience, Campaign, MembershipPlan, StampCard
from setia.domain.events import Event, Line

KL = ZoneInfo("Asia/Kuala_Lumpur")


def card(**fields: object) -> StampCard:
    return StampCard.model_validate({"id": "c", "name": "C", "target": 3,
                                     "reward": {"points": 1}, **fields})


def test_a_hold_out_of_a_tenth_leaves_out_close_to_a_tenth_and_always_the_same_members():
    members = [f"cust-{n}" for n in range(20_000)]
    held = [m for m in members if rules.in_holdout("kopi", "raya", m, Decimal("0.1"))]
    assert 1_800 < len(held) < 2_200
    assert held == [m for m in members if rules.in_holdout("kopi", "raya", m, Decimal("0.1"))]
    other = {m for m in members if rules.in_holdout("kopi", "cny", m, Decimal("0.1"))}
    assert len(other & set(held)) < 400  # independent between campaigns: about 1% of 20,000
    assert not any(rules.in_holdout("kopi", "raya", m, Decimal(0)) for m in members[:100])


def test_grants_stop_at_the_budget_and_the_members_cap():
    assert rules.grant_within(100, budget=450, used=400, per_member=None, member_used=0) == 50
    assert rules.grant_within(100, budget=450, used=450, per_member=None, member_used=0) == 0
    assert rules.grant_within(100, budget=None, used=0, per_member=150, member_used=100) == 50
    assert rules.grant_within(100, budget=None, used=0, per_member=150, member_used=170) == 0


def test_win_back_needs_an_earlier_purchase_at_least_n_days_before():
    audience = Audience(lapsed_days=60)
    now = datetime(2027, 9, 13, 9, tzinfo=KL)

    def facts(last: datetime | None) -> rules.AudienceFacts:
        return rules.AudienceFacts(tier_id="member", attributes={}, birthday=None,
                                   enrolled_at=datetime(2027, 1, 1, tzinfo=UTC),
                                   last_purchase_at=last)

    assert not rules.audience_matches(audience, facts(None), now)
    assert rules.audience_matches(audience, facts(datetime(2027, 7, 15, 9, tzinfo=KL)), now)
    assert not rules.audience_matches(audience, facts(datetime(2027, 7, 15, 9, 1, tzinfo=KL)),
                                      now)


def test_a_rate_campaign_is_recomputed_on_what_is_left_and_never_gives_more():
    campaign = Campaign.model_validate({"id": "x", "name": "X", "rate": "1.5",
                                        "categories": ["coffee"]})
    purchase = Event(id="e", type="purchase", member="m",
                     occurred_at=datetime(2027, 1, 1, tzinfo=UTC), amount=Decimal("30.00"),
                     lines=(Line("K", "coffee", 2, Decimal("20.00")),
                            Line("T", "tea", 1, Decimal("10.00"))))
    points, why = rules.campaign_points(campaign, purchase, {}, "Beans")
    assert (points, why) == (30, "1.5 × 20.00 = 30 Beans (X)")
    left = (Line("K", "coffee", 2, Decimal("5.50")), Line("T", "tea", 1, Decimal("10.00")))
    assert rules.campaign_points_after_refund(campaign, 30, purchase, left, Decimal("15.50"),
                                              {}) == 8  # floor(1.5 x 5.50)
    assert rules.campaign_points_after_refund(campaign, 20, purchase, purchase.lines,
                                              Decimal("30.00"), {}) == 20  # capped award


def test_stamps_of_a_partly_refunded_line_keep_the_quantity_still_paid_for():
    coffee = card(count="quantity", categories=["coffee"])
    line = Line("K", "coffee", 3, Decimal("15.00"))
    assert rules.stamps_left(coffee, [(line, Decimal("5.00"))], Decimal("10.00"),
                             Decimal("15.00"), 2) == 2
    assert rules.stamps_left(coffee, [(line, Decimal("4.99"))], Decimal("10.01"),
                             Decimal("15.00"), 2) == 2
    assert rules.stamps_left(coffee, [(line, Decimal("5.01"))], Decimal("9.99"),
                             Decimal("15.00"), 2) == 1
    visits = card(count="visits")
    assert rules.stamps_left(visits, [(line, Decimal("14.99"))], Decimal("0.01"),
                             Decimal("15.00"), 2) == 1
    assert rules.stamps_left(visits, [(line, Decimal("15.00"))], Decimal(0),
                             Decimal("15.00"), 2) == 0


def test_completions_restart_or_stop_at_one():
    assert rules.completions_due(card(), 10, 3) == 3
    assert rules.completions_due(card(repeat=False), 10, 3) == 1
    assert rules.completions_due(card(), -2, 3) == 0


def test_stamp_periods_are_local_months_quarters_and_years():
    moment = datetime(2027, 3, 31, 16, 30, tzinfo=UTC).astimezone(KL)  # 1 April local
    assert rules.stamp_period(card(period="quarter"), moment) == "2027-Q2"
    assert rules.stamp_period(card(period="month"), moment) == "2027-04"
    assert rules.stamp_period(card(period="year"), moment) == "2027"
    assert rules.stamp_period(card(), moment) == "all"


def test_monthly_vouchers_one_at_the_start_of_each_month_of_the_plan():
    plan = MembershipPlan.model_validate({"id": "p", "name": "P", "fee": "49.00", "months": 3,
                                          "monthly_voucher": {"free_item": "latte"}})
    starts = datetime(2027, 1, 31, 10, tzinfo=KL)
    ends = rules.membership_ends_at(plan, starts, KL)
    assert ends == datetime(2027, 4, 30, 10, tzinfo=KL)

    def due(moment: datetime) -> int:
        return rules.monthly_vouchers_due(plan, starts, ends, moment, KL)

    assert due(datetime(2027, 1, 31, 9, 59, tzinfo=KL)) == 0
    assert due(starts) == 1
    assert due(datetime(2027, 2, 28, 10, tzinfo=KL)) == 2
    assert due(datetime(2027, 12, 1, tzinfo=KL)) == 3


def test_the_membership_multiplier_scales_earn_rules_only():
    plan = MembershipPlan.model_validate({"id": "p", "name": "Plus", "fee": "1", "months": 1,
                                          "multiplier": "1.5"})
    points, why = rules.membership_points(plan, {"base": 41, "campaign:x": 100}, "Beans")
    assert (points, why) == (20, "Plus ×1.5 on 41 Beans: +20 Beans")
