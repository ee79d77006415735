"""How many points an event earns (CONTRACT.md section 1, "Semantics")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from setia.domain.earning import (
    MemberFacts,
    condition_context,
    context_fields,
    evaluate,
    inactivity_expires_at,
    lot_expires_at,
    pending_until,
    period_key,
)
from setia.domain.events import Event, parse_event
from setia.domain.programme import Programme, compile_programme, validate_document

MYT = timezone(timedelta(hours=8))
LEVELS = [
    {"id": "member", "name": "Member", "threshold": 0},
    {"id": "gold", "name": "Gold", "threshold": 350, "multiplier": 1.25},
    {"id": "platinum", "name": "Platinum", "threshold": 1000, "multiplier": 1.5},
]


def programme(*rules: dict[str, Any], **changes: Any) -> Programme:
    doc: dict[str, Any] = {
        "id": "kopi-setia",
        "name": "Kopi Setia",
        "currency": "MYR",
        "timezone": "Asia/Kuala_Lumpur",
        "points": {"name": "Beans"},
        "tiers": {"levels": LEVELS},
        "earn": list(rules),
    }
    doc.update(changes)
    return compile_programme(validate_document(doc), version=1)


def purchase(**changes: Any) -> Event:
    """The contract's example purchase: RM 42.50, LATTE 24.00 (coffee) + CROISSANT 18.50
    (pastry), Monday 2027-03-01 10:00 in Kuala Lumpur, store kl-01, channel pos."""
    raw: dict[str, Any] = {
        "id": "till-7-000123",
        "type": "purchase",
        "member": "cust-42",
        "occurred_at": "2027-03-01T10:00:00+08:00",
        "order_id": "ord-991",
        "amount": "42.50",
        "store": "kl-01",
        "channel": "pos",
        "lines": [
            {"sku": "LATTE", "category": "coffee", "quantity": 2, "amount": "24.00"},
            {"sku": "CROISSANT", "category": "pastry", "quantity": 1, "amount": "18.50"},
        ],
    }
    raw.update(changes)
    return parse_event({k: v for k, v in raw.items() if v is not None}, "MYR")


def member(prog: Programme, tier: str = "member", purchases: int = 3,
           **attributes: Any) -> MemberFacts:
    return MemberFacts(id="cust-42", tier=prog.level(tier), purchases=purchases,
                       attributes=attributes,
                       enrolled_at=datetime(2026, 1, 1, tzinfo=MYT))


def points_by_rule(prog: Programme, event: Event, facts: MemberFacts,
                   usage: dict[tuple[str, str], int] | None = None) -> dict[str, int]:
    return {award.rule_id: award.points for award in evaluate(prog, event, facts, usage or {})}


BASE = {"id": "base", "on": "purchase", "rate": 1}


# -- rate rules and the tier multiplier ---------------------------------------------------

def test_a_rate_rule_gives_floor_of_rate_times_amount():
    prog = programme(BASE)
    # 1 x 42.50 = 42.5 -> 42
    assert points_by_rule(prog, purchase(), member(prog)) == {"base": 42}


def test_a_rate_rule_at_gold_floors_after_the_multiplier():
    prog = programme(BASE)
    # 1 x 42.50 x 1.25 = 53.125 -> 53
    assert points_by_rule(prog, purchase(), member(prog, "gold")) == {"base": 53}


def test_a_rate_rule_at_platinum():
    prog = programme(BASE)
    # 1 x 42.50 x 1.5 = 63.75 -> 63
    assert points_by_rule(prog, purchase(), member(prog, "platinum")) == {"base": 63}


def test_a_fractional_rate():
    prog = programme({"id": "base", "on": "purchase", "rate": "0.5"})
    # 0.5 x 42.50 = 21.25 -> 21
    assert points_by_rule(prog, purchase(), member(prog)) == {"base": 21}


def test_a_rate_rule_explains_its_points():
    prog = programme(BASE)
    [award] = evaluate(prog, purchase(), member(prog, "gold"), {})
    assert award.explanation == "1.25 × RM 42.50 at Gold = 53 Beans (base)"
    assert award.fixed is False
    assert award.limit_key is None


def test_every_matching_rule_adds_its_points():
    prog = programme(BASE, {"id": "pastry-bonus", "on": "purchase", "categories": ["pastry"],
                            "rate": 1})
    # base 42.50 -> 42; pastry line 18.50 -> 18
    assert points_by_rule(prog, purchase(), member(prog)) == {"base": 42, "pastry-bonus": 18}


def test_a_rule_that_would_give_zero_points_is_left_out():
    prog = programme(BASE)
    # 1 x 0.99 = 0.99 -> 0
    assert evaluate(prog, purchase(amount="0.99", lines=None), member(prog), {}) == []


def test_rules_only_apply_to_their_event_type():
    prog = programme(BASE, {"id": "review", "on": "review", "points": 5})
    review = parse_event({"id": "rv-1", "type": "review", "member": "cust-42",
                          "occurred_at": "2027-03-01T10:00:00+08:00"}, "MYR")
    assert points_by_rule(prog, review, member(prog)) == {"review": 5}


# -- fixed points and tier_multiplier -------------------------------------------------------

def test_fixed_points_ignore_the_multiplier_by_default():
    prog = programme({"id": "bonus", "on": "purchase", "points": 100})
    [award] = evaluate(prog, purchase(), member(prog, "gold"), {})
    assert award.points == 100
    assert award.fixed is True
    assert award.explanation == "100 Beans (bonus)"


def test_fixed_points_with_tier_multiplier_true_are_multiplied():
    prog = programme({"id": "bonus", "on": "purchase", "points": 100, "tier_multiplier": True})
    # 100 x 1.25 = 125
    assert points_by_rule(prog, purchase(), member(prog, "gold")) == {"bonus": 125}


def test_multiplied_fixed_points_are_floored():
    prog = programme({"id": "bonus", "on": "purchase", "points": 5, "tier_multiplier": True})
    # 5 x 1.25 = 6.25 -> 6
    assert points_by_rule(prog, purchase(), member(prog, "gold")) == {"bonus": 6}


def test_a_rate_rule_with_tier_multiplier_false_ignores_the_tier():
    prog = programme({"id": "base", "on": "purchase", "rate": 1, "tier_multiplier": False})
    # 1 x 42.50 = 42.5 -> 42, although the member is Gold
    assert points_by_rule(prog, purchase(), member(prog, "gold")) == {"base": 42}


# -- line filters ---------------------------------------------------------------------------

def test_categories_count_only_matching_lines():
    prog = programme({"id": "pastry-bonus", "on": "purchase", "categories": ["pastry"],
                      "rate": 1})
    # pastry line 18.50 x 1.25 = 23.125 -> 23
    assert points_by_rule(prog, purchase(), member(prog, "gold")) == {"pastry-bonus": 23}


def test_skus_count_only_matching_lines():
    prog = programme({"id": "signature", "on": "purchase", "skus": ["LATTE"], "rate": 2})
    # 2 x 24.00 = 48
    assert points_by_rule(prog, purchase(), member(prog)) == {"signature": 48}


def test_a_line_rule_with_no_matching_line_gives_nothing():
    prog = programme({"id": "tea", "on": "purchase", "categories": ["tea"], "points": 10})
    assert evaluate(prog, purchase(), member(prog), {}) == []


def test_a_fixed_line_rule_pays_once_when_a_line_matches():
    prog = programme({"id": "pastry-stamp", "on": "purchase", "categories": ["pastry"],
                      "points": 10})
    assert points_by_rule(prog, purchase(), member(prog)) == {"pastry-stamp": 10}


# -- event filters --------------------------------------------------------------------------

def test_stores_filter():
    prog = programme({"id": "kl", "on": "purchase", "stores": ["kl-01"], "points": 10})
    assert points_by_rule(prog, purchase(store="kl-01"), member(prog)) == {"kl": 10}
    assert points_by_rule(prog, purchase(store="pg-01"), member(prog)) == {}
    assert points_by_rule(prog, purchase(store=None), member(prog)) == {}


def test_channels_filter():
    prog = programme({"id": "app", "on": "purchase", "channels": ["app"], "points": 10})
    assert points_by_rule(prog, purchase(channel="app"), member(prog)) == {"app": 10}
    assert points_by_rule(prog, purchase(channel="pos"), member(prog)) == {}


def test_days_filter_uses_the_programme_timezone():
    prog = programme({"id": "weekend", "on": "purchase", "days": ["sat", "sun"], "rate": 1})
    # Friday 2027-03-05 23:30 UTC is Saturday 07:30 in Kuala Lumpur
    saturday_in_kl = purchase(occurred_at="2027-03-05T23:30:00+00:00")
    assert points_by_rule(prog, saturday_in_kl, member(prog)) == {"weekend": 42}
    # Saturday 2027-03-06 16:30 UTC is Sunday 00:30 in Kuala Lumpur: still weekend
    assert points_by_rule(prog, purchase(occurred_at="2027-03-06T16:30:00Z"),
                          member(prog)) == {"weekend": 42}
    # Monday 2027-03-01 10:00 in Kuala Lumpur
    assert points_by_rule(prog, purchase(), member(prog)) == {}


def test_from_is_inclusive_in_the_programme_timezone():
    prog = programme({"id": "w", "on": "purchase", "rate": 1,
                      "from": "2027-01-01", "until": "2027-12-31"})
    assert points_by_rule(prog, purchase(occurred_at="2027-01-01T00:30:00+08:00"),
                          member(prog)) == {"w": 42}
    assert points_by_rule(prog, purchase(occurred_at="2026-12-31T23:30:00+08:00"),
                          member(prog)) == {}


def test_from_compares_the_local_date_not_the_utc_date():
    prog = programme({"id": "w", "on": "purchase", "rate": 1, "from": "2027-01-01"})
    # 2026-12-31 16:30 UTC is 2027-01-01 00:30 in Kuala Lumpur: in
    assert points_by_rule(prog, purchase(occurred_at="2026-12-31T16:30:00Z"),
                          member(prog)) == {"w": 42}
    # 2026-12-31 15:30 UTC is 2026-12-31 23:30 in Kuala Lumpur: out
    assert points_by_rule(prog, purchase(occurred_at="2026-12-31T15:30:00Z"),
                          member(prog)) == {}


def test_until_is_inclusive_in_the_programme_timezone():
    prog = programme({"id": "w", "on": "purchase", "rate": 1,
                      "from": "2027-01-01", "until": "2027-12-31"})
    assert points_by_rule(prog, purchase(occurred_at="2027-12-31T23:30:00+08:00"),
                          member(prog)) == {"w": 42}
    assert points_by_rule(prog, purchase(occurred_at="2028-01-01T00:30:00+08:00"),
                          member(prog)) == {}
    # 2027-12-31 16:30 UTC is already 2028-01-01 00:30 in Kuala Lumpur
    assert points_by_rule(prog, purchase(occurred_at="2027-12-31T16:30:00Z"),
                          member(prog)) == {}


def test_tiers_filter():
    prog = programme({"id": "vip", "on": "purchase", "tiers": ["gold"], "rate": 2,
                      "tier_multiplier": False})
    # 2 x 42.50 = 85
    assert points_by_rule(prog, purchase(), member(prog, "gold")) == {"vip": 85}
    assert points_by_rule(prog, purchase(), member(prog, "member")) == {}
    assert points_by_rule(prog, purchase(), member(prog, "platinum")) == {}


# -- first purchase and min_amount ----------------------------------------------------------

FIRST_VISIT = {"id": "first-visit", "on": "purchase", "first_purchase": True,
               "min_amount": "10.00", "points": 100}


def test_first_purchase_pays_when_the_member_has_no_purchases():
    prog = programme(FIRST_VISIT)
    assert points_by_rule(prog, purchase(), member(prog, purchases=0)) == {"first-visit": 100}


def test_first_purchase_does_not_pay_on_a_later_purchase():
    prog = programme(FIRST_VISIT)
    assert points_by_rule(prog, purchase(), member(prog, purchases=1)) == {}


def test_min_amount_is_inclusive():
    prog = programme(FIRST_VISIT)
    assert points_by_rule(prog, purchase(amount="10.00", lines=None),
                          member(prog, purchases=0)) == {"first-visit": 100}


def test_below_min_amount_does_not_pay():
    prog = programme(FIRST_VISIT)
    assert points_by_rule(prog, purchase(amount="9.99", lines=None),
                          member(prog, purchases=0)) == {}


def test_min_amount_looks_at_the_whole_purchase_not_the_matching_lines():
    prog = programme({"id": "pastry-bonus", "on": "purchase", "categories": ["pastry"],
                      "min_amount": "40.00", "rate": 1})
    # the purchase is 42.50 (>= 40.00); its pastry line 18.50 gives 18
    assert points_by_rule(prog, purchase(), member(prog)) == {"pastry-bonus": 18}


# -- limits ---------------------------------------------------------------------------------

REVIEW_LIMIT = {"id": "review", "on": "review", "points": 5}


def review_at(occurred_at: str) -> Event:
    return parse_event({"id": "rv-1", "type": "review", "member": "cust-42",
                        "occurred_at": occurred_at}, "MYR")


@pytest.mark.parametrize(
    ("per", "key"),
    [
        ("day", "2027-03-01"),
        ("week", "2027-W09"),
        ("month", "2027-03"),
        ("year", "2027"),
        ("lifetime", "lifetime"),
    ],
)
def test_a_limit_pays_until_its_count_is_used_up(per: str, key: str):
    prog = programme({**REVIEW_LIMIT, "limit": {"count": 3, "per": per}})
    event = review_at("2027-03-01T10:00:00+08:00")  # Monday of ISO week 9
    facts = member(prog)
    # Given the rule already paid twice in this period: it pays a third time
    [award] = evaluate(prog, event, facts, {("review", key): 2})
    assert (award.points, award.limit_key) == (5, key)
    # Given it paid three times: it does not pay
    assert evaluate(prog, event, facts, {("review", key): 3}) == []


def test_a_limit_in_another_period_does_not_count():
    prog = programme({**REVIEW_LIMIT, "limit": {"count": 3, "per": "month"}})
    event = review_at("2027-03-01T10:00:00+08:00")
    assert points_by_rule(prog, event, member(prog), {("review", "2027-02"): 3}) == {"review": 5}


def test_a_limit_of_another_rule_does_not_count():
    prog = programme({**REVIEW_LIMIT, "limit": {"count": 1, "per": "month"}})
    event = review_at("2027-03-01T10:00:00+08:00")
    assert points_by_rule(prog, event, member(prog), {("other", "2027-03"): 5}) == {"review": 5}


def test_the_limit_period_is_the_programme_local_day():
    prog = programme({**REVIEW_LIMIT, "limit": {"count": 1, "per": "day"}})
    # 2027-02-28 16:30 UTC is 2027-03-01 00:30 in Kuala Lumpur
    [award] = evaluate(prog, review_at("2027-02-28T16:30:00Z"), member(prog), {})
    assert award.limit_key == "2027-03-01"


def test_period_key_of_the_iso_week_at_a_year_boundary():
    # Friday 2027-01-01 belongs to ISO week 53 of 2026
    assert period_key("week", datetime(2027, 1, 1, 12, tzinfo=MYT)) == "2026-W53"


# -- CEL conditions -------------------------------------------------------------------------

VIP_PENANG = {"id": "vip-penang-app", "on": "purchase", "rate": 2, "tier_multiplier": False,
              "condition": "event.channel == 'app' && member.attributes.city == 'Penang'"}


def test_a_condition_that_holds_pays():
    prog = programme(VIP_PENANG)
    # 2 x 42.50 = 85
    assert points_by_rule(prog, purchase(channel="app"),
                          member(prog, city="Penang")) == {"vip-penang-app": 85}


def test_a_condition_that_does_not_hold_does_not_pay():
    prog = programme(VIP_PENANG)
    assert points_by_rule(prog, purchase(channel="app"), member(prog, city="Ipoh")) == {}
    assert points_by_rule(prog, purchase(channel="pos"), member(prog, city="Penang")) == {}


def test_a_condition_that_cannot_be_evaluated_does_not_hold():
    # docs/decisions/cel.md: reading a missing attribute is an error, and the rule does not pay
    prog = programme(VIP_PENANG)
    assert evaluate(prog, purchase(channel="app"), member(prog), {}) == []


def test_a_condition_sees_the_event_lines_and_member_tier():
    prog = programme({"id": "gold-coffee", "on": "purchase", "points": 7,
                      "condition": "member.tier == 'gold' && 'coffee' in event.categories"})
    assert points_by_rule(prog, purchase(), member(prog, "gold")) == {"gold-coffee": 7}
    assert points_by_rule(prog, purchase(), member(prog, "member")) == {}


def test_the_context_holds_what_the_conditions_read_and_pays_alike():
    gold = {"id": "gold-coffee", "on": "purchase", "points": 7,
            "condition": "member.tier == 'gold' && 'coffee' in event.categories"}
    prog = programme(VIP_PENANG, gold)
    assert context_fields(prog) == {"event": frozenset({"channel", "categories"}),
                                    "member": frozenset({"attributes", "tier"})}
    facts = member(prog, "gold", city="Penang")
    event = purchase(channel="app")
    local = event.occurred_at.astimezone(prog.tz)
    assert condition_context(event, local, facts, context_fields(prog)) == {
        "event": {"channel": "app", "categories": ["coffee", "pastry"]},
        "member": {"tier": "gold", "attributes": {"city": "Penang"}},
    }
    whole = condition_context(event, local, facts)
    assert len(whole["event"]) == 14 and len(whole["member"]) == 5
    assert whole["event"]["lines"][1] == {"sku": "CROISSANT", "category": "pastry",
                                          "quantity": 1, "amount": 18.5}
    # 2 x 42.50 = 85, and 7
    assert points_by_rule(prog, event, facts) == {"vip-penang-app": 85, "gold-coffee": 7}
    # a condition that reads a record whole gets every field of it
    counting = {"id": "count", "on": "purchase", "points": 1, "condition": "size(event) == 14"}
    prog = programme(gold, counting)
    assert context_fields(prog) == {"event": None, "member": frozenset({"tier"})}
    assert points_by_rule(prog, event, facts) == {"gold-coffee": 7, "count": 1}


# -- pending and expiry dates ---------------------------------------------------------------

def test_points_become_spendable_pending_days_after_the_event():
    prog = programme(BASE, points={"pending_days": 3})
    occurred = datetime(2027, 3, 1, 10, tzinfo=MYT)
    assert pending_until(prog, occurred) == datetime(2027, 3, 4, 10, tzinfo=MYT)


def test_rolling_expiry_is_months_after_the_points_became_spendable():
    prog = programme(BASE, points={"expiry": {"policy": "rolling", "months": 6}})
    available = datetime(2027, 3, 4, 2, tzinfo=UTC)  # 10:00 in Kuala Lumpur
    assert lot_expires_at(prog, available) == datetime(2027, 9, 4, 10, tzinfo=MYT)


def test_rolling_expiry_at_the_end_of_a_month_clamps_to_the_last_day():
    prog = programme(BASE, points={"expiry": {"policy": "rolling", "months": 1}})
    available = datetime(2027, 1, 31, 10, tzinfo=MYT)
    assert lot_expires_at(prog, available) == datetime(2027, 2, 28, 10, tzinfo=MYT)


def test_rolling_expiry_counts_months_on_the_programmes_wall_clock_for_a_time_in_utc():
    prog = programme(BASE, points={"expiry": {"policy": "rolling", "months": 1}})
    # Given points spendable at 30 January 20:00 UTC: 31 January 04:00 in Kuala Lumpur
    available = datetime(2027, 1, 30, 20, tzinfo=UTC)
    # Then one month later is 28 February 04:00 local (31 February clamped), which is
    # 27 February 20:00 UTC; a month counted in UTC would end on 28 February 20:00 UTC
    assert lot_expires_at(prog, available) == datetime(2027, 2, 28, 4, tzinfo=MYT)
    assert lot_expires_at(prog, available) == datetime(2027, 2, 27, 20, tzinfo=UTC)


@pytest.mark.parametrize("expiry", [{"policy": "none"},
                                    {"policy": "inactivity", "months": 12}])
def test_other_expiry_policies_put_no_date_on_a_lot(expiry: dict[str, Any]):
    prog = programme(BASE, points={"expiry": expiry})
    assert lot_expires_at(prog, datetime(2027, 3, 4, tzinfo=MYT)) is None


def test_inactivity_expiry_counts_months_on_the_programmes_wall_clock():
    prog = programme(BASE, points={"expiry": {"policy": "inactivity", "months": 6}})
    # 1 March 07:00 in Kuala Lumpur is still 28 February in UTC: six months of UTC
    # would end on 28 August 23:00 UTC (29 August 07:00 local), three days early
    last = datetime(2027, 2, 28, 23, tzinfo=UTC)
    assert inactivity_expires_at(prog, last) == datetime(2027, 9, 1, 7, tzinfo=MYT)
    # the day is clamped to the end of a shorter month, as for rolling lots
    last = datetime(2027, 8, 31, 10, tzinfo=MYT)
    assert inactivity_expires_at(prog, last) == datetime(2028, 2, 29, 10, tzinfo=MYT)


@pytest.mark.parametrize("expiry", [{"policy": "none"}, {"policy": "rolling", "months": 6}])
def test_other_expiry_policies_have_no_inactivity_expiry(expiry: dict[str, Any]):
    prog = programme(BASE, points={"expiry": expiry})
    assert inactivity_expires_at(prog, datetime(2027, 3, 4, tzinfo=MYT)) is None


def test_a_decimal_rate_is_exact_before_the_floor():
    prog = programme({"id": "base", "on": "purchase", "rate": "1.1"})
    # 1.1 x 10.00 = 11.00 exactly -> 11 (no float error that would floor to 10)
    assert points_by_rule(prog, purchase(amount="10.00", lines=None), member(prog)) == {
        "base": 11
    }


def test_a_rate_with_a_float_multiplier_from_yaml_is_exact():
    prog = programme({"id": "base", "on": "purchase", "rate": 1},
                     tiers={"levels": [LEVELS[0], {"id": "gold", "name": "Gold",
                                                    "threshold": 350, "multiplier": 1.1}]})
    # 1 x 10.00 x 1.1 = 11.00 -> 11
    assert prog.level("gold").multiplier == Decimal("1.1")
    assert points_by_rule(prog, purchase(amount="10.00", lines=None), member(prog, "gold")) == {
        "base": 11
    }
