"""Coalition partners: events tagged with their partner, earning rules per partner, points
issued by one partner and burned at another, settlement postings and the period's
settlement; on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.adapters.db.tables_partners import settlement_postings
from setia.domain.errors import InvalidProgramme
from setia.domain.partners import UnknownPartner
from setia.service import fraud
from setia.service.events import ingest_event
from setia.service.members import get_member, upsert_member
from setia.service.partners import settlement
from setia.service.redemptions import adjust, capture_or_release, redeem
from setia.service.reversals import reverse
from tests.conftest import assert_journal_ok, fixed_clock, load_programme

P = "kopi-roti"
COALITION: dict[str, Any] = {
    "id": P, "name": "Kopi & Roti", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "earn": [{"id": "base", "on": "purchase", "rate": 1},
             {"id": "roti-double", "on": "purchase", "partners": ["roti"], "rate": 1}],
    "partners": {"point_value": "0.01",
                 "merchants": [{"id": "kopi", "name": "Kopi Setia"},
                               {"id": "roti", "name": "Roti Bakar"}]},
    "rewards": [{"id": "latte", "name": "Latte", "cost": 150}],
}
CLOCK = fixed_clock("2027-03-10T12:00:00+08:00")


def coalition_with_ana(engine: sa.Engine, **changes: Any) -> sa.Engine:
    """The coalition (with ``changes`` to its programme) and ana, enrolled on 1 January."""
    load_programme(engine, {**COALITION, **changes})
    upsert_member(engine, P, "ana", {"enrolled_at": "2027-01-01T09:00:00+08:00"},
                  fixed_clock("2027-01-01T09:00:00+08:00"))
    return engine


@pytest.fixture
def coalition(engine: sa.Engine) -> sa.Engine:
    return coalition_with_ana(engine)


def purchase(event_id: str, amount: str, partner: str | None, when: str) -> dict[str, Any]:
    body = {"id": event_id, "type": "purchase", "member": "ana", "occurred_at": when,
            "order_id": f"ord-{event_id}", "amount": amount}
    if partner is not None:
        body["partner"] = partner
    return body


def transfers(engine: sa.Engine) -> list[tuple[str, str, str, int, int]]:
    s = settlement_postings
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(  # type: ignore[misc]
            sa.select(s.c.code, s.c.debit, s.c.credit, s.c.points, s.c.amount_e4)
            .order_by(s.c.id))]


def test_points_issued_at_one_partner_and_burned_at_another_settle_to_zero(coalition):
    # roti: base 100 + roti-double 100; kopi: base 50 only (the rule is roti's)
    assert ingest_event(coalition, P, purchase(
        "e1", "100.00", "roti", "2027-03-02T10:00:00+08:00"))["points"] == 200
    assert ingest_event(coalition, P, purchase(
        "e2", "50.00", "kopi", "2027-03-03T10:00:00+08:00"))["points"] == 50
    redeem(coalition, P, {"member": "ana", "reward": "latte", "partner": "kopi"}, "k1", CLOCK)
    # a refund names no partner: the clawback settles with the purchase's partner (roti)
    ingest_event(coalition, P, {"id": "r1", "type": "refund", "member": "ana",
                                "order_id": "ord-e1", "amount": "20.00",
                                "occurred_at": "2027-03-04T10:00:00+08:00"})
    held = redeem(coalition, P, {"member": "ana", "points": 50, "hold": True,
                                 "partner": "roti"}, "k2", CLOCK)
    capture_or_release(coalition, P, held["id"], "release", "k3", CLOCK)
    assert get_member(coalition, P, "ana")["balances"]["available"] == 60
    assert transfers(coalition) == [
        ("earn", "partner:roti", "coalition", 100, 10_000),
        ("earn", "partner:roti", "coalition", 100, 10_000),
        ("earn", "partner:kopi", "coalition", 50, 5_000),
        ("redeem", "coalition", "partner:kopi", 150, 15_000),
        ("clawback", "coalition", "partner:roti", 20, 2_000),
        ("clawback", "coalition", "partner:roti", 20, 2_000),
        ("hold", "coalition", "partner:roti", 50, 5_000),
        ("release", "partner:roti", "coalition", 50, 5_000),
    ]
    view = settlement(coalition, P, "2027-03")
    assert view["accounts"] == [
        {"account": "partner:kopi", "partner": "kopi", "points_issued": 50,
         "points_burned": 150, "net": "1.00", "position": "is owed", "amount": "1.00"},
        {"account": "partner:roti", "partner": "roti", "points_issued": 160,
         "points_burned": 0, "net": "-1.60", "position": "owes", "amount": "1.60"},
        {"account": "coalition", "partner": None, "points_issued": 0, "points_burned": 0,
         "net": "0.60", "position": "is owed", "amount": "0.60"},
    ]
    assert (view["total"], view["point_value"], view["period"]) == ("0.00", "0.01", "2027-03")
    # another period has nothing
    assert [row["net"] for row in settlement(coalition, P, "2027-04")["accounts"]] == [
        "0.00", "0.00", "0.00"]
    with coalition.connect() as conn:
        assert conn.execute(sa.select(t.events.c.id, t.events.c.partner)
                            .order_by(t.events.c.id)).all() == [
            ("e1", "roti"), ("e2", "kopi"), ("r1", None), ("signup:ana", None)]
        assert sorted(conn.execute(sa.select(t.orders.c.order_id, t.orders.c.partner)).all()) \
            == [("ord-e1", "roti"), ("ord-e2", "kopi")]
    assert_journal_ok(coalition)


def test_events_and_redemptions_naming_an_unknown_partner_change_nothing(coalition):
    ingest_event(coalition, P, purchase("e1", "100.00", "roti", "2027-03-02T10:00:00+08:00"))
    before = (get_member(coalition, P, "ana")["balances"], transfers(coalition))
    with pytest.raises(UnknownPartner) as caught:
        ingest_event(coalition, P, purchase("e2", "10.00", "bakery", "2027-03-02T11:00:00+08:00"))
    assert caught.value.field == "partner"
    with pytest.raises(UnknownPartner):
        redeem(coalition, P, {"member": "ana", "points": 10, "partner": "bakery"}, "k1", CLOCK)
    with pytest.raises(UnknownPartner):
        redeem(coalition, P, {"member": "ana", "points": 10, "partner": 7}, "k2", CLOCK)
    assert (get_member(coalition, P, "ana")["balances"], transfers(coalition)) == before
    with coalition.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.events)).scalar() == 2
    assert_journal_ok(coalition)


def test_a_points_only_programme_refuses_a_partner(engine):
    load_programme(engine, {"id": "plain", "name": "Plain", "currency": "MYR",
                            "earn": [{"id": "base", "on": "purchase", "rate": 1}]})
    upsert_member(engine, "plain", "ana", {}, CLOCK)
    with pytest.raises(UnknownPartner) as caught:
        ingest_event(engine, "plain", {**purchase("e1", "10.00", "roti",
                                                  "2027-03-02T10:00:00+08:00")})
    assert "has no partners" in caught.value.detail
    assert_journal_ok(engine)


def test_programme_errors_of_the_partners_section():
    from setia.domain.programme import validate_document

    def errors(**changes: Any) -> list[tuple[str, str]]:
        with pytest.raises(InvalidProgramme) as caught:
            validate_document({**COALITION, **changes})
        return caught.value.errors

    merchants = [{"id": "kopi", "name": "K"}, {"id": "kopi", "name": "K2"}]
    assert errors(partners={"point_value": "0.00001", "merchants": merchants[:1]}) == [
        ("partners.point_value", "Decimal input should have no more than 4 decimal places")]
    assert errors(partners={"point_value": "0.0025", "merchants": merchants},
                  earn=[{"id": "b", "on": "purchase", "rate": 1, "partners": ["bakery"]}]) == [
        ("partners.merchants[1].id", "duplicate partner id 'kopi'"),
        ("earn[0].partners[0]", "unknown partner 'bakery'")]
    assert errors(partners=None, earn=[{"id": "b", "on": "purchase", "rate": 1,
                                        "partners": ["kopi"]}]) == [
        ("earn[0].partners", "needs a partners section")]


def test_a_rejected_review_gives_the_issuing_partner_the_value_back(engine):
    # Given the coalition screening a day's points (over 100 held for review), and ana's
    # RM 80.00 at roti (160 points, RM 1.60 charged to roti) held
    coalition_with_ana(engine, fraud={"velocity": [{"per": "day", "max_points": 100}]})
    ingest_event(engine, P, purchase("e1", "80.00", "roti", "2027-03-02T10:00:00+08:00"))
    (review,) = fraud.reviews(engine, P)

    # When the review is rejected
    fraud.decide(engine, P, review["id"], "reject", "k1", CLOCK)

    # Then roti gets its RM 1.60 back (it stayed charged for points that no longer exist)
    assert transfers(engine) == [
        ("earn", "partner:roti", "coalition", 80, 8_000),
        ("earn", "partner:roti", "coalition", 80, 8_000),
        ("review_reject", "coalition", "partner:roti", 160, 16_000)]
    assert {row["account"]: row["net"] for row in settlement(engine, P, "2027-03")[
        "accounts"]} == {"partner:kopi": "0.00", "partner:roti": "0.00", "coalition": "0.00"}
    assert get_member(engine, P, "ana")["balances"]["available"] == 0
    assert_journal_ok(engine)



def at_point_value(value: str, **changes: Any) -> dict[str, Any]:
    """The coalition's programme with another ``point_value`` (a new version)."""
    return {**COALITION, **changes, "partners": {**COALITION["partners"], "point_value": value}}


def test_a_clawback_and_a_release_after_the_point_value_changed_give_back_what_was_settled(
        coalition):
    # Given at RM 0.01 a point: ana's RM 100.00 at roti (200 points, RM 2.00 charged to roti)
    # and a hold of 50 at kopi (RM 0.50 owed to kopi)
    ingest_event(coalition, P, purchase("e1", "100.00", "roti", "2027-03-02T10:00:00+08:00"))
    held = redeem(coalition, P, {"member": "ana", "points": 50, "hold": True,
                                 "partner": "kopi"}, "k1", CLOCK)
    # and then the coalition agrees on RM 0.02 a point
    load_programme(coalition, at_point_value("0.02"))

    # When 20.00 of the purchase is refunded (40 points clawed back), the hold is released,
    # and ana buys for RM 10.00 at kopi (10 points, at the new value)
    ingest_event(coalition, P, {"id": "r1", "type": "refund", "member": "ana",
                                "order_id": "ord-e1", "amount": "20.00",
                                "occurred_at": "2027-03-04T10:00:00+08:00"})
    capture_or_release(coalition, P, held["id"], "release", "k2", CLOCK)
    ingest_event(coalition, P, purchase("e2", "10.00", "kopi", "2027-03-05T10:00:00+08:00"))

    # Then the clawback and the release give back at RM 0.01, what they were settled at
    # (at RM 0.02 roti would be owed RM 0.40 it never paid, kopi would owe RM 0.50 more)
    assert transfers(coalition) == [
        ("earn", "partner:roti", "coalition", 100, 10_000),
        ("earn", "partner:roti", "coalition", 100, 10_000),
        ("hold", "coalition", "partner:kopi", 50, 5_000),
        ("clawback", "coalition", "partner:roti", 20, 2_000),
        ("clawback", "coalition", "partner:roti", 20, 2_000),
        ("release", "partner:kopi", "coalition", 50, 5_000),
        ("earn", "partner:kopi", "coalition", 10, 2_000),
    ]
    view = settlement(coalition, P, "2027-03")
    assert [(row["account"], row["points_issued"], row["points_burned"], row["net"])
            for row in view["accounts"]] == [
        ("partner:kopi", 10, 0, "-0.20"), ("partner:roti", 160, 0, "-1.60"),
        ("coalition", 0, 0, "1.80")]
    assert (view["total"], view["point_value"]) == ("0.00", "0.02")
    assert get_member(coalition, P, "ana")["balances"]["available"] == 170
    assert_journal_ok(coalition)


def test_a_hold_released_under_a_version_without_partners_gives_its_value_back(coalition):
    # Given 100 points for ana (an adjustment: no partner), holds of 50 and 30 at kopi (RM 0.80
    # owed to kopi at RM 0.01 a point), and then a version of the programme with no partners
    adjust(coalition, P, {"member": "ana", "points": 100, "reason": "opening"}, "a1", CLOCK)
    released = redeem(coalition, P, {"member": "ana", "points": 50, "hold": True,
                                     "partner": "kopi"}, "k1", CLOCK)
    captured = redeem(coalition, P, {"member": "ana", "points": 30, "hold": True,
                                     "partner": "kopi"}, "k2", CLOCK)
    load_programme(coalition, without_partners())

    # When the first hold is released and the second captured
    capture_or_release(coalition, P, released["id"], "release", "k1r", CLOCK)
    capture_or_release(coalition, P, captured["id"], "capture", "k2c", CLOCK)

    # Then kopi gives back the RM 0.50 of the released hold, and keeps the RM 0.30 of the
    # captured one (a capture settles nothing)
    assert transfers(coalition) == [
        ("hold", "coalition", "partner:kopi", 50, 5_000),
        ("hold", "coalition", "partner:kopi", 30, 3_000),
        ("release", "partner:kopi", "coalition", 50, 5_000)]
    s = settlement_postings
    with coalition.connect() as conn:
        assert conn.execute(sa.select(
            sa.func.sum(sa.case((s.c.credit == "partner:kopi", s.c.amount_e4),
                                else_=-s.c.amount_e4)))
            .where(s.c.ref == released["id"])).scalar_one() == 0
    view = settlement(coalition, P, "2027-03")
    assert [(row["account"], row["points_issued"], row["points_burned"], row["net"])
            for row in view["accounts"]] == [
        ("partner:kopi", 0, 30, "0.30"), ("coalition", 0, 0, "-0.30")]
    assert (view["total"], view["point_value"]) == ("0.00", None)
    assert get_member(coalition, P, "ana")["balances"] == {
        "available": 70, "pending": 0, "reserved": 0}
    assert_journal_ok(coalition)


def test_a_rejected_review_after_the_point_value_changed_gives_back_what_was_settled(engine):
    # Given ana's RM 80.00 at roti held for review (160 points, RM 1.60 charged to roti at
    # RM 0.01 a point), and then the coalition agreeing on RM 0.02 a point
    fraud_section = {"velocity": [{"per": "day", "max_points": 100}]}
    coalition_with_ana(engine, fraud=fraud_section)
    ingest_event(engine, P, purchase("e1", "80.00", "roti", "2027-03-02T10:00:00+08:00"))
    load_programme(engine, at_point_value("0.02", fraud=fraud_section))
    (review,) = fraud.reviews(engine, P)

    # When the review is rejected
    fraud.decide(engine, P, review["id"], "reject", "k1", CLOCK)

    # Then roti gets back the RM 1.60 it was charged, not RM 3.20; nothing issued is left
    assert transfers(engine) == [
        ("earn", "partner:roti", "coalition", 80, 8_000),
        ("earn", "partner:roti", "coalition", 80, 8_000),
        ("review_reject", "coalition", "partner:roti", 160, 16_000)]
    assert [(row["account"], row["points_issued"], row["points_burned"], row["net"])
            for row in settlement(engine, P, "2027-03")["accounts"]] == [
        ("partner:kopi", 0, 0, "0.00"), ("partner:roti", 0, 0, "0.00"),
        ("coalition", 0, 0, "0.00")]
    assert_journal_ok(engine)


def without_partners(**changes: Any) -> dict[str, Any]:
    """The coalition's programme with no ``partners`` section (a new version), and so no
    earn rule of a partner's."""
    earn = changes.pop("earn", COALITION["earn"])
    return {**COALITION, **changes, "partners": None,
            "earn": [rule for rule in earn if "partners" not in rule]}


@pytest.mark.parametrize("new_value", [None, "0.02", "no partners"])
def test_a_reversed_event_gives_the_issuing_partner_the_value_back(engine, new_value):
    # Given ana's review at roti (30 points, RM 0.30 charged to roti at RM 0.01 a point)
    # and an adjustment of 20 (no partner), then perhaps a new point value, or a version
    # with no partners at all
    earn = [*COALITION["earn"], {"id": "review", "on": "review", "points": 30}]
    coalition_with_ana(engine, earn=earn)
    ingest_event(engine, P, {"id": "v1", "type": "review", "member": "ana", "partner": "roti",
                             "occurred_at": "2027-03-02T10:00:00+08:00"})
    adjust(engine, P, {"member": "ana", "points": 20, "reason": "goodwill"}, "a1", CLOCK)
    if new_value == "no partners":
        load_programme(engine, without_partners(earn=earn))
    elif new_value is not None:
        load_programme(engine, at_point_value(new_value, earn=earn))

    # When both are reversed
    reverse(engine, P, {"ref": "v1", "reason": "a fake review"}, "rev-1", CLOCK)
    reverse(engine, P, {"ref": "adjust:a1", "reason": "entered twice"}, "rev-2", CLOCK)

    # Then roti gets back the RM 0.30 it was charged (the adjustment settled nothing)
    assert transfers(engine) == [
        ("earn", "partner:roti", "coalition", 30, 3_000),
        ("reverse", "coalition", "partner:roti", 30, 3_000)]
    # (a version without partners lists those with postings in the period only)
    assert [(row["account"], row["points_issued"], row["points_burned"], row["net"])
            for row in settlement(engine, P, "2027-03")["accounts"]] == [
        *([("partner:kopi", 0, 0, "0.00")] if new_value != "no partners" else []),
        ("partner:roti", 0, 0, "0.00"), ("coalition", 0, 0, "0.00")]
    assert get_member(engine, P, "ana")["balances"] == {
        "available": 0, "pending": 0, "reserved": 0}
    assert_journal_ok(engine)


def test_a_refund_under_a_version_without_partners_gives_the_issuing_partner_the_value_back(
        coalition):
    # Given ana's RM 100.00 at roti (200 points, RM 2.00 charged to roti at RM 0.01 a
    # point), and then a version of the programme with no partners
    ingest_event(coalition, P, purchase("e1", "100.00", "roti", "2027-03-02T10:00:00+08:00"))
    load_programme(coalition, without_partners())

    # When 20.00 of it is refunded (40 points clawed back)
    ingest_event(coalition, P, {"id": "r1", "type": "refund", "member": "ana",
                                "order_id": "ord-e1", "amount": "20.00",
                                "occurred_at": "2027-03-04T10:00:00+08:00"})

    # Then roti gets back RM 0.40, the value the 40 points were settled at
    assert transfers(coalition) == [
        ("earn", "partner:roti", "coalition", 100, 10_000),
        ("earn", "partner:roti", "coalition", 100, 10_000),
        ("clawback", "coalition", "partner:roti", 20, 2_000),
        ("clawback", "coalition", "partner:roti", 20, 2_000)]
    assert [(row["account"], row["points_issued"], row["net"])
            for row in settlement(coalition, P, "2027-03")["accounts"]] == [
        ("partner:roti", 160, "-1.60"), ("coalition", 0, "1.60")]
    assert get_member(coalition, P, "ana")["balances"]["available"] == 160
    assert_journal_ok(coalition)
