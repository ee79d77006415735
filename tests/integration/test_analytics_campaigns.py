"""A campaign's return against its hold-out group: members are held out only where the
campaign would have given them something, and a report compares the members reached
(given points) in its range with those held out in its range. On SQLite and PostgreSQL.

Programme "promo" (times +08:00, 2027): 1 point per RM 1, RM 0.01 a point. Who is held
out is decided by a hash of programme, campaign and member (rules.in_holdout): the
tests pick their members by it."""

from __future__ import annotations

import copy
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import polars as pl
import sqlalchemy as sa

from setia.adapters.db import tables_engagement as te
from setia.domain.engagement import in_holdout
from setia.service import analytics as an
from setia.service.engagement_views import get_campaign
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from tests.conftest import assert_journal_ok, at, fixed_clock, load_programme

D = date
P = "promo"
BASE: dict[str, Any] = {
    "id": P, "name": "Promo", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "points": {"name": "Points", "pending_days": 0},
    "earn": [{"id": "base", "on": "purchase", "rate": 1}],
    "tiers": {"levels": [{"id": "member", "name": "Member", "threshold": 0}]},
    "analytics": {"cost_per_point": "0.01"},
}


def programme(engine: sa.Engine, campaign: dict[str, Any]) -> None:
    document = copy.deepcopy(BASE)
    document["campaigns"] = [campaign]
    load_programme(engine, document)


def members(campaign: str, share: str, *, held: int, treated: int) -> tuple[list[str], ...]:
    """``held`` member ids in the campaign's hold-out share and ``treated`` outside it."""
    inside: list[str] = []
    outside: list[str] = []
    n = 0
    while len(inside) < held or len(outside) < treated:
        member = f"m{n}"
        n += 1
        if in_holdout(P, campaign, member, Decimal(share)):
            inside.append(member)
        else:
            outside.append(member)
    return inside[:held], outside[:treated]


def enrol(engine: sa.Engine, *names: str) -> None:
    for name in names:
        upsert_member(engine, P, name, {}, fixed_clock("2027-01-01T09:00:00+08:00"))


def buy(engine: sa.Engine, member: str, order: str, when: str, amount: str) -> dict[str, Any]:
    return ingest_event(engine, P, {
        "id": f"e-{order}", "type": "purchase", "member": member, "order_id": order,
        "occurred_at": when, "amount": amount}, fixed_clock(when))


def holdouts(engine: sa.Engine, campaign: str) -> list[tuple[str, datetime]]:
    h = te.campaign_holdouts
    with engine.connect() as conn:
        return [(row.member_id, row.recorded_at) for row in conn.execute(
            sa.select(h.c.member_id, h.c.recorded_at)
            .where(h.c.program_id == P, h.c.campaign_id == campaign).order_by(h.c.member_id))]


def campaigns(engine: sa.Engine, date_from: date, date_to: date) -> list[tuple[object, ...]]:
    data = an.load(engine, P)
    frame = an.campaigns(data, an.options_for(data.programme, date_from, date_to))
    assert isinstance(frame, pl.DataFrame)
    return [tuple(r) for r in frame.iter_rows()]


def test_a_member_held_out_after_the_budget_is_spent_is_no_hold_out(engine: sa.Engine) -> None:
    # Given 10 points a purchase, a budget of 10 points, half the members held out
    programme(engine, {"id": "cap", "name": "Cap", "points": 10, "budget": 10,
                       "holdout": "0.5"})
    (h0, h1), (t1,) = members("cap", "0.5", held=2, treated=1)
    enrol(engine, h0, h1, t1)
    # When h0 (held out) buys while the budget lasts, t1 spends the budget, then h1 (held
    # out) buys
    buy(engine, h0, "o1", "2027-01-09T10:00:00+08:00", "10.00")
    reached = buy(engine, t1, "o2", "2027-01-10T10:00:00+08:00", "10.00")
    late = buy(engine, h1, "o3", "2027-01-11T10:00:00+08:00", "10.00")
    # Then only h0 is a hold-out: the campaign would have given h1 nothing
    assert {p["rule"]: p["points"] for p in reached["postings"]} == {
        "base": 10, "campaign:cap": 10}
    assert {p["rule"]: p["points"] for p in late["postings"]} == {"base": 10}
    assert holdouts(engine, "cap") == [(h0, at("2027-01-09T10:00:00+08:00"))]
    assert get_campaign(engine, P, "cap")["holdouts"] == 1
    # and January's report compares t1 (10.00) with h0 (10.00): 10 points, RM 0.10
    assert campaigns(engine, D(2027, 1, 1), D(2027, 1, 31)) == [
        ("cap", 10, 1, 1_000.0, 100_000.0, 1, 100_000.0, 0.0)]
    assert_journal_ok(engine)


def test_a_member_held_out_of_a_rate_that_gives_nothing_is_recorded_later(
        engine: sa.Engine) -> None:
    # Given 0.1 point per RM 1, half the members held out
    programme(engine, {"id": "extra", "name": "Extra", "rate": "0.1", "holdout": "0.5"})
    (held,), _ = members("extra", "0.5", held=1, treated=0)
    enrol(engine, held)
    # When the held-out member buys 5.00 (0.1 x 5 = 0 points) on 01-05
    buy(engine, held, "o1", "2027-01-05T10:00:00+08:00", "5.00")
    # Then the member is no hold-out yet
    assert holdouts(engine, "extra") == []
    # When the member buys 20.00 (2 points) on 01-20
    buy(engine, held, "o2", "2027-01-20T10:00:00+08:00", "20.00")
    # Then the member is held out from 01-20
    assert holdouts(engine, "extra") == [(held, at("2027-01-20T10:00:00+08:00"))]
    assert_journal_ok(engine)


def test_campaign_return_compares_members_reached_and_held_out_in_the_range(
        engine: sa.Engine) -> None:
    # Given 10 points a purchase, half the members held out
    programme(engine, {"id": "spring", "name": "Spring", "points": 10, "holdout": "0.5"})
    (h1, h2), (t1, t2) = members("spring", "0.5", held=2, treated=2)
    enrol(engine, h1, h2, t1, t2)
    # January: t1 buys 40.00 (10 campaign points); h1 buys 20.00 and is held out
    buy(engine, t1, "o1", "2027-01-10T10:00:00+08:00", "40.00")
    buy(engine, h1, "o2", "2027-01-10T11:00:00+08:00", "20.00")
    # February: t1's order is refunded in full (the 10 points are clawed back); t2 buys
    # 60.00 (10 points); h2 buys 30.00 and is held out; h1 buys 25.00 (held out already)
    ingest_event(engine, P, {
        "id": "r-o1", "type": "refund", "member": t1, "order_id": "o1", "amount": "40.00",
        "occurred_at": "2027-02-02T10:00:00+08:00"}, fixed_clock("2027-02-02T10:00:00+08:00"))
    buy(engine, t2, "o3", "2027-02-05T10:00:00+08:00", "60.00")
    buy(engine, h2, "o4", "2027-02-05T11:00:00+08:00", "30.00")
    buy(engine, h1, "o5", "2027-02-06T10:00:00+08:00", "25.00")
    # and t1 buys 10.00 again (10 points: reached again, but given points first in January)
    buy(engine, t1, "o6", "2027-02-07T10:00:00+08:00", "10.00")
    # When February is reported
    february = campaigns(engine, D(2027, 2, 1), D(2027, 2, 28))
    # Then points are net: 20 given - 10 clawed back = 10. Reached: t1 and t2 (t1's clawback
    # alone would reach no one). Compared, as the hold-outs are, by the month they entered:
    # t2, first given points in February, spending 60.00, against h2, first held out in
    # February (h1 was in January), spending 30.00: incremental (60.00 - 30.00) x 1 = 30.00
    # for the one member who entered (t1 and h1 entered in January: comparing a member
    # reached again with only the hold-outs new in the month biased the figure)
    assert february == [("spring", 10, 2, 1_000.0, 600_000.0, 1, 300_000.0, 300_000.0)]
    # and January: t1 reached (the order refunded in full is no spend) against h1's 20.00
    assert campaigns(engine, D(2027, 1, 1), D(2027, 1, 31)) == [
        ("spring", 10, 1, 1_000.0, 0.0, 1, 200_000.0, -200_000.0)]
    answer = an.metrics(engine, P, D(2027, 2, 1), D(2027, 2, 28), ("campaigns",))
    assert answer["metrics"]["campaigns"] == [{
        "campaign": "spring", "points": 10, "members": 2, "cost": "0.10",
        "spend_per_member": "60.00", "holdout_members": 1,
        "holdout_spend_per_member": "30.00", "incremental_spend": "30.00"}]
    assert_journal_ok(engine)


def test_incremental_spend_is_worked_out_from_the_sums_and_rounded_once(
        engine: sa.Engine) -> None:
    # Given 10 points a purchase, half the members held out
    programme(engine, {"id": "even", "name": "Even", "points": 10, "holdout": "0.5"})
    (h1, h2), (t1, t2, t3) = members("even", "0.5", held=2, treated=3)
    enrol(engine, h1, h2, t1, t2, t3)
    # When three members reached spend 100.00 between them and two held out 50.01
    for n, (member, amount) in enumerate(((t1, "33.33"), (t2, "33.33"), (t3, "33.34"),
                                          (h1, "25.00"), (h2, "25.01"))):
        buy(engine, member, f"o{n}", f"2027-03-0{n + 1}T10:00:00+08:00", amount)
    # Then incremental spend = (100.00 / 3 - 50.01 / 2) x 3 = (200.00 - 150.03) / 2 = 24.985
    # exactly, 24.99 rounded once, half up (from the two means, 33.3333.. - 25.005, times 3
    # in floats, it was 24.98499.. and showed as 24.98)
    assert campaigns(engine, D(2027, 3, 1), D(2027, 3, 31)) == [
        ("even", 30, 3, 3_000.0, 1_000_000 / 3, 2, 250_050.0, 249_850.0)]
    answer = an.metrics(engine, P, D(2027, 3, 1), D(2027, 3, 31), ("campaigns",))
    assert answer["metrics"]["campaigns"] == [{
        "campaign": "even", "points": 30, "members": 3, "cost": "0.30",
        "spend_per_member": "33.33", "holdout_members": 2,
        "holdout_spend_per_member": "25.01", "incremental_spend": "24.99"}]
    assert_journal_ok(engine)
