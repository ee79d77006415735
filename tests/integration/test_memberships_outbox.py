"""Paid memberships leave their outbox messages: the tier a purchase, a cancel or run-due
moves (``tier.changed``) and every voucher issued (``voucher.issued``), in the transaction
that made them; a replayed command or a re-run writes nothing again."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from setia.service import memberships
from setia.service.run_due import run_due
from tests.conftest import assert_journal_ok, at, fixed_clock
from tests.integration.test_engagement_campaigns import P, enrol, programme
from tests.integration.test_engagement_memberships import LITE, PLUS, T0

YEAR = {"id": "year", "name": "Setahun", "fee": "99.00", "months": 12, "tier_floor": "gold"}
REWARD = "membership:plus"


def setup(engine: sa.Engine) -> None:
    programme(engine, memberships=[PLUS, YEAR])
    enrol(engine, "m1")
    assert [kind for kind, *_ in messages(engine, enrolled=True)] == ["member.enrolled"]


def messages(engine: sa.Engine, *, enrolled: bool = False) -> list[tuple[Any, ...]]:
    """(type, member, key, data without ``program``) of the outbox rows, in order; the
    welcome message left out unless ``enrolled``."""
    with engine.connect() as conn:
        found = conn.execute(sa.text(
            "SELECT type, member_id, key, data FROM outbox ORDER BY id")).all()
    out = []
    for kind, member, key, data in found:
        parsed = json.loads(data)
        assert parsed.pop("program") == P
        if kind != "member.enrolled" or enrolled:
            out.append((kind, member, key, parsed))
    return out


def codes(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT code FROM vouchers ORDER BY issued_at, code")).scalars())


def tier_changed(ref: str, before: str, after: str, name: str,
                 direction: str) -> tuple[Any, ...]:
    return ("tier.changed", "m1", f"tier.changed:m1:{ref}", {
        "member": "m1", "ref": ref, "from": before, "to": after, "to_name": name,
        "direction": direction})


def voucher_issued(code: str, ref: str, expires_at: str) -> tuple[Any, ...]:
    return ("voucher.issued", "m1", f"voucher.issued:{code}", {
        "member": "m1", "ref": ref, "code": code, "reward": REWARD, "reward_name": "Kopi+",
        "expires_at": expires_at})


def buy_plus(engine: sa.Engine, key: str = "k-buy", when: str = T0) -> str:
    view = memberships.buy(engine, P, "m1", {"plan": "plus"}, key, fixed_clock(when))
    return str(view["purchases"][0]["id"])


def test_buying_a_plan_writes_the_tier_lift_and_the_first_voucher_once(engine):
    setup(engine)
    # When m1 (Member) buys Kopi+ (floor Gold, a monthly latte) on 31 January
    purchase = buy_plus(engine)
    # Then one tier.changed up and one voucher.issued, both naming the purchase
    [code] = codes(engine)
    expected = [tier_changed(purchase, "member", "gold", "Gold", "up"),
                voucher_issued(code, purchase, "2027-03-02T10:00:00+08:00")]
    assert messages(engine) == expected
    # and the same command sent again (replayed) writes nothing
    again = buy_plus(engine, when="2027-02-05T10:00:00+08:00")
    assert again == purchase
    assert messages(engine) == expected
    assert_journal_ok(engine)


def test_run_due_writes_each_monthly_voucher_once(engine):
    setup(engine)
    purchase = buy_plus(engine)
    before = messages(engine)
    # When run-due comes on 28 February 10:00 (the second month's voucher is owed)
    report = run_due(engine, at("2027-02-28T10:00:00+08:00"), P)
    assert report.engagement["membership_vouchers"] == 1
    # Then one voucher.issued for it, the tier (already Gold) unmoved
    first, second = codes(engine)
    assert messages(engine) == [*before,
                                voucher_issued(second, purchase, "2027-03-30T10:00:00+08:00")]
    # and run-due again the same day (same time, and later) writes nothing new
    written = messages(engine)
    for when in ("2027-02-28T10:00:00+08:00", "2027-02-28T18:00:00+08:00"):
        assert run_due(engine, at(when), P).engagement["membership_vouchers"] == 0
        assert messages(engine) == written
    assert codes(engine) == [first, second]
    assert_journal_ok(engine)


def test_the_end_of_a_membership_restores_the_tier_with_one_message(engine):
    setup(engine)
    purchase = buy_plus(engine)
    run_due(engine, at("2027-04-30T09:59:00+08:00"), P)  # a minute before the end
    vouchers = codes(engine)
    assert len(vouchers) == 3  # January, February, March
    before = messages(engine)
    assert [kind for kind, *_ in before] == ["tier.changed"] + ["voucher.issued"] * 3
    # When run-due ends the membership at 30 April 10:00
    report = run_due(engine, at("2027-04-30T10:00:00+08:00"), P)
    assert report.engagement["memberships_expired"] == 1
    # Then the tier goes back to what m1 earned (Member): tier.changed down, once
    expected = [*before, tier_changed(f"{purchase}:expired", "gold", "member", "Member",
                                      "down")]
    assert messages(engine) == expected
    run_due(engine, at("2027-04-30T10:00:00+08:00"), P)
    run_due(engine, at("2027-05-30T10:00:00+08:00"), P)
    assert messages(engine) == expected
    assert codes(engine) == vouchers
    assert_journal_ok(engine)


def test_cancel_writes_the_tier_going_down_and_renew_writes_nothing(engine):
    setup(engine)
    purchase = buy_plus(engine)
    before = messages(engine)
    # A renewal starts when the current period ends: nothing member-visible yet
    memberships.renew(engine, P, "m1", {}, "k-renew", fixed_clock("2027-04-01T10:00:00+08:00"))
    assert messages(engine) == before
    # When m1 cancels on 2 April: Gold goes, once, even if the command is sent again
    expected = [*before, tier_changed(f"{purchase}:cancelled", "gold", "member", "Member",
                                      "down")]
    for when in ("2027-04-02T10:00:00+08:00", "2027-04-03T10:00:00+08:00"):
        memberships.cancel(engine, P, "m1", {}, "k-cancel", fixed_clock(when))
        assert messages(engine) == expected
    run_due(engine, at("2027-05-30T10:00:00+08:00"), P)
    assert messages(engine) == expected
    assert_journal_ok(engine)


def test_a_floor_holds_through_the_yearly_review_and_nothing_is_told(engine):
    setup(engine)
    # Given m1 bought a year with a Gold floor (no vouchers) on 1 June 2027
    view = memberships.buy(engine, P, "m1", {"plan": "year"}, "k-year",
                           fixed_clock("2027-06-01T10:00:00+08:00"))
    purchase = view["purchases"][0]["id"]
    expected = [tier_changed(purchase, "member", "gold", "Gold", "up")]
    assert messages(engine) == expected
    # When the 2028 review finds no spend (Member) while the membership runs
    as_of = at("2028-01-01T10:00:00+08:00")
    report = run_due(engine, as_of, P)
    run_due(engine, at("2028-01-02T10:00:00+08:00"), P)
    # Then the floor holds m1 at Gold through the review: no tier change, no message (she
    # used to be told of a fall to Member and a rise back to Gold)
    assert (report.tiers_reviewed, report.tiers_changed) == (1, 0)
    assert messages(engine) == expected
    assert memberships.get_membership(engine, P, "m1", fixed_clock(
        "2028-01-02T10:00:00+08:00"))["tier"] == "gold"
    # and once the year ends, the tier is restored to what her own spend earns
    run_due(engine, at("2028-06-02T10:00:00+08:00"), P)
    assert messages(engine)[1:] == [
        tier_changed(f"{purchase}:expired", "gold", "member", "Member", "down")]
    assert_journal_ok(engine)


def test_a_renewal_without_a_floor_lets_the_tier_fall_and_owed_vouchers_come_late(engine):
    # Given m1 (Member) bought Kopi+ (3 months from 31 January, floor Gold, a latte on the
    # 31st, 28 February and 31 March) and renewed onto Lite (1 month, no floor), and
    # run-due did not run while Kopi+ lasted
    programme(engine, memberships=[PLUS, LITE])
    enrol(engine, "m1")
    purchase = buy_plus(engine)
    memberships.renew(engine, P, "m1", {"plan": "lite"}, "k-renew",
                      fixed_clock("2027-03-01T10:00:00+08:00"))
    with engine.connect() as conn:
        renewal = conn.execute(sa.text(
            "SELECT id FROM membership_purchases WHERE kind = 'renew'")).scalar_one()
    [first] = codes(engine)

    # When run-due runs on 30 April, as Kopi+ ends and Lite begins
    as_of = at("2027-04-30T10:00:00+08:00")
    report = run_due(engine, as_of, P)
    again = run_due(engine, as_of, P)

    # Then Kopi+'s two lattes still owed are issued (valid 30 days from now), and the tier
    # falls to what m1's own spend earns, Lite having no floor (it stayed Gold before)
    assert (report.engagement["membership_vouchers"], report.engagement["memberships_expired"],
            again.engagement["membership_vouchers"]) == (2, 1, 0)
    later = [code for code in codes(engine) if code != first]
    told = messages(engine)
    assert told[:2] == [tier_changed(purchase, "member", "gold", "Gold", "up"),
                        voucher_issued(first, purchase, "2027-03-02T10:00:00+08:00")]
    assert len(later) == 2 and sorted(told[2:4]) == sorted(
        voucher_issued(code, purchase, "2027-05-30T10:00:00+08:00") for code in later)
    assert told[4:] == [tier_changed(f"{renewal}:floor:{as_of.isoformat()}", "gold",
                                     "member", "Member", "down")]
    assert memberships.get_membership(engine, P, "m1", fixed_clock(
        "2027-05-01T10:00:00+08:00"))["tier"] == "member"
    assert_journal_ok(engine)
