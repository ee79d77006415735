"""Referrals on growth-cafe (tests/growth_programme.py): codes, linking, the qualifying
purchase, payout by run-due after 14 days, clawback on refund, fraud guards and the
review queue. Payout: referrer 300, referee 150, rule id ``referral:<id>``."""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.adapters.db import tables_outbox
from setia.adapters.db import tables_referrals as tr
from setia.adapters.db.tables_partners import settlement_postings
from setia.domain import referrals as r
from setia.domain.errors import AlreadyReversed, SetiaError, UnknownMember
from setia.service import referrals, reversals
from setia.service.events import ingest_event
from setia.service.members import get_member, upsert_member
from setia.service.run_due import run_due
from tests.conftest import assert_journal_ok, at, fixed_clock, load_programme, wait_for_lock_waiters
from tests.growth_programme import GROWTH

P = "growth-cafe"
ENROL = fixed_clock("2027-03-01T09:00:00+08:00")
DAY_2 = fixed_clock("2027-03-02T09:00:00+08:00")


@pytest.fixture
def cafe(engine: sa.Engine) -> sa.Engine:
    load_programme(engine, GROWTH)
    upsert_member(engine, P, "rina", {"email": "Rina.Tan+shop@gmail.com",
                                      "phone": "+60 12-345 6789"}, ENROL)
    return engine


def available(engine: sa.Engine, member: str) -> int:
    return get_member(engine, P, member, DAY_2)["balances"]["available"]


def referral_postings(engine: sa.Engine) -> list[tuple[str, str, str, int, str]]:
    p = t.postings
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.members.c.id, p.c.debit, p.c.credit, p.c.points,
                                      p.c.rule_id)
                            .join(t.members, t.members.c.pk == p.c.member_pk)
                            .where(p.c.rule_id.like("referral:%")).order_by(p.c.id))
        return [tuple(row) for row in rows]


def referral_messages(engine: sa.Engine) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(type, member, key, data) of every outbox message of a referral, in order."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT type, member_id, key, data FROM outbox WHERE key LIKE '%referral%' "
            "ORDER BY id")).all()
    return [(kind, member, key, json.loads(data)) for kind, member, key, data in rows]


def purchase(engine: sa.Engine, member: str, order: str, amount: str, when: str) -> None:
    ingest_event(engine, P, {"id": f"e-{order}", "type": "purchase", "member": member,
                             "occurred_at": when, "order_id": order, "amount": amount}, DAY_2)


def refund(engine: sa.Engine, member: str, order: str, amount: str, when: str,
           event: str) -> dict[str, Any]:
    return ingest_event(engine, P, {"id": event, "type": "refund", "member": member,
                                    "occurred_at": when, "order_id": order,
                                    "amount": amount}, DAY_2)


def refer(engine: sa.Engine, member: str, profile: dict[str, Any] | None = None,
          ip: str | None = None, key: str | None = None) -> dict[str, Any]:
    upsert_member(engine, P, member, profile or {}, DAY_2)
    code = referrals.code_for(engine, P, "rina", DAY_2)["code"]
    body: dict[str, Any] = {"code": code, "member": member}
    if ip is not None:
        body["ip"] = ip
    return referrals.link(engine, P, body, key or f"link-{member}", DAY_2)


def paid_referral(engine: sa.Engine) -> dict[str, Any]:
    """adi referred by rina, his RM 30.00 purchase of 3 March qualifying it, paid by
    run-due on 20 March (rina 300, adi 150)."""
    linked = refer(engine, "adi")
    purchase(engine, "adi", "o-1", "30.00", "2027-03-03T10:00:00+08:00")
    run_due(engine, at("2027-03-20T00:00:00+08:00"))
    return linked


def test_a_member_has_one_code_and_link(cafe: sa.Engine) -> None:
    first = referrals.code_for(cafe, P, "rina", DAY_2, random_bytes=lambda n: b"\x01" * n)
    # bits 0, 8, 16, 24, 32 set; 5 bits a character, least significant first: 1 8 0 2 G 0 4 0
    assert first["code"] == "1802G040"
    assert first["link"] == "https://growth.example/join?ref=1802G040"
    assert referrals.code_for(cafe, P, "rina", DAY_2)["code"] == "1802G040"
    assert first["referrals"]["paid"] == 0
    with pytest.raises(UnknownMember):
        referrals.code_for(cafe, P, "nobody", DAY_2)


def test_the_referral_pays_both_sides_after_the_pending_period(cafe: sa.Engine) -> None:
    linked = refer(cafe, "adi")
    assert (linked["status"], linked["referrer"], linked["referee"], linked["guards"]) == (
        "linked", "rina", "adi", [])
    # RM 19.99 is below min_purchase: nothing qualifies
    purchase(cafe, "adi", "o-1", "19.99", "2027-03-03T10:00:00+08:00")
    assert referrals.get(cafe, P, linked["id"])["status"] == "linked"
    purchase(cafe, "adi", "o-2", "25.00", "2027-03-04T10:00:00+08:00")
    qualified = referrals.get(cafe, P, linked["id"])
    assert (qualified["status"], qualified["order_id"], qualified["qualifies_at"]) == (
        "qualified", "o-2", "2027-03-18T02:00:00+00:00")
    run_due(cafe, at("2027-03-18T09:59:59+08:00"))
    assert referral_postings(cafe) == []
    run_due(cafe, at("2027-03-18T10:00:00+08:00"))
    rid = f"referral:{linked['id']}"
    assert referral_postings(cafe) == [("rina", "issued", "available", 300, rid),
                                       ("adi", "issued", "available", 150, rid)]
    # rina: 50 welcome + 300; adi: 50 welcome + 19 + 25 base + 150
    assert available(cafe, "rina") == 350
    assert available(cafe, "adi") == 244
    # rina hears of the referral paid, adi of the points earned
    paid = {"program": P, "member": "rina", "referral": linked["id"], "referred": "adi",
            "points": 300, "balances": {"available": 350, "pending": 0, "reserved": 0}}
    earned = {"program": P, "member": "adi", "ref": rid, "points": 150,
              "balances": {"available": 244, "pending": 0, "reserved": 0}}
    assert referral_messages(cafe) == [
        ("referral.paid", "rina", f"referral.paid:{linked['id']}", paid),
        ("points.earned", "adi", f"points.earned:adi:{rid}", earned)]
    with cafe.connect() as conn:  # a referral reward is activity (inactivity expiry)
        last = conn.execute(sa.select(t.members.c.last_activity_at).where(
            t.members.c.id == "rina")).scalar_one()
    assert last == at("2027-03-18T10:00:00+08:00")
    run_due(cafe, at("2027-03-19T10:00:00+08:00"))  # idempotent: paid once
    assert len(referral_postings(cafe)) == 2
    assert len(referral_messages(cafe)) == 2
    assert referrals.get(cafe, P, linked["id"])["status"] == "paid"
    assert_journal_ok(cafe)


def test_a_refund_below_the_minimum_claws_both_sides_back(cafe: sa.Engine) -> None:
    linked = paid_referral(cafe)
    assert (available(cafe, "rina"), available(cafe, "adi")) == (350, 230)
    # 30.00 - 5.00 = 25.00 still qualifies: only the base points of 5.00 go
    refund(cafe, "adi", "o-1", "5.00", "2027-03-21T10:00:00+08:00", "r-1")
    assert (available(cafe, "rina"), available(cafe, "adi")) == (350, 225)
    result = refund(cafe, "adi", "o-1", "10.00", "2027-03-22T10:00:00+08:00", "r-2")
    rid = f"referral:{linked['id']}"
    assert [(p["rule"], p["points"]) for p in result["postings"]] == [("base", -10),
                                                                     (rid, -150)]
    assert (available(cafe, "rina"), available(cafe, "adi")) == (50, 65)
    assert referrals.get(cafe, P, linked["id"])["status"] == "clawed_back"
    assert referral_postings(cafe)[2:] == [("rina", "available", "issued", 300, rid),
                                           ("adi", "available", "issued", 150, rid)]
    # rina hears of the 300 clawed back; adi's 150 go with the refund's own message
    assert [(kind, member, key, data.get("points"))
            for kind, member, key, data in referral_messages(cafe)] == [
        ("referral.paid", "rina", f"referral.paid:{linked['id']}", 300),
        ("points.earned", "adi", f"points.earned:adi:{rid}", 150),
        ("points.clawed_back", "rina", f"points.clawed_back:rina:{rid}", 300)]
    o = tables_outbox.outbox
    with cafe.connect() as conn:  # told when the refund was applied, not at its own time
        assert tuple(conn.execute(sa.select(o.c.occurred_at, o.c.created_at).where(
            o.c.key == f"points.clawed_back:rina:{rid}")).one()) == (DAY_2(), DAY_2())
    with cafe.connect() as conn:
        assert json.loads(conn.execute(sa.text(
            "SELECT data FROM outbox WHERE key = 'points.clawed_back:adi:r-2'")).scalar_one()
        )["points"] == 160  # the base 10 and the referral's 150
    assert_journal_ok(cafe)


def test_a_refund_before_payment_waits_for_another_purchase(cafe: sa.Engine) -> None:
    linked = refer(cafe, "adi")
    purchase(cafe, "adi", "o-1", "30.00", "2027-03-03T10:00:00+08:00")
    refund(cafe, "adi", "o-1", "30.00", "2027-03-04T10:00:00+08:00", "r-1")
    assert referrals.get(cafe, P, linked["id"])["status"] == "linked"
    purchase(cafe, "adi", "o-2", "20.00", "2027-03-05T10:00:00+08:00")
    assert referrals.get(cafe, P, linked["id"])["qualifies_at"] == "2027-03-19T02:00:00+00:00"
    run_due(cafe, at("2027-03-19T10:00:00+08:00"))
    assert referrals.get(cafe, P, linked["id"])["status"] == "paid"
    assert_journal_ok(cafe)



def test_a_payout_reversed_by_an_admin_is_not_clawed_back_again_by_a_refund(
        cafe: sa.Engine) -> None:
    # Given adi's referral paid (rina 300, adi 150) after his RM 30.00 purchase
    linked = paid_referral(cafe)
    assert (available(cafe, "rina"), available(cafe, "adi")) == (350, 230)
    # When an admin reverses the payout, then the purchase is refunded below RM 20.00
    rid = f"referral:{linked['id']}"
    reversals.reverse(cafe, P, {"ref": rid, "reason": "a paid referral ring"}, "rv-1", DAY_2)
    assert (available(cafe, "rina"), available(cafe, "adi")) == (50, 80)
    refund(cafe, "adi", "o-1", "15.00", "2027-03-22T10:00:00+08:00", "r-1")
    # Then the refund takes its base 15 only: the 300 and 150 are not taken a second time
    assert (available(cafe, "rina"), available(cafe, "adi")) == (50, 65)
    assert referrals.get(cafe, P, linked["id"])["status"] == "clawed_back"
    assert [row[1:] for row in referral_postings(cafe)] == [
        ("issued", "available", 300, rid), ("issued", "available", 150, rid)]
    assert_journal_ok(cafe)


def test_a_referral_clawed_back_by_a_refund_cannot_be_reversed_again(engine: sa.Engine) -> None:
    # Given the referrer paid a voucher and adi (the referee) 150 points
    document = copy.deepcopy(GROWTH)
    document["referrals"]["referrer"] = {"reward": "free-latte"}
    load_programme(engine, document)
    upsert_member(engine, P, "rina", {}, ENROL)
    linked = paid_referral(engine)
    assert available(engine, "adi") == 50 + 30 + 150
    # When the purchase is refunded in full, which claws the referral back (150 and 30)
    refund(engine, "adi", "o-1", "30.00", "2027-03-22T10:00:00+08:00", "r-1")
    assert referrals.get(engine, P, linked["id"])["status"] == "clawed_back"
    assert available(engine, "adi") == 50
    with engine.connect() as conn:
        journal = conn.execute(sa.select(sa.func.count()).select_from(t.postings)).scalar_one()
    # Then an admin's reversal of the payout is refused: the referee's clawback sits under
    # the refund's reference, and taking the 150 again left adi at -100
    rid = f"referral:{linked['id']}"
    with pytest.raises(AlreadyReversed) as refused:
        reversals.reverse(engine, P, {"ref": rid, "reason": "ring"}, "rv-1", DAY_2)
    assert refused.value.field == "ref"
    assert refused.value.detail == (f"referral {linked['id']} is clawed_back, not paid: "
                                    "nothing of it is left to reverse")
    assert available(engine, "adi") == 50
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.postings)
                            ).scalar_one() == journal
    assert referrals.get(engine, P, linked["id"])["status"] == "clawed_back"
    assert_journal_ok(engine)


def test_a_second_reversal_of_a_points_referral_is_refused_as_already_reversed(
        cafe: sa.Engine) -> None:
    linked = paid_referral(cafe)
    refund(cafe, "adi", "o-1", "30.00", "2027-03-22T10:00:00+08:00", "r-1")
    assert (available(cafe, "rina"), available(cafe, "adi")) == (50, 50)
    # the referrer's clawback under referral:<id> made it refused as not reversible
    with pytest.raises(AlreadyReversed):
        reversals.reverse(cafe, P, {"ref": f"referral:{linked['id']}", "reason": "ring"},
                          "rv-1", DAY_2)
    assert (available(cafe, "rina"), available(cafe, "adi")) == (50, 50)
    assert_journal_ok(cafe)


def test_a_clawback_takes_back_what_was_paid_not_what_a_later_version_pays(
        cafe: sa.Engine) -> None:
    # Given the referral paid under the first version (rina 300, adi 150)
    linked = paid_referral(cafe)
    assert (available(cafe, "rina"), available(cafe, "adi")) == (350, 230)
    # When a version doubling the rewards and raising min_purchase to RM 40 is stored,
    # then RM 5.00 of the purchase is refunded (RM 25.00 left: still over the RM 20.00 of
    # the version it qualified under)
    document = copy.deepcopy(GROWTH)
    document["referrals"]["referrer"] = {"points": 600}
    document["referrals"]["referee"] = {"points": 300}
    document["referrals"]["min_purchase"] = "40.00"
    load_programme(cafe, document)
    refund(cafe, "adi", "o-1", "5.00", "2027-03-22T10:00:00+08:00", "r-1")
    assert referrals.get(cafe, P, linked["id"])["status"] == "paid"
    assert (available(cafe, "rina"), available(cafe, "adi")) == (350, 225)
    # and then the rest is refunded: what was paid is taken back, 300 and 150
    refund(cafe, "adi", "o-1", "25.00", "2027-03-23T10:00:00+08:00", "r-2")
    assert referrals.get(cafe, P, linked["id"])["status"] == "clawed_back"
    assert (available(cafe, "rina"), available(cafe, "adi")) == (50, 50)
    assert_journal_ok(cafe)


def test_a_referral_paid_in_points_is_clawed_back_under_a_version_paying_vouchers(
        cafe: sa.Engine) -> None:
    linked = paid_referral(cafe)
    document = copy.deepcopy(GROWTH)
    document["referrals"]["referrer"] = {"reward": "free-latte"}
    load_programme(cafe, document)
    refund(cafe, "adi", "o-1", "30.00", "2027-03-22T10:00:00+08:00", "r-1")
    # the 300 points paid are taken back, though the version now pays a voucher
    assert (available(cafe, "rina"), available(cafe, "adi")) == (50, 50)
    assert referrals.get(cafe, P, linked["id"])["status"] == "clawed_back"
    assert_journal_ok(cafe)


def test_a_referral_loop_goes_to_review(cafe: sa.Engine) -> None:
    # Given rina referred adi, and adi referred budi
    assert refer(cafe, "adi")["status"] == "linked"
    adi_code = referrals.code_for(cafe, P, "adi", DAY_2)["code"]
    upsert_member(cafe, P, "budi", {}, DAY_2)
    assert referrals.link(cafe, P, {"code": adi_code, "member": "budi"}, "link-budi",
                          DAY_2)["status"] == "linked"
    # When budi's code links rina: the loop rina -> adi -> budi -> rina
    budi_code = referrals.code_for(cafe, P, "budi", DAY_2)["code"]
    loop = referrals.link(cafe, P, {"code": budi_code, "member": "rina"}, "link-rina", DAY_2)
    # Then it waits for review, as a loop pays each of its members twice
    assert (loop["status"], loop["guards"]) == ("review", [
        "referral loop: the new member referred the referrer, directly or through others"])
    assert_journal_ok(cafe)


def test_a_refund_in_full_claws_back_a_referral_that_any_amount_qualifies_for(
        engine: sa.Engine) -> None:
    # Given referrals qualifying on any purchase (min_purchase 0), and adi's paid
    document = copy.deepcopy(GROWTH)
    document["referrals"]["min_purchase"] = "0"
    load_programme(engine, document)
    upsert_member(engine, P, "rina", {}, ENROL)
    linked = paid_referral(engine)
    assert (available(engine, "rina"), available(engine, "adi")) == (350, 230)
    # When the purchase is refunded in full
    refund(engine, "adi", "o-1", "30.00", "2027-03-22T10:00:00+08:00", "r-1")
    # Then the referral is clawed back on both sides, as a refund below the minimum is
    assert (available(engine, "rina"), available(engine, "adi")) == (50, 50)
    assert referrals.get(engine, P, linked["id"])["status"] == "clawed_back"
    assert_journal_ok(engine)

def test_self_referral_by_normalised_email_goes_to_review(cafe: sa.Engine) -> None:
    guarded = refer(cafe, "rina2", {"email": "rinatan@googlemail.com"})
    assert guarded["status"] == "review"
    assert guarded["guards"] == ["self-referral: the same email or phone as the referrer"]
    by_phone = refer(cafe, "rina3", {"phone": "012-345 6789"})
    assert by_phone["status"] == "review"
    purchase(cafe, "rina2", "o-1", "40.00", "2027-03-03T10:00:00+08:00")
    run_due(cafe, at("2027-04-30T10:00:00+08:00"))
    assert referral_postings(cafe) == []  # in review: never pays by itself
    queue = referrals.listing(cafe, P, "review")
    assert sorted(q["referee"] for q in queue) == ["rina2", "rina3"]  # same created_at
    approved = referrals.decide(cafe, P, guarded["id"], "approve", {"reason": "a sister"},
                                "ok-1", fixed_clock("2027-04-30T11:00:00+08:00"))
    # its purchase is already past the 14 days: approval pays at once
    assert (approved["status"], approved["decided_reason"]) == ("paid", "a sister")
    assert len(referral_postings(cafe)) == 2
    rejected = referrals.decide(cafe, P, by_phone["id"], "reject", None, "no-1", DAY_2)
    assert rejected["status"] == "rejected"
    # a retry that sends {} where the first sent no body is the same request: replayed
    assert referrals.decide(cafe, P, by_phone["id"], "reject", {}, "no-1", DAY_2) == rejected
    with pytest.raises(r.ReferralNotInReview):
        referrals.decide(cafe, P, by_phone["id"], "approve", None, "ok-2", DAY_2)
    assert referrals.listing(cafe, P, "review") == []
    # and a retry after a version without referrals is stored is replayed too
    without = copy.deepcopy(GROWTH)
    del without["referrals"]
    load_programme(cafe, without)
    assert referrals.decide(cafe, P, by_phone["id"], "reject", None, "no-1", DAY_2) == rejected
    with pytest.raises(SetiaError) as unconfigured:
        referrals.decide(cafe, P, by_phone["id"], "reject", None, "no-2", DAY_2)
    assert unconfigured.value.type == "referrals-not-configured"
    assert_journal_ok(cafe)



@pytest.mark.postgres
def test_an_approval_waits_for_a_purchase_qualifying_the_referral_meanwhile(
        pg_engine: sa.Engine) -> None:
    # Given rina2's referral in review (the same email as rina's), and her first purchase
    # under way: it holds her row and has qualified the referral, not yet committed
    load_programme(pg_engine, GROWTH)
    upsert_member(pg_engine, P, "rina", {"email": "Rina.Tan+shop@gmail.com"}, ENROL)
    guarded = refer(pg_engine, "rina2", {"email": "rinatan@googlemail.com"})
    assert guarded["status"] == "review"
    ref, m = tr.referrals, t.members
    blocker = pg_engine.connect()
    blocker.begin()
    blocker.execute(sa.select(m.c.pk).where(m.c.id == "rina2").with_for_update())
    blocker.execute(ref.update().where(ref.c.id == guarded["id"]).values(
        order_id="o-1", qualifies_at=at("2027-03-17T10:00:00+08:00")))
    with ThreadPoolExecutor(1) as pool:
        # When an admin approves it meanwhile
        approved = pool.submit(referrals.decide, pg_engine, P, guarded["id"], "approve",
                               {"reason": "a sister"}, "ok-1", DAY_2)
        wait_for_lock_waiters(pg_engine)
        blocker.commit()
        blocker.close()
        # Then the approval decides on the referral as the purchase left it: qualified,
        # to pay on 17 March (it read no order, and left it linked for good)
        found = approved.result(timeout=30)
    assert (found["status"], found["order_id"], found["qualifies_at"]) == (
        "qualified", "o-1", "2027-03-17T02:00:00+00:00")
    assert_journal_ok(pg_engine)

def test_caps_per_referrer_and_per_ip_send_referrals_to_review(cafe: sa.Engine) -> None:
    assert refer(cafe, "m1", ip="10.0.0.1")["status"] == "linked"
    assert refer(cafe, "m2", ip="10.0.0.1")["status"] == "linked"
    third = refer(cafe, "m3", ip="10.0.0.1")
    assert third["status"] == "review"
    assert third["guards"] == [
        "referrer cap: 2 referral(s) this month already (at most 2)",
        "IP cap: 2 referral(s) from this IP today already (at most 2)"]


def test_refusals_change_nothing(cafe: sa.Engine) -> None:
    upsert_member(cafe, P, "adi", {}, DAY_2)
    code = referrals.code_for(cafe, P, "rina", DAY_2)["code"]
    with pytest.raises(r.UnknownReferralCode):
        referrals.link(cafe, P, {"code": "ZZZZZZZZ", "member": "adi"}, "k-1", DAY_2)
    with pytest.raises(r.SelfReferral):
        referrals.link(cafe, P, {"code": code, "member": "rina"}, "k-2", DAY_2)
    with pytest.raises(UnknownMember):
        referrals.link(cafe, P, {"code": code, "member": "nobody"}, "k-3", DAY_2)
    purchase(cafe, "adi", "o-1", "5.00", "2027-03-03T10:00:00+08:00")
    with pytest.raises(r.NotANewMember):
        referrals.link(cafe, P, {"code": code, "member": "adi"}, "k-4", DAY_2)
    assert referrals.listing(cafe, P) == []
    refer(cafe, "bo")
    with pytest.raises(r.AlreadyReferred):
        referrals.link(cafe, P, {"code": code, "member": "bo"}, "k-5", DAY_2)
    assert len(referrals.listing(cafe, P)) == 1
    assert_journal_ok(cafe)


def referee_voucher_paid(engine: sa.Engine) -> dict[str, Any]:
    """growth-cafe paying the referee a free latte (for 30 days), and adi's referral paid
    on 18 March 2027: the link."""
    document = copy.deepcopy(GROWTH)
    document["referrals"]["referee"] = {"reward": "free-latte"}
    load_programme(engine, document)
    upsert_member(engine, P, "rina", {}, ENROL)
    linked = refer(engine, "adi")
    purchase(engine, "adi", "o-1", "25.00", "2027-03-04T10:00:00+08:00")
    run_due(engine, at("2027-03-18T10:00:00+08:00"))
    return linked


def test_a_voucher_reward_for_the_referee_is_told_as_a_voucher_issued(engine: sa.Engine) -> None:
    # Given growth-cafe paying the referee a free latte instead of points, when the
    # referral is paid
    linked = referee_voucher_paid(engine)

    # Then rina hears of the referral paid, and adi of his voucher, with its code
    with engine.connect() as conn:
        code, expires_at = conn.execute(sa.text(
            "SELECT code, expires_at FROM vouchers WHERE reward_id = 'free-latte'")).one()
    rid = f"referral:{linked['id']}"
    assert [(kind, member, key, data.get("points"))
            for kind, member, key, data in referral_messages(engine)] == [
        ("referral.paid", "rina", f"referral.paid:{linked['id']}", 300)]
    with engine.connect() as conn:
        (key, data), = conn.execute(sa.text(
            "SELECT key, data FROM outbox WHERE type = 'voucher.issued'")).all()
    assert key == f"voucher.issued:{code}"
    assert json.loads(data) == {"program": P, "member": "adi", "ref": rid, "code": code,
                                "reward": "free-latte", "reward_name": "Free latte",
                                "expires_at": "2027-04-17T10:00:00+08:00"}  # 30 days
    assert available(engine, "adi") == 50 + 25  # welcome and base: no referral points
    assert_journal_ok(engine)


def test_a_referees_voucher_not_used_yet_is_voided_and_told_when_the_referral_is_clawed_back(
        engine: sa.Engine) -> None:
    # Given growth-cafe paying the referee a free latte, and adi's referral paid
    linked = referee_voucher_paid(engine)

    # When 10.00 of the purchase is refunded (15.00 left, below the minimum), and again
    refund(engine, "adi", "o-1", "10.00", "2027-03-20T10:00:00+08:00", "r-1")
    refund(engine, "adi", "o-1", "10.00", "2027-03-20T10:00:00+08:00", "r-1")

    # Then his voucher is used up by the clawback and he is told so once, at the refund's
    # application; rina's 300 go back as before
    rid = f"referral:{linked['id']}"
    with engine.connect() as conn:
        code, used_ref = conn.execute(sa.text(
            "SELECT code, used_ref FROM vouchers WHERE reward_id = 'free-latte'")).one()
        o = tables_outbox.outbox
        rows = conn.execute(sa.select(o.c.key, o.c.member_id, o.c.data, o.c.occurred_at)
                            .where(o.c.type == "voucher.voided")).all()
    assert used_ref == "referral clawback"
    assert [(key, member, json.loads(data), told_at) for key, member, data, told_at in rows] == [
        (f"voucher.voided:{code}", "adi", {
            "program": P, "member": "adi", "ref": rid, "code": code, "reward": "free-latte",
            "voided_at": "2027-03-20T10:00:00+08:00"}, DAY_2())]
    assert [(kind, member) for kind, member, *_ in referral_messages(engine)] == [
        ("referral.paid", "rina"), ("points.clawed_back", "rina")]
    assert available(engine, "rina") == 50
    assert_journal_ok(engine)



def test_a_payout_reversed_by_an_admin_voids_the_referees_voucher_not_used_yet(
        engine: sa.Engine) -> None:
    # Given growth-cafe paying the referee a free latte, and adi's referral paid
    linked = referee_voucher_paid(engine)
    rid = f"referral:{linked['id']}"

    # When an admin reverses the payout (rina's 300), then the purchase is refunded below
    # the minimum
    reversals.reverse(engine, P, {"ref": rid, "reason": "a paid referral ring"}, "rv-1",
                      fixed_clock("2027-03-19T10:00:00+08:00"))
    refund(engine, "adi", "o-1", "10.00", "2027-03-20T10:00:00+08:00", "r-1")

    # Then adi's latte is voided by the reversal and he is told so once; rina's 300 went
    # back once, by the reversal
    with engine.connect() as conn:
        code, used_ref = conn.execute(sa.text(
            "SELECT code, used_ref FROM vouchers WHERE reward_id = 'free-latte'")).one()
        o = tables_outbox.outbox
        voided = conn.execute(sa.select(o.c.member_id, o.c.data)
                              .where(o.c.type == "voucher.voided")).all()
    assert used_ref == "referral clawback"
    assert [(member, json.loads(data)) for member, data in voided] == [("adi", {
        "program": P, "member": "adi", "ref": rid, "code": code, "reward": "free-latte",
        "voided_at": "2027-03-19T10:00:00+08:00"})]
    assert referrals.get(engine, P, linked["id"])["status"] == "clawed_back"
    assert available(engine, "rina") == 50
    assert_journal_ok(engine)

def test_a_referees_voucher_that_expired_unused_is_not_told_as_voided(engine: sa.Engine) -> None:
    # Given adi's free latte paid on 18 March, which expired unused on 17 April
    referee_voucher_paid(engine)

    # When the purchase is refunded below the minimum on 20 April
    refund(engine, "adi", "o-1", "10.00", "2027-04-20T10:00:00+08:00", "r-1")

    # Then the voucher is closed by the clawback, but nothing is taken from adi: no message
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT used_ref FROM vouchers WHERE reward_id = "
                                    "'free-latte'")).scalar_one() == "referral clawback"
        assert conn.execute(sa.text("SELECT count(*) FROM outbox WHERE type = "
                                    "'voucher.voided'")).scalar_one() == 0
    assert available(engine, "rina") == 50
    assert_journal_ok(engine)


def test_a_referral_clawed_back_by_a_refund_at_a_partner_settles_only_the_purchase(
        engine: sa.Engine) -> None:
    # Given growth-cafe as a coalition (RM 0.01 a point), adi's qualifying RM 25.00 at roti
    # (25 points, roti charged RM 0.25) and his referral paid by run-due (150; no partner)
    document = copy.deepcopy(GROWTH)
    document["partners"] = {"point_value": "0.01", "merchants": [
        {"id": "kopi", "name": "Kopi"}, {"id": "roti", "name": "Roti"}]}
    load_programme(engine, document)
    upsert_member(engine, P, "rina", {}, ENROL)
    refer(engine, "adi")
    ingest_event(engine, P, {"id": "e-o-1", "type": "purchase", "member": "adi",
                             "occurred_at": "2027-03-04T10:00:00+08:00", "order_id": "o-1",
                             "amount": "25.00", "partner": "roti"}, DAY_2)
    run_due(engine, at("2027-03-18T10:00:00+08:00"))

    # When 10.00 is refunded (15.00 left: below the minimum, the referral is clawed back)
    refund(engine, "adi", "o-1", "10.00", "2027-03-20T10:00:00+08:00", "r-1")

    # Then roti gets back the value of the 10 purchase points only (it was credited for
    # the referral's 150 too, which it never paid for)
    s = settlement_postings
    with engine.connect() as conn:
        rows = [tuple(row) for row in conn.execute(
            sa.select(s.c.ref, s.c.debit, s.c.credit, s.c.points, s.c.amount_e4)
            .order_by(s.c.id))]
    assert rows == [("e-o-1", "partner:roti", "coalition", 25, 2_500),
                    ("r-1", "coalition", "partner:roti", 10, 1_000)]
    assert_journal_ok(engine)

