"""Races on real PostgreSQL, real threads each with its own connection (started together
by a barrier): coupon uses (a code with 3 uses in total, a one-use batch code, one
member's per-member limit, concurrent releases) and referral payouts (several run-due
workers and an approval at once). Exact outcomes, journal checked after each."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.adapters.db import tables_coupons as tc
from setia.domain import coupons as c
from setia.domain import referrals as r
from setia.service import coupons, referrals
from setia.service.events import ingest_event
from setia.service.members import get_member, upsert_member
from tests.conftest import assert_journal_ok, at, fixed_clock, load_programme
from tests.growth_programme import GROWTH
from tests.integration.test_concurrency import all_at_once, only_expected_errors

pytestmark = pytest.mark.postgres

P = "growth-cafe"
CLOCK = fixed_clock("2027-02-10T12:00:00+08:00")


def given_members(engine: sa.Engine, count: int) -> list[str]:
    load_programme(engine, GROWTH)
    names = [f"m{i:02d}" for i in range(count)]
    for name in names:
        upsert_member(engine, P, name, {}, CLOCK)
    return names


def active_uses(engine: sa.Engine) -> list[tuple[str, str]]:
    u = tc.coupon_uses
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(
            sa.select(u.c.code, u.c.member_id).where(u.c.released_at.is_(None)))]


def test_a_code_with_three_uses_is_used_exactly_three_times(pg_engine: sa.Engine) -> None:
    members = given_members(pg_engine, 16)
    outcomes = all_at_once([
        (lambda m=m: coupons.redeem(pg_engine, P, {"code": "WELCOME10", "member": m,
                                                   "amount": "40.00", "order_id": f"o-{m}"},
                                    f"k-{m}", CLOCK))
        for m in members], workers=16)
    only_expected_errors(outcomes, c.CouponExhausted)
    assert Counter(kind for kind, _ in outcomes) == {"ok": 3, "error": 13}
    assert len(active_uses(pg_engine)) == 3
    with pg_engine.connect() as conn:
        assert conn.execute(sa.select(tc.coupon_counters.c.uses)).scalar_one() == 3
    assert_journal_ok(pg_engine)


def test_a_one_use_batch_code_is_used_once(pg_engine: sa.Engine) -> None:
    members = given_members(pg_engine, 12)
    batch = coupons.generate_batch(pg_engine, P, "cny", {"count": 3}, "b", CLOCK)
    code = next(iter(coupons.export_batch(pg_engine, P, batch["id"]))).splitlines()[1].split(
        ",")[0]
    outcomes = all_at_once([
        (lambda m=m: coupons.redeem(pg_engine, P, {"code": code, "member": m,
                                                   "amount": "40.00", "order_id": f"o-{m}"},
                                    f"k-{m}", CLOCK))
        for m in members], workers=12)
    only_expected_errors(outcomes, c.CouponCodeUsed)
    assert Counter(kind for kind, _ in outcomes) == {"ok": 1, "error": 11}
    assert [use[0] for use in active_uses(pg_engine)] == [code]


def test_one_member_racing_for_a_once_per_member_coupon_gets_it_once(
        pg_engine: sa.Engine) -> None:
    given_members(pg_engine, 1)
    outcomes = all_at_once([
        (lambda i=i: coupons.redeem(pg_engine, P, {"code": "WELCOME10", "member": "m00",
                                                   "amount": "40.00", "order_id": f"o-{i}"},
                                    f"k-{i}", CLOCK))
        for i in range(10)], workers=10)
    only_expected_errors(outcomes, c.CouponMemberLimit)
    assert Counter(kind for kind, _ in outcomes) == {"ok": 1, "error": 9}
    assert len(active_uses(pg_engine)) == 1


def test_concurrent_releases_give_a_use_back_once(pg_engine: sa.Engine) -> None:
    given_members(pg_engine, 1)
    coupons.redeem(pg_engine, P, {"code": "WELCOME10", "member": "m00", "amount": "40.00",
                                  "order_id": "o-1"}, "k-1", CLOCK)
    outcomes = all_at_once([
        (lambda i=i: coupons.release(pg_engine, P, {"order_id": "o-1"}, f"rel-{i}", CLOCK))
        for i in range(8)], workers=8)
    only_expected_errors(outcomes, c.UnknownCouponUse)
    assert Counter(kind for kind, _ in outcomes) == {"ok": 1, "error": 7}
    with pg_engine.connect() as conn:
        assert conn.execute(sa.select(tc.coupon_counters.c.uses)).scalar_one() == 0


def test_racing_run_due_workers_and_an_approval_pay_a_referral_once(
        pg_engine: sa.Engine) -> None:
    # Given ten referrals of one referrer, each referee with a qualifying purchase: eight
    # plain ones and two in review (the referrer cap is 2 a month, so from the third on
    # they are guarded; the test approves one of them while the workers run)
    load_programme(pg_engine, GROWTH)
    upsert_member(pg_engine, P, "rina", {}, CLOCK)
    code = referrals.code_for(pg_engine, P, "rina", CLOCK)["code"]
    linked = []
    for i in range(4):
        upsert_member(pg_engine, P, f"ref-{i}", {}, CLOCK)
        linked.append(referrals.link(pg_engine, P, {"code": code, "member": f"ref-{i}"},
                                     f"l-{i}", CLOCK))
        ingest_event(pg_engine, P, {"id": f"e-{i}", "type": "purchase", "member": f"ref-{i}",
                                    "occurred_at": "2027-02-10T12:00:00+08:00",
                                    "order_id": f"o-{i}", "amount": "20.00"}, CLOCK)
    assert [x["status"] for x in linked] == ["linked", "linked", "review", "review"]
    due = at("2027-03-01T00:00:00+08:00")
    tasks: list[Any] = [(lambda: referrals.pay_due(pg_engine, P, due)) for _ in range(6)]
    tasks.append(lambda: referrals.decide(pg_engine, P, linked[2]["id"], "approve", None,
                                          "approve", fixed_clock("2027-03-01T00:00:00+08:00")))
    outcomes = all_at_once(tasks, workers=len(tasks))
    only_expected_errors(outcomes)
    # Then ref-0, ref-1 and the approved ref-2 are paid exactly once; ref-3 waits in review
    statuses = [referrals.get(pg_engine, P, x["id"])["status"] for x in linked]
    assert statuses == ["paid", "paid", "paid", "review"]
    with pg_engine.connect() as conn:
        payouts = Counter(conn.execute(sa.select(t.postings.c.rule_id).where(
            t.postings.c.rule_id.like("referral:%"))).scalars())
    assert payouts == {f"referral:{x['id']}": 2 for x in linked[:3]}
    # rina: 50 welcome + 3 x 300; each paid referee: 50 + 20 + 150
    assert get_member(pg_engine, P, "rina", CLOCK)["balances"]["available"] == 950
    assert get_member(pg_engine, P, "ref-2", CLOCK)["balances"]["available"] == 220
    assert get_member(pg_engine, P, "ref-3", CLOCK)["balances"]["available"] == 70
    with pytest.raises(r.ReferralNotInReview):
        referrals.decide(pg_engine, P, linked[2]["id"], "approve", None, "again", CLOCK)
    assert_journal_ok(pg_engine)
