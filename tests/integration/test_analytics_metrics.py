"""Every metric on the hand-built history of analytics_history.py, on SQLite and PostgreSQL.

The expected values are worked out by hand in the comments (amounts in MYR; money in
the frames is in ten-thousandths, ``*_e4``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import polars as pl
import pytest
import sqlalchemy as sa

from setia.adapters.db.store import PostingContext, UnitOfWork
from setia.domain.errors import InvalidField
from setia.service import analytics as an
from setia.service.common import require_programme, transaction
from tests.conftest import assert_journal_ok
from tests.integration.analytics_history import P, build

D = date


@pytest.fixture
def cafe(engine: sa.Engine) -> sa.Engine:
    build(engine)
    return engine


def run(engine: sa.Engine, name: str, date_from: date = D(2027, 1, 1),
        date_to: date = D(2027, 3, 31), program: str = P, **given: object) -> pl.DataFrame:
    data = an.load(engine, program, by=given.get("by"))  # type: ignore[arg-type]
    options = an.options_for(data.programme, date_from, date_to, **given)
    frame = an.METRICS[name](data, options)
    assert frame is not None
    return frame


def rows(frame: pl.DataFrame) -> list[tuple[object, ...]]:
    return [tuple(r) for r in frame.iter_rows()]


def test_sales_by_month_members_against_guests(cafe: sa.Engine) -> None:
    frame = run(cafe, "sales").select(
        "period", "purchases", "active_members", "repeat_members", "repeat_purchase_rate",
        "purchase_frequency", "member_sales_e4", "aov_member_e4", "guest_orders",
        "aov_non_member_e4")
    # Jan: ann 40 + 70 (2 purchases, 1 member, a repeat); guest 25.00
    # Feb: bob 30, ann 20, cat 50 - 10 refunded = 40 -> 90 over 3; guest 15.00
    # (bob's 02-01 07:00 +08:00 purchase is 01-31 23:00 UTC: it counts in February)
    assert rows(frame) == [
        (D(2027, 1, 1), 2, 1, 1, 1.0, 2.0, 1_100_000, 550_000.0, 1, 250_000.0),
        (D(2027, 2, 1), 3, 3, 0, 0.0, 1.0, 900_000, 300_000.0, 1, 150_000.0),
    ]
    assert_journal_ok(cafe)


def test_sales_by_store_and_by_tier_held_at_the_purchase(cafe: sa.Engine) -> None:
    by_store = run(cafe, "sales", by="store").select(
        "period", "store", "purchases", "active_members", "member_sales_e4", "guest_sales_e4")
    assert rows(by_store) == [
        (D(2027, 1, 1), "s1", 2, 1, 1_100_000, 250_000),
        (D(2027, 2, 1), "s1", 1, 1, 400_000, 0),
        (D(2027, 2, 1), "s2", 2, 2, 500_000, 150_000),
    ]
    # ann's 20.00 on 02-10 was bought at Gold (she reached it with the 70.00 on 01-25)
    by_tier = run(cafe, "sales", grain="total", by="tier").select(
        "period", "tier", "purchases", "member_sales_e4", "guest_orders")
    assert rows(by_tier) == [
        (D(2027, 1, 1), "(none)", 0, 0, 2),
        (D(2027, 1, 1), "gold", 1, 200_000, 0),
        (D(2027, 1, 1), "member", 4, 1_800_000, 0),
    ]


def test_sales_by_channel_by_day(cafe: sa.Engine) -> None:
    frame = run(cafe, "sales", D(2027, 2, 1), D(2027, 2, 14), grain="day", by="channel").select(
        "period", "channel", "purchases", "member_sales_e4")
    assert rows(frame) == [
        (D(2027, 2, 1), "app", 1, 300_000),
        (D(2027, 2, 10), "app", 1, 200_000),
        (D(2027, 2, 14), "pos", 1, 400_000),
    ]


def test_enrolments_by_month_and_by_current_tier(cafe: sa.Engine) -> None:
    assert rows(run(cafe, "enrolments")) == [(D(2027, 1, 1), 2), (D(2027, 2, 1), 1)]
    assert rows(run(cafe, "enrolments", by="tier")) == [
        (D(2027, 1, 1), "gold", 1), (D(2027, 1, 1), "member", 1), (D(2027, 2, 1), "member", 1),
    ]
    # weeks start on Monday: 01-05 is in the week of 01-04, 01-20 of 01-18, 02-03 of 02-01
    assert rows(run(cafe, "enrolments", grain="week")) == [
        (D(2027, 1, 4), 1), (D(2027, 1, 18), 1), (D(2027, 2, 1), 1),
    ]


def test_retention_by_monthly_enrolment_cohort(cafe: sa.Engine) -> None:
    # January cohort ann + bob: Jan ann bought, Feb both, Mar nobody; February cohort cat.
    assert rows(run(cafe, "retention")) == [
        (D(2027, 1, 1), 2, 0, 1, 0.5),
        (D(2027, 1, 1), 2, 1, 2, 1.0),
        (D(2027, 1, 1), 2, 2, 0, 0.0),
        (D(2027, 2, 1), 1, 0, 1, 1.0),
        (D(2027, 2, 1), 1, 1, 0, 0.0),
    ]


def test_churn_after_30_days_without_a_purchase(cafe: sa.Engine) -> None:
    # purchase days: ann 01-10, 01-25, 02-10; bob 02-01; cat 02-14
    assert rows(run(cafe, "churn")) == [
        (D(2027, 1, 1), D(2027, 1, 31), 1, 0, 0.0),
        (D(2027, 2, 1), D(2027, 2, 28), 3, 0, 0.0),
        (D(2027, 3, 1), D(2027, 3, 31), 3, 3, 1.0),
    ]
    # on 03-05 the 30 days are 02-04..03-05: ann and cat bought in them, bob did not
    assert rows(run(cafe, "churn", D(2027, 1, 1), D(2027, 3, 5), grain="total")) == [
        (D(2027, 1, 1), D(2027, 3, 5), 3, 1, 0.3333),
    ]
    # with 60 days (given instead of the programme's 30) bob is still a customer
    assert rows(run(cafe, "churn", D(2027, 1, 1), D(2027, 3, 5), grain="total",
                    churn_days=60)) == [(D(2027, 1, 1), D(2027, 3, 5), 3, 0, 0.0)]


def test_churn_by_store_of_the_first_purchase(cafe: sa.Engine) -> None:
    # ann and cat first bought at s1, bob at s2
    assert rows(run(cafe, "churn", D(2027, 1, 1), D(2027, 3, 5), grain="total",
                    by="store")) == [
        (D(2027, 1, 1), D(2027, 3, 5), "s1", 2, 0, 0.0),
        (D(2027, 1, 1), D(2027, 3, 5), "s2", 1, 1, 1.0),
    ]


def test_points_issued_redeemed_expired_and_liability(cafe: sa.Engine) -> None:
    # Jan: welcome 10 + 10, 40 + 70 = 130 issued. Feb: welcome 10, 30, 20 x 2 = 40, 50,
    # clawback -10 = 120 issued, coffee 20 redeemed. Mar: 30 of ann's 01-10 lot expire.
    # Outstanding 130, 230, 200; at RM 0.01 a point: 1.30, 2.30, 2.00.
    assert rows(run(cafe, "points")) == [
        (D(2027, 1, 1), 130, 130, 0, 0, 0, 0.0, 0.0, 13_000),
        (D(2027, 2, 1), 230, 120, 20, 0, 0, 0.1667, 0.0, 23_000),
        (D(2027, 3, 1), 200, 0, 0, 30, 0, None, None, 20_000),
    ]
    # over the quarter: redemption rate 20/250, breakage 30/250; a cost per point given
    assert rows(run(cafe, "points", grain="total", cost_per_point=Decimal("0.05"))) == [
        (D(2027, 1, 1), 200, 250, 20, 30, 0, 0.08, 0.12, 100_000),
    ]


def test_points_by_channel(cafe: sa.Engine) -> None:
    # signup points, the redemption and the expiry take the member's first channel
    # (ann pos, bob app, cat pos); purchase points their own channel.
    frame = run(cafe, "points", grain="total", by="channel")
    assert rows(frame.select("channel", "outstanding", "issued", "redeemed", "expired")) == [
        ("app", 80, 80, 0, 0),  # bob 10 + 30, ann's 02-10 at Gold 40
        ("pos", 120, 170, 20, 30),  # ann 10 + 40 + 70, cat 10 + 50 - 10
    ]


def test_liability_ageing_by_expiry_month(cafe: sa.Engine) -> None:
    # open lots: ann 70 (exp 03-25) + 40 (04-10); bob 10 (03-20) + 30 (04-01);
    # cat 50 (04-14; the clawback took the welcome lot that expires first)
    assert rows(run(cafe, "liability-ageing")) == [("2027-03", 80, 8_000),
                                                   ("2027-04", 120, 12_000)]
    assert rows(run(cafe, "liability-ageing", by="tier")) == [
        ("2027-03", "gold", 70, 7_000), ("2027-03", "member", 10, 1_000),
        ("2027-04", "gold", 40, 4_000), ("2027-04", "member", 80, 8_000),
    ]


def test_rfm_scores_and_segments(cafe: sa.Engine) -> None:
    data = an.load(cafe, P)
    options = an.options_for(data.programme, D(2027, 1, 1), D(2027, 3, 31))
    # recency to 03-31: ann 49 days, bob 58, cat 45; scores 1 + (rank - 1) * 5 // 3
    assert rows(an.rfm(data, options)) == [
        ("ann", 49, 3, 1_300_000, 2, 4, 4, "loyal"),
        ("bob", 58, 1, 300_000, 1, 1, 1, "hibernating"),
        ("cat", 45, 1, 400_000, 4, 1, 2, "new"),
    ]
    assert rows(run(cafe, "rfm")) == [("hibernating", 1), ("loyal", 1), ("new", 1)]


def test_features_without_rows_give_empty_metrics(cafe: sa.Engine) -> None:
    data = an.load(cafe, P)
    options = an.options_for(data.programme, D(2027, 1, 1), D(2027, 3, 31))
    for metric in (an.coupons, an.surveys, an.memberships, an.campaigns):
        frame = metric(data, options)
        assert frame is not None and frame.height == 0, metric.__name__


@pytest.fixture
def other_features(cafe: sa.Engine) -> Iterator[sa.Engine]:
    """Rows in the tables other features write (campaign hold-outs, coupon uses, survey
    responses, paid-membership purchases), as those features write them."""
    from setia.adapters.db import tables

    def at(text: str) -> datetime:
        return datetime.fromisoformat(text).astimezone(UTC)

    table = tables.metadata.tables
    with cafe.connect() as conn:
        pk = dict(conn.execute(sa.text(
            "SELECT id, pk FROM members WHERE program_id = :p"), {"p": P}).all())

    def use(n: int, program: str, member: str, discount: str, when: str,
            released: str | None = None) -> dict[str, Any]:
        return {"id": f"use-{n}", "program_id": program, "coupon_id": "c", "code": f"C{n}",
                "member_pk": pk.get(member, 0), "member_id": member, "order_id": f"o-{n}",
                "discount": Decimal(discount), "currency": "MYR", "used_at": at(when),
                "released_at": at(released) if released else None}

    def answer(n: int, member: str, nps: int, rating: int, when: str) -> dict[str, Any]:
        return {"id": f"resp-{n}", "program_id": P, "survey_id": "visit",
                "member_pk": pk[member], "member_id": member, "submitted_at": at(when),
                "nps": nps, "rating": rating, "answers": {}, "points": 0}

    with cafe.begin() as conn:
        conn.execute(table["campaign_holdouts"].insert(), [
            {"program_id": P, "campaign_id": "spring", "member_pk": pk["cat"],
             "member_id": "cat", "recorded_at": at("2027-01-01T00:00:00+08:00")}])
        conn.execute(table["coupon_uses"].insert(), [
            use(1, P, "ann", "5.00", "2027-01-15T10:00:00+08:00"),
            use(2, P, "bob", "2.50", "2027-02-16T10:00:00+08:00"),
            use(3, P, "cat", "1.25", "2027-02-20T10:00:00+08:00"),
            use(4, "elsewhere", "x", "9.00", "2027-02-20T10:00:00+08:00"),
            # given back by a refund: no cost
            use(5, P, "bob", "4.00", "2027-02-21T10:00:00+08:00",
                released="2027-02-22T10:00:00+08:00"),
        ])
        conn.execute(table["survey_responses"].insert(), [
            answer(1, "ann", 10, 5, "2027-01-20T10:00:00+08:00"),
            answer(2, "bob", 9, 4, "2027-01-21T10:00:00+08:00"),
            answer(3, "cat", 3, 2, "2027-01-22T10:00:00+08:00"),
            answer(4, "ann", 7, 3, "2027-02-22T10:00:00+08:00"),
        ])
        bought = {"member": "ann", "member_pk": pk["ann"], "plan_id": "plus", "kind": "buy",
                  "fee": Decimal("20.00"), "currency": "MYR",
                  "starts_at": at("2027-01-06T10:00:00+08:00"),
                  "ends_at": at("2027-02-06T10:00:00+08:00"), "status": "active",
                  "tier_before": None, "vouchers_issued": 0,
                  "created_at": at("2027-01-06T10:00:00+08:00"), "cancelled_at": None}
        conn.execute(table["membership_purchases"].insert(), [
            {"id": "m-1", "program": P, **bought},
            {"id": "m-2", "program": "elsewhere", **bought}])
    # the campaign feature's points: a posting with rule id "campaign:spring", to ann
    def award(uow: UnitOfWork) -> None:
        programme = require_programme(uow, P)
        member = uow.member(P, "ann")
        assert member is not None
        when = at("2027-02-05T10:00:00+08:00")
        member.ledger.earn(25, source="campaign:spring:ann", rule_id="campaign:spring",
                           explanation="spring campaign", available_at=when,
                           pending=False, expires_at=None)
        uow.record(P, member, PostingContext(ref="campaign:spring:ann",
                                             program_version=programme.version,
                                             occurred_at=when))
        # and its award row, as the campaign feature keeps it beside the posting
        uow.execute(table["campaign_awards"].insert().values(
            program_id=P, campaign_id="spring", ref="campaign:spring:ann",
            member_pk=member.pk, order_id=None, program_version=programme.version,
            awarded=25, kept=25, voucher_code=None, awarded_at=when))
        uow.commit()

    transaction(cafe, award)
    yield cafe


def test_campaign_cost_and_incremental_spend_against_the_holdout(
        other_features: sa.Engine) -> None:
    # ann got 25 points (RM 0.25) and spent 130.00 in the quarter; the hold-out cat 40.00:
    # incremental spend (130 - 40) x 1 member = 90.00
    frame = run(other_features, "campaigns")
    assert rows(frame) == [
        ("spring", 25, 1, 2_500, 1_300_000.0, 1, 400_000.0, 900_000.0)]
    assert_journal_ok(other_features)


def test_coupon_cost_per_month(other_features: sa.Engine) -> None:
    assert rows(run(other_features, "coupons")) == [
        (D(2027, 1, 1), 1, 50_000), (D(2027, 2, 1), 2, 37_500)]


def test_nps_and_satisfaction_from_surveys(other_features: sa.Engine) -> None:
    # Jan: 10, 9 promoters, 3 detractor: (2 - 1) / 3 = 33.33; ratings 5, 4, 2 -> 3.6667
    # Feb: 7 is passive: NPS 0; rating 3
    assert rows(run(other_features, "surveys")) == [
        (D(2027, 1, 1), 3, 2, 1, 3.6667, 33.33),
        (D(2027, 2, 1), 1, 0, 0, 3.0, 0.0),
    ]


def test_nps_is_negative_where_detractors_outnumber_promoters(cafe: sa.Engine) -> None:
    # Given January's scores 10, 2, 3 and 5 (ratings 4, 1, 2, 3) and February's 9 (rating 5)
    from setia.adapters.db import tables

    with cafe.connect() as conn:
        pk = dict(conn.execute(sa.text(
            "SELECT id, pk FROM members WHERE program_id = :p"), {"p": P}).all())
    answers = [("ann", 10, 4, "2027-01-20"), ("bob", 2, 1, "2027-01-21"),
               ("cat", 3, 2, "2027-01-22"), ("ann", 5, 3, "2027-01-23"),
               ("bob", 9, 5, "2027-02-10")]
    with cafe.begin() as conn:
        conn.execute(tables.metadata.tables["survey_responses"].insert(), [
            {"id": f"resp-{n}", "program_id": P, "survey_id": "visit", "member_pk": pk[member],
             "member_id": member, "nps": nps, "rating": rating, "answers": {}, "points": 0,
             "submitted_at": datetime.fromisoformat(f"{day}T10:00:00+08:00").astimezone(UTC)}
            for n, (member, nps, rating, day) in enumerate(answers)])
    # When the surveys are reported
    frame = run(cafe, "surveys")
    # Then January: 1 promoter, 3 detractors of 4: (1 - 3) x 100 / 4 = -50.00 (the unsigned
    # counts wrapped to 1073741774.0); ratings 2.5. February: 1 promoter of 1, 100.00
    assert rows(frame) == [
        (D(2027, 1, 1), 4, 1, 3, 2.5, -50.0),
        (D(2027, 2, 1), 1, 1, 0, 5.0, 100.0),
    ]
    answer = an.metrics(cafe, P, D(2027, 1, 1), D(2027, 1, 31), ("surveys",))
    assert answer["metrics"]["surveys"][0]["nps"] == -50.0


def test_paid_membership_fees(other_features: sa.Engine) -> None:
    assert rows(run(other_features, "memberships")) == [(D(2027, 1, 1), 1, 200_000)]


def test_metrics_answer_for_the_api(cafe: sa.Engine) -> None:
    answer = an.metrics(cafe, P, D(2027, 2, 1), D(2027, 2, 28), ("sales", "points"),
                        grain="total")
    assert answer["churn_days"] == 30 and answer["cost_per_point"] == "0.01"
    assert answer["metrics"]["sales"] == [{
        "period": "2027-02-01", "purchases": 3, "active_members": 3, "repeat_members": 0,
        "member_sales": "90.00", "guest_orders": 1, "guest_sales": "15.00",
        "repeat_purchase_rate": 0.0, "purchase_frequency": 1.0, "aov_member": "30.00",
        "aov_non_member": "15.00",
    }]
    assert answer["metrics"]["points"] == [{
        "period": "2027-02-01", "outstanding": 230, "issued": 120, "redeemed": 20,
        "expired": 0, "adjusted": 0, "redemption_rate": 0.1667, "breakage_rate": 0.0,
        "liability": "2.30",
    }]


@pytest.mark.parametrize(("given", "field"), [
    ({"grain": "year"}, "grain"), ({"by": "city"}, "by"), ({"churn_days": 0}, "churn_days"),
    ({"cost_per_point": Decimal("-1")}, "cost_per_point"),
])
def test_bad_options_are_refused_naming_the_field(cafe: sa.Engine, given: dict[str, object],
                                                  field: str) -> None:
    with pytest.raises(InvalidField) as caught:
        an.metrics(cafe, P, D(2027, 1, 1), D(2027, 3, 31), **given)
    assert caught.value.field == field


def test_a_range_backwards_or_out_of_bounds_is_refused(cafe: sa.Engine) -> None:
    with pytest.raises(InvalidField) as caught:
        an.metrics(cafe, P, D(2027, 3, 1), D(2027, 1, 1))
    assert caught.value.field == "to"
    with pytest.raises(InvalidField) as caught:
        an.metrics(cafe, P, D(1, 1, 1), D(2027, 1, 1))
    assert caught.value.field == "from"
