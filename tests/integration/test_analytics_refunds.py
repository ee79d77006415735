"""An order refunded in full is no purchase, visit or activity in any report; its net
amount (0) leaves every money sum as it was. On SQLite and PostgreSQL.

Programme "shop" (times +08:00, 2027): 1 point per RM 1, churn after 30 days.

- ria enrols 01-15 and buys 20.00 on 01-20 (s2, app); she buys 100.00 on 02-03 (s1,
  pos) and has all of it refunded on 02-04.
- sam enrols 02-01 and buys 50.00 on 02-05 (s2, app).
"""

from __future__ import annotations

import functools
from datetime import date
from typing import Any

import pytest
import sqlalchemy as sa

from setia.adapters.db.analytics_read import reader
from setia.service import analytics as an
from setia.service import analytics_reports as reports
from setia.service import fraud
from setia.service.clv import clv_report
from setia.service.events import ingest_event
from setia.service.insights import dashboard
from setia.service.members import upsert_member
from tests.conftest import assert_journal_ok, fixed_clock, load_programme
from tests.integration import analytics_history as history
from tests.integration import test_analytics_metrics as metrics
from tests.integration.test_analytics_metrics import rows

D = date
P = "shop"
SHOP: dict[str, Any] = {
    "id": P, "name": "Shop", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "points": {"name": "Points", "pending_days": 0},
    "earn": [{"id": "base", "on": "purchase", "rate": 1}],
    "tiers": {"levels": [{"id": "member", "name": "Member", "threshold": 0}]},
    "analytics": {"churn_days": 30},
}


purchase = functools.partial(history.purchase, program=P)
run = functools.partial(metrics.run, program=P)


@pytest.fixture
def shop(engine: sa.Engine) -> sa.Engine:
    load_programme(engine, dict(SHOP))
    upsert_member(engine, P, "ria", {}, fixed_clock("2027-01-15T09:00:00+08:00"))
    upsert_member(engine, P, "sam", {}, fixed_clock("2027-02-01T09:00:00+08:00"))
    purchase(engine, "e1", "ria", "2027-01-20T10:00:00+08:00", "20.00", "s2", "app")
    purchase(engine, "e2", "ria", "2027-02-03T10:00:00+08:00", "100.00", "s1", "pos")
    ingest_event(engine, P, {
        "id": "r2", "type": "refund", "member": "ria", "order_id": "o-e2", "amount": "100.00",
        "occurred_at": "2027-02-04T10:00:00+08:00",
    }, fixed_clock("2027-02-04T10:00:00+08:00"))
    purchase(engine, "e3", "sam", "2027-02-05T10:00:00+08:00", "50.00", "s2", "app")
    return engine


def test_a_fully_refunded_order_is_no_purchase_in_february_sales(shop: sa.Engine) -> None:
    # Given ria's 100.00 of 02-03, refunded in full on 02-04, and sam's 50.00 of 02-05
    # When February's sales are asked (frame and JSON)
    frame = run(shop, "sales", D(2027, 2, 1), D(2027, 2, 28)).select(
        "period", "purchases", "active_members", "repeat_members", "purchase_frequency",
        "member_sales_e4", "aov_member_e4")
    answer = an.metrics(shop, P, D(2027, 2, 1), D(2027, 2, 28), ("sales",), grain="total")
    # Then only sam's order counts: 1 purchase, 1 active member, 50.00 over 1 = 50.00
    # (not 2 purchases, 2 members and 25.00); the net sales are 50.00 either way
    assert rows(frame) == [(D(2027, 2, 1), 1, 1, 0, 1.0, 500_000, 500_000.0)]
    sales = answer["metrics"]["sales"][0]
    assert (sales["purchases"], sales["active_members"], sales["member_sales"],
            sales["aov_member"]) == (1, 1, "50.00", "50.00")
    # and the engine agrees: the refund took ria's February visit back
    with reader(shop) as read:
        buckets = read.metric_buckets(P).join(
            an.load(shop, P).members.select("member_pk", "member"), on="member_pk")
    assert sorted(buckets.select("member", "month", "visits", "spend_e4").rows()) == [
        ("ria", "2027-01", 1, 200_000), ("ria", "2027-02", 0, 0),
        ("sam", "2027-02", 1, 500_000)]
    assert_journal_ok(shop)


def test_retention_churn_and_rfm_see_no_activity_in_a_refunded_order(
        shop: sa.Engine) -> None:
    # Given ria's only purchase left is 01-20's (the 02-03 order went back in full)
    # When retention, churn (30 days) and RFM are asked for January to March
    retention = run(shop, "retention", D(2027, 1, 1), D(2027, 3, 31))
    churn = run(shop, "churn", D(2027, 1, 1), D(2027, 3, 31))
    data = an.load(shop, P)
    rfm = an.rfm(data, an.options_for(data.programme, D(2027, 1, 1), D(2027, 3, 31)))
    february = an.rfm(data, an.options_for(data.programme, D(2027, 2, 1), D(2027, 3, 31)))
    # Then ria (January cohort) is not retained in February; sam (February cohort) is
    assert rows(retention) == [
        (D(2027, 1, 1), 1, 0, 1, 1.0),
        (D(2027, 1, 1), 1, 1, 0, 0.0),
        (D(2027, 1, 1), 1, 2, 0, 0.0),
        (D(2027, 2, 1), 1, 0, 1, 1.0),
        (D(2027, 2, 1), 1, 1, 0, 0.0),
    ]
    # on 02-28 the 30 days are 01-30..02-28: ria bought nothing in them (churned), sam did
    assert rows(churn) == [
        (D(2027, 1, 1), D(2027, 1, 31), 1, 0, 0.0),
        (D(2027, 2, 1), D(2027, 2, 28), 2, 1, 0.5),
        (D(2027, 3, 1), D(2027, 3, 31), 2, 2, 1.0),
    ]
    # ria: 1 purchase, last on 01-20 (70 days before 03-31), 20.00; sam 54 days, 50.00;
    # scores 1 + (rank - 1) x 5 // 2
    assert rows(rfm) == [
        ("ria", 70, 1, 200_000, 1, 1, 1, "hibernating"),
        ("sam", 54, 1, 500_000, 3, 1, 3, "others"),
    ]
    # from February on, ria has no purchase at all: she is not scored
    assert rows(february) == [("sam", 54, 1, 500_000, 1, 1, 1, "hibernating")]
    assert_journal_ok(shop)


def test_clv_statements_and_the_dashboard_leave_the_refunded_order_out(
        shop: sa.Engine) -> None:
    # When CLV at 03-31, February's member statements and the staff dashboard are asked
    clv = clv_report(shop, P, D(2027, 3, 31))
    _, statements = reports.statements(shop, P, D(2027, 2, 1), D(2027, 2, 28))
    figures = dashboard(shop, P, D(2027, 2, 1), D(2027, 2, 28))
    # Then ria has one purchase, on 01-20, and 20.00 of historic CLV
    assert [(m["member"], m["purchases"], m["historic_clv"], m["first_purchase"],
             m["last_purchase"]) for m in clv["members"]] == [
        ("ria", 1, "20.00", "2027-01-20", "2027-01-20"),
        ("sam", 1, "50.00", "2027-02-05", "2027-02-05"),
    ]
    # ria earned 100 and had them clawed back in February, with no purchase
    assert rows(statements.select("member", "earned", "purchases", "spend_e4")) == [
        ("ria", 0, 0, 0), ("sam", 50, 1, 500_000)]
    # the dashboard: 1 purchase (on 02-05), 1 active member, no repeater; sales 50.00
    assert (figures["purchases"], figures["active"], figures["repeaters"],
            figures["repeat_rate"], str(figures["sales"])) == (1, 1, 0, 0.0, "50.00")
    series = figures["series"]
    assert {key: n for key, n in zip(series["keys"], series["purchases"], strict=True)
            if n} == {"2027-02-05": 1}
    assert_journal_ok(shop)


def test_the_points_of_a_refunded_order_keep_its_store(shop: sa.Engine) -> None:
    # When February's points are asked by store
    frame = run(shop, "points", D(2027, 2, 1), D(2027, 2, 28), grain="total", by="store")
    # Then the 100 points of the refunded 02-03 order and the 100 its refund clawed back
    # both count at its store, s1 (not at ria's home store s2, her first order's): s1 nets
    # to 0; s2 has sam's 50 issued, and ria's 20 of January outstanding with them
    assert rows(frame.select("store", "outstanding", "issued")) == [
        ("s1", 0, 0), ("s2", 70, 50)]
    # and the members' home stores are their first orders': ria s2 (January), sam s2
    assert rows(run(shop, "enrolments", D(2027, 1, 1), D(2027, 2, 28), by="store")) == [
        (D(2027, 1, 1), "s2", 1), (D(2027, 2, 1), "s2", 1)]
    assert_journal_ok(shop)


DUO = "duo"
TWO_SHOPS: dict[str, Any] = {
    "id": DUO, "name": "Duo", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "points": {"name": "Points", "pending_days": 0},
    "earn": [{"id": "base", "on": "purchase", "rate": 1}],
    "tiers": {"metric": "spend", "window": "calendar_year",
              "levels": [{"id": "member", "name": "Member", "threshold": 0},
                         {"id": "gold", "name": "Gold", "threshold": 100}]},
    "partners": {"point_value": "0.01",
                 "merchants": [{"id": "kopi", "name": "Kopi"}, {"id": "roti", "name": "Roti"}]},
}


@pytest.fixture
def two_shops(engine: sa.Engine) -> sa.Engine:
    """uma buys 30.00 at s1 (pos, partner kopi) on 01-10, then 80.00 at s2 (app, partner
    roti) on 01-20, which takes her to Gold (110.00 of spend); 50.00 of the second order
    is refunded on 02-05: 50 of its 80 points are clawed back."""
    load_programme(engine, dict(TWO_SHOPS))
    upsert_member(engine, DUO, "uma", {}, fixed_clock("2027-01-05T09:00:00+08:00"))
    for event_id, when, amount, store, channel, partner in (
            ("u1", "2027-01-10T10:00:00+08:00", "30.00", "s1", "pos", "kopi"),
            ("u2", "2027-01-20T10:00:00+08:00", "80.00", "s2", "app", "roti")):
        ingest_event(engine, DUO, {
            "id": event_id, "type": "purchase", "member": "uma", "occurred_at": when,
            "order_id": f"o-{event_id}", "amount": amount, "currency": "MYR",
            "store": store, "channel": channel, "partner": partner}, fixed_clock(when))
    ingest_event(engine, DUO, {
        "id": "u2-back", "type": "refund", "member": "uma", "order_id": "o-u2",
        "amount": "50.00", "occurred_at": "2027-02-05T10:00:00+08:00",
    }, fixed_clock("2027-02-05T10:00:00+08:00"))
    return engine


@pytest.mark.parametrize(("by", "expected"), [
    # the clawback of 02-05 counts where order o-u2 earned its points: s2, app, roti, and
    # the tier it was bought at (member), not uma's home (s1, pos, kopi) or her tier now
    ("store", [(D(2027, 1, 1), "s1", 30, 30), (D(2027, 1, 1), "s2", 80, 80),
               (D(2027, 2, 1), "s1", 30, 0), (D(2027, 2, 1), "s2", 30, -50)]),
    ("channel", [(D(2027, 1, 1), "app", 80, 80), (D(2027, 1, 1), "pos", 30, 30),
                 (D(2027, 2, 1), "app", 30, -50), (D(2027, 2, 1), "pos", 30, 0)]),
    ("partner", [(D(2027, 1, 1), "kopi", 30, 30), (D(2027, 1, 1), "roti", 80, 80),
                 (D(2027, 2, 1), "kopi", 30, 0), (D(2027, 2, 1), "roti", 30, -50)]),
    ("tier", [(D(2027, 1, 1), "member", 110, 110), (D(2027, 2, 1), "member", 60, -50)]),
])
def test_a_clawback_counts_at_the_store_channel_partner_and_tier_of_its_order(
        two_shops: sa.Engine, by: str, expected: list[tuple[object, ...]]) -> None:
    # When January and February's points are asked by the dimension
    frame = run(two_shops, "points", D(2027, 1, 1), D(2027, 2, 28), program=DUO, by=by)
    # Then (period, dimension, outstanding, issued): January 80 at s2 and 30 at s1;
    # February the -50 at s2 too, which leaves s2 with 30 outstanding and s1 with its 30
    assert rows(frame.select("period", by, "outstanding", "issued")) == expected
    # and the sales are the orders' own, net of the refund: 30.00 at s1, 30.00 at s2
    sales = run(two_shops, "sales", D(2027, 1, 1), D(2027, 2, 28), program=DUO,
                grain="total", by="store")
    assert rows(sales.select("store", "purchases", "member_sales_e4")) == [
        ("s1", 1, 300_000), ("s2", 1, 300_000)]
    assert_journal_ok(two_shops)


HELD = "held"


@pytest.fixture
def held_shops(engine: sa.Engine) -> sa.Engine:
    """Programme "held" (Duo's, with a fraud limit of 50 points a day): vic buys 10.00 at
    s1 (pos, kopi) on 01-10, then 100.00 at s2 (app, roti) on 01-20, whose 100 points are
    held for review (over the daily limit); the review is rejected on 02-05 and its
    ``review_reject`` posting (ref ``review:<id>``) takes the 100 points back."""
    load_programme(engine, {**TWO_SHOPS, "id": HELD,
                            "fraud": {"velocity": [{"per": "day", "max_points": 50}]}})
    upsert_member(engine, HELD, "vic", {}, fixed_clock("2027-01-05T09:00:00+08:00"))
    answers = [ingest_event(engine, HELD, {
        "id": event_id, "type": "purchase", "member": "vic", "occurred_at": when,
        "order_id": f"o-{event_id}", "amount": amount, "currency": "MYR",
        "store": store, "channel": channel, "partner": partner}, fixed_clock(when))
        for event_id, when, amount, store, channel, partner in (
            ("v1", "2027-01-10T10:00:00+08:00", "10.00", "s1", "pos", "kopi"),
            ("v2", "2027-01-20T10:00:00+08:00", "100.00", "s2", "app", "roti"))]
    assert "review" not in answers[0] and answers[1]["review"]["held"] is True
    (review,) = fraud.reviews(engine, HELD)
    fraud.decide(engine, HELD, int(review["id"]), "reject", "reject-v2",
                 fixed_clock("2027-02-05T10:00:00+08:00"))
    return engine


@pytest.mark.parametrize(("by", "home", "order"), [
    ("store", "s1", "s2"), ("channel", "pos", "app"), ("partner", "kopi", "roti")])
def test_a_rejected_reviews_take_back_counts_at_the_order_it_takes_back(
        held_shops: sa.Engine, by: str, home: str, order: str) -> None:
    # When January and February's points, and their total, are asked by the dimension
    frame = run(held_shops, "points", D(2027, 1, 1), D(2027, 2, 28), program=HELD, by=by)
    total = run(held_shops, "points", D(2027, 1, 1), D(2027, 2, 28), program=HELD, by=by,
                grain="total")
    # Then (period, dimension, outstanding, issued): the take-back of 02-05 counts where
    # order o-v2 earned its 100 points (s2, app, roti), not at vic's home (her first order's:
    # s1, pos, kopi), which keeps its 10 (it was given 10 - 100 = -90 and s2 kept 100)
    assert rows(frame.select("period", by, "outstanding", "issued")) == sorted([
        (D(2027, 1, 1), home, 10, 10), (D(2027, 1, 1), order, 100, 100),
        (D(2027, 2, 1), home, 10, 0), (D(2027, 2, 1), order, 0, -100)])
    assert rows(total.select(by, "outstanding", "issued")) == sorted([
        (home, 10, 10), (order, 0, 0)])
    assert_journal_ok(held_shops)


def test_a_rejected_reviews_take_back_counts_at_the_tier_its_order_was_bought_at(
        held_shops: sa.Engine) -> None:
    # Given vic Gold now (the rejection of o-v2 took back the Gold it lifted her to; two
    # purchases of 45.00 in March, after the range, took her there again), who bought
    # o-v2 as a member
    for event_id, day in (("v3", "10"), ("v4", "11")):
        when = f"2027-03-{day}T10:00:00+08:00"
        assert "review" not in ingest_event(held_shops, HELD, {
            "id": event_id, "type": "purchase", "member": "vic", "occurred_at": when,
            "order_id": f"o-{event_id}", "amount": "45.00", "currency": "MYR", "store": "s1",
            "channel": "pos", "partner": "kopi"}, fixed_clock(when))
    assert an.load(held_shops, HELD).members.select("tier").item() == "gold"
    # When the points are asked by tier
    frame = run(held_shops, "points", D(2027, 1, 1), D(2027, 2, 28), program=HELD, by="tier")
    # Then the take-back counts at "member", the tier o-v2 was bought at, as its 100 points
    # did (it was counted at vic's tier now: gold -100, member keeping 110)
    assert rows(frame.select("period", "tier", "outstanding", "issued")) == [
        (D(2027, 1, 1), "member", 110, 110), (D(2027, 2, 1), "member", 10, -100)]
    assert_journal_ok(held_shops)
