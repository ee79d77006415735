"""Redemptions, holds, vouchers and adjustments on the Kopi Setia programme (and a small shop)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.domain.errors import (
    InsufficientPoints,
    InvalidField,
    RewardLimitReached,
    RewardNotAvailable,
    RewardNotForTier,
    RewardSoldOut,
    VoucherExpired,
    VoucherUsed,
)
from setia.domain.rewards import CODE_ALPHABET
from setia.service.events import ingest_event
from setia.service.members import get_member, upsert_member
from setia.service.redemptions import adjust, capture_or_release, check_voucher, redeem, use_voucher
from setia.service.run_due import run_due
from tests.conftest import assert_journal_ok, at, fixed_clock, load_programme

P = "kopi-setia"
ENROL = fixed_clock("2027-03-01T09:00:00+08:00")
NOON = fixed_clock("2027-03-10T12:00:00+08:00")

IDLE = {
    "id": "idle", "name": "Idle", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "points": {"pending_days": 0, "expiry": {"policy": "inactivity", "months": 6}},
    "earn": [{"id": "base", "on": "purchase", "rate": 1}],
}

SHOP = {
    "id": "shop", "name": "Shop", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "earn": [{"id": "base", "on": "purchase", "rate": 1}],
    "rewards": [{"id": "mug", "name": "Mug", "cost": 100, "stock": 2,
                 "voucher": {"free_item": "mug", "valid_days": 7}}],
}


def postings_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM postings")).scalar_one()


def stock_redeemed(engine: sa.Engine, reward: str) -> int | None:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT redeemed FROM reward_stock WHERE reward_id = :r"),
                            {"r": reward}).scalar_one_or_none()


def balances(engine: sa.Engine, member: str = "cust-1", program: str = P) -> dict[str, int]:
    return get_member(engine, program, member, NOON)["balances"]


def last_activity_at(engine: sa.Engine, member: str = "cust-1") -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(t.members.c.last_activity_at).where(
            t.members.c.id == member)).scalar_one()


def given_an_idle_member_who_earned_100(engine: sa.Engine) -> None:
    """100 earned on 2027-01-10 10:00 (+08:00) under inactivity expiry after 6 months."""
    load_programme(engine, IDLE)
    upsert_member(engine, "idle", "cust-1", {}, ENROL)
    ingest_event(engine, "idle", {
        "id": "e1", "type": "purchase", "member": "cust-1", "order_id": "e1",
        "occurred_at": "2027-01-10T10:00:00+08:00", "amount": "100.00"}, ENROL)
    assert last_activity_at(engine) == at("2027-01-10T10:00:00+08:00")


def given_a_member_with(engine: sa.Engine, points: int, member: str = "cust-1",
                        program: str = P) -> None:
    # enrolment: welcome 50 stays pending (Kopi); the adjustment is available at once
    upsert_member(engine, program, member, {}, ENROL)
    adjust(engine, program, {"member": member, "points": points, "reason": "opening balance"},
           f"open-{member}", ENROL)


def make_gold(engine: sa.Engine, member: str = "cust-1") -> None:
    # RM 400.00 >= 350: gold at once (its 500 points stay pending)
    ingest_event(engine, P, {"id": f"gold-{member}", "type": "purchase", "member": member,
                             "order_id": f"gold-{member}", "amount": "400.00",
                             "occurred_at": "2027-03-02T10:00:00+08:00"}, ENROL)


def assert_code(voucher: dict[str, Any]) -> None:
    assert len(voucher["code"]) == 12
    assert set(voucher["code"]) <= set(CODE_ALPHABET)


def test_a_one_step_redemption_takes_the_points_and_issues_a_voucher(kopi):
    given_a_member_with(kopi, 1000)

    # When a free latte (150) is redeemed
    result = redeem(kopi, P, {"member": "cust-1", "reward": "free-latte"}, "k1", NOON)

    # Then 850 are left and a 12-character voucher valid 30 days is issued
    assert result["status"] == "captured"
    assert (result["reward"], result["points"]) == ("free-latte", 150)
    assert_code(result["voucher"])
    assert at(result["voucher"]["expires_at"]) == at("2027-04-09T12:00:00+08:00")
    assert result["balances"] == {"available": 850, "pending": 50, "reserved": 0}
    assert balances(kopi) == result["balances"]
    assert check_voucher(kopi, P, result["voucher"]["code"], NOON)["status"] == "valid"
    assert_journal_ok(kopi)


def test_a_hold_reserves_the_points_and_its_capture_issues_the_voucher(kopi):
    given_a_member_with(kopi, 1000)

    # When RM 10 off (400) is held
    held = redeem(kopi, P, {"member": "cust-1", "reward": "rm10-off", "hold": True}, "k1", NOON)

    # Then 400 are reserved and no voucher exists yet
    assert held["status"] == "held"
    assert held["voucher"] is None
    assert balances(kopi) == {"available": 600, "pending": 50, "reserved": 400}

    # When it is captured
    captured = capture_or_release(kopi, P, held["id"], "capture", "k2", NOON)

    # Then the points are redeemed and the voucher is issued now
    assert captured["status"] == "captured"
    assert_code(captured["voucher"])
    assert at(captured["voucher"]["expires_at"]) == at("2027-05-09T12:00:00+08:00")
    assert balances(kopi) == {"available": 600, "pending": 50, "reserved": 0}
    assert check_voucher(kopi, P, captured["voucher"]["code"], NOON)["status"] == "valid"
    assert_journal_ok(kopi)


def test_releasing_a_hold_restores_the_balance(kopi):
    given_a_member_with(kopi, 1000)
    held = redeem(kopi, P, {"member": "cust-1", "reward": "rm10-off", "hold": True}, "k1", NOON)

    # When the hold is released
    released = capture_or_release(kopi, P, held["id"], "release", "k2", NOON)

    # Then everything is available again and no voucher was issued
    assert released["status"] == "released"
    assert released["voucher"] is None
    assert balances(kopi) == {"available": 1000, "pending": 50, "reserved": 0}
    with kopi.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM vouchers")).scalar_one() == 0
    assert_journal_ok(kopi)


def test_run_due_releases_a_hold_after_fifteen_minutes_not_before(kopi):
    given_a_member_with(kopi, 1000)
    redeem(kopi, P, {"member": "cust-1", "reward": "free-latte", "hold": True}, "k1", NOON)

    # When run-due runs 14 minutes later
    early = run_due(kopi, at("2027-03-10T12:14:00+08:00"), P)

    # Then the hold is still open (run-due made the welcome 50 available meanwhile)
    assert early.holds_released == 0
    assert balances(kopi) == {"available": 850 + 50, "pending": 0, "reserved": 150}

    # When run-due runs at 15 minutes
    late = run_due(kopi, at("2027-03-10T12:15:00+08:00"), P)

    # Then it is released
    assert late.holds_released == 1
    assert balances(kopi) == {"available": 1050, "pending": 0, "reserved": 0}
    assert_journal_ok(kopi)


def test_a_released_or_timed_out_hold_is_no_activity_for_inactivity_expiry(engine):
    # Given 100 earned on 2027-01-10 under a 6-month inactivity expiry
    given_an_idle_member_who_earned_100(engine)

    # When a hold of 10 is released on 2027-03-01, and one of 20 placed on 2027-05-01 is
    # released by run-due when it times out
    held = redeem(engine, "idle", {"member": "cust-1", "points": 10, "hold": True}, "h1",
                  fixed_clock("2027-03-01T10:00:00+08:00"))
    capture_or_release(engine, "idle", held["id"], "release", "h1r",
                       fixed_clock("2027-03-01T10:05:00+08:00"))
    redeem(engine, "idle", {"member": "cust-1", "points": 20, "hold": True}, "h2",
           fixed_clock("2027-05-01T10:00:00+08:00"))
    assert run_due(engine, at("2027-05-01T10:15:00+08:00"), "idle").holds_released == 1

    # Then her last activity is still the earn, and all 100 expire 6 months after it
    assert last_activity_at(engine) == at("2027-01-10T10:00:00+08:00")
    assert run_due(engine, at("2027-07-10T09:59:00+08:00"), "idle").points_expired == 0
    assert run_due(engine, at("2027-07-10T10:00:00+08:00"), "idle").points_expired == 100
    assert balances(engine, program="idle") == {"available": 0, "pending": 0, "reserved": 0}
    assert_journal_ok(engine)


def test_a_captured_hold_is_activity_at_its_capture(engine):
    # Given 100 earned on 2027-01-10, and a hold of 10 placed on 2027-05-01 at 10:00
    given_an_idle_member_who_earned_100(engine)
    held = redeem(engine, "idle", {"member": "cust-1", "points": 10, "hold": True}, "h1",
                  fixed_clock("2027-05-01T10:00:00+08:00"))
    assert last_activity_at(engine) == at("2027-01-10T10:00:00+08:00")

    # When the till captures it at 10:05
    capture_or_release(engine, "idle", held["id"], "capture", "h1c",
                       fixed_clock("2027-05-01T10:05:00+08:00"))

    # Then the capture is her last activity: the 90 left expire 6 months after it
    assert last_activity_at(engine) == at("2027-05-01T10:05:00+08:00")
    assert run_due(engine, at("2027-07-10T10:00:00+08:00"), "idle").points_expired == 0
    assert run_due(engine, at("2027-11-01T10:04:00+08:00"), "idle").points_expired == 0
    assert run_due(engine, at("2027-11-01T10:05:00+08:00"), "idle").points_expired == 90
    assert balances(engine, program="idle") == {"available": 0, "pending": 0, "reserved": 0}
    assert_journal_ok(engine)


def test_points_can_pay_without_a_reward(kopi):
    given_a_member_with(kopi, 1000)

    # When 275 points pay for an order
    result = redeem(kopi, P, {"member": "cust-1", "points": 275}, "k1", NOON)

    # Then 725 are left and there is no voucher
    assert (result["status"], result["reward"], result["points"]) == ("captured", None, 275)
    assert result["voucher"] is None
    assert balances(kopi) == {"available": 725, "pending": 50, "reserved": 0}
    assert_journal_ok(kopi)


def test_a_redemption_beyond_the_available_points_is_refused_and_changes_nothing(kopi):
    # Given 100 available (pending points do not count)
    given_a_member_with(kopi, 100)
    before = postings_count(kopi)

    # When 101 points, or a 150-point latte, or a 150-point hold is asked for
    with pytest.raises(InsufficientPoints) as by_points:
        redeem(kopi, P, {"member": "cust-1", "points": 101}, "k1", NOON)
    with pytest.raises(InsufficientPoints) as by_reward:
        redeem(kopi, P, {"member": "cust-1", "reward": "free-latte"}, "k2", NOON)
    with pytest.raises(InsufficientPoints):
        redeem(kopi, P, {"member": "cust-1", "reward": "free-latte", "hold": True}, "k3", NOON)

    # Then all are refused and nothing changed
    assert by_points.value.field == "points"
    assert by_reward.value.field == "points"
    assert balances(kopi) == {"available": 100, "pending": 50, "reserved": 0}
    assert postings_count(kopi) == before
    with kopi.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM redemptions")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM vouchers")).scalar_one() == 0
    assert_journal_ok(kopi)


def test_a_reward_with_stock_is_refused_once_sold_out(engine):
    # Given a shop whose mug (100) has a stock of 2, and three members with 500 each
    load_programme(engine, SHOP)
    for member in ("a", "b", "c"):
        given_a_member_with(engine, 500, member, "shop")

    # When a and b redeem it
    redeem(engine, "shop", {"member": "a", "reward": "mug"}, "ka", NOON)
    redeem(engine, "shop", {"member": "b", "reward": "mug"}, "kb", NOON)
    before = postings_count(engine)

    # Then c is refused and nothing changed
    with pytest.raises(RewardSoldOut) as error:
        redeem(engine, "shop", {"member": "c", "reward": "mug"}, "kc", NOON)
    assert error.value.field == "reward"
    assert stock_redeemed(engine, "mug") == 2
    assert balances(engine, "c", "shop") == {"available": 500, "pending": 0, "reserved": 0}
    assert postings_count(engine) == before
    assert_journal_ok(engine)


def test_a_released_hold_gives_its_stock_back(engine):
    load_programme(engine, SHOP)
    for member in ("a", "b", "c"):
        given_a_member_with(engine, 500, member, "shop")
    redeem(engine, "shop", {"member": "a", "reward": "mug"}, "ka", NOON)
    held = redeem(engine, "shop", {"member": "b", "reward": "mug", "hold": True}, "kb", NOON)
    assert stock_redeemed(engine, "mug") == 2

    # When b's hold is released
    capture_or_release(engine, "shop", held["id"], "release", "kb2", NOON)

    # Then c can have the last mug
    assert stock_redeemed(engine, "mug") == 1
    redeem(engine, "shop", {"member": "c", "reward": "mug"}, "kc", NOON)
    assert stock_redeemed(engine, "mug") == 2
    assert balances(engine, "c", "shop")["available"] == 400
    assert_journal_ok(engine)


def test_a_hold_is_captured_by_its_reward_as_it_was_when_held(engine):
    # Given b's hold on the mug, and then a version of the shop without the mug
    load_programme(engine, SHOP)
    given_a_member_with(engine, 500, "b", "shop")
    held = redeem(engine, "shop", {"member": "b", "reward": "mug", "hold": True}, "kb", NOON)
    load_programme(engine, {**SHOP, "rewards": [
        {"id": "cup", "name": "Cup", "cost": 50, "voucher": {"free_item": "cup"}}]})

    # When the till captures the hold
    captured = capture_or_release(engine, "shop", held["id"], "capture", "kb2", NOON)

    # Then b gets the mug's voucher he paid for (it was captured with none), valid 7 days
    assert captured["status"] == "captured"
    assert_code(captured["voucher"])
    assert captured["voucher"]["expires_at"] == "2027-03-17T12:00:00+08:00"
    assert balances(engine, "b", "shop") == {"available": 400, "pending": 0, "reserved": 0}
    assert_journal_ok(engine)


def test_releasing_a_hold_made_before_the_reward_had_stock_gives_none_back(engine):
    # Given b's hold on a mug without stock, then a version giving the mug a stock of 1,
    # which c redeems
    mug = {key: value for key, value in SHOP["rewards"][0].items() if key != "stock"}
    load_programme(engine, {**SHOP, "rewards": [mug]})
    for member in ("b", "c", "d"):
        given_a_member_with(engine, 500, member, "shop")
    held = redeem(engine, "shop", {"member": "b", "reward": "mug", "hold": True}, "kb", NOON)
    load_programme(engine, {**SHOP, "rewards": [{**SHOP["rewards"][0], "stock": 1}]})
    redeem(engine, "shop", {"member": "c", "reward": "mug"}, "kc", NOON)

    # When b's hold is released
    capture_or_release(engine, "shop", held["id"], "release", "kb2", NOON)

    # Then the one mug stays taken (the release gave back what the hold had not taken), and
    # d is refused
    assert stock_redeemed(engine, "mug") == 1
    with pytest.raises(RewardSoldOut):
        redeem(engine, "shop", {"member": "d", "reward": "mug"}, "kd", NOON)
    assert balances(engine, "b", "shop") == {"available": 500, "pending": 0, "reserved": 0}
    assert_journal_ok(engine)


def test_a_reward_limited_per_member_is_refused_the_second_time(kopi):
    # Given a gold member with 2000 available; the tumbler (800) is 1 per member
    given_a_member_with(kopi, 2000)
    make_gold(kopi)
    redeem(kopi, P, {"member": "cust-1", "reward": "tumbler-2027"}, "k1", NOON)
    before = postings_count(kopi)

    # When a second tumbler is asked for
    with pytest.raises(RewardLimitReached) as error:
        redeem(kopi, P, {"member": "cust-1", "reward": "tumbler-2027"}, "k2", NOON)

    # Then it is refused and nothing changed
    assert error.value.field == "reward"
    assert balances(kopi) == {"available": 1200, "pending": 50 + 500, "reserved": 0}
    assert postings_count(kopi) == before
    assert stock_redeemed(kopi, "tumbler-2027") == 1
    assert_journal_ok(kopi)


def redemptions_of(engine: sa.Engine, reward: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT status FROM redemptions WHERE reward_id = :r ORDER BY created_at, id"),
            {"r": reward}).scalars())


def test_an_open_hold_counts_towards_a_reward_limited_per_member(kopi):
    # Given a gold member with 2000 available holding the tumbler (800, 1 per member),
    # not yet captured
    given_a_member_with(kopi, 2000)
    make_gold(kopi)
    redeem(kopi, P, {"member": "cust-1", "reward": "tumbler-2027", "hold": True}, "k1", NOON)
    before = postings_count(kopi)

    # When a second tumbler is held, or redeemed at once
    with pytest.raises(RewardLimitReached) as by_hold:
        redeem(kopi, P, {"member": "cust-1", "reward": "tumbler-2027", "hold": True}, "k2",
               NOON)
    with pytest.raises(RewardLimitReached) as by_redeem:
        redeem(kopi, P, {"member": "cust-1", "reward": "tumbler-2027"}, "k3", NOON)

    # Then both are refused and nothing changed: the one hold keeps its 800 reserved and
    # its one tumbler of stock
    assert by_hold.value.field == "reward"
    assert by_redeem.value.field == "reward"
    assert balances(kopi) == {"available": 1200, "pending": 50 + 500, "reserved": 800}
    assert postings_count(kopi) == before
    assert stock_redeemed(kopi, "tumbler-2027") == 1
    assert redemptions_of(kopi, "tumbler-2027") == ["held"]
    with kopi.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM vouchers")).scalar_one() == 0
    assert_journal_ok(kopi)


def test_a_tier_only_reward_is_refused_for_another_tier(kopi):
    # Given a Member-tier member with 2000 available
    given_a_member_with(kopi, 2000)
    before = postings_count(kopi)

    # When the gold/platinum tumbler is asked for
    with pytest.raises(RewardNotForTier) as error:
        redeem(kopi, P, {"member": "cust-1", "reward": "tumbler-2027"}, "k1", NOON)

    # Then it is refused and nothing changed
    assert error.value.field == "reward"
    assert balances(kopi) == {"available": 2000, "pending": 50, "reserved": 0}
    assert postings_count(kopi) == before
    assert stock_redeemed(kopi, "tumbler-2027") in (None, 0)
    assert_journal_ok(kopi)


@pytest.mark.parametrize("when", ["2027-02-28T23:59:00+08:00", "2027-04-01T00:00:00+08:00",
                                  "2027-03-31T16:00:00+00:00"])
def test_a_reward_is_refused_outside_its_from_until_dates(kopi, when):
    # Given a gold member with 2000; the tumbler runs 2027-03-01 to 2027-03-31 (+08:00)
    given_a_member_with(kopi, 2000)
    make_gold(kopi)
    before = postings_count(kopi)

    # When it is asked for the day before or the day after (local time)
    with pytest.raises(RewardNotAvailable) as error:
        redeem(kopi, P, {"member": "cust-1", "reward": "tumbler-2027"}, "k1", fixed_clock(when))

    # Then it is refused and nothing changed
    assert error.value.field == "reward"
    assert balances(kopi)["available"] == 2000
    assert postings_count(kopi) == before
    assert_journal_ok(kopi)


def test_the_tumbler_can_be_had_on_the_last_local_day(kopi):
    # Given a gold member; 2027-03-31T15:59Z is 23:59 on 31 March in Kuala Lumpur
    given_a_member_with(kopi, 2000)
    make_gold(kopi)

    result = redeem(kopi, P, {"member": "cust-1", "reward": "tumbler-2027"}, "k1",
                    fixed_clock("2027-03-31T15:59:00+00:00"))

    assert result["status"] == "captured"
    assert balances(kopi)["available"] == 1200
    assert_journal_ok(kopi)


def test_a_voucher_is_valid_until_used_once(kopi):
    given_a_member_with(kopi, 1000)
    code = redeem(kopi, P, {"member": "cust-1", "reward": "free-latte"}, "k1",
                  NOON)["voucher"]["code"]

    # When it is checked (typed in lower case with a dash) and then used
    checked = check_voucher(kopi, P, f"{code[:6]}-{code[6:]}".lower(), NOON)
    used = use_voucher(kopi, P, code, "use-1", clock=NOON)

    # Then it was valid, and is now used
    assert (checked["status"], checked["reward"]) == ("valid", "free-latte")
    assert checked["benefit"] == {"kind": "free_item", "free_item": "latte"}
    assert used["status"] == "used"
    assert check_voucher(kopi, P, code, NOON)["status"] == "used"

    # When it is used again with another key
    with pytest.raises(VoucherUsed) as error:
        use_voucher(kopi, P, code, "use-2", clock=NOON)

    # Then it is refused and the balance is untouched
    assert error.value.field == "code"
    assert balances(kopi)["available"] == 850
    assert_journal_ok(kopi)


def test_an_expired_voucher_is_refused(kopi):
    given_a_member_with(kopi, 1000)
    code = redeem(kopi, P, {"member": "cust-1", "reward": "free-latte"}, "k1",
                  NOON)["voucher"]["code"]

    # When checked one second before and at its expiry (issued + 30 days)
    before_expiry = fixed_clock("2027-04-09T11:59:59+08:00")
    expired = fixed_clock("2027-04-09T12:00:00+08:00")
    assert check_voucher(kopi, P, code, before_expiry)["status"] == "valid"
    assert check_voucher(kopi, P, code, expired)["status"] == "expired"

    # Then using it at expiry is refused, and it stays unused
    with pytest.raises(VoucherExpired) as error:
        use_voucher(kopi, P, code, "use-1", clock=expired)
    assert error.value.field == "code"
    assert check_voucher(kopi, P, code, before_expiry)["status"] == "valid"
    assert_journal_ok(kopi)


def test_an_adjustment_with_a_reason_credits_and_debits_points(kopi):
    given_a_member_with(kopi, 1000)

    # When 200 are added and 300 taken off, each with a reason
    added = adjust(kopi, P, {"member": "cust-1", "points": 200, "reason": "goodwill"}, "a1", NOON)
    taken = adjust(kopi, P, {"member": "cust-1", "points": -300, "reason": "duplicate"}, "a2",
                   NOON)

    # Then 1000 + 200 - 300 = 900, and the journal keeps the reasons
    assert added["balances"]["available"] == 1200
    assert taken["balances"]["available"] == 900
    with kopi.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT points, explanation FROM postings WHERE code = 'adjust' ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(1000, "opening balance"), (200, "goodwill"),
                                        (300, "duplicate")]
    assert_journal_ok(kopi)


def test_a_negative_adjustment_never_takes_the_balance_below_zero(kopi):
    given_a_member_with(kopi, 100)
    before = postings_count(kopi)

    # When 101 are taken off
    with pytest.raises(InsufficientPoints) as error:
        adjust(kopi, P, {"member": "cust-1", "points": -101, "reason": "typo"}, "a1", NOON)

    # Then it is refused and nothing changed; exactly 100 may be taken
    assert error.value.field == "points"
    assert postings_count(kopi) == before
    assert balances(kopi)["available"] == 100
    adjust(kopi, P, {"member": "cust-1", "points": -100, "reason": "typo"}, "a2", NOON)
    assert balances(kopi)["available"] == 0
    assert_journal_ok(kopi)


def test_an_adjustment_without_a_reason_is_refused(kopi):
    given_a_member_with(kopi, 100)
    before = postings_count(kopi)

    with pytest.raises(InvalidField) as error:
        adjust(kopi, P, {"member": "cust-1", "points": 5}, "a1", NOON)

    assert error.value.field == "reason"
    assert postings_count(kopi) == before
    assert balances(kopi)["available"] == 100
    assert_journal_ok(kopi)
