"""CLV, member statements, the audit, exports, guest sales and the what-if on the
hand-built history (analytics_history.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import io
import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from setia.domain.errors import (
    IdempotencyConflict,
    InvalidAmount,
    InvalidField,
    InvalidProgramme,
)
from setia.service import analytics_reports as reports
from setia.service import whatif
from setia.service.analytics_sales import record_guest_sales
from setia.service.clv import clv_report, fit
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from tests.conftest import assert_journal_ok, fixed_clock, load_programme
from tests.integration.analytics_history import CAFE, P, build

D = date


@pytest.fixture
def cafe(engine: sa.Engine) -> sa.Engine:
    build(engine)
    return engine


def counts(engine: sa.Engine) -> tuple[int, ...]:
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one()
                     for name in ("postings", "lots", "orders", "events", "guest_sales",
                                  "members"))


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
