"""Coupons on the growth-cafe programme (tests/growth_programme.py): validate, redeem,
rules, batches of unique codes, release on refund. Nothing changes after a refusal."""

from __future__ import annotations

import copy
import csv
import io
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from setia.adapters.db import tables_coupons as tc
from setia.domain import coupons as c
from setia.domain.errors import (
    CurrencyMismatch,
    IdempotencyConflict,
    InvalidAmount,
    InvalidField,
    UnknownMember,
)
from setia.service import coupons
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from tests.conftest import assert_journal_ok, fixed_clock, load_programme
from tests.growth_programme import GROWTH

P = "growth-cafe"
ENROL = fixed_clock("2027-02-01T09:00:00+08:00")
NOW = fixed_clock("2027-02-10T12:00:00+08:00")
LATER = fixed_clock("2027-03-20T12:00:00+08:00")


@pytest.fixture
def cafe(engine: sa.Engine) -> sa.Engine:
    load_programme(engine, GROWTH)
    for member in ("ana", "ben", "cai"):
        upsert_member(engine, P, member, {}, ENROL)
    return engine


def basket(code: str, member: str = "ana", amount: str = "50.00", **more: Any) -> dict[str, Any]:
    return {"code": code, "member": member, "amount": amount, **more}


def uses_table(engine: sa.Engine) -> list[tuple[Any, ...]]:
    u = tc.coupon_uses
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(
            sa.select(u.c.coupon_id, u.c.code, u.c.member_id, u.c.order_id, u.c.discount,
                      u.c.released_at.is_not(None)).order_by(u.c.used_at, u.c.id))]


def counter(engine: sa.Engine, coupon_id: str) -> int | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(tc.coupon_counters.c.uses).where(
            tc.coupon_counters.c.coupon_id == coupon_id)).scalar_one_or_none()


def test_validate_answers_the_discount_and_uses_nothing(cafe: sa.Engine) -> None:
    # 10% of 50.00 = 5.00; of 200.00 it would be 20.00 but max_off caps it at 15.00
    assert coupons.validate(cafe, P, basket("welcome10"), NOW) == {
        "valid": True, "coupon": "welcome10", "code": "WELCOME10", "member": "ana",
        "discount": "5.00", "currency": "MYR"}
    assert coupons.validate(cafe, P, basket(" welcome-10 ", amount="200.00"), NOW)[
        "discount"] == "15.00"
    assert uses_table(cafe) == []
    assert counter(cafe, "welcome10") is None
    assert_journal_ok(cafe)


def test_redeem_records_one_use_and_a_second_per_member_use_is_refused(cafe: sa.Engine) -> None:
    used = coupons.redeem(cafe, P, basket("WELCOME10", order_id="o-1", amount="33.35"),
                          "k-1", NOW)
    # 10% of 33.35 = 3.335, rounded half up to 3.34
    assert used["discount"] == "3.34"
    assert (used["coupon"], used["member"], used["order_id"], used["released_at"]) == (
        "welcome10", "ana", "o-1", None)
    assert uses_table(cafe) == [("welcome10", "WELCOME10", "ana", "o-1",
                                 Decimal("3.34"), False)]
    assert counter(cafe, "welcome10") == 1
    # the same key answers the same use again
    assert coupons.redeem(cafe, P, basket("WELCOME10", order_id="o-1", amount="33.35"),
                          "k-1", NOW) == used
    with pytest.raises(IdempotencyConflict):
        coupons.redeem(cafe, P, basket("WELCOME10", order_id="o-9"), "k-1", NOW)
    with pytest.raises(c.CouponMemberLimit) as refused:
        coupons.redeem(cafe, P, basket("WELCOME10", order_id="o-2"), "k-2", NOW)
    assert refused.value.field == "member"
    assert len(uses_table(cafe)) == 1
    assert counter(cafe, "welcome10") == 1
    assert_journal_ok(cafe)


def test_total_uses_run_out(cafe: sa.Engine) -> None:
    upsert_member(cafe, P, "dan", {}, ENROL)
    for i, member in enumerate(("ana", "ben", "cai")):
        coupons.redeem(cafe, P, basket("WELCOME10", member, order_id=f"o-{i}"), f"k-{i}", NOW)
    with pytest.raises(c.CouponExhausted):
        coupons.validate(cafe, P, basket("WELCOME10", "dan"), NOW)
    with pytest.raises(c.CouponExhausted):
        coupons.redeem(cafe, P, basket("WELCOME10", "dan", order_id="o-9"), "k-9", NOW)
    assert counter(cafe, "welcome10") == 3
    assert len(uses_table(cafe)) == 3


def with_welcome_cap(max_uses: int | None) -> dict[str, Any]:
    """The growth cafe with WELCOME10 capped at ``max_uses`` in all (None: no cap) and no
    limit per member."""
    document = copy.deepcopy(GROWTH)
    (welcome,) = [cp for cp in document["coupons"] if cp["id"] == "welcome10"]
    welcome.pop("per_member")
    welcome.pop("max_uses")
    if max_uses is not None:
        welcome["max_uses"] = max_uses
    return document


def test_a_cap_added_or_taken_off_later_counts_every_use_standing(cafe: sa.Engine) -> None:
    def redeem(n: int) -> dict[str, Any]:
        return coupons.redeem(cafe, P, basket("WELCOME10", order_id=f"o-{n}"), f"k-{n}", NOW)

    def exhausted(n: int) -> None:
        with pytest.raises(c.CouponExhausted):
            coupons.validate(cafe, P, basket("WELCOME10"), NOW)
        with pytest.raises(c.CouponExhausted):
            redeem(n)

    def release(n: int) -> None:
        coupons.release(cafe, P, {"order_id": f"o-{n}"}, f"r-{n}", NOW)

    # Given WELCOME10 with no cap, used on orders 1 to 3
    load_programme(cafe, with_welcome_cap(None))
    for n in (1, 2, 3):
        redeem(n)
    assert counter(cafe, "welcome10") is None

    # When a version caps it at 4 uses in all: one more use is left, not 4
    load_programme(cafe, with_welcome_cap(4))
    redeem(4)
    assert counter(cafe, "welcome10") == 4
    exhausted(5)

    # and when the cap is taken off, a use made then still counts when it comes back
    load_programme(cafe, with_welcome_cap(None))
    redeem(5)
    release(1)
    release(2)
    assert counter(cafe, "welcome10") is None  # dropped with the cap
    load_programme(cafe, with_welcome_cap(4))
    redeem(6)
    exhausted(7)

    # Then the counter is the number of uses standing, each release giving one back
    assert counter(cafe, "welcome10") == 4
    assert sorted(row[3] for row in uses_table(cafe) if not row[5]) == ["o-3", "o-4", "o-5", "o-6"]
    assert_journal_ok(cafe)


@pytest.mark.parametrize(("body", "clock", "error", "field"), [
    (basket("NOPE"), NOW, c.UnknownCoupon, "code"),
    (basket("WELCOME10", amount="19.99"), NOW, c.CouponMinSpend, "amount"),
    (basket("WELCOME10", member="zed"), NOW, UnknownMember, "member"),
    (basket("WELCOME10", amount="-1"), NOW, InvalidAmount, "amount"),
    (basket("WELCOME10", amount="1.001"), NOW, InvalidAmount, "amount"),
    (basket("WELCOME10", currency="SGD"), NOW, CurrencyMismatch, "currency"),
    (basket("WELCOME10", lines=[{"sku": "A", "amount": "60.00"}]), NOW, InvalidField, "lines"),
    (basket("FIRSTCUP", lines=[{"sku": "CAKE", "category": "pastry", "amount": "9.00"}]), NOW,
     c.CouponNoMatchingLines, "lines"),
    (basket("FIRSTCUP", lines=[{"sku": "LATTE", "category": "coffee", "amount": "9.00"}]),
     LATER, c.CouponNewMembersOnly, "member"),
    ({"code": "WELCOME10", "member": "ana"}, NOW, InvalidField, "amount"),
    ({"code": "WELCOME10", "member": "ana", "amount": "5", "extra": 1}, NOW, InvalidField,
     "extra"),
])
def test_refusals_name_the_field_and_change_nothing(cafe: sa.Engine, body: dict[str, Any],
                                                    clock: Any, error: type[Exception],
                                                    field: str) -> None:
    with pytest.raises(error) as refused:
        coupons.redeem(cafe, P, {**body, "order_id": "o-x"}, "k-x", clock)
    assert getattr(refused.value, "field", None) == field
    with pytest.raises(error):
        coupons.validate(cafe, P, body, clock)
    assert uses_table(cafe) == []
    assert counter(cafe, "welcome10") is None
    assert_journal_ok(cafe)


def test_first_purchase_only_and_categories(cafe: sa.Engine) -> None:
    lines = [{"sku": "LATTE", "category": "coffee", "amount": "4.00"},
             {"sku": "CAKE", "category": "pastry", "amount": "9.00"}]
    # RM 5.00 off, but never more than the coffee lines it applies to: 4.00
    assert coupons.validate(cafe, P, basket("firstcup", amount="13.00", lines=lines),
                            NOW)["discount"] == "4.00"
    ingest_event(cafe, P, {"id": "e-1", "type": "purchase", "member": "ana",
                           "occurred_at": "2027-02-05T10:00:00+08:00", "order_id": "p-1",
                           "amount": "10.00"}, NOW)
    with pytest.raises(c.CouponFirstPurchaseOnly):
        coupons.redeem(cafe, P, basket("FIRSTCUP", amount="13.00", lines=lines,
                                       order_id="o-1"), "k-1", NOW)
    assert uses_table(cafe) == []
    assert_journal_ok(cafe)


def test_a_first_purchase_coupon_goes_on_one_order_before_the_purchase_is_recorded(
        cafe: sa.Engine) -> None:
    # Given ben, with no purchase yet, and FIRSTCUP (no per-member limit) on his order o-1
    lines = [{"sku": "LATTE", "category": "coffee", "amount": "13.00"}]
    coupons.redeem(cafe, P, basket("FIRSTCUP", "ben", "13.00", lines=lines, order_id="o-1"),
                   "k-1", NOW)
    before = uses_table(cafe)

    # When the till applies it to a second order before the first purchase is sent
    with pytest.raises(c.CouponFirstPurchaseOnly) as caught:
        coupons.redeem(cafe, P, basket("FIRSTCUP", "ben", "13.00", lines=lines,
                                       order_id="o-2"), "k-2", NOW)

    # Then it is refused naming the member, and nothing changed
    assert caught.value.field == "member"
    assert before == uses_table(cafe) == [
        ("first-coffee", "FIRSTCUP", "ben", "o-1", Decimal("5.00"), False)]
    assert_journal_ok(cafe)


def test_a_batch_of_unique_codes_each_used_once_and_exported_as_csv(cafe: sa.Engine) -> None:
    seen: list[int] = []
    batch = coupons.generate_batch(cafe, P, "cny", {"count": 2500, "prefix": "cny"}, "b-1",
                                   NOW, progress=seen.append)
    assert (batch["coupon"], batch["count"], batch["prefix"]) == ("cny", 2500, "CNY")
    assert seen == [2500]
    text = "".join(coupons.export_batch(cafe, P, batch["id"]))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2500
    codes = [row["code"] for row in rows]
    assert len(set(codes)) == 2500
    assert all(len(code) == 13 and code.startswith("CNY") for code in codes)
    assert {row["status"] for row in rows} == {"unused"}
    first = codes[0]
    used = coupons.redeem(cafe, P, basket(first.lower(), order_id="o-1"), "k-1", NOW)
    assert (used["coupon"], used["code"], used["discount"]) == ("cny", first, "8.00")
    with pytest.raises(c.CouponCodeUsed):
        coupons.redeem(cafe, P, basket(first, "ben", order_id="o-2"), "k-2", NOW)
    with pytest.raises(c.CouponCodeUsed):
        coupons.validate(cafe, P, basket(first, "ben"), NOW)
    again = list(csv.DictReader(io.StringIO("".join(coupons.export_batch(cafe, P, batch["id"])))))
    assert [row["status"] for row in again if row["code"] == first] == ["used"]
    # outside the coupon's window (until 2027-02-28) a code is refused
    with pytest.raises(c.CouponNotActive):
        coupons.validate(cafe, P, basket(codes[1], "ben"), LATER)
    # a coupon with a public code has no batches; a bad count is refused
    with pytest.raises(InvalidField):
        coupons.generate_batch(cafe, P, "welcome10", {"count": 5}, "b-2", NOW)
    with pytest.raises(InvalidField):
        coupons.generate_batch(cafe, P, "cny", {"count": 0}, "b-3", NOW)
    with pytest.raises(c.UnknownCoupon):
        coupons.generate_batch(cafe, P, "nope", {"count": 5}, "b-4", NOW)
    with pytest.raises(c.UnknownCouponBatch):
        coupons.export_batch(cafe, P, "cpb_nope")
    with cafe.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tc.coupon_codes)
                            ).scalar_one() == 2500


def test_a_full_refund_gives_the_use_back_and_a_partial_one_does_not(cafe: sa.Engine) -> None:
    purchase = {"type": "purchase", "member": "ana", "occurred_at": "2027-02-10T12:00:00+08:00",
                "order_id": "o-1", "amount": "50.00"}
    ingest_event(cafe, P, {"id": "e-1", **purchase}, NOW)
    coupons.redeem(cafe, P, basket("WELCOME10", order_id="o-1"), "k-1", NOW)
    refund = {"type": "refund", "member": "ana", "order_id": "o-1",
              "occurred_at": "2027-02-11T12:00:00+08:00"}
    ingest_event(cafe, P, {"id": "r-1", **refund, "amount": "20.00"}, NOW)
    assert uses_table(cafe)[0][-1] is False
    assert counter(cafe, "welcome10") == 1
    ingest_event(cafe, P, {"id": "r-2", **refund, "amount": "30.00"}, NOW)
    assert uses_table(cafe)[0][-1] is True
    assert counter(cafe, "welcome10") == 0
    # the use is back: the member may use WELCOME10 again
    assert coupons.redeem(cafe, P, basket("WELCOME10", order_id="o-2"), "k-2", NOW)[
        "discount"] == "5.00"
    assert_journal_ok(cafe)


def test_a_batch_code_typed_with_o_for_zero_is_released_as_it_is_redeemed(
        cafe: sa.Engine) -> None:
    # Given a batch code of zeros after its prefix (CNY0000000000) redeemed on order o-1
    coupons.generate_batch(cafe, P, "cny", {"count": 1, "prefix": "cny"}, "b-1", NOW,
                           random_bytes=bytes)
    coupons.redeem(cafe, P, basket("cny-OOOO-OOOO-OO", order_id="o-1"), "k-1", NOW)

    # When the till releases it, typed the same way
    released = coupons.release(cafe, P, {"order_id": "o-1", "code": "cny-OOOO-OOOO-OO"},
                               "rel-1", NOW)

    # Then the use is given back (the code was not found: unknown-coupon-use), and retries
    # of both with the code typed another way answer the same (idempotency-conflict)
    assert [u["code"] for u in released["released"]] == ["CNY0000000000"]
    assert coupons.release(cafe, P, {"order_id": "o-1", "code": "CNYOOOO OOOOOO"}, "rel-1",
                           NOW) == released
    assert coupons.redeem(cafe, P, basket("CNYOOOOOOOOOO", order_id="o-1"), "k-1",
                          NOW)["code"] == "CNY0000000000"
    assert uses_table(cafe) == [("cny", "CNY0000000000", "ana", "o-1", Decimal("8.00"), True)]
    assert_journal_ok(cafe)


def test_release_by_order(cafe: sa.Engine) -> None:
    coupons.redeem(cafe, P, basket("WELCOME10", order_id="o-1"), "k-1", NOW)
    with pytest.raises(c.CouponAlreadyApplied):
        coupons.redeem(cafe, P, basket("WELCOME10", "ben", order_id="o-1"), "k-2", NOW)
    released = coupons.release(cafe, P, {"order_id": "o-1"}, "rel-1", NOW)
    assert [u["code"] for u in released["released"]] == ["WELCOME10"]
    assert released["released"][0]["released_at"] == "2027-02-10T04:00:00+00:00"
    assert coupons.release(cafe, P, {"order_id": "o-1"}, "rel-1", NOW) == released
    with pytest.raises(c.UnknownCouponUse):
        coupons.release(cafe, P, {"order_id": "o-1"}, "rel-2", NOW)
    assert counter(cafe, "welcome10") == 0
    assert coupons.uses_of_order(cafe, P, "o-1")[0]["released_at"] is not None


FIRSTCAKE = {"id": "first-cake", "code": "FIRSTCAKE", "discount": {"amount_off": "3.00"},
             "first_purchase": True}


def with_two_first_purchase_coupons(engine: sa.Engine) -> None:
    """growth-cafe again, with a second first-purchase coupon: FIRSTCAKE, RM 3.00 off."""
    load_programme(engine, {**GROWTH, "coupons": [*GROWTH["coupons"], FIRSTCAKE]})


def test_two_different_first_purchase_coupons_go_on_one_order_only(cafe: sa.Engine) -> None:
    # Given ben, with no purchase yet, and FIRSTCUP on his order o-1
    with_two_first_purchase_coupons(cafe)
    lines = [{"sku": "LATTE", "category": "coffee", "amount": "13.00"}]
    coupons.redeem(cafe, P, basket("FIRSTCUP", "ben", "13.00", lines=lines, order_id="o-1"),
                   "k-1", NOW)
    before = uses_table(cafe)

    # When the till uses the other first-purchase coupon on a second order, or checks it
    # without naming an order
    with pytest.raises(c.CouponFirstPurchaseOnly) as caught:
        coupons.redeem(cafe, P, basket("FIRSTCAKE", "ben", "13.00", order_id="o-2"), "k-2",
                       NOW)
    with pytest.raises(c.CouponFirstPurchaseOnly):
        coupons.validate(cafe, P, basket("FIRSTCAKE", "ben", "13.00"), NOW)

    # Then both are refused naming the member and the order that has one, nothing changed
    assert caught.value.field == "member"
    assert str(caught.value) == ("coupon first-cake is for a first purchase, and the member "
                                 "has first-purchase coupon first-coffee on order o-1 already")
    assert before == uses_table(cafe) == [
        ("first-coffee", "FIRSTCUP", "ben", "o-1", Decimal("5.00"), False)]
    assert counter(cafe, "first-cake") is None
    assert_journal_ok(cafe)


def test_a_second_first_purchase_coupon_may_go_on_the_same_order_or_after_a_release(
        cafe: sa.Engine) -> None:
    # Given ben's FIRSTCUP on order o-1, and ana's on her order o-9
    with_two_first_purchase_coupons(cafe)
    lines = [{"sku": "LATTE", "category": "coffee", "amount": "13.00"}]
    coupons.redeem(cafe, P, basket("FIRSTCUP", "ben", "13.00", lines=lines, order_id="o-1"),
                   "k-1", NOW)
    coupons.redeem(cafe, P, basket("FIRSTCUP", "ana", "13.00", lines=lines, order_id="o-9"),
                   "k-9", NOW)

    # When FIRSTCAKE is checked and used for ben's same order o-1 (that order is his first
    # purchase), and, once ana's o-9 is given back, used for ana's order o-10
    valid = coupons.validate(cafe, P, basket("FIRSTCAKE", "ben", "13.00", order_id="o-1"),
                             NOW)
    same = coupons.redeem(cafe, P, basket("FIRSTCAKE", "ben", "13.00", order_id="o-1"),
                          "k-2", NOW)
    coupons.release(cafe, P, {"order_id": "o-9"}, "rel-9", NOW)
    after_release = coupons.redeem(cafe, P, basket("FIRSTCAKE", "ana", "13.00",
                                                   order_id="o-10"), "k-10", NOW)

    # Then all are allowed
    assert (valid["coupon"], valid["discount"]) == ("first-cake", "3.00")
    assert (same["order_id"], same["discount"]) == ("o-1", "3.00")
    assert (after_release["order_id"], after_release["discount"]) == ("o-10", "3.00")
    assert sorted(uses_table(cafe)) == [  # (all used at the same time: sorted here)
        ("first-cake", "FIRSTCAKE", "ana", "o-10", Decimal("3.00"), False),
        ("first-cake", "FIRSTCAKE", "ben", "o-1", Decimal("3.00"), False),
        ("first-coffee", "FIRSTCUP", "ana", "o-9", Decimal("5.00"), True),
        ("first-coffee", "FIRSTCUP", "ben", "o-1", Decimal("5.00"), False)]
    assert_journal_ok(cafe)
