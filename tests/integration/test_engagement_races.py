"""Races on real PostgreSQL, real threads with their own connections started together:
a campaign budget is never exceeded, a stamp card completes once per fill, a membership is
bought once."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from setia.domain.engagement import MembershipActive
from setia.service import memberships
from setia.service.events import ingest_event
from tests.conftest import assert_journal_ok, fixed_clock
from tests.integration.test_concurrency import all_at_once
from tests.integration.test_engagement_campaigns import CLOCK, P, enrol, programme

pytestmark = pytest.mark.postgres
DAY = "2027-11-11T12:00:00+08:00"


def purchase(engine: sa.Engine, member: str, order: str) -> dict[str, object]:
    return ingest_event(engine, P, {
        "id": f"e-{order}", "type": "purchase", "member": member, "order_id": order,
        "occurred_at": DAY, "amount": "10.00"}, CLOCK)


def test_sixteen_members_racing_for_a_budget_of_450_get_exactly_450(pg_engine):
    # Given 100 points per purchase and a budget of 450: four full awards and one of 50
    programme(pg_engine, campaigns=[{"id": "double-eleven", "name": "11.11", "points": 100,
                                     "budget": 450}])
    members = [f"m{i:02d}" for i in range(16)]
    for member in members:
        enrol(pg_engine, member)
    # When all sixteen buy at the same moment
    outcomes = all_at_once([lambda m=m: purchase(pg_engine, m, f"o-{m}") for m in members],
                           workers=16)
    # Then every purchase went through, and the campaign gave exactly its budget
    assert [kind for kind, _ in outcomes] == ["ok"] * 16
    given = sorted(next((p["points"] for p in result["postings"]
                         if p["rule"] == "campaign:double-eleven"), 0)
                   for _, result in outcomes)
    assert given == [0] * 11 + [50] + [100] * 4
    with pg_engine.connect() as conn:
        used = conn.execute(sa.text("SELECT used FROM campaign_budgets")).scalar_one()
        journal = conn.execute(sa.text(
            "SELECT sum(points) FROM postings WHERE rule_id = 'campaign:double-eleven'"
        )).scalar_one()
    assert (used, journal) == (450, 450)
    assert_journal_ok(pg_engine)


def test_one_member_racing_twelve_visits_fills_a_four_visit_card_exactly_three_times(pg_engine):
    programme(pg_engine, stamp_cards=[{"id": "visits", "name": "Every 4th visit",
                                       "target": 4, "reward": {"points": 100}}])
    enrol(pg_engine, "m1")
    outcomes = all_at_once([lambda n=n: purchase(pg_engine, "m1", f"v{n}") for n in range(12)],
                           workers=12)
    assert [kind for kind, _ in outcomes] == ["ok"] * 12
    rewards = sorted(sum(p["points"] for p in result["postings"] if p["rule"] == "stamp:visits")
                     for _, result in outcomes)
    assert rewards == [0] * 9 + [100] * 3
    with pg_engine.connect() as conn:
        row = conn.execute(sa.text("SELECT stamps, completions FROM stamp_progress")).one()
    assert tuple(row) == (12, 3)
    assert_journal_ok(pg_engine)


def test_a_once_only_challenge_raced_by_eight_visits_pays_once(pg_engine):
    programme(pg_engine, stamp_cards=[{"id": "three", "name": "Three visits", "target": 3,
                                       "repeat": False, "reward": {"points": 100}}])
    enrol(pg_engine, "m1")
    outcomes = all_at_once([lambda n=n: purchase(pg_engine, "m1", f"w{n}") for n in range(8)],
                           workers=8)
    paid = [sum(p["points"] for p in result["postings"] if p["rule"] == "stamp:three")
            for _, result in outcomes]
    assert sorted(paid) == [0] * 7 + [100]
    assert_journal_ok(pg_engine)


def test_two_tills_buying_a_membership_for_one_member_at_once_record_one_fee(pg_engine):
    programme(pg_engine, memberships=[{"id": "plus", "name": "Plus", "fee": "49.00",
                                       "months": 12}])
    enrol(pg_engine, "m1")
    clock = fixed_clock("2027-02-01T10:00:00+08:00")
    outcomes = all_at_once([
        lambda n=n: memberships.buy(pg_engine, P, "m1", {"plan": "plus"}, f"till-{n}", clock)
        for n in range(6)], workers=6)
    kinds = sorted(kind for kind, _ in outcomes)
    assert kinds == ["error"] * 5 + ["ok"]
    assert all(isinstance(value, MembershipActive) for kind, value in outcomes
               if kind == "error")
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM membership_purchases")).scalar() == 1
    assert_journal_ok(pg_engine)
