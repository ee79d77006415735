"""Coupon uses racing on real PostgreSQL, threads started together by a barrier, each with
its own connection: one member's two tills using two different first-purchase coupons on
two orders, and two members' tills using the same coupon on one order. Exact outcomes,
round after round."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from setia.adapters.db import tables_coupons as tc
from setia.domain import coupons as c
from setia.service import coupons, till
from setia.service.members import get_member, upsert_member
from tests.conftest import assert_journal_ok, fixed_clock, load_programme
from tests.growth_programme import GROWTH
from tests.integration.test_concurrency import all_at_once, only_expected_errors
from tests.integration.test_coupons import FIRSTCAKE

pytestmark = pytest.mark.postgres

P = "growth-cafe"
CLOCK = fixed_clock("2027-02-10T12:00:00+08:00")
ROUNDS = 30
OPEN5 = {"id": "open5", "code": "OPEN5", "discount": {"amount_off": "5.00"}}  # no limits
COFFEE = [{"sku": "LATTE", "category": "coffee", "amount": "13.00"}]


def uses(engine: sa.Engine) -> list[tuple[Any, ...]]:
    u = tc.coupon_uses
    with engine.connect() as conn:
        return sorted(tuple(row) for row in conn.execute(
            sa.select(u.c.member_id, u.c.order_id, u.c.coupon_id, u.c.code, u.c.discount)
            .where(u.c.released_at.is_(None))))


def test_one_members_two_tills_put_first_purchase_coupons_on_one_order(
        pg_engine: sa.Engine) -> None:
    # Given 15 members without a purchase, and two first-purchase coupons: FIRSTCUP (RM 5.00
    # off coffee) and FIRSTCAKE (RM 3.00 off)
    load_programme(pg_engine, {**GROWTH, "coupons": [*GROWTH["coupons"], FIRSTCAKE]})
    members = [f"m{i:02d}" for i in range(15)]
    for member in members:
        upsert_member(pg_engine, P, member, {}, CLOCK)

    # When each member's two tills use one each, on two orders, all at once
    def use(member: str, code: str, order: str) -> dict[str, Any]:
        body = {"code": code, "member": member, "amount": "13.00", "lines": COFFEE,
                "order_id": order}
        return coupons.redeem(pg_engine, P, body, f"k-{order}", CLOCK)

    tasks = [(lambda m=m, code=code, n=n: use(m, code, f"{m}-o{n}"))
             for m in members for n, code in ((1, "FIRSTCUP"), (2, "FIRSTCAKE"))]
    outcomes = all_at_once(tasks, workers=len(tasks))

    # Then each member has exactly one first-purchase coupon on one order; the other till
    # is refused (first purchase only) and leaves nothing
    only_expected_errors(outcomes, c.CouponFirstPurchaseOnly)
    assert Counter(kind for kind, _ in outcomes) == {"ok": 15, "error": 15}
    won = {value["member"]: value for kind, value in outcomes if kind == "ok"}
    assert sorted(won) == members
    assert uses(pg_engine) == [
        (m, won[m]["order_id"], won[m]["coupon"], won[m]["code"],
         Decimal("5.00") if won[m]["coupon"] == "first-coffee" else Decimal("3.00"))
        for m in members]
    assert {(won[m]["coupon"], won[m]["order_id"][-2:]) for m in members} <= {
        ("first-coffee", "o1"), ("first-cake", "o2")}
    assert_journal_ok(pg_engine)


@pytest.mark.parametrize("codes", ["batch", "public"])
def test_two_members_tills_using_one_coupon_on_one_order_apply_it_once(
        pg_engine: sa.Engine, codes: str) -> None:
    # Given ana and ben, and a coupon without limits: cny (a batch of one-use codes, each
    # till its own) or OPEN5 (a public code)
    load_programme(pg_engine, {**GROWTH, "coupons": [*GROWTH["coupons"], OPEN5]})
    for member in ("ana", "ben"):
        upsert_member(pg_engine, P, member, {}, CLOCK)
    if codes == "batch":
        batch = coupons.generate_batch(pg_engine, P, "cny", {"count": 2 * ROUNDS}, "b", CLOCK)
        text = "".join(coupons.export_batch(pg_engine, P, batch["id"]))
        generated = [line.split(",")[0] for line in text.splitlines()[1:]]
        pairs = [(generated[2 * n], generated[2 * n + 1]) for n in range(ROUNDS)]
        coupon, discount = "cny", Decimal("8.00")
    else:
        pairs = [("OPEN5", "OPEN5")] * ROUNDS
        coupon, discount = "open5", Decimal("5.00")

    applied_twice: list[int] = []
    for n, (first, second) in enumerate(pairs):
        # When both members' tills use the coupon on the same order at once
        order = f"o-{n}"
        outcomes = all_at_once([
            (lambda m=m, code=code, order=order, n=n: coupons.redeem(
                pg_engine, P, {"code": code, "member": m, "amount": "40.00",
                               "order_id": order}, f"k-{m}-{n}", CLOCK))
            for m, code in (("ana", first), ("ben", second))], workers=2)

        # Then it is applied once; the other till is told it is already applied
        only_expected_errors(outcomes, c.CouponAlreadyApplied)
        if Counter(kind for kind, _ in outcomes) != {"ok": 1, "error": 1}:
            applied_twice.append(n)
    assert applied_twice == [], f"rounds where the coupon went on the order twice: " \
                                f"{applied_twice}"
    standing = uses(pg_engine)
    assert sorted((order, cp, d) for _, order, cp, _, d in standing) == sorted(
        (f"o-{n}", coupon, discount) for n in range(ROUNDS))
    if codes == "batch":
        # each refused till's code is still unused
        used = {code for _, _, _, code, _ in standing}
        with pg_engine.connect() as conn:
            marked = set(conn.execute(sa.select(tc.coupon_codes.c.code).where(
                tc.coupon_codes.c.uses == 1)).scalars())
        assert marked == used and len(used) == ROUNDS
    assert_journal_ok(pg_engine)


def test_two_members_tills_selling_one_order_with_a_coupon_record_it_once(
        pg_engine: sa.Engine) -> None:
    # Given ana and ben, OPEN5 (RM 5.00 off, no limits), and duplicate receipts screened
    # (so the till's purchase takes the receipt lock after the order's)
    load_programme(pg_engine, {**GROWTH, "coupons": [*GROWTH["coupons"], OPEN5],
                               "fraud": {"duplicate_receipts": {"window_minutes": 10}}})
    for member in ("ana", "ben"):
        upsert_member(pg_engine, P, member, {}, CLOCK)
    rounds = 10
    for n in range(rounds):
        # When both members' tills sell order o-n with OPEN5 at once (RM 40.00 at kl-01,
        # an hour after the last round's)
        def sell(member: str, n: int = n) -> dict[str, Any]:
            event = {"id": f"e-{member}-{n}", "type": "purchase", "member": member,
                     "order_id": f"o-{n}", "amount": "40.00", "store": "kl-01",
                     "occurred_at": f"2027-02-10T{10 + n}:00:00+08:00"}
            return till.purchase_with_coupon(pg_engine, P, event, "OPEN5", f"k-{member}-{n}",
                                             CLOCK)

        outcomes = all_at_once([lambda m=m: sell(m) for m in ("ana", "ben")], workers=2)

        # Then one sale is recorded with its discount; the other is refused, changing nothing
        only_expected_errors(outcomes, c.CouponAlreadyApplied)
        assert sorted(kind for kind, _ in outcomes) == ["error", "ok"]
        (sale,) = [value for kind, value in outcomes if kind == "ok"]
        assert (sale["paid"], sale["purchase"]["points"]) == ("35.00", 35)
        assert "review" not in sale["purchase"]
    standing = uses(pg_engine)
    assert sorted(order for _, order, _, _, _ in standing) == sorted(
        f"o-{n}" for n in range(rounds))
    with pg_engine.connect() as conn:
        orders = conn.execute(sa.text(
            "SELECT o.order_id, m.id FROM orders o JOIN members m ON m.pk = o.member_pk"
        )).all()
    assert sorted(orders) == sorted((order, member) for member, order, _, _, _ in standing)
    earned = {m: 50 + 35 * sum(1 for who, _, _, _, _ in standing if who == m)
              for m in ("ana", "ben")}
    for member in ("ana", "ben"):
        assert get_member(pg_engine, P, member, CLOCK)["balances"] == {
            "available": earned[member], "pending": 0, "reserved": 0}
    assert_journal_ok(pg_engine)
