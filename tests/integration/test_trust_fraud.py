"""Fraud rules on ingestion (velocity, duplicate receipts), the hold and the review queue."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import sqlalchemy as sa

from setia.domain.trust import ReviewDecided, UnknownReview
from setia.service import audit, fraud, referrals, reversals, store_credit
from setia.service.batch import ingest_batch
from setia.service.events import ingest_event, simulate_event
from setia.service.members import get_member, upsert_member
from setia.service.programmes import parse_text
from setia.service.run_due import run_due
from tests.conftest import KOPI_SETIA, assert_journal_ok, at, fixed_clock, load_programme

P = "fraud-cafe"
CLOCK = fixed_clock("2027-03-01T12:00:00+00:00")
DOUBLE = [{"id": "double", "name": "Double", "multiplier": 2, "rules": ["base"]}]  # campaigns
PROGRAMME: dict[str, Any] = {
    "id": P, "name": "Fraud Cafe", "currency": "MYR", "timezone": "UTC",
    "points": {"pending_days": 0},
    "earn": [{"id": "base", "on": "purchase", "rate": 1},
             {"id": "review", "on": "review", "points": 5}],
    "fraud": {
        "velocity": [{"per": "hour", "max_events": 2}, {"per": "day", "max_points": 500}],
        "duplicate_receipts": {"window_minutes": 10},
    },
}


@pytest.fixture
def cafe(engine: sa.Engine) -> sa.Engine:
    load_programme(engine, PROGRAMME)
    for member in ("m1", "m2", "m3"):
        upsert_member(engine, P, member, {}, CLOCK)
    return engine


def purchase(event_id: str, member: str, when: str, amount: str, store: str = "kl-01",
             program: str = P) -> dict[str, Any]:
    return {"id": event_id, "type": "purchase", "member": member, "order_id": f"o-{event_id}",
            "occurred_at": when, "amount": amount, "currency": "MYR", "store": store}


def balances(engine: sa.Engine, member: str, program: str = P) -> dict[str, int]:
    return get_member(engine, program, member, CLOCK)["balances"]


def journal(engine: sa.Engine, code: str) -> list[tuple[str, str, int]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(
            "SELECT debit, credit, points FROM postings WHERE code = :code ORDER BY id"),
            {"code": code})]


def test_a_third_earning_event_within_an_hour_is_held_for_review(cafe):
    # Given two purchases by m1 within the hour (10 and 20 points)
    ingest_event(cafe, P, purchase("e1", "m1", "2027-03-01T10:00:00+00:00", "10.00"), CLOCK)
    ingest_event(cafe, P, purchase("e2", "m1", "2027-03-01T10:20:00+00:00", "20.00"), CLOCK)

    # When a third arrives within the same hour, simulated first
    third = purchase("e3", "m1", "2027-03-01T10:40:00+00:00", "30.00")
    simulated = simulate_event(cafe, P, third, CLOCK)
    assert fraud.reviews(cafe, P) == []
    result = ingest_event(cafe, P, third, CLOCK)

    # Then the simulation answered what the event got, and wrote nothing (no review)
    assert ({k: v for k, v in simulated.items() if k not in ("status", "review")},
            simulated["status"]) == (
        {k: v for k, v in result.items() if k not in ("status", "review")}, "simulated")
    assert ({k: v for k, v in simulated["review"].items() if k != "review"}
            == {k: v for k, v in result["review"].items() if k != "review"})
    # and its 30 points are earned but held pending, and a review is queued
    assert result["points"] == 30
    assert result["balances"] == {"available": 30, "pending": 30, "reserved": 0}
    assert result["review"]["reasons"] == ["velocity: 3 earning events in an hour (limit 2)"]
    assert result["review"]["held"] is True
    assert balances(cafe, "m1") == {"available": 30, "pending": 30, "reserved": 0}
    assert journal(cafe, "review_hold") == [("available", "pending", 30)]
    queue = fraud.reviews(cafe, P)
    assert [(r["member"], r["event"], r["points"], r["status"]) for r in queue] == [
        ("m1", "e3", 30, "open")]
    assert_journal_ok(cafe)


def test_an_event_outside_the_hour_is_not_held(cafe):
    ingest_event(cafe, P, purchase("e1", "m1", "2027-03-01T09:00:00+00:00", "10.00"), CLOCK)
    ingest_event(cafe, P, purchase("e2", "m1", "2027-03-01T10:20:00+00:00", "20.00"), CLOCK)
    result = ingest_event(cafe, P, purchase("e3", "m1", "2027-03-01T10:40:00+00:00", "30.00"),
                          CLOCK)
    # 09:00 is more than an hour before 10:40: two earning events in the hour, limit 2
    assert "review" not in result
    assert balances(cafe, "m1") == {"available": 60, "pending": 0, "reserved": 0}
    assert fraud.reviews(cafe, P) == []
    assert_journal_ok(cafe)


def test_points_over_the_daily_limit_are_held_even_in_one_event(cafe):
    ingest_event(cafe, P, purchase("e1", "m1", "2027-03-01T08:00:00+00:00", "200.00"), CLOCK)
    result = ingest_event(cafe, P, purchase("e2", "m1", "2027-03-01T20:00:00+00:00",
                                            "301.00"), CLOCK)
    assert result["review"]["reasons"] == ["velocity: 501 points in a day (limit 500)"]
    assert balances(cafe, "m1") == {"available": 200, "pending": 301, "reserved": 0}
    assert_journal_ok(cafe)


@pytest.mark.parametrize(("when", "held"), [
    ("2027-03-01T09:59:59+00:00", True),   # a second less than 24 hours after
    ("2027-03-01T10:00:00+00:00", False),  # exactly 24 hours after
], ids=["a-second-inside-the-day", "exactly-a-day-after"])
def test_the_daily_limit_counts_a_day_that_ends_at_the_event_and_leaves_out_its_start(
        cafe, when, held):
    # Given m1's purchase of 300 points on 28 February at 10:00 (the limit: 500 a day)
    ingest_event(cafe, P, purchase("e1", "m1", "2027-02-28T10:00:00+00:00", "300.00"), CLOCK)

    # When she earns 201 more on 1 March, less than or exactly 24 hours later
    result = ingest_event(cafe, P, purchase("e2", "m1", when, "201.00"), CLOCK)

    # Then within the day the two make 501 points and the second is held; exactly a day
    # later the day (a rolling window ending at the event, its start left out) holds only
    # the 201
    if held:
        assert result["review"]["reasons"] == ["velocity: 501 points in a day (limit 500)"]
        assert balances(cafe, "m1") == {"available": 300, "pending": 201, "reserved": 0}
    else:
        assert "review" not in result
        assert balances(cafe, "m1") == {"available": 501, "pending": 0, "reserved": 0}
    assert_journal_ok(cafe)


@pytest.mark.parametrize(("when", "held"), [
    ("2027-03-01T09:49:59+00:00", False),
    ("2027-03-01T09:50:00+00:00", True),   # m1's 10:00 is 10 minutes after: the window's end
    ("2027-03-01T10:10:00+00:00", True),   # m1's 10:00 is 10 minutes before: its start
    ("2027-03-01T10:10:01+00:00", False),
], ids=["a-second-too-early", "window-before", "window-after", "a-second-too-late"])
def test_a_receipt_exactly_the_window_either_side_of_another_is_its_duplicate(
        cafe, when, held):
    # Given m1's purchase of RM 42.50 at kl-01 at 10:00 (a window of 10 minutes)
    ingest_event(cafe, P, purchase("e1", "m1", "2027-03-01T10:00:00+00:00", "42.50"), CLOCK)

    # When m2 claims the same store and amount, sent later but made before or after it
    result = ingest_event(cafe, P, purchase("e2", "m2", when, "42.50"), CLOCK)

    # Then it is a duplicate at exactly 10 minutes either side, both edges included, and
    # not a second further
    if held:
        assert result["review"]["reasons"] == [
            "duplicate receipt: 1 other purchase(s) with the same store and amount within "
            "10 minutes"]
        assert balances(cafe, "m2") == {"available": 0, "pending": 42, "reserved": 0}
    else:
        assert "review" not in result
        assert balances(cafe, "m2") == {"available": 42, "pending": 0, "reserved": 0}
    assert_journal_ok(cafe)


def test_the_same_receipt_claimed_by_another_member_is_held(cafe):
    # Given m1's purchase of RM 42.50 at kl-01 at 10:00
    ingest_event(cafe, P, purchase("e1", "m1", "2027-03-01T10:00:00+00:00", "42.50"), CLOCK)

    # When m2 claims the same store and amount 5 minutes later, m3 the same amount at
    # another store, and m3 again at kl-01 20 minutes later
    dup = ingest_event(cafe, P, purchase("e2", "m2", "2027-03-01T10:05:00+00:00", "42.50"),
                       CLOCK)
    other_store = ingest_event(cafe, P, purchase("e3", "m3", "2027-03-01T10:05:00+00:00",
                                                 "42.50", store="pg-02"), CLOCK)
    later = ingest_event(cafe, P, purchase("e4", "m3", "2027-03-01T10:25:00+00:00", "42.50"),
                         CLOCK)

    # Then only m2's is held
    assert dup["review"]["reasons"] == [
        "duplicate receipt: 1 other purchase(s) with the same store and amount within 10 minutes"]
    assert "review" not in other_store and "review" not in later
    assert balances(cafe, "m2") == {"available": 0, "pending": 42, "reserved": 0}
    assert balances(cafe, "m3") == {"available": 84, "pending": 0, "reserved": 0}
    assert_journal_ok(cafe)


def held_m1(engine: sa.Engine) -> int:
    for n, minute in enumerate(("00", "20", "40"), start=1):
        ingest_event(engine, P, purchase(f"e{n}", "m1", f"2027-03-01T10:{minute}:00+00:00",
                                         f"{n * 10}.00"), CLOCK)
    (review,) = fraud.reviews(engine, P)
    return int(review["id"])


def held_m1_under(engine: sa.Engine, document: dict[str, Any]) -> int:
    """``document`` stored, m1 enrolled, and her third purchase of the hour queued."""
    load_programme(engine, document)
    upsert_member(engine, P, "m1", {}, CLOCK)
    return held_m1(engine)


def test_approving_a_review_releases_the_points_and_is_audited(cafe):
    review = held_m1(cafe)
    audit.acting_as("key:reviewer-1")

    decided = fraud.decide(cafe, P, review, "approve", "k-approve", CLOCK)

    assert decided["status"] == "approved"
    assert decided["decided_by"] == "key:reviewer-1"
    assert decided["balances"] == {"available": 60, "pending": 0, "reserved": 0}
    assert balances(cafe, "m1") == {"available": 60, "pending": 0, "reserved": 0}
    assert journal(cafe, "review_ok") == [("pending", "available", 30)]
    assert fraud.reviews(cafe, P) == []
    (row,) = [e for e in audit.entries(cafe, P) if e["action"] == "review.approve"]
    assert (row["actor"], row["target"]) == ("key:reviewer-1", f"review {review}")
    assert row["before"] == {"status": "open",
                             "balances": {"available": 30, "pending": 30, "reserved": 0}}
    assert row["after"] == {"status": "approved",
                            "balances": {"available": 60, "pending": 0, "reserved": 0}}
    # the same key replays; a second decision is refused and changes nothing
    assert fraud.decide(cafe, P, review, "approve", "k-approve", CLOCK) == decided
    with pytest.raises(ReviewDecided):
        fraud.decide(cafe, P, review, "reject", "k-reject", CLOCK)
    assert balances(cafe, "m1") == {"available": 60, "pending": 0, "reserved": 0}
    assert_journal_ok(cafe)


def test_rejecting_a_review_takes_the_held_points_back(cafe):
    review = held_m1(cafe)
    decided = fraud.decide(cafe, P, review, "reject", "k1", CLOCK)
    assert decided["status"] == "rejected"
    assert balances(cafe, "m1") == {"available": 30, "pending": 0, "reserved": 0}
    assert journal(cafe, "review_reject") == [("pending", "issued", 30)]
    # m1 hears of the 30 taken back (she was told of them as earned)
    with cafe.connect() as conn:
        (kind, member, key, data), = conn.execute(sa.text(
            "SELECT type, member_id, key, data FROM outbox WHERE key LIKE '%review:%'")).all()
    assert (kind, member, key) == ("points.clawed_back", "m1",
                                   f"points.clawed_back:m1:review:{review}")
    assert json.loads(data) == {"program": P, "member": "m1", "ref": f"review:{review}",
                                "points": 30, "balances": {"available": 30, "pending": 0,
                                                           "reserved": 0}}
    assert_journal_ok(cafe)


def reviews_not_held(engine: sa.Engine) -> None:
    """Fraud Cafe queueing suspicious events with their points left spendable, and m1."""
    load_programme(engine, {**PROGRAMME, "fraud": {**PROGRAMME["fraud"], "hold": False}})
    upsert_member(engine, P, "m1", {}, CLOCK)


def test_rejecting_an_unheld_review_after_a_refund_takes_back_only_what_is_left(engine):
    # Given reviews that leave the points spendable, m1's third purchase of the hour (30)
    # queued for review, and 20.00 of its 30.00 refunded (20 points back)
    reviews_not_held(engine)
    review = held_m1(engine)
    ingest_event(engine, P, {"id": "r3", "type": "refund", "member": "m1", "order_id": "o-e3",
                             "occurred_at": "2027-03-01T11:00:00+00:00", "amount": "20.00"},
                 CLOCK)
    assert fraud.reviews(engine, P)[0]["points"] == 10
    assert balances(engine, "m1") == {"available": 40, "pending": 0, "reserved": 0}

    # When the review is rejected
    fraud.decide(engine, P, review, "reject", "k1", CLOCK)

    # Then the 10 left are taken back (all 30 were, making 20 a second time: a debt)
    assert balances(engine, "m1") == {"available": 30, "pending": 0, "reserved": 0}
    assert journal(engine, "review_reject") == [("available", "issued", 10)]
    assert_journal_ok(engine)


def a_shop_review_queued(engine: sa.Engine, *, held: bool = False) -> dict[str, Any]:
    """Reviews that leave the points spendable (or hold them), and m1's review of a shop
    (5 points) queued as her third earning event of the hour (after 10 and 20): the
    review."""
    load_programme(engine, {**PROGRAMME, "fraud": {**PROGRAMME["fraud"], "hold": held}})
    upsert_member(engine, P, "m1", {}, CLOCK)
    for n, minute in enumerate(("00", "20"), start=1):
        ingest_event(engine, P, purchase(f"e{n}", "m1", f"2027-03-01T10:{minute}:00+00:00",
                                         f"{n * 10}.00"), CLOCK)
    ingest_event(engine, P, {"id": "v1", "type": "review", "member": "m1",
                             "occurred_at": "2027-03-01T10:40:00+00:00"}, CLOCK)
    (review,) = fraud.reviews(engine, P)
    return review


def test_rejecting_an_unheld_review_of_a_reversed_event_takes_nothing_more(engine):
    # Given m1's review of a shop (5 points) queued unheld, then reversed by an admin
    review = a_shop_review_queued(engine)
    reversals.reverse(engine, P, {"ref": "v1", "reason": "a fake review"}, "rev-1", CLOCK)
    assert fraud.reviews(engine, P)[0]["points"] == 0

    # When the review is rejected
    fraud.decide(engine, P, review["id"], "reject", "k1", CLOCK)

    # Then nothing more is taken (the 5 were taken a second time, as a debt)
    assert balances(engine, "m1") == {"available": 30, "pending": 0, "reserved": 0}
    assert journal(engine, "review_reject") == []
    assert_journal_ok(engine)


def test_an_event_held_for_review_can_be_reversed_and_its_review_then_takes_nothing(engine):
    # Given m1's review of a shop (5 points) held for review
    review = a_shop_review_queued(engine, held=True)
    assert balances(engine, "m1") == {"available": 30, "pending": 5, "reserved": 0}

    # When an admin reverses the event (it was refused: "only events and adjustments can be
    # reversed"), then the review is rejected
    reversals.reverse(engine, P, {"ref": "v1", "reason": "a fake review"}, "rev-1", CLOCK)
    fraud.decide(engine, P, review["id"], "reject", "k1", CLOCK)

    # Then the 5 held went back once, by the reversal
    assert balances(engine, "m1") == {"available": 30, "pending": 0, "reserved": 0}
    assert journal(engine, "reverse") == [("pending", "issued", 5)]
    assert journal(engine, "review_reject") == []
    assert_journal_ok(engine)


def test_reversing_an_event_whose_review_was_rejected_takes_nothing_more(engine):
    # Given m1's review of a shop (5 points) queued unheld, and rejected (5 taken back)
    review = a_shop_review_queued(engine)
    fraud.decide(engine, P, review["id"], "reject", "k1", CLOCK)

    # When an admin reverses the event as well
    reversals.reverse(engine, P, {"ref": "v1", "reason": "a fake review"}, "rev-1", CLOCK)

    # Then nothing more is taken (the 5 were taken a second time, as a debt)
    assert balances(engine, "m1") == {"available": 30, "pending": 0, "reserved": 0}
    assert journal(engine, "reverse") == []
    assert_journal_ok(engine)


@pytest.mark.parametrize(("held", "campaign"), [(True, False), (False, False), (True, True),
                                                (False, True)])
def test_refunding_a_purchase_whose_review_was_rejected_takes_nothing_more(engine, held,
                                                                           campaign):
    # Given m1's third purchase of the hour (30, and 30 more with a campaign doubling the
    # base points) queued for review, its points held or not, and the review rejected
    document: dict[str, Any] = {**PROGRAMME, "fraud": {**PROGRAMME["fraud"], "hold": held}}
    if campaign:
        document["campaigns"] = DOUBLE
    review = held_m1_under(engine, document)
    fraud.decide(engine, P, review, "reject", "k1", CLOCK)

    # When the shop refunds the purchase in full
    ingest_event(engine, P, {"id": "r3", "type": "refund", "member": "m1", "order_id": "o-e3",
                             "occurred_at": "2027-03-01T11:00:00+00:00", "amount": "30.00"},
                 CLOCK)

    # Then the refund takes no points (it took them a second time); e1 and e2 stay
    assert balances(engine, "m1") == {"available": 60 if campaign else 30, "pending": 0,
                                      "reserved": 0}
    assert journal(engine, "clawback") == []
    assert_journal_ok(engine)


@pytest.mark.parametrize("campaign", [False, True])
def test_a_rejected_review_lowers_a_points_tier_metric(engine, campaign):
    # Given tiers by points (Gold at 50), and m1's third purchase of the hour (30) held,
    # which made her Gold on 60 points (with a campaign doubling the base points, held too,
    # but never counted by the metric)
    document: dict[str, Any] = {**PROGRAMME, "tiers": {"metric": "points", "levels": [
        {"id": "member", "name": "Member", "threshold": 0},
        {"id": "gold", "name": "Gold", "threshold": 50}]}}
    if campaign:
        document["campaigns"] = DOUBLE
    review = held_m1_under(engine, document)

    # When the review is rejected
    fraud.decide(engine, P, review, "reject", "k1", CLOCK)

    # Then her March counts 30 points, not 60 (the points taken back still counted), nor 0
    # (the campaign's 30 taken back too were taken off the metric)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT month, points FROM metric_buckets")).all() == [
            ("2027-03", 30)]
    assert_journal_ok(engine)


@pytest.mark.parametrize("refund_first", [False, True])
def test_rejecting_an_event_that_names_another_events_order_leaves_that_order(engine,
                                                                              refund_first):
    # Given m1's review of a shop held for review, naming the order of her first purchase
    load_programme(engine, PROGRAMME)
    upsert_member(engine, P, "m1", {}, CLOCK)
    for n, minute in enumerate(("00", "20"), start=1):
        ingest_event(engine, P, purchase(f"e{n}", "m1", f"2027-03-01T10:{minute}:00+00:00",
                                         f"{n * 10}.00"), CLOCK)
    ingest_event(engine, P, {"id": "v1", "type": "review", "member": "m1", "order_id": "o-e1",
                             "occurred_at": "2027-03-01T10:40:00+00:00"}, CLOCK)
    (review,) = fraud.reviews(engine, P)

    # When the review is rejected and the first purchase refunded in full, in either order
    def reject() -> None:
        fraud.decide(engine, P, review["id"], "reject", "k1", CLOCK)

    def refund() -> None:
        ingest_event(engine, P, {"id": "r1", "type": "refund", "member": "m1",
                                 "order_id": "o-e1", "amount": "10.00",
                                 "occurred_at": "2027-03-01T11:00:00+00:00"}, CLOCK)

    for step in ((refund, reject) if refund_first else (reject, refund)):
        step()

    # Then the review's 5 and the purchase's 10 went back (the rejection took the order's
    # awards too, and the refund took nothing; or the refund took 5 of its 10 from the
    # review's held lot, which named its order, and the rejection found nothing to take)
    assert journal(engine, "review_reject") == [("pending", "issued", 5)]
    assert journal(engine, "clawback") == [("available", "issued", 10)]
    assert balances(engine, "m1") == {"available": 20, "pending": 0, "reserved": 0}
    assert_journal_ok(engine)


def test_a_refund_lowers_an_unheld_review_by_campaign_points_too(engine):
    # Given a campaign doubling the base points, reviews left unheld, and m1's third
    # purchase of the hour (30.00: 30 base and 30 campaign) queued for review
    load_programme(engine, {**PROGRAMME, "fraud": {**PROGRAMME["fraud"], "hold": False},
                            "campaigns": DOUBLE})
    upsert_member(engine, P, "m1", {}, CLOCK)
    review = held_m1(engine)
    assert fraud.reviews(engine, P)[0]["points"] == 60

    # When the purchase is refunded in full (60 back), then the review rejected
    ingest_event(engine, P, {"id": "r3", "type": "refund", "member": "m1", "order_id": "o-e3",
                             "occurred_at": "2027-03-01T11:00:00+00:00", "amount": "30.00"},
                 CLOCK)
    fraud.decide(engine, P, review, "reject", "k1", CLOCK)

    # Then the rejection takes nothing (it took the campaign's 30 a second time)
    assert balances(engine, "m1") == {"available": 60, "pending": 0, "reserved": 0}
    assert journal(engine, "review_reject") == []
    assert_journal_ok(engine)


# -- a rejected purchase keeps no cashback and qualifies no referral ---------------------

RECEIPT = "2027-03-01T10:00:00+00:00"  # m3's receipt, which m2 claims 5 minutes later
CLAIM = "2027-03-01T10:05:00+00:00"


def cashback_and_referrals(engine: sa.Engine, *, held: bool = True) -> str:
    """Fraud Cafe screening duplicate receipts only (held or not), with 2% instant cashback
    and referrals (a first purchase of RM 20.00 or more, paid 14 days later: referrer 300
    points, referee 150); m1 refers m2, and m3 buys RM 42.50 at kl-01 at 10:00. The
    referral's id."""
    load_programme(engine, {
        **PROGRAMME,
        "fraud": {"duplicate_receipts": {"window_minutes": 10}, "hold": held},
        "cashback": {"instant": [{"id": "all", "percent": 2}]},
        "referrals": {"min_purchase": "20.00", "pending_days": 14,
                      "referrer": {"points": 300}, "referee": {"points": 150}},
    })
    for member in ("m1", "m2", "m3"):
        upsert_member(engine, P, member, {}, CLOCK)
    code = referrals.code_for(engine, P, "m1", CLOCK)["code"]
    linked = referrals.link(engine, P, {"code": code, "member": "m2"}, "link-m2", CLOCK)
    ingest_event(engine, P, purchase("e1", "m3", RECEIPT, "42.50"), CLOCK)
    return str(linked["id"])


def credit(engine: sa.Engine, member: str) -> dict[str, str]:
    view = store_credit.balance(engine, P, member)
    return {"available": view["available"], "reserved": view["reserved"]}


def credit_postings(engine: sa.Engine, member: str) -> list[tuple[str, str, str, int, str, str]]:
    """(code, debit, credit, amount in sen, ref, rule) of the member's store credit."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(
            "SELECT p.code, p.debit, p.credit, p.points, p.ref, p.rule_id FROM postings p "
            "JOIN members m ON m.pk = p.member_pk WHERE m.id = :member "
            "AND p.asset = 'credit:MYR' ORDER BY p.id"), {"member": member})]


def messages(engine: sa.Engine, ref: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(type, member, data) of the outbox's messages whose key ends with ``:<ref>``, in
    order (a referral's id: ``referral.paid`` and those of ``referral:<id>``)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT type, member_id, data FROM outbox WHERE key LIKE :key ORDER BY id"),
            {"key": f"%:{ref}"}).all()
    return [(kind, member, json.loads(data)) for kind, member, data in rows]


def refund_in_full(engine: sa.Engine, amount: str) -> dict[str, Any]:
    return ingest_event(engine, P, {"id": "r2", "type": "refund", "member": "m2",
                                    "order_id": "o-e2", "amount": amount,
                                    "occurred_at": "2027-03-20T10:00:00+00:00"}, CLOCK)


def test_a_rejected_duplicate_receipt_keeps_no_cashback_and_qualifies_no_referral(engine):
    # Given m2, referred by m1, claiming m3's receipt (RM 42.50 at kl-01) as her first
    # purchase: 42 points held for review, RM 0.85 cashback (2%), the referral qualified;
    # and RM 0.50 of the cashback spent at the till while the review is open
    referral = cashback_and_referrals(engine)
    result = ingest_event(engine, P, purchase("e2", "m2", CLAIM, "42.50"), CLOCK)
    review = result["review"]["review"]
    assert result["review"]["held"] is True
    assert credit(engine, "m2") == {"available": "0.85", "reserved": "0.00"}
    assert referrals.get(engine, P, referral)["status"] == "qualified"
    hold = store_credit.hold(engine, P, {"member": "m2", "amount": "0.50"}, "h1", CLOCK,
                             new_id=lambda: "crh_1")
    store_credit.capture_or_release(engine, P, hold["id"], "capture", None, "c1", CLOCK)

    # When the review is rejected
    decided = fraud.decide(engine, P, review, "reject", "k1", CLOCK)

    # Then the 42 points, all of the RM 0.85 cashback (leaving a debt of RM 0.50: it was
    # spent) and the referral's qualification go back, under the rejection's reference
    ref = f"review:{review}"
    assert decided["balances"] == {"available": 0, "pending": 0, "reserved": 0}
    assert credit(engine, "m2") == {"available": "-0.50", "reserved": "0.00"}
    assert credit_postings(engine, "m2") == [
        ("cashback", "issued", "available", 85, "e2", "all"),
        ("hold", "available", "reserved", 50, "crh_1", None),
        ("capture", "reserved", "redeemed", 50, "crh_1", None),
        ("clawback", "available", "issued", 85, ref, "all")]
    linked = referrals.get(engine, P, referral)
    assert (linked["status"], linked["order_id"], linked["qualifies_at"]) == (
        "linked", None, None)
    credit_balances = {"available": "-0.50", "reserved": "0.00"}
    assert messages(engine, ref) == [
        ("credit.clawed_back", "m2", {"program": P, "member": "m2", "ref": ref,
                                      "amount": "0.85", "currency": "MYR",
                                      "balances": credit_balances}),
        ("points.clawed_back", "m2", {"program": P, "member": "m2", "ref": ref, "points": 42,
                                      "balances": {"available": 0, "pending": 0,
                                                   "reserved": 0}})]
    # a decision is made once: the same key replays, another is refused, nothing changes
    assert fraud.decide(engine, P, review, "reject", "k1", CLOCK) == decided
    with pytest.raises(ReviewDecided):
        fraud.decide(engine, P, review, "reject", "k2", CLOCK)
    assert credit(engine, "m2") == credit_balances
    assert len(credit_postings(engine, "m2")) == 4

    # When run-due runs after the 14 days the referral would have waited
    run_due(engine, at("2027-03-16T00:00:00+00:00"))

    # Then it pays nobody
    assert referrals.get(engine, P, referral)["status"] == "linked"
    assert balances(engine, "m1") == {"available": 0, "pending": 0, "reserved": 0}
    assert balances(engine, "m2") == {"available": 0, "pending": 0, "reserved": 0}
    with engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT count(*) FROM postings WHERE rule_id LIKE 'referral:%'")).scalar() == 0

    # When the shop then refunds the order in full
    refunded = refund_in_full(engine, "42.50")

    # Then the refund takes nothing more: no points, no cashback, the referral stays linked
    assert (refunded["points"], refunded["postings"]) == (0, [])
    assert credit(engine, "m2") == credit_balances
    assert len(credit_postings(engine, "m2")) == 4
    assert referrals.get(engine, P, referral)["status"] == "linked"
    assert messages(engine, "r2") == []
    assert_journal_ok(engine)


def test_rejecting_an_unheld_review_after_payout_and_a_partial_refund_claws_all_back(engine):
    # Given reviews that leave the points spendable, m2's claim of m3's receipt (42 points,
    # RM 0.85 cashback) queued for review, the referral paid by run-due 14 days later
    # (m1 300 points, m2 150), and RM 10.00 of the order refunded (10 points and RM 0.20
    # back; the RM 32.50 left still qualifies)
    referral = cashback_and_referrals(engine, held=False)
    queued = ingest_event(engine, P, purchase("e2", "m2", CLAIM, "42.50"), CLOCK)["review"]
    assert queued["held"] is False
    review = queued["review"]
    run_due(engine, at("2027-03-16T00:00:00+00:00"))
    assert referrals.get(engine, P, referral)["status"] == "paid"
    ingest_event(engine, P, {"id": "r1", "type": "refund", "member": "m2", "order_id": "o-e2",
                             "amount": "10.00", "occurred_at": "2027-03-17T10:00:00+00:00"},
                 CLOCK)
    assert referrals.get(engine, P, referral)["status"] == "paid"
    assert balances(engine, "m1") == {"available": 300, "pending": 0, "reserved": 0}
    assert balances(engine, "m2") == {"available": 182, "pending": 0, "reserved": 0}
    assert credit(engine, "m2") == {"available": "0.65", "reserved": "0.00"}

    # When the review is rejected, on 18 March
    fraud.decide(engine, P, review, "reject", "k1", fixed_clock("2027-03-18T09:00:00+00:00"))

    # Then the purchase keeps nothing: its 32 points left, its RM 0.65 cashback left and
    # the referral's payout on both sides are taken back
    ref, paid = f"review:{review}", f"referral:{referral}"
    assert balances(engine, "m1") == {"available": 0, "pending": 0, "reserved": 0}
    assert balances(engine, "m2") == {"available": 0, "pending": 0, "reserved": 0}
    assert credit(engine, "m2") == {"available": "0.00", "reserved": "0.00"}
    assert credit_postings(engine, "m2") == [
        ("cashback", "issued", "available", 85, "e2", "all"),
        ("clawback", "available", "issued", 20, "r1", "all"),
        ("clawback", "available", "issued", 65, ref, "all")]
    with engine.connect() as conn:
        assert [tuple(row) for row in conn.execute(sa.text(
            "SELECT m.id, p.code, p.debit, p.credit, p.points, p.ref FROM postings p "
            "JOIN members m ON m.pk = p.member_pk WHERE p.rule_id = :rule ORDER BY p.id"),
            {"rule": paid})] == [
            ("m1", "earn", "issued", "available", 300, paid),
            ("m2", "earn", "issued", "available", 150, paid),
            ("m1", "clawback", "available", "issued", 300, paid),
            ("m2", "clawback", "available", "issued", 150, ref)]
    clawed = referrals.get(engine, P, referral)
    assert (clawed["status"], clawed["clawed_back_at"]) == ("clawed_back",
                                                            "2027-03-18T09:00:00+00:00")
    assert [(kind, member, data.get("points"), data.get("amount"))
            for kind, member, data in messages(engine, ref) + messages(engine, referral)] == [
        ("credit.clawed_back", "m2", None, "0.65"),
        ("points.clawed_back", "m2", 182, None),  # the purchase's 32 and the referral's 150
        ("referral.paid", "m1", 300, None),
        ("points.earned", "m2", 150, None),
        ("points.clawed_back", "m1", 300, None)]

    # When the rest of the order is refunded
    refunded = refund_in_full(engine, "32.50")

    # Then it takes nothing a second time
    assert (refunded["points"], refunded["postings"]) == (0, [])
    assert balances(engine, "m1") == {"available": 0, "pending": 0, "reserved": 0}
    assert balances(engine, "m2") == {"available": 0, "pending": 0, "reserved": 0}
    assert credit(engine, "m2") == {"available": "0.00", "reserved": "0.00"}
    assert len(credit_postings(engine, "m2")) == 3
    assert referrals.get(engine, P, referral)["status"] == "clawed_back"
    assert_journal_ok(engine)


def test_an_unknown_review_is_refused_and_changes_nothing(cafe):
    held_m1(cafe)
    with pytest.raises(UnknownReview):
        fraud.decide(cafe, P, 999, "approve", "k1", CLOCK)
    assert balances(cafe, "m1") == {"available": 30, "pending": 30, "reserved": 0}
    assert_journal_ok(cafe)


def test_events_of_one_batch_count_towards_the_velocity_limits(cafe):
    results = ingest_batch(cafe, P, [
        purchase(f"b{n}", "m1", f"2027-03-01T10:0{n}:00+00:00", f"{10 + n}.00")
        for n in range(4)
    ], CLOCK)
    # 10 and 11 points earned; the third and fourth (12, 13) are over 2 events an hour
    assert [("review" in r) for r in results] == [False, False, True, True]
    assert balances(cafe, "m1") == {"available": 21, "pending": 25, "reserved": 0}
    assert_journal_ok(cafe)


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batch"])
def test_a_purchase_that_earned_nothing_counts_as_a_receipt_but_not_as_an_earning_event(
        engine, batched):
    # Given a programme whose purchases earn in the app only, one earning event an hour
    # allowed, and duplicate receipts screened
    document = {**PROGRAMME, "earn": [{"id": "base", "on": "purchase", "rate": 1,
                                       "channels": ["app"]}],
                "fraud": {"velocity": [{"per": "hour", "max_events": 1}],
                          "duplicate_receipts": {"window_minutes": 10}}}
    load_programme(engine, document)
    for member in ("m1", "m2"):
        upsert_member(engine, P, member, {}, CLOCK)
    events = [
        # m1 at the till (no points), then in the app at another store
        {**purchase("e1", "m1", "2027-03-01T10:00:00+00:00", "42.50"), "channel": "till"},
        {**purchase("e2", "m1", "2027-03-01T10:01:00+00:00", "10.00", store="pg-02"),
         "channel": "app"},
        # m2 in the app with the receipt of m1's till purchase
        {**purchase("e3", "m2", "2027-03-01T10:02:00+00:00", "42.50"), "channel": "app"},
    ]

    # When they are sent one by one, or in one batch (whose orders are written at commit)
    results = (ingest_batch(engine, P, events, CLOCK) if batched
               else [ingest_event(engine, P, event, CLOCK) for event in events])

    # Then the same either way: m1's till purchase is m2's receipt's duplicate, but not an
    # earning event of m1's hour
    assert [r["points"] for r in results] == [0, 10, 42]
    assert [r.get("review", {}).get("reasons") for r in results] == [None, None, [
        "duplicate receipt: 1 other purchase(s) with the same store and amount within 10 "
        "minutes"]]
    assert balances(engine, "m1") == {"available": 10, "pending": 0, "reserved": 0}
    assert balances(engine, "m2") == {"available": 0, "pending": 42, "reserved": 0}
    assert [(r["member"], r["event"], r["points"]) for r in fraud.reviews(engine, P)] == [
        ("m2", "e3", 42)]
    assert_journal_ok(engine)


def kopi_holding_a_purchase(engine: sa.Engine) -> dict[str, Any]:
    """Kopi Setia (3 pending days) holding points over 50 a day for review, and cust-1's
    purchase of 2 March: base 42 + first-visit 100 = 142, held. Its result."""
    document = copy.deepcopy(parse_text(KOPI_SETIA.read_text()))
    document["fraud"] = {"velocity": [{"per": "day", "max_points": 50}]}
    load_programme(engine, document)
    clock = fixed_clock("2027-03-01T09:00:00+08:00")
    upsert_member(engine, "kopi-setia", "cust-1", {}, clock)  # welcome 50, pending
    return ingest_event(engine, "kopi-setia", {
        "id": "k1", "type": "purchase", "member": "cust-1", "order_id": "ko1",
        "occurred_at": "2027-03-02T10:00:00+08:00", "amount": "42.00", "currency": "MYR",
        "store": "pg-01"}, clock)


def test_held_points_of_a_pending_programme_wait_past_their_pending_days(engine):
    # Kopi Setia keeps points pending 3 days; a hold keeps them pending until approved
    result = kopi_holding_a_purchase(engine)
    clock = fixed_clock("2027-03-01T09:00:00+08:00")
    assert result["points"] == 142 and result["review"]["held"] is True
    run_due(engine, at("2027-03-10T00:00:00+08:00"))
    assert get_member(engine, "kopi-setia", "cust-1", clock)["balances"] == {
        "available": 50, "pending": 142, "reserved": 0}
    (review,) = fraud.reviews(engine, "kopi-setia")
    fraud.decide(engine, "kopi-setia", review["id"], "approve", "a1",
                 fixed_clock("2027-03-10T01:00:00+08:00"))
    assert get_member(engine, "kopi-setia", "cust-1", clock)["balances"] == {
        "available": 192, "pending": 0, "reserved": 0}
    assert_journal_ok(engine)


def test_points_approved_before_their_pending_days_end_become_available_when_they_do(engine):
    # Given Kopi Setia (3 pending days) holding cust-1's 142 points of 2 March for review
    kopi_holding_a_purchase(engine)
    clock = fixed_clock("2027-03-01T09:00:00+08:00")

    # When the review is approved the next day, before the 3 days are over, and run-due
    # runs once they are
    (review,) = fraud.reviews(engine, "kopi-setia")
    fraud.decide(engine, "kopi-setia", review["id"], "approve", "a1",
                 fixed_clock("2027-03-03T09:00:00+08:00"))
    pending_after_approval = get_member(engine, "kopi-setia", "cust-1", clock)["balances"]
    run_due(engine, at("2027-03-10T00:00:00+08:00"))

    # Then the 142 wait out their days, then are available (they stayed pending forever: the
    # lot kept the review's far-off due time in the database)
    assert pending_after_approval == {"available": 0, "pending": 192, "reserved": 0}
    assert get_member(engine, "kopi-setia", "cust-1", clock)["balances"] == {
        "available": 192, "pending": 0, "reserved": 0}
    assert_journal_ok(engine)


def test_without_a_fraud_section_ingestion_runs_no_fraud_query(kopi):
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    upsert_member(kopi, "kopi-setia", "cust-1", {}, fixed_clock("2027-03-01T09:00:00+08:00"))
    sa.event.listen(kopi, "before_cursor_execute", seen)
    try:
        ingest_event(kopi, "kopi-setia", {
            "id": "k1", "type": "purchase", "member": "cust-1", "order_id": "ko1",
            "occurred_at": "2027-03-02T10:00:00+08:00", "amount": "42.00", "currency": "MYR",
            "store": "kl-01"}, fixed_clock("2027-03-02T10:00:00+08:00"))
    finally:
        sa.event.remove(kopi, "before_cursor_execute", seen)
    assert statements, "the listener saw the ingestion"
    assert not [s for s in statements if "fraud_reviews" in s or "count(DISTINCT" in s
                or "pg_advisory" in s]
    assert_journal_ok(kopi)


def test_a_rejected_purchase_earns_no_tiered_rebate(engine):
    # Given duplicate receipts screened, a quarterly rebate of 10 %, m3's RM 42.50 at
    # kl-01 and m2's claim of the same receipt, held and rejected
    load_programme(engine, {
        **PROGRAMME, "fraud": {"duplicate_receipts": {"window_minutes": 10}},
        "cashback": {"tiered": [{"id": "quarterly", "per": "quarter",
                                 "bands": [{"percent": 10}]}]}})
    for member in ("m2", "m3"):
        upsert_member(engine, P, member, {}, CLOCK)
    ingest_event(engine, P, purchase("e1", "m3", RECEIPT, "42.50"), CLOCK)
    review = ingest_event(engine, P, purchase("e2", "m2", CLAIM, "42.50"),
                          CLOCK)["review"]["review"]
    fraud.decide(engine, P, review, "reject", "k1", CLOCK)

    # When the quarter's rebates are credited
    report = run_due(engine, at("2027-04-01T00:00:00+00:00"), P)

    # Then m3 gets RM 4.25 on her purchase, and m2 nothing on the rejected one
    assert report.rebates_credited == 1
    assert credit(engine, "m3") == {"available": "4.25", "reserved": "0.00"}
    assert credit(engine, "m2") == {"available": "0.00", "reserved": "0.00"}
    assert_journal_ok(engine)


SPEND_TIERS = {"metric": "spend", "levels": [{"id": "member", "name": "Member", "threshold": 0},
                                             {"id": "gold", "name": "Gold", "threshold": 50}]}


def buckets(engine: sa.Engine) -> list[tuple[str, int, int, int]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(
            "SELECT month, spend_e4, points, visits FROM metric_buckets ORDER BY month"))]


@pytest.mark.parametrize(("before", "after"), [
    (None, None), ("30.00", None), ("12.00", None), (None, "30.00"), (None, "12.00"),
    ("12.00", "18.00")])
def test_a_rejected_purchase_leaves_the_spend_and_visits_tier_metrics(engine, before, after):
    # Given tiers by spend (Gold at 50), and m1's third purchase of the hour (RM 30) held,
    # which made her Gold on RM 60 over three visits
    review = held_m1_under(engine, {**PROGRAMME, "tiers": SPEND_TIERS})
    assert buckets(engine) == [("2027-03", 600_000, 60, 3)]
    assert get_member(engine, P, "m1", CLOCK)["tier"]["id"] == "gold"

    def refund(event_id: str, amount: str) -> None:
        ingest_event(engine, P, {"id": event_id, "type": "refund", "member": "m1",
                                 "order_id": "o-e3", "amount": amount,
                                 "occurred_at": "2027-03-01T11:00:00+00:00"}, CLOCK)

    # When the shop refunds part or all of it (or not) before and after the review is
    # rejected
    if before is not None:
        refund("r-before", before)
    fraud.decide(engine, P, review, "reject", "k1", CLOCK)
    if after is not None:
        refund("r-after", after)

    # Then her March counts e1 and e2 only: RM 30 over two visits, and their 30 points,
    # whatever was refunded when (nothing of e3 is counted twice, nor taken off twice)
    assert buckets(engine) == [("2027-03", 300_000, 30, 2)]
    # and the Gold that e3 lifted her to is gone at once (not at her next review), told
    # with the rejection
    assert get_member(engine, P, "m1", CLOCK)["tier"]["id"] == "member"
    with engine.connect() as conn:
        told = [json.loads(row[0]) if isinstance(row[0], str) else row[0]
                for row in conn.execute(sa.text(
                    "SELECT data FROM outbox WHERE type = 'tier.changed' ORDER BY id"))]
    assert [(m["ref"], m["from"], m["to"]) for m in told] == [
        ("e3", "member", "gold"), (f"review:{review}", "gold", "member")]
    assert_journal_ok(engine)


@pytest.mark.parametrize(("later", "tier"), [("25.00", "gold"), ("15.00", "member")])
def test_a_rejected_purchase_leaves_a_tier_its_lift_is_still_earned_by(engine, later, tier):
    # Given tiers by spend (Gold at 50), m1's third purchase of the hour (RM 30) held,
    # which made her Gold on RM 60, and a later purchase of hers an hour on
    review = held_m1_under(engine, {**PROGRAMME, "tiers": SPEND_TIERS})
    ingest_event(engine, P, purchase("e4", "m1", "2027-03-01T11:45:00+00:00", later), CLOCK)

    # When the review is rejected
    fraud.decide(engine, P, review, "reject", "k1", CLOCK)

    # Then she stays Gold where her other purchases reach it (RM 30 + 25), and goes back
    # to Member where they do not (RM 30 + 15)
    assert get_member(engine, P, "m1", CLOCK)["tier"]["id"] == tier
    assert_journal_ok(engine)


def test_a_statement_before_a_rejected_purchase_shows_the_metric_as_it_stood(engine):
    # Given tiers by spend, m1 enrolled in January, her purchase of RM 10 on 10 February,
    # then three within an hour on 20 February (RM 10, 20 and 30), the third held for
    # review and rejected
    from datetime import date as D

    from setia.service import analytics_reports as reports

    load_programme(engine, {**PROGRAMME, "tiers": {**SPEND_TIERS, "window": "rolling_months",
                                                    "window_months": 12}})
    upsert_member(engine, P, "m1", {}, fixed_clock("2027-01-05T00:00:00+00:00"))
    ingest_event(engine, P, purchase("f1", "m1", "2027-02-10T10:00:00+00:00", "10.00"), CLOCK)
    for n, minute in enumerate(("00", "20", "40"), start=1):
        ingest_event(engine, P, purchase(f"e{n}", "m1", f"2027-02-20T10:{minute}:00+00:00",
                                         f"{n * 10}.00"), CLOCK)
    (review,) = fraud.reviews(engine, P)
    fraud.decide(engine, P, review["id"], "reject", "k1", CLOCK)
    assert buckets(engine) == [("2027-02", 400_000, 40, 3)]

    # When the statement to 15 February is made
    _, frame = reports.statements(engine, P, D(2027, 2, 1), D(2027, 2, 15))

    # Then it shows the RM 10 of 10 February: the later purchases are taken out of the
    # buckets, but not the rejected one, which they no longer hold (not RM -20)
    (row,) = frame.select("member", "tier_metric", "remaining_to_next").rows()
    assert row == ("m1", 10.0, 40.0)
    assert_journal_ok(engine)


def test_a_rejected_purchase_keeps_no_voucher_of_a_voucher_campaign(engine):
    # Given a free cake for purchases of RM 25 or more, and m1's third purchase of the hour
    # (RM 30: a cake voucher) held for review
    review = held_m1_under(engine, {**PROGRAMME, "campaigns": [
        {"id": "cake", "name": "Cake", "min_amount": "25.00",
         "voucher": {"free_item": "cake", "valid_days": 30}}]})

    # When the review is rejected
    fraud.decide(engine, P, review, "reject", "k1", CLOCK)

    # Then the voucher is void (used by the rejection), and she is told
    with engine.connect() as conn:
        (code, used_ref), = conn.execute(sa.text(
            "SELECT code, used_ref FROM vouchers")).all()
        assert used_ref == f"review {review} rejected"
        assert conn.execute(sa.text("SELECT kept FROM campaign_awards")).scalars().all() == [0]
        told = [json.loads(row[0]) if isinstance(row[0], str) else row[0]
                for row in conn.execute(sa.text(
                    "SELECT data FROM outbox WHERE type = 'voucher.voided'"))]
    assert [(m["ref"], m["code"], m["reward"]) for m in told] == [
        (f"review:{review}", code, "campaign:cake")]
    assert_journal_ok(engine)
