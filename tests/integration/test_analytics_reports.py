"""CLV, member statements, the audit, exports, guest sales and the what-if on the
hand-built history (analytics_history.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import io
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from setia.adapters.db import tables
from setia.adapters.db.tables_analytics import guest_refunds
from setia.domain.errors import (
    CurrencyMismatch,
    IdempotencyConflict,
    InvalidAmount,
    InvalidField,
    InvalidProgramme,
    RefundExceedsOrder,
    SetiaError,
    UnknownOrder,
)
from setia.service import analytics as an
from setia.service import analytics_reports as reports
from setia.service import whatif
from setia.service.analytics_sales import record_guest_refunds, record_guest_sales
from setia.service.clv import clv_report, fit
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from setia.service.reversals import reverse
from setia.service.run_due import run_due
from tests.conftest import assert_journal_ok, at, fixed_clock, load_programme, wait_for_lock_waiters
from tests.integration.analytics_history import CAFE, P, build, purchase

D = date


@pytest.fixture
def cafe(engine: sa.Engine) -> sa.Engine:
    build(engine)
    return engine


def counts(engine: sa.Engine) -> tuple[int, ...]:
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one()
                     for name in ("postings", "lots", "orders", "events", "guest_sales",
                                  "members", "guest_refunds"))


def test_historic_clv_per_member(cafe: sa.Engine) -> None:
    answer = clv_report(cafe, P, D(2027, 3, 31), horizon_weeks=52)
    historic = [(m["member"], m["purchases"], m["historic_clv"], m["first_purchase"],
                 m["last_purchase"]) for m in answer["members"]]
    assert historic == [
        ("ann", 3, "130.00", "2027-01-10", "2027-02-10"),
        ("bob", 1, "30.00", "2027-02-01", "2027-02-01"),
        ("cat", 1, "40.00", "2027-02-14", "2027-02-14"),  # 50.00 - 10.00 refunded
    ]
    one = clv_report(cafe, P, D(2027, 3, 31), member="bob")
    assert [m["member"] for m in one["members"]] == ["bob"]
    page = clv_report(cafe, P, D(2027, 3, 31), limit=2)
    assert [m["member"] for m in page["members"]] == ["ann", "bob"] and page["next"] == "bob"
    rest = clv_report(cafe, P, D(2027, 3, 31), limit=2, after="bob")
    assert [m["member"] for m in rest["members"]] == ["cat"] and rest["next"] is None


def test_predicted_clv_from_the_database_equals_the_fit_on_the_cdnow_file(
        engine: sa.Engine) -> None:
    """The first 40 CDNOW customers' purchases up to 1997-09-30, ingested as events: the
    predictions served are those of the models fitted on the same rows read from the file."""
    from tests.unit.test_clv_cdnow import cdnow

    rows_ = cdnow().filter(pl.col("day") <= D(1997, 9, 30))
    first = rows_["customer"].unique().sort().head(40)
    sample = rows_.filter(pl.col("customer").is_in(first.implode()))
    load_programme(engine, {"id": "cdnow", "name": "CDNOW", "currency": "USD",
                            "timezone": "UTC", "earn": [{"id": "base", "on": "purchase",
                                                          "rate": 1}]})
    for customer in first:
        upsert_member(engine, "cdnow", f"c{customer}",
                      {"enrolled_at": "1997-01-01T00:00:00+00:00"},
                      fixed_clock("1997-01-01T00:00:00+00:00"))
    for i, (customer, day, amount) in enumerate(sample.iter_rows()):
        when = f"{day.isoformat()}T12:00:00+00:00"
        ingest_event(engine, "cdnow", {
            "id": f"t{i}", "type": "purchase", "member": f"c{customer}", "occurred_at": when,
            "order_id": f"o{i}", "amount": f"{amount:.2f}"}, fixed_clock(when))
    answer = clv_report(engine, "cdnow", D(1997, 9, 30), horizon_weeks=39, limit=1000)
    expected = fit(sample, D(1997, 9, 30), 39)
    assert expected.scores is not None and expected.bgnbd is not None
    assert answer["model"]["customers"] == 40 and answer["model"]["unavailable"] is None
    # the optimiser sums the customers in another order (ids "c00004" against "00004"):
    # equal to a few parts in a hundred thousand
    assert answer["model"]["bgnbd"] == pytest.approx(expected.bgnbd, rel=1e-4)
    assert answer["model"]["gamma_gamma"] == pytest.approx(expected.gamma_gamma, rel=1e-4)
    want = {f"c{r['member']}": r for r in expected.scores.iter_rows(named=True)}
    assert len(answer["members"]) == 40
    for row in answer["members"]:
        w = want[row["member"]]
        assert row["expected_purchases"] == pytest.approx(w["expected_purchases"], abs=2e-4)
        assert row["probability_alive"] == pytest.approx(w["probability_alive"], abs=2e-4)
        assert Decimal(row["predicted_clv"]) == pytest.approx(Decimal(str(w["clv"])),
                                                              abs=Decimal("0.02"))
    assert_journal_ok(engine)


def test_clv_without_enough_repeat_buyers_says_why(cafe: sa.Engine) -> None:
    answer = clv_report(cafe, P, D(2027, 3, 31))
    assert answer["model"]["bgnbd"] is None
    assert answer["model"]["unavailable"] == (
        "1 customers with repeat purchases; the models need at least 2")
    assert [m["predicted_clv"] for m in answer["members"]] == [None, None, None]
    assert [m["historic_clv"] for m in answer["members"]] == ["130.00", "30.00", "40.00"]


def test_member_statements_for_february(cafe: sa.Engine) -> None:
    _, frame = reports.statements(cafe, P, D(2027, 2, 1), D(2027, 2, 28))
    # ann: 120 at the start, earned 40, spent 20 -> 140; Gold, top level
    # bob: 10 at the start, earned 30 -> 40; spend 30.00 of the 100 for Gold: 70 to go
    # cat: enrolled in February: earned 10 + 50 - 10 clawed back = 50; 40.00 spent: 60 to go
    assert rows(frame.select(
        "member", "asset", "tier", "balance_start", "earned", "spent", "expired", "adjusted",
        "balance_end", "purchases", "spend_e4", "tier_metric", "next_tier",
        "remaining_to_next")) == [
        ("ann", "points", "gold", 120, 40, 20, 0, 0, 140, 1, 200_000, 130.0, None, None),
        ("bob", "points", "member", 10, 30, 0, 0, 0, 40, 1, 300_000, 30.0, "gold", 70.0),
        ("cat", "points", "member", 0, 50, 0, 0, 0, 50, 1, 400_000, 40.0, "gold", 60.0),
    ]


def rows(frame: pl.DataFrame) -> list[tuple[object, ...]]:
    return [tuple(r) for r in frame.iter_rows()]


def tiers_now(engine: sa.Engine, program: str = P) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(
            "SELECT id, tier_id FROM members WHERE program_id = :p"), {"p": program}).all())


PROGRESS = ("member", "tier", "tier_metric", "next_tier", "remaining_to_next")


def test_a_statement_shows_the_tier_progress_at_its_end_not_after_it(cafe: sa.Engine) -> None:
    # Given the history, and after 02-20 bob buys 80.00 on 02-25 (the same month) and cat
    # 70.00 on 03-20: both reach Gold now, with 110.00 of spend this year
    purchase(cafe, "e6", "bob", "2027-02-25T10:00:00+08:00", "80.00", "s2", "app")
    purchase(cafe, "e7", "cat", "2027-03-20T10:00:00+08:00", "70.00", "s1", "pos")
    assert tiers_now(cafe) == {"ann": "gold", "bob": "gold", "cat": "gold"}
    # When the statements of 02-01 to 02-20 are asked
    _, frame = reports.statements(cafe, P, D(2027, 2, 1), D(2027, 2, 20))
    # Then the tier progress is as it stood on 02-20: bob a Member with 30.00 of the 100.00
    # for Gold (70.00 to go), cat with 40.00 (50.00 less the 10.00 refunded on 02-15);
    # the period's flows are those of the statement for February
    assert rows(frame.select(
        "member", "asset", "tier", "balance_start", "earned", "spent", "balance_end",
        "purchases", "spend_e4", "tier_metric", "next_tier", "remaining_to_next")) == [
        ("ann", "points", "gold", 120, 40, 20, 140, 1, 200_000, 130.0, None, None),
        ("bob", "points", "member", 10, 30, 0, 40, 1, 300_000, 30.0, "gold", 70.0),
        ("cat", "points", "member", 0, 50, 0, 50, 1, 400_000, 40.0, "gold", 60.0),
    ]
    # and one that ends after those purchases shows them
    _, march = reports.statements(cafe, P, D(2027, 3, 1), D(2027, 3, 31))
    assert rows(march.select(PROGRESS)) == [
        ("ann", "gold", 130.0, None, None), ("bob", "gold", 110.0, None, None),
        ("cat", "gold", 110.0, None, None)]
    assert_journal_ok(cafe)


STARS = "stars"


def test_a_statement_leaves_out_points_of_other_events_after_its_end(engine: sa.Engine) -> None:
    # Given a points metric over rolling 2-month windows (Silver 100, Gold 180), and eve:
    # 70.00 bought on 03-05 (70 points), a review on 03-10 (60): Silver with 130 points;
    # after 03-15 a review on 03-20 (60) takes her to Gold, at which she buys 150.00 on
    # 03-25: 340 points
    load_programme(engine, {
        "id": STARS, "name": "Stars", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
        "earn": [{"id": "base", "on": "purchase", "rate": 1},
                 {"id": "review", "on": "review", "points": 60}],
        "tiers": {"metric": "points", "window": "rolling_months", "window_months": 2,
                  "levels": [{"id": "member", "name": "Member", "threshold": 0},
                             {"id": "silver", "name": "Silver", "threshold": 100},
                             {"id": "gold", "name": "Gold", "threshold": 180}]},
    })
    upsert_member(engine, STARS, "eve", {}, fixed_clock("2027-03-01T09:00:00+08:00"))
    for event_id, when, kind, amount in (
            ("s1", "2027-03-05T10:00:00+08:00", "purchase", "70.00"),
            ("s2", "2027-03-10T10:00:00+08:00", "review", None),
            ("s3", "2027-03-20T10:00:00+08:00", "review", None),
            ("s4", "2027-03-25T10:00:00+08:00", "purchase", "150.00")):
        event = {"id": event_id, "type": kind, "member": "eve", "occurred_at": when}
        if amount is not None:
            event |= {"order_id": f"o-{event_id}", "amount": amount}
        ingest_event(engine, STARS, event, fixed_clock(when))
    assert tiers_now(engine, STARS) == {"eve": "gold"}
    # When the statement of 03-01 to 03-15 is asked
    _, frame = reports.statements(engine, STARS, D(2027, 3, 1), D(2027, 3, 15))
    # Then eve was Silver with 130 points, 50 short of Gold (not Gold, the tier of her
    # next purchase: the review before it had moved her)
    assert rows(frame.select(*PROGRESS, "earned")) == [("eve", "silver", 130.0, "gold", 50.0,
                                                        130)]
    # and to 03-31: Gold, with 340
    _, whole = reports.statements(engine, STARS, D(2027, 3, 1), D(2027, 3, 31))
    assert rows(whole.select(PROGRESS)) == [("eve", "gold", 340.0, None, None)]
    assert_journal_ok(engine)



def test_a_statement_takes_out_a_later_event_reversed_since_only_once(
        engine: sa.Engine) -> None:
    # Given a points metric (Silver 100), and eve: 70.00 bought on 03-05 (70 points) and a
    # review on 03-10 (60): 130 points; after 03-15 a review on 03-20 (60), reversed on
    # 03-21, which lowered March's bucket by its 60 already: 130 points again
    load_programme(engine, {
        "id": STARS, "name": "Stars", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
        "earn": [{"id": "base", "on": "purchase", "rate": 1},
                 {"id": "review", "on": "review", "points": 60}],
        "tiers": {"metric": "points", "window": "rolling_months", "window_months": 2,
                  "levels": [{"id": "member", "name": "Member", "threshold": 0},
                             {"id": "silver", "name": "Silver", "threshold": 100},
                             {"id": "gold", "name": "Gold", "threshold": 180}]},
    })
    upsert_member(engine, STARS, "eve", {}, fixed_clock("2027-03-01T09:00:00+08:00"))
    for event_id, when, kind, amount in (
            ("s1", "2027-03-05T10:00:00+08:00", "purchase", "70.00"),
            ("s2", "2027-03-10T10:00:00+08:00", "review", None),
            ("s3", "2027-03-20T10:00:00+08:00", "review", None)):
        event = {"id": event_id, "type": kind, "member": "eve", "occurred_at": when}
        if amount is not None:
            event |= {"order_id": f"o-{event_id}", "amount": amount}
        ingest_event(engine, STARS, event, fixed_clock(when))
    reverse(engine, STARS, {"ref": "s3", "reason": "fake review"}, "r1",
            fixed_clock("2027-03-21T10:00:00+08:00"))
    # When the statement of 03-01 to 03-15 is asked
    _, frame = reports.statements(engine, STARS, D(2027, 3, 1), D(2027, 3, 15))
    # Then eve had 130 points, 50 short of Gold (the reversed review's 60 taken out a
    # second time left 70)
    assert rows(frame.select(*PROGRESS, "earned")) == [("eve", "silver", 130.0, "gold", 50.0,
                                                        130)]
    assert_journal_ok(engine)

def test_a_statement_keeps_the_status_of_the_year_before_lowered_later(
        engine: sa.Engine) -> None:
    # Given dan reaches Gold with 120.00 in 2026 (calendar years, Gold from 100.00), keeps
    # it through 2027 (review of 2027-01-01), buys 20.00 on 2027-02-01, is lowered to
    # Member by the review of 2028-01-01 (20.00 in 2027) and buys 10.00 on 2028-02-01
    load_programme(engine, dict(CAFE))
    upsert_member(engine, P, "dan", {}, fixed_clock("2026-06-01T09:00:00+08:00"))
    purchase(engine, "d1", "dan", "2026-07-01T10:00:00+08:00", "120.00", "s1", "pos")
    run_due(engine, at("2027-01-01T00:10:00+08:00"), P)
    purchase(engine, "d2", "dan", "2027-02-01T10:00:00+08:00", "20.00", "s1", "pos")
    run_due(engine, at("2028-01-01T00:10:00+08:00"), P)
    purchase(engine, "d3", "dan", "2028-02-01T10:00:00+08:00", "10.00", "s1", "pos")
    assert tiers_now(engine) == {"dan": "member"}
    # When the statement of March 2027 is asked
    _, frame = reports.statements(engine, P, D(2027, 3, 1), D(2027, 3, 31))
    # Then dan was Gold then (the status earned in 2026), with 20.00 of 2027's spend
    assert rows(frame.select(PROGRESS)) == [("dan", "gold", 20.0, None, None)]
    assert_journal_ok(engine)


def test_member_statements_as_csv_and_json(cafe: sa.Engine, tmp_path: Path) -> None:
    data, frame = reports.statements(cafe, P, D(2027, 3, 1), D(2027, 3, 31), member="ann")
    target = tmp_path / "ann.csv"
    reports.write(frame, "csv", 2, target)
    assert target.read_text().splitlines() == [
        "member,tier,asset,balance_start,earned,spent,expired,adjusted,balance_end,purchases,"
        "tier_metric,next_tier,remaining_to_next,spend",
        "ann,gold,points,140,0,0,30,0,110,0,130.0,,,0.00",
    ]
    buffer = io.BytesIO()
    reports.write(frame, "json", 2, buffer)
    assert json.loads(buffer.getvalue()) == [{
        "member": "ann", "tier": "gold", "asset": "points", "balance_start": 140, "earned": 0,
        "spent": 0, "expired": 30, "adjusted": 0, "balance_end": 110, "purchases": 0,
        "tier_metric": 130.0, "next_tier": None, "remaining_to_next": None, "spend": "0.00",
    }]


def test_audit_reconciles_the_journal_with_the_metrics(cafe: sa.Engine) -> None:
    result = reports.audit(cafe, P, D(2027, 1, 1), D(2027, 3, 31))
    assert result["ok"] is True
    february = result["periods"][1]
    assert february["period"] == "2027-02-01"
    assert [(c["name"], c["journal"], c["metrics"]) for c in february["checks"]] == [
        ("points issued", 120, 120), ("points redeemed", 20, 20), ("points expired", 0, 0),
        ("points adjusted", 0, 0), ("outstanding points", 230, 230),
        ("journal sums to zero", 0, 0),
        ("member sales (net, minor units x 100)", 900_000, 900_000),
    ]
    assert result["all_time"] == [{"name": "cached balances = journal (all time)",
                                   "journal": 200, "metrics": 200, "ok": True}]


def test_audit_finds_a_cached_balance_that_left_the_journal(cafe: sa.Engine) -> None:
    with cafe.begin() as conn:
        conn.execute(sa.text("UPDATE members SET available = available + 5 WHERE id = 'bob'"))
    result = reports.audit(cafe, P, D(2027, 1, 1), D(2027, 3, 31))
    assert result["ok"] is False
    assert result["all_time"][0]["journal"] == 205 and result["all_time"][0]["metrics"] == 200
    with cafe.begin() as conn:  # put it back for the journal check
        conn.execute(sa.text("UPDATE members SET available = available - 5 WHERE id = 'bob'"))
    assert_journal_ok(cafe)


def test_exports_of_members_journal_and_metrics(cafe: sa.Engine, tmp_path: Path) -> None:
    members, digits = reports.export(cafe, P, "members", D(2027, 1, 1), D(2027, 3, 31))
    reports.write(members, "parquet", digits, tmp_path / "m.parquet")
    back = pl.read_parquet(tmp_path / "m.parquet")
    assert back.select("member", "available", "historic_clv_e4", "segment").rows() == [
        ("ann", 110, 1_300_000, "loyal"), ("bob", 40, 300_000, "hibernating"),
        ("cat", 50, 400_000, "new")]
    assert {"expected_purchases", "probability_alive", "predicted_clv_e4"} <= set(back.columns)
    reports.write(members, "csv", digits, tmp_path / "m.csv")
    header = (tmp_path / "m.csv").read_text().splitlines()[0].split(",")
    assert {"historic_clv", "predicted_clv", "probability_alive"} <= set(header)

    journal, _ = reports.export(cafe, P, "journal", D(2027, 1, 1), D(2027, 3, 31))
    # 3 welcomes, 5 purchases, 1 clawback, 1 redemption, 1 expiry
    assert journal.height == 11
    assert journal.group_by("code").len().sort("code").rows() == [
        ("clawback", 1), ("earn", 8), ("expire", 1), ("redeem", 1)]
    reports.write(journal, "csv", 2, tmp_path / "j.csv")
    first = (tmp_path / "j.csv").read_text().splitlines()[1]
    assert first.startswith("1,points,ann,issued,available,10,earn,signup:ann,welcome,1,")
    assert first.endswith(",2027-01-05T01:00:00.000000+00:00,,10")

    metric, _ = reports.export(cafe, P, "metrics", D(2027, 1, 1), D(2027, 3, 31),
                               "points", grain="total")
    reports.write(metric, "csv", 2, tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_text().splitlines() == [
        "period,outstanding,issued,redeemed,expired,adjusted,redemption_rate,breakage_rate,"
        "liability",
        "2027-01-01,200,250,20,30,0,0.08,0.12,2.00",
    ]
    with pytest.raises(InvalidField) as caught:
        reports.export(cafe, P, "everything", D(2027, 1, 1), D(2027, 3, 31))
    assert caught.value.field == "dataset"


def test_guest_sales_are_idempotent_by_id(cafe: sa.Engine) -> None:
    before = counts(cafe)
    again = record_guest_sales(cafe, P, [
        {"id": "g1", "occurred_at": "2027-01-15T12:00:00+08:00", "amount": "25.00",
         "store": "s1", "channel": "pos"},
        {"id": "g3", "occurred_at": "2027-03-02T12:00:00+08:00", "amount": "9.90"},
    ], fixed_clock("2027-03-02T13:00:00+08:00"))
    assert again == {"recorded": 1, "replayed": 1}
    assert counts(cafe)[4] == before[4] + 1
    stored = counts(cafe)
    with pytest.raises(IdempotencyConflict):
        record_guest_sales(cafe, P, [
            {"id": "g4", "occurred_at": "2027-03-02T12:00:00+08:00", "amount": "1.00"},
            {"id": "g1", "occurred_at": "2027-01-15T12:00:00+08:00", "amount": "26.00"},
        ])
    with pytest.raises(InvalidAmount) as caught:
        record_guest_sales(cafe, P, [{"id": "g5", "occurred_at": "2027-03-02T12:00:00+08:00",
                                      "amount": "1.001"}])
    assert caught.value.field == "sales[0].amount"
    assert counts(cafe) == stored  # nothing of a refused call is stored
    assert_journal_ok(cafe)


def guest_figures(engine: sa.Engine) -> tuple[object, ...]:
    """February's guest orders, guest sales and non-member average order value."""
    answer = an.metrics(engine, P, D(2027, 2, 1), D(2027, 2, 28), ("sales",), grain="total")
    sales = answer["metrics"]["sales"][0]
    return sales["guest_orders"], sales["guest_sales"], sales["aov_non_member"]


def test_a_guest_refund_lowers_non_member_sales_and_aov(cafe: sa.Engine) -> None:
    # Given February's guest sale g2 (15.00, 02-20) and another, g3, of 10.00 on 02-21
    record_guest_sales(cafe, P, [{"id": "g3", "occurred_at": "2027-02-21T12:00:00+08:00",
                                  "amount": "10.00", "store": "s2"}])
    assert guest_figures(cafe) == (2, "25.00", "12.50")
    # When 5.00 of g2 and all of g3 are refunded, g3's in two parts
    refunds = [
        {"id": "g2-r", "sale_id": "g2", "amount": "5.00",
         "occurred_at": "2027-02-22T12:00:00+08:00"},
        {"id": "g3-r1", "sale_id": "g3", "amount": "4.00",
         "occurred_at": "2027-02-22T12:00:00+08:00", "currency": "MYR"},
        {"id": "g3-r2", "sale_id": "g3", "amount": "6.00",
         "occurred_at": "2027-03-01T12:00:00+08:00"},
    ]
    assert record_guest_refunds(cafe, P, refunds) == {"recorded": 3, "replayed": 0}
    # Then g2 counts for what is left of it, 10.00, and g3, refunded in full, is no order
    # (as a member's order refunded in full): 1 guest order of 10.00
    assert guest_figures(cafe) == (1, "10.00", "10.00")
    by_store = an.metrics(cafe, P, D(2027, 2, 1), D(2027, 2, 28), ("sales",), grain="total",
                          by="store")["metrics"]["sales"]
    assert [(r["store"], r["guest_orders"], r["guest_sales"]) for r in by_store] == [
        ("s1", 0, "0.00"), ("s2", 1, "10.00")]
    # and the same refunds sent again are replayed: nothing changes
    before = counts(cafe)
    assert record_guest_refunds(cafe, P, refunds) == {"recorded": 0, "replayed": 3}
    assert counts(cafe) == before and guest_figures(cafe) == (1, "10.00", "10.00")
    assert_journal_ok(cafe)


@pytest.mark.parametrize(("refunds", "error", "field"), [
    # a sale never recorded (the first refund, good, is not stored either)
    ([{"id": "ok", "sale_id": "g1", "amount": "1.00"},
      {"id": "x", "sale_id": "g404", "amount": "1.00"}], UnknownOrder, "refunds[1].sale_id"),
    # 10.00 is left of g2 (15.00 less 5.00): 10.01 is too much, as is 6.00 after 5.00
    ([{"id": "x", "sale_id": "g2", "amount": "10.01"}], RefundExceedsOrder,
     "refunds[0].amount"),
    ([{"id": "x", "sale_id": "g2", "amount": "5.00"},
      {"id": "y", "sale_id": "g2", "amount": "6.00"}], RefundExceedsOrder, "refunds[1].amount"),
    # the id of a refund stored, for another amount; or twice in the call, differently
    ([{"id": "g2-r", "sale_id": "g2", "amount": "4.00"}], IdempotencyConflict,
     "refunds[0].id"),
    ([{"id": "x", "sale_id": "g1", "amount": "1.00"},
      {"id": "x", "sale_id": "g1", "amount": "2.00"}], IdempotencyConflict, "refunds[1].id"),
    ([{"id": "x", "sale_id": "g1", "amount": "0.00"}], InvalidAmount, "refunds[0].amount"),
    ([{"id": "x", "sale_id": "g1", "amount": "1.001"}], InvalidAmount, "refunds[0].amount"),
    ([{"id": "x", "sale_id": "g1", "amount": "1.00", "currency": "EUR"}], CurrencyMismatch,
     "refunds[0].currency"),
    ([{"id": "x", "amount": "1.00"}], InvalidField, "refunds[0].sale_id"),
    ([{"id": "x", "sale_id": "g1", "amount": "1.00", "store": "s1"}], InvalidField,
     "refunds[0].store"),
    ([], InvalidField, "refunds"),
])
def test_a_guest_refund_refused_names_the_field_and_stores_nothing(
        cafe: sa.Engine, refunds: list[dict[str, str]], error: type[SetiaError],
        field: str) -> None:
    # Given 5.00 of g2 refunded
    record_guest_refunds(cafe, P, [{"id": "g2-r", "sale_id": "g2", "amount": "5.00",
                                    "occurred_at": "2027-02-22T12:00:00+08:00"}])
    before, figures = counts(cafe), guest_figures(cafe)
    # When a call with a bad refund is sent
    with pytest.raises(error) as caught:
        record_guest_refunds(cafe, P, [{"occurred_at": "2027-02-23T12:00:00+08:00", **r}
                                       for r in refunds])
    # Then it names the field at fault, and nothing of the call is stored
    assert caught.value.field == field
    assert counts(cafe) == before and guest_figures(cafe) == figures == (1, "10.00", "10.00")
    assert_journal_ok(cafe)


@pytest.mark.postgres
def test_two_refunds_of_one_guest_sale_at_once_take_no_more_than_the_sale(
        pg_engine: sa.Engine) -> None:
    # Given g2 (15.00), and another call's refund of 10.00 of it under way: it holds g2's
    # row and has written its refund, not yet committed
    build(pg_engine)
    blocker = g2_refund_under_way(pg_engine, "first", "10.00")
    with ThreadPoolExecutor(1) as pool:
        # When a second refund of 10.00 of g2 comes meanwhile
        second = pool.submit(record_guest_refunds, pg_engine, P, [
            {"id": "second", "sale_id": "g2", "amount": "10.00",
             "occurred_at": "2027-02-22T12:00:00+08:00"}])
        wait_for_lock_waiters(pg_engine)
        blocker.commit()
        blocker.close()
        # Then it waits for the first, and finds only 5.00 left
        with pytest.raises(RefundExceedsOrder) as caught:
            second.result(timeout=30)
    assert caught.value.field == "refunds[0].amount"
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id, amount_e4 FROM guest_refunds")).all() == [
            ("first", 100_000)]
    assert_journal_ok(pg_engine)



@pytest.mark.postgres
def test_a_guest_refund_sent_again_while_its_first_call_runs_is_replayed(
        pg_engine: sa.Engine) -> None:
    # Given g2 (15.00), and a call refunding all of it under way: it holds g2's row and
    # has written its refund "first", not yet committed
    build(pg_engine)
    blocker = g2_refund_under_way(pg_engine, "first", "15.00")
    with ThreadPoolExecutor(1) as pool:
        # When the till sends the same refund again meanwhile (its first call timed out)
        again = pool.submit(record_guest_refunds, pg_engine, P, [
            {"id": "first", "sale_id": "g2", "amount": "15.00",
             "occurred_at": "2027-02-22T12:00:00+08:00"}])
        wait_for_lock_waiters(pg_engine)
        blocker.commit()
        blocker.close()
        # Then it waits for the first, finds it stored and replays it (it found nothing
        # left of g2 and was refused)
        assert again.result(timeout=30) == {"recorded": 0, "replayed": 1}
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id, amount_e4 FROM guest_refunds")).all() == [
            ("first", 150_000)]
    assert_journal_ok(pg_engine)

def g2_refund_under_way(engine: sa.Engine, refund_id: str, amount: str) -> sa.Connection:
    """A connection in the middle of a call refunding ``amount`` of guest sale g2: it
    holds g2's row and has written its refund, not committed yet."""
    conn = engine.connect()
    conn.begin()
    conn.execute(sa.text("SELECT id FROM guest_sales WHERE program_id = :p AND id = 'g2' "
                         "FOR UPDATE"), {"p": P})
    when = at("2027-02-22T12:00:00+08:00")
    conn.execute(guest_refunds.insert().values(
        program_id=P, id=refund_id, sale_id="g2", occurred_at=when,
        amount_e4=int(Decimal(amount) * 10_000), recorded_at=when))
    return conn


def test_the_guest_refunds_migration_matches_the_table(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        diffs = compare_metadata(context, tables.metadata)
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("guest_refunds")}
    assert [d for d in diffs if "guest_refunds" in repr(d)] == []
    assert indexes == {"ix_guest_refunds_sale"}


def test_whatif_doubles_the_base_rate_and_lowers_gold(cafe: sa.Engine) -> None:
    before = counts(cafe)
    draft = copy.deepcopy(CAFE)
    draft["earn"][0]["rate"] = 2
    draft["tiers"]["levels"][1]["threshold"] = 50
    draft["rewards"].append({"id": "cake", "name": "Cake", "cost": 150})
    result = whatif.run(cafe, P, draft, D(2027, 2, 1), D(2027, 2, 28))
    # February: cat's signup 10; bob 30.00; ann 20.00 at Gold (x2); cat 50.00.
    # live: 10 + 30 + 40 + 50 = 130, as posted. Draft: 10 + 60 + 80 + 100 = 250, and cat
    # reaches Gold at 50.00. Balances at 02-28: ann 140, bob 40, cat 50; with the draft's
    # points ann 180, bob 70, cat 100: only ann can afford the 150-point cake.
    assert result == {
        "program": P, "from": "2027-02-01", "to": "2027-02-28", "events": 4, "members": 3,
        "breakage_rate": "0.0000", "posted_points": 130,
        "live": {"points_issued": 130, "points_by_rule": {"base": 120, "welcome": 10},
                 "liability": "1.30", "cost": "1.30",
                 "tier_distribution": {"gold": 1, "member": 2},
                 "rewards_affordable": {"coffee": 3}},
        "draft": {"points_issued": 250, "points_by_rule": {"base": 240, "welcome": 10},
                  "liability": "2.50", "cost": "2.50",
                  "tier_distribution": {"gold": 2, "member": 1},
                  "rewards_affordable": {"coffee": 3, "cake": 1}},
        "members_affected": 3, "members_changing_tier": 1,
    }
    assert counts(cafe) == before  # writes nothing
    assert_journal_ok(cafe)


def test_whatif_over_a_period_with_expiry_counts_breakage(cafe: sa.Engine) -> None:
    result = whatif.run(cafe, P, copy.deepcopy(CAFE), D(2027, 1, 1), D(2027, 3, 31))
    # the same programme: the same points. Refunds are not replayed, so the replay has the
    # 260 points earned as posted (250 issued net + the 10 clawed back); 30 of the 250
    # issued expired: cost = 2.60 x (1 - 0.12) = 2.288
    assert result["live"]["points_issued"] == result["draft"]["points_issued"] == 260
    assert result["posted_points"] == 260
    assert result["breakage_rate"] == "0.1200"
    assert result["live"]["cost"] == "2.29" and result["draft"]["liability"] == "2.60"
    assert result["members_affected"] == 0


def test_whatif_refuses_a_bad_draft_and_writes_nothing(cafe: sa.Engine) -> None:
    before = counts(cafe)
    with pytest.raises(InvalidProgramme):
        whatif.run(cafe, P, {"id": P, "name": "x", "currency": "MYR", "earn": [{"id": 1}]},
                   D(2027, 2, 1), D(2027, 2, 28))
    euro = copy.deepcopy(CAFE)
    euro["currency"] = "EUR"
    with pytest.raises(InvalidField) as caught:
        whatif.run(cafe, P, euro, D(2027, 2, 1), D(2027, 2, 28))
    assert caught.value.field == "currency"
    with pytest.raises(InvalidField) as caught:
        whatif.run(cafe, P, copy.deepcopy(CAFE), D(2027, 1, 1), D(2027, 6, 1))
    assert caught.value.field == "to"
    assert counts(cafe) == before
