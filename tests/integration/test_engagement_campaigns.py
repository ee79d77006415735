"""Campaigns: windows, effects, audiences, hold-outs, budget and per-member caps, refunds,
birthday and anniversary rewards; every point through the journal."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import sqlalchemy as sa

from setia.adapters.db import tables_outbox
from setia.domain.engagement import in_holdout
from setia.domain.errors import InvalidProgramme
from setia.service.batch import ingest_batch, ingest_together
from setia.service.engagement_views import get_campaign, list_campaigns
from setia.service.events import ingest_event
from setia.service.members import get_member, upsert_member
from setia.service.privacy import prune_events
from setia.service.redemptions import check_voucher
from setia.service.run_due import run_due
from tests.conftest import assert_journal_ok, at, fixed_clock, load_programme

P = "eng"
CLOCK = fixed_clock("2027-01-04T09:00:00+08:00")
BASE: dict[str, Any] = {
    "id": P, "name": "Engagement", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "points": {"pending_days": 0},
    "earn": [
        {"id": "base", "on": "purchase", "rate": 1},
        {"id": "pastry", "on": "purchase", "categories": ["pastry"], "rate": 1},
    ],
    "tiers": {"levels": [{"id": "member", "name": "Member", "threshold": 0},
                         {"id": "gold", "name": "Gold", "threshold": 100,
                          "multiplier": 2}]},
}


def programme(engine: sa.Engine, **sections: Any) -> None:
    document = copy.deepcopy(BASE)
    document.update(sections)
    load_programme(engine, document)


def enrol(engine: sa.Engine, member: str, **profile: Any) -> None:
    profile.setdefault("enrolled_at", "2027-01-01T09:00:00+08:00")
    upsert_member(engine, P, member, profile, CLOCK)


def buy(engine: sa.Engine, member: str, order: str, when: str, amount: str,
        lines: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    event = {"id": f"e-{order}", "type": "purchase", "member": member, "order_id": order,
             "occurred_at": when, "amount": amount, **extra}
    if lines is not None:
        event["lines"] = lines
    return ingest_event(engine, P, event, CLOCK)


def refund(engine: sa.Engine, member: str, order: str, amount: str, n: int = 1) -> Any:
    return ingest_event(engine, P, {
        "id": f"r{n}-{order}", "type": "refund", "member": member, "order_id": order,
        "occurred_at": "2027-12-01T10:00:00+08:00", "amount": amount}, CLOCK)


def rules_of(result: dict[str, Any]) -> dict[str, int]:
    return {p["rule"]: p["points"] for p in result["postings"]}


def available(engine: sa.Engine, member: str) -> int:
    return int(get_member(engine, P, member, CLOCK)["balances"]["available"])


RAYA = {"id": "hari-raya", "name": "Hari Raya double", "from": "2027-03-10",
        "until": "2027-03-12", "multiplier": 2, "rules": ["base"]}


def test_a_multiplier_campaign_doubles_the_named_rule_inside_its_window_only(engine):
    # Given Hari Raya ×2 on base, 10 to 12 March 2027 (Kuala Lumpur days)
    programme(engine, campaigns=[RAYA])
    enrol(engine, "m1")
    lines = [{"sku": "LATTE", "category": "coffee", "quantity": 2, "amount": "24.00"},
             {"sku": "CROISSANT", "category": "pastry", "quantity": 1, "amount": "18.50"}]
    # When m1 buys RM 42.50 on 11 March: base 42, pastry 18, campaign (2-1) × 42 = 42
    inside = buy(engine, "m1", "o1", "2027-03-11T10:00:00+08:00", "42.50", lines)
    # and the same on 13 March 00:30 local (12 March 16:30 UTC): outside the window
    outside = buy(engine, "m1", "o2", "2027-03-12T16:30:00+00:00", "42.50", lines)
    # Then
    assert rules_of(inside) == {"base": 42, "pastry": 18, "campaign:hari-raya": 42}
    assert inside["points"] == 102
    assert inside["postings"][-1]["explanation"] == (
        "×2 on 42 Points: +42 Points (Hari Raya double)")
    assert rules_of(outside) == {"base": 42, "pastry": 18}
    assert available(engine, "m1") == 102 + 60
    assert_journal_ok(engine)


def test_budget_and_per_member_cap_are_never_exceeded(engine):
    # Given 11.11: 100 points per purchase, at most 150 per member, 250 in all
    programme(engine, campaigns=[{"id": "double-eleven", "name": "11.11", "from": "2027-11-11",
                                  "until": "2027-11-11", "points": 100, "per_member": 150,
                                  "budget": 250}])
    for member in ("m1", "m2", "m3"):
        enrol(engine, member)
    day = "2027-11-11T12:00:00+08:00"
    # When m1 buys twice, then m2, then m3 (RM 10.00 each: base 10)
    first = buy(engine, "m1", "a", day, "10.00")
    second = buy(engine, "m1", "b", day, "10.00")
    third = buy(engine, "m2", "c", day, "10.00")
    fourth = buy(engine, "m3", "d", day, "10.00")
    # Then m1 gets 100 then 50 (its cap), m2 the last 100 of the budget, m3 nothing
    assert rules_of(first) == {"base": 10, "campaign:double-eleven": 100}
    assert rules_of(second) == {"base": 10, "campaign:double-eleven": 50}
    assert second["postings"][-1]["explanation"].endswith(", capped to 50")
    assert rules_of(third) == {"base": 10, "campaign:double-eleven": 100}
    assert rules_of(fourth) == {"base": 10}
    report = get_campaign(engine, P, "double-eleven")
    assert (report["budget_used"], report["budget_left"], report["awards"],
            report["members"], report["points_awarded"]) == (250, 0, 3, 2, 250)
    assert_journal_ok(engine)


def test_audiences_tier_attributes_birthday_month_and_win_back(engine):
    programme(engine, campaigns=[
        {"id": "gold-weekend", "name": "Gold weekend", "days": ["sat", "sun"],
         "audience": {"tiers": ["gold"]}, "points": 7},
        {"id": "penang", "name": "Penang", "audience": {"attributes": {"city": "Penang"}},
         "points": 11},
        {"id": "birthday-month", "name": "Birthday month", "audience": {"birthday_month": True},
         "rate": "0.5"},
        {"id": "win-back", "name": "We miss you", "audience": {"lapsed_days": 60},
         "points": 50},
    ])
    enrol(engine, "penang-bday", birthday="1990-05-20", attributes={"city": "Penang"})
    enrol(engine, "plain")
    # A first purchase in May (a Monday, 2027-05-03): penang and birthday month
    # (floor(0.5 x 30) = 15); no earlier purchase, so no win-back
    first = buy(engine, "penang-bday", "p1", "2027-05-03T10:00:00+08:00", "30.00")
    assert rules_of(first) == {"base": 30, "campaign:penang": 11,
                               "campaign:birthday-month": 15}
    # RM 100 makes "plain" gold from this event on; the event itself counts at Member
    crossing = buy(engine, "plain", "q1", "2027-05-08T10:00:00+08:00", "100.00")  # Saturday
    assert rules_of(crossing) == {"base": 100}
    # The next Saturday, as Gold: base 2 x 10 = 20 and gold-weekend 7
    gold = buy(engine, "plain", "q2", "2027-05-15T10:00:00+08:00", "10.00")
    assert rules_of(gold) == {"base": 20, "campaign:gold-weekend": 7}
    # 59 days and 23 hours after the last purchase: not lapsed yet; 61 days after that
    # one (Monday 13 September): win-back
    early = buy(engine, "plain", "q3", "2027-07-14T09:00:00+08:00", "10.00")
    assert rules_of(early) == {"base": 20}
    late = buy(engine, "plain", "q4", "2027-09-13T09:00:00+08:00", "10.00")
    assert rules_of(late) == {"base": 20, "campaign:win-back": 50}
    assert_journal_ok(engine)


def test_a_hold_out_share_excludes_members_deterministically_and_records_them(engine):
    programme(engine, campaigns=[{"id": "half", "name": "Half", "points": 5,
                                  "holdout": "0.5"}])
    members = [f"h{i}" for i in range(12)]
    held = [m for m in members if in_holdout(P, "half", m, __import__("decimal").Decimal("0.5"))]
    assert 0 < len(held) < len(members)  # both sides are represented among these twelve
    for n, member in enumerate(members):
        enrol(engine, member)
        result = buy(engine, member, f"o{n}", "2027-02-01T10:00:00+08:00", "10.00")
        assert ("campaign:half" in rules_of(result)) == (member not in held)
    with engine.connect() as conn:
        recorded = conn.execute(sa.text(
            "SELECT member_id FROM campaign_holdouts WHERE program_id = :p AND "
            "campaign_id = 'half' ORDER BY member_id"), {"p": P}).scalars().all()
    assert recorded == sorted(held)
    report = get_campaign(engine, P, "half")
    assert (report["holdouts"], report["members"]) == (len(held), len(members) - len(held))
    assert_journal_ok(engine)


def test_a_refund_claws_back_campaign_points_recomputed_on_what_is_left(engine):
    programme(engine, campaigns=[
        {"id": "rate", "name": "Extra", "rate": 1},
        {"id": "fixed", "name": "Big basket", "points": 30, "min_amount": "30.00"},
    ])
    enrol(engine, "m1")
    buy(engine, "m1", "o1", "2027-02-01T10:00:00+08:00", "40.00")
    assert available(engine, "m1") == 40 + 40 + 30
    # Refund 15.00: base keeps 25, rate keeps 25, fixed falls below its 30.00: all 30 back
    result = refund(engine, "m1", "o1", "15.00")
    assert result["points"] == -(15 + 15 + 30)
    assert available(engine, "m1") == 50
    # The rest: everything goes
    refund(engine, "m1", "o1", "25.00", n=2)
    assert available(engine, "m1") == 0
    report = {c["id"]: c for c in list_campaigns(engine, P)["campaigns"]}
    assert (report["rate"]["points_awarded"], report["rate"]["points_kept"]) == (40, 0)
    assert_journal_ok(engine)


def test_birthday_voucher_and_anniversary_points_come_from_run_due_once(engine):
    programme(engine, campaigns=[
        {"id": "cake", "name": "Birthday cake", "on": "birthday",
         "voucher": {"free_item": "cake", "valid_days": 30}},
        {"id": "anniversary", "name": "Thank you", "on": "anniversary", "points": 200},
    ])
    enrol(engine, "old", enrolled_at="2026-05-01T12:00:00+08:00", birthday="1990-03-03")
    # Given run-due before either day: nothing
    report = run_due(engine, at("2027-03-02T12:00:00+08:00"), P)
    assert (report.birthdays, report.engagement["anniversaries"]) == (0, 0)
    # On the birthday: one voucher for a free cake, valid 30 days
    run_due(engine, at("2027-03-03T08:00:00+08:00"), P)
    with engine.connect() as conn:
        codes = conn.execute(sa.text("SELECT code FROM vouchers WHERE reward_id = "
                                     "'campaign:cake'")).scalars().all()
    assert len(codes) == 1
    voucher = check_voucher(engine, P, codes[0], fixed_clock("2027-03-10T00:00:00+08:00"))
    assert (voucher["status"], voucher["benefit"]) == ("valid",
                                                       {"kind": "free_item", "free_item": "cake"})
    assert voucher["expires_at"] == "2027-04-02T00:00:00+00:00"
    # On the enrolment anniversary: 200 points, once
    report = run_due(engine, at("2027-05-01T09:00:00+08:00"), P)
    assert report.engagement["anniversaries"] == 1
    again = run_due(engine, at("2027-05-02T09:00:00+08:00"), P)
    assert (again.engagement["anniversaries"], again.birthdays) == (0, 0)
    assert available(engine, "old") == 200
    assert_journal_ok(engine)


def test_an_anniversary_is_paid_once_a_year_after_its_event_is_pruned(engine):
    # Given a programme that keeps events one month, and two members enrolled in 2026
    # whose anniversary, 1 May, was paid in 2027
    campaigns = [{"id": "anniversary", "name": "Thank you", "on": "anniversary",
                  "points": 200}]
    programme(engine, campaigns=campaigns)
    for member in ("old", "older"):
        enrol(engine, member, enrolled_at="2026-05-01T12:00:00+08:00")
    programme(engine, campaigns=campaigns, privacy={"event_retention_months": 1})
    assert run_due(engine, at("2027-05-01T09:00:00+08:00"), P).engagement[
        "anniversaries"] == 2
    # and their anniversary events pruned since (on PostgreSQL their ids stay registered)
    assert prune_events(engine, at("2027-07-01T09:00:00+08:00")) == {P: 4}
    before = journal_totals(engine)

    # When run-due runs again that year, and on next year's anniversary
    july = run_due(engine, at("2027-07-02T09:00:00+08:00"), P)
    august = run_due(engine, at("2027-08-02T09:00:00+08:00"), P)
    after_july = journal_totals(engine)
    next_year = run_due(engine, at("2028-05-01T09:00:00+08:00"), P)

    # Then nothing is paid again in 2027 (SQLite forgets pruned ids and paid it again every
    # day; PostgreSQL's registered ids made run-due fail every day), and 2028's is paid
    assert (july.engagement["anniversaries"], august.engagement["anniversaries"]) == (0, 0)
    assert after_july == before
    assert next_year.engagement["anniversaries"] == 2
    assert [available(engine, member) for member in ("old", "older")] == [400, 400]
    assert_journal_ok(engine)


def journal_totals(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(
            "SELECT debit, credit, sum(points), count(*) FROM postings "
            "GROUP BY debit, credit ORDER BY debit, credit"))]


@pytest.mark.parametrize(("campaign", "field"), [
    ({"id": "x", "name": "X"}, "campaigns[0]"),
    ({"id": "x", "name": "X", "points": 1, "rate": 1}, "campaigns[0]"),
    ({"id": "x", "name": "X", "multiplier": 2, "rules": ["nope"]}, "campaigns[0].rules[0]"),
    ({"id": "x", "name": "X", "points": 1, "audience": {"tiers": ["platinum"]}},
     "campaigns[0].audience.tiers[0]"),
    ({"id": "x", "name": "X", "points": 1, "from": "2027-02-01", "until": "2027-01-01"},
     "campaigns[0].until"),
    ({"id": "x", "name": "X", "points": 1, "holdout": "1"}, "campaigns[0].holdout"),
    ({"id": "x", "name": "X", "multiplier": 1}, "campaigns[0].multiplier"),
])
def test_an_invalid_campaign_is_refused_with_its_path(sqlite_engine, campaign, field):
    document = copy.deepcopy(BASE)
    document["campaigns"] = [campaign]
    with pytest.raises(InvalidProgramme) as caught:
        load_programme(sqlite_engine, document)
    assert field in [path for path, _ in caught.value.errors]
    assert_journal_ok(sqlite_engine)


def test_setia_check_finds_campaign_counters_that_disagree_with_the_journal(engine):
    from setia.service.check import check

    programme(engine, campaigns=[{"id": "bonus", "name": "Bonus", "points": 10,
                                  "budget": 100}])
    enrol(engine, "m1")
    buy(engine, "m1", "o1", "2027-02-01T10:00:00+08:00", "10.00")
    assert check(engine).problems == []
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE campaign_budgets SET used = 11"))
        conn.execute(sa.text("UPDATE campaign_awards SET kept = 4"))
    assert check(engine).problems == [
        "eng/campaign:bonus: awards say 6 points taken back, the journal clawed back 0",
        "eng/campaign:bonus: budget used 11, awards 10",
    ]


def test_a_refund_claws_back_campaign_points_after_a_version_without_campaigns(engine):
    programme(engine, campaigns=[{"id": "rate", "name": "Extra", "rate": 1}])
    enrol(engine, "m1")
    buy(engine, "m1", "o1", "2027-02-01T10:00:00+08:00", "40.00")
    programme(engine)  # version 2: no campaigns
    result = refund(engine, "m1", "o1", "40.00")
    assert result["points"] == -80
    assert available(engine, "m1") == 0
    assert_journal_ok(engine)


def test_campaign_and_stamp_card_vouchers_are_told_as_vouchers_issued(engine):
    # Given a campaign giving a voucher on a birthday, and a card of 2 visits whose reward
    # is a voucher
    programme(engine, campaigns=[
        {"id": "cake", "name": "Birthday cake", "on": "birthday",
         "voucher": {"free_item": "cake", "valid_days": 30}}],
        stamp_cards=[{"id": "kopi", "name": "Kopi card", "target": 2,
                      "reward": {"voucher": {"free_item": "kopi", "valid_days": 7}}}])
    enrol(engine, "old", enrolled_at="2026-05-01T12:00:00+08:00", birthday="1990-03-03")

    # When run-due runs on her birthday, and she visits twice
    run_due(engine, at("2027-03-03T08:00:00+08:00"), P)
    buy(engine, "old", "o1", "2027-03-04T10:00:00+08:00", "5.00")
    buy(engine, "old", "o2", "2027-03-05T10:00:00+08:00", "5.00")

    # Then each voucher is told to her, with its code, what gave it and its name
    with engine.connect() as conn:
        codes = dict(conn.execute(sa.text("SELECT reward_id, code FROM vouchers")).all())
        told = [json.loads(data) for (data,) in conn.execute(sa.text(
            "SELECT data FROM outbox WHERE type = 'voucher.issued' ORDER BY id"))]
    assert told == [
        {"program": P, "member": "old", "ref": "birthday:old:2027",
         "code": codes["campaign:cake"], "reward": "campaign:cake",
         "reward_name": "Birthday cake", "expires_at": "2027-04-02T08:00:00+08:00"},
        {"program": P, "member": "old", "ref": "e-o2", "code": codes["stamp:kopi"],
         "reward": "stamp:kopi", "reward_name": "Kopi card",
         "expires_at": "2027-03-12T10:00:00+08:00"}]
    # each written when its event was applied (run-due's time; the ingest clock's), not
    # at the event's own time
    o = tables_outbox.outbox
    with engine.connect() as conn:
        written = conn.execute(sa.select(o.c.occurred_at, o.c.created_at)
                               .where(o.c.type == "voucher.issued").order_by(o.c.id)).all()
    assert [tuple(row) for row in written] == [(at("2027-03-03T08:00:00+08:00"),) * 2,
                                               (CLOCK(),) * 2]
    assert_journal_ok(engine)


def purchase(member: str, order: str, when: str, amount: str) -> dict[str, Any]:
    return {"id": f"e-{order}", "type": "purchase", "member": member, "order_id": order,
            "occurred_at": when, "amount": amount}


@pytest.mark.parametrize("together", [ingest_batch, ingest_together])
def test_a_win_back_pays_the_first_of_two_purchases_applied_together_only(engine, together):
    # Given a win-back campaign of 200 points (no cap per member), and m1 and m2 whose last
    # purchase was on 3 March, 90 days before 1 June
    programme(engine, campaigns=[{"id": "win-back", "name": "We miss you",
                                  "audience": {"lapsed_days": 60}, "points": 200}])
    for member in ("m1", "m2"):
        enrol(engine, member)
        buy(engine, member, f"{member}-old", "2027-03-03T10:00:00+08:00", "10.00")

    # When m1's purchases of 1 June at 10:00 and 10:05 are applied in one unit of work
    # (a batch, or live events grouped), and m2's same two are sent one by one
    applied = together(engine, P, [
        purchase("m1", "m1-p1", "2027-06-01T10:00:00+08:00", "10.00"),
        purchase("m1", "m1-p2", "2027-06-01T10:05:00+08:00", "10.00")], CLOCK)
    alone = [buy(engine, "m2", "m2-p1", "2027-06-01T10:00:00+08:00", "10.00"),
             buy(engine, "m2", "m2-p2", "2027-06-01T10:05:00+08:00", "10.00")]

    # Then the first is a win-back and the second, 5 minutes after it, is not: 200 once
    assert [rules_of(result) for result in applied] == [
        {"base": 10, "campaign:win-back": 200}, {"base": 10}]
    assert [rules_of(result) for result in alone] == [
        {"base": 10, "campaign:win-back": 200}, {"base": 10}]
    assert [available(engine, member) for member in ("m1", "m2")] == [230, 230]
    assert get_campaign(engine, P, "win-back")["points_awarded"] == 400
    assert_journal_ok(engine)


def test_a_budget_added_by_a_later_version_counts_what_the_campaign_gave_before(engine):
    from setia.service.check import check

    # Given a bonus of 100 points a purchase without a budget, paid twice (200 points)
    bonus = {"id": "bonus", "name": "Bonus", "points": 100}
    programme(engine, campaigns=[bonus])
    for member in ("m1", "m2", "m3"):
        enrol(engine, member)
    before = [buy(engine, "m1", order, "2027-02-01T10:00:00+08:00", "10.00")
              for order in ("a", "b")]
    # and version 2 giving it a budget of 250 points in all
    programme(engine, campaigns=[{**bonus, "budget": 250}])

    # When m2 buys, then m3
    second = buy(engine, "m2", "c", "2027-02-02T10:00:00+08:00", "10.00")
    third = buy(engine, "m3", "d", "2027-02-02T11:00:00+08:00", "10.00")

    # Then m2 gets the 50 left of the budget after the 200 given before it, m3 nothing
    assert [rules_of(result) for result in before] == [{"base": 10, "campaign:bonus": 100}] * 2
    assert rules_of(second) == {"base": 10, "campaign:bonus": 50}
    assert second["postings"][-1]["explanation"].endswith(", capped to 50")
    assert rules_of(third) == {"base": 10}
    report = get_campaign(engine, P, "bonus")
    assert (report["budget_used"], report["budget_left"], report["awards"],
            report["points_awarded"]) == (250, 0, 3, 250)
    # and setia check finds the budget row in agreement with the awards
    assert check(engine).problems == []
    assert_journal_ok(engine)


def test_a_budget_taken_off_and_put_back_counts_what_was_given_without_it(engine):
    from setia.service.check import check

    # Given a bonus of 100 points a purchase with a budget of 350, paid once
    bonus = {"id": "bonus", "name": "Bonus", "points": 100}
    programme(engine, campaigns=[{**bonus, "budget": 350}])
    for member in ("m1", "m2", "m3", "m4"):
        enrol(engine, member)
    first = buy(engine, "m1", "a", "2027-02-01T10:00:00+08:00", "10.00")
    # then version 2 without the budget, paid twice, and version 3 with it again
    programme(engine, campaigns=[bonus])
    without = [buy(engine, member, order, "2027-02-02T10:00:00+08:00", "10.00")
               for member, order in (("m2", "b"), ("m3", "c"))]
    programme(engine, campaigns=[{**bonus, "budget": 350}])
    report = get_campaign(engine, P, "bonus")
    assert (report["budget_used"], report["budget_left"]) == (300, 50)

    # When m4 buys
    last = buy(engine, "m4", "d", "2027-02-03T10:00:00+08:00", "10.00")

    # Then the 300 given before count against it: 50 are left for m4
    assert [rules_of(r) for r in (first, *without)] == [{"base": 10, "campaign:bonus": 100}] * 3
    assert rules_of(last) == {"base": 10, "campaign:bonus": 50}
    report = get_campaign(engine, P, "bonus")
    assert (report["budget_used"], report["budget_left"], report["points_awarded"]) == (
        350, 0, 350)
    assert check(engine).problems == []
    assert_journal_ok(engine)


def test_a_review_campaign_for_gold_counts_the_tier_held_before_the_review(engine):
    # Given Gold at 100 points (metric points), a review earning 20, and a review campaign
    # of 15 points for Gold members only
    programme(engine,
              earn=[*BASE["earn"], {"id": "review", "on": "review", "points": 20}],
              tiers={**BASE["tiers"], "metric": "points"},
              campaigns=[{"id": "gold-review", "name": "Gold review", "on": "review",
                          "audience": {"tiers": ["gold"]}, "points": 15}])
    enrol(engine, "m1")
    buy(engine, "m1", "o1", "2027-02-01T10:00:00+08:00", "90.00")  # 90 points: 10 short

    # When she writes a review (20 points: Gold from it on), then another one as Gold
    def review(n: int) -> dict[str, Any]:
        return ingest_event(engine, P, {"id": f"review-{n}", "type": "review", "member": "m1",
                                        "occurred_at": f"2027-02-0{n + 1}T10:00:00+08:00"},
                            CLOCK)

    lifting = review(1)
    as_gold = review(2)

    # Then the review that lifted her was a Member's: no campaign points; the next is Gold's
    assert (rules_of(lifting), lifting["tier"]["id"]) == ({"review": 20}, "gold")
    assert rules_of(as_gold) == {"review": 20, "campaign:gold-review": 15}
    assert available(engine, "m1") == 90 + 20 + 20 + 15
    assert_journal_ok(engine)


def test_a_refund_that_leaves_the_order_short_of_a_voucher_campaign_voids_its_voucher(engine):
    from setia.service.redemptions import use_voucher

    # Given a voucher for a free cake on purchases of RM 50 or more, and m1's and m2's
    # purchases of RM 60 each (a voucher each); m2 uses hers at the till
    programme(engine, campaigns=[{"id": "big-basket", "name": "Big basket",
                                  "min_amount": "50.00",
                                  "voucher": {"free_item": "cake", "valid_days": 30}}])
    enrol(engine, "m1")
    enrol(engine, "m2")
    for member in ("m1", "m2"):
        buy(engine, member, f"o-{member}", "2027-11-20T10:00:00+08:00", "60.00")
    with engine.connect() as conn:
        codes = dict(conn.execute(sa.text(
            "SELECT m.id, v.code FROM vouchers v JOIN members m ON m.pk = v.member_pk")).all())
    use_voucher(engine, P, codes["m2"], "till-1", clock=fixed_clock("2027-11-21T10:00:00+08:00"))

    # When m1's order is refunded RM 5 (55 left: still RM 50), then RM 10 more (45 left),
    # and m2's in full
    refund(engine, "m1", "o-m1", "5.00", n=1)
    with engine.connect() as conn:
        kept_after_first = conn.execute(sa.text(
            "SELECT used_at FROM vouchers WHERE code = :c"), {"c": codes["m1"]}).scalar_one()
    refund(engine, "m1", "o-m1", "10.00", n=2)
    refund(engine, "m2", "o-m2", "60.00")

    # Then m1's voucher stayed while 55 were left, and is void once 45 are: she is told;
    # m2's stays used, told nothing more; neither award keeps its voucher
    assert kept_after_first is None
    assert check_voucher(engine, P, codes["m1"], CLOCK)["status"] == "used"
    with engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT code, used_ref FROM vouchers ORDER BY code")).all() == sorted(
            [(codes["m1"], "refund r2-o-m1"), (codes["m2"], "till-1")])
        assert conn.execute(sa.text(
            "SELECT m.id, a.kept FROM campaign_awards a JOIN members m ON m.pk = a.member_pk "
            "ORDER BY m.id")).all() == [("m1", 0), ("m2", 0)]
        voided = [json.loads(row[0]) if isinstance(row[0], str) else row[0]
                  for row in conn.execute(sa.text(
                      "SELECT data FROM outbox WHERE type = 'voucher.voided'"))]
    assert voided == [{"program": P, "member": "m1", "ref": "r2-o-m1", "code": codes["m1"],
                       "reward": "campaign:big-basket",
                       "voided_at": "2027-12-01T10:00:00+08:00"}]
    assert_journal_ok(engine)


def test_a_campaigns_points_count_as_an_earn_for_inactivity_expiry(engine):
    from setia.service.run_due import run_due

    # Given points that expire 6 months after the last earn, a review campaign of 300
    # points (no earn rule of the programme pays reviews), and m1's purchase in January
    programme(engine, points={"pending_days": 0,
                              "expiry": {"policy": "inactivity", "months": 6}},
              campaigns=[{"id": "reviews", "name": "Review bonus", "on": "review",
                          "points": 300}])
    enrol(engine, "m1")
    buy(engine, "m1", "o1", "2027-01-20T10:00:00+08:00", "10.00")

    # When she writes a review in May, and run-due runs in late July
    result = ingest_event(engine, P, {"id": "rev-1", "type": "review", "member": "m1",
                                      "occurred_at": "2027-05-05T10:00:00+08:00"}, CLOCK)
    run_due(engine, fixed_clock("2027-07-25T10:00:00+08:00")())

    # Then the review's 300 were an earn: her points last from May, not from January
    assert rules_of(result) == {"campaign:reviews": 300}
    assert available(engine, "m1") == 310
    with engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT count(*) FROM postings WHERE code = 'expire'")).scalar_one() == 0
    assert_journal_ok(engine)
