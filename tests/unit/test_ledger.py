"""The points ledger of one member: lots, balances and postings (setia.domain.ledger)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from setia.domain.errors import InsufficientPoints
from setia.domain.ledger import (
    AVAILABLE,
    EXPIRED,
    ISSUED,
    PENDING,
    REDEEMED,
    RESERVED,
    Lot,
    MemberLedger,
    Posting,
)

MYT = timezone(timedelta(hours=8))


def at(month: int, day: int, year: int = 2027) -> datetime:
    return datetime(year, month, day, 10, tzinfo=MYT)


def earn(ledger: MemberLedger, points: int, source: str, *, available_at: datetime = at(3, 1),
         expires_at: datetime | None = None, pending: bool = False,
         order_id: str | None = None, rule_id: str = "base") -> None:
    ledger.earn(points, source=source, rule_id=rule_id, explanation=f"{points} ({source})",
                available_at=available_at, pending=pending, expires_at=expires_at,
                order_id=order_id)


def balances(ledger: MemberLedger) -> tuple[int, int, int]:
    return (ledger.available, ledger.pending, ledger.reserved)


def remaining(ledger: MemberLedger) -> dict[str, int]:
    return {lot.source: lot.remaining for lot in ledger.lots.values()}


def moves(ledger: MemberLedger) -> list[tuple[str, str, str, int]]:
    return [(p.code, p.debit, p.credit, p.points) for p in ledger.postings]


def three_lots() -> MemberLedger:
    """Available: A 100 expiring 2027-09-01, B 50 expiring 2027-06-01, C 30 never."""
    ledger = MemberLedger(member_pk=1)
    earn(ledger, 100, "A", expires_at=at(9, 1))
    earn(ledger, 50, "B", expires_at=at(6, 1))
    earn(ledger, 30, "C", expires_at=None)
    ledger.postings.clear()
    return ledger


# -- earning and activation -------------------------------------------------------------

def test_earned_points_without_pending_days_are_available_at_once():
    ledger = MemberLedger(member_pk=1)
    earn(ledger, 42, "evt-1")
    assert balances(ledger) == (42, 0, 0)
    assert moves(ledger) == [("earn", ISSUED, AVAILABLE, 42)]
    assert ledger.postings[0].credit_balance_after == 42
    assert ledger.postings[0].debit_balance_after is None  # programme accounts carry none
    ledger.check()


def test_pending_points_wait_in_pending():
    ledger = MemberLedger(member_pk=1)
    earn(ledger, 42, "evt-1", pending=True, available_at=at(3, 4))
    assert balances(ledger) == (0, 42, 0)
    assert moves(ledger) == [("earn", ISSUED, PENDING, 42)]
    ledger.check()


def test_two_rules_of_one_event_share_one_lot():
    ledger = MemberLedger(member_pk=1)
    earn(ledger, 53, "evt-1", rule_id="base")
    earn(ledger, 23, "evt-1", rule_id="pastry-bonus")
    assert len(ledger.lots) == 1
    [lot] = ledger.lots.values()
    assert (lot.points, lot.remaining) == (76, 76)  # 53 + 23
    assert [p.rule_id for p in ledger.postings] == ["base", "pastry-bonus"]


def test_earning_zero_points_does_nothing():
    ledger = MemberLedger(member_pk=1)
    earn(ledger, 0, "evt-1")
    assert balances(ledger) == (0, 0, 0)
    assert ledger.postings == [] and ledger.lots == {}


def test_activation_before_the_time_changes_nothing():
    ledger = MemberLedger(member_pk=1)
    earn(ledger, 42, "evt-1", pending=True, available_at=at(3, 4))
    assert ledger.activate(at(3, 4) - timedelta(seconds=1)) == 0
    assert balances(ledger) == (0, 42, 0)
    assert len(ledger.postings) == 1


def test_activation_at_the_time_makes_pending_points_available():
    ledger = MemberLedger(member_pk=1)
    earn(ledger, 42, "evt-1", pending=True, available_at=at(3, 4))
    earn(ledger, 10, "evt-2", pending=True, available_at=at(3, 5))
    # only the lot due by 2027-03-04 10:00 activates
    assert ledger.activate(at(3, 4)) == 42
    assert balances(ledger) == (42, 10, 0)
    assert moves(ledger)[-1] == ("activate", PENDING, AVAILABLE, 42)
    ledger.check()
    # running it again activates nothing more
    assert ledger.activate(at(3, 4)) == 0
    assert balances(ledger) == (42, 10, 0)


# -- spending -------------------------------------------------------------------------------

def test_spending_takes_the_lots_that_expire_first():
    ledger = three_lots()
    allocations = ledger.spend(70, code="redeem", credit=REDEEMED, explanation="latte")
    # B (expires June) gives all 50, then A (September) 20; C (never) untouched
    assert [(a.lot_seq, a.points) for a in allocations] == [(2, 50), (1, 20)]
    assert remaining(ledger) == {"A": 80, "B": 0, "C": 30}
    assert balances(ledger) == (110, 0, 0)  # 180 - 70
    assert moves(ledger) == [("redeem", AVAILABLE, REDEEMED, 70)]
    ledger.check()


def test_lots_that_never_expire_are_spent_last():
    ledger = three_lots()
    ledger.spend(170, code="redeem", credit=REDEEMED, explanation="")
    # B 50 + A 100 + C 20
    assert remaining(ledger) == {"A": 0, "B": 0, "C": 10}


def test_lots_with_the_same_expiry_are_spent_oldest_first():
    ledger = MemberLedger(member_pk=1)
    earn(ledger, 10, "later", available_at=at(3, 2), expires_at=at(9, 1))
    earn(ledger, 10, "earlier", available_at=at(3, 1), expires_at=at(9, 1))
    ledger.spend(15, code="redeem", credit=REDEEMED, explanation="")
    assert remaining(ledger) == {"later": 5, "earlier": 0}


def test_spending_takes_a_newer_lot_that_expires_first_before_an_older_one():
    # Given lots earned under three programme versions: "old" (1 January) under no
    # expiry, "long" (1 February) when points lasted 18 months, and "short" (1 April)
    # after the expiry was cut to 6 months, so it expires first though it is the newest
    ledger = MemberLedger(member_pk=1)
    earn(ledger, 40, "old", available_at=at(1, 1), expires_at=None)
    earn(ledger, 100, "long", available_at=at(2, 1), expires_at=at(8, 1, 2028))
    earn(ledger, 50, "short", available_at=at(4, 1), expires_at=at(10, 1))
    ledger.postings.clear()

    # When 70 are spent
    allocations = ledger.spend(70, code="redeem", credit=REDEEMED, explanation="latte")

    # Then "short" (October 2027) gives all 50, then "long" (August 2028) 20; "old",
    # which never expires, none
    assert [(a.lot_seq, a.points) for a in allocations] == [(3, 50), (2, 20)]
    assert remaining(ledger) == {"old": 40, "long": 80, "short": 0}
    assert balances(ledger) == (120, 0, 0)  # 190 - 70
    ledger.check()


def two_zone_ledger(order_id: str | None = None) -> MemberLedger:
    """A lot read from the database (times in UTC) expiring 1 December 17:00 UTC, and one
    earned now in Los Angeles time (of ``order_id``) expiring 11:00 PST: 19:00 UTC, two
    hours later, though its wall-clock time is earlier."""
    pst = timezone(timedelta(hours=-8))
    stored = Lot(seq=1, source="o1", points=100, remaining=100,
                 available_at=datetime(2027, 6, 1, 16, tzinfo=UTC),
                 expires_at=datetime(2027, 12, 1, 17, tzinfo=UTC), pending=False)
    ledger = MemberLedger(member_pk=1, available=100, lot_seq=1,
                          lots_loader=lambda: [stored])
    earn(ledger, 50, "o2", available_at=datetime(2027, 6, 1, 10, tzinfo=pst),
         expires_at=datetime(2027, 12, 1, 11, tzinfo=pst), order_id=order_id)
    return ledger


def test_lots_in_two_time_zones_are_spent_by_the_instant_they_expire():
    # Given a lot read from the database (times in UTC) expiring 1 December 17:00 UTC, and
    # one earned now in Los Angeles time expiring 11:00 PST: 19:00 UTC, two hours later,
    # though its wall-clock time is earlier
    ledger = two_zone_ledger()

    # When 60 are spent
    allocations = ledger.spend(60, code="redeem", credit=REDEEMED, explanation="")

    # Then the stored lot, which expires first, gives all 60
    assert [(a.lot_seq, a.points) for a in allocations] == [(1, 60)]
    assert remaining(ledger) == {"o1": 40, "o2": 50}
    # and the new lot keeps the same instants, in UTC as stored lots
    assert ledger.lots[2].expires_at == datetime(2027, 12, 1, 19, tzinfo=UTC)
    ledger.check()


def test_a_clawback_takes_the_lot_that_expires_first_across_time_zones():
    # Given the same two lots, the one earned now of the order refunded
    ledger = two_zone_ledger(order_id="o2")

    # When the order's 50 are clawed back (none of them pending)
    ledger.clawback(50, order_id="o2", rule_id="base", explanation="refund")

    # Then they come from the lot that expires first
    assert remaining(ledger) == {"o1": 50, "o2": 50}
    assert balances(ledger) == (100, 0, 0)
    ledger.check()


def test_spending_more_than_available_raises_and_changes_nothing():
    ledger = three_lots()
    with pytest.raises(InsufficientPoints) as info:
        ledger.spend(181, code="redeem", credit=REDEEMED, explanation="")
    assert info.value.field == "points"
    assert info.value.extra == {"available": 180, "required": 181}
    assert balances(ledger) == (180, 0, 0)
    assert remaining(ledger) == {"A": 100, "B": 50, "C": 30}
    assert ledger.postings == []


def test_pending_points_cannot_be_spent():
    ledger = MemberLedger(member_pk=1)
    earn(ledger, 100, "evt-1", pending=True, available_at=at(3, 4))
    with pytest.raises(InsufficientPoints):
        ledger.spend(1, code="redeem", credit=REDEEMED, explanation="")
    assert balances(ledger) == (0, 100, 0)


def test_spending_exactly_the_balance_leaves_zero():
    ledger = three_lots()
    ledger.spend(180, code="redeem", credit=REDEEMED, explanation="")
    assert balances(ledger) == (0, 0, 0)
    ledger.check()


# -- holds ----------------------------------------------------------------------------------

def test_a_hold_reserves_points_from_the_lots_that_expire_first():
    ledger = three_lots()
    allocations = ledger.hold(70, "hold for latte")
    assert [(a.lot_seq, a.points) for a in allocations] == [(2, 50), (1, 20)]
    assert balances(ledger) == (110, 0, 70)
    assert moves(ledger) == [("hold", AVAILABLE, RESERVED, 70)]
    ledger.check()


def test_a_hold_larger_than_available_raises_and_changes_nothing():
    ledger = three_lots()
    with pytest.raises(InsufficientPoints):
        ledger.hold(181, "too much")
    assert balances(ledger) == (180, 0, 0)
    assert remaining(ledger) == {"A": 100, "B": 50, "C": 30}
    assert ledger.postings == []


def test_capturing_a_hold_redeems_the_reserved_points():
    ledger = three_lots()
    ledger.hold(70, "hold")
    ledger.capture(70, "captured")
    assert balances(ledger) == (110, 0, 0)
    assert moves(ledger)[-1] == ("capture", RESERVED, REDEEMED, 70)
    assert remaining(ledger) == {"A": 80, "B": 0, "C": 30}
    ledger.check()


def test_releasing_a_hold_restores_the_same_lots():
    ledger = three_lots()
    allocations = ledger.hold(70, "hold")
    ledger.release(70, allocations, "released")
    assert balances(ledger) == (180, 0, 0)
    assert remaining(ledger) == {"A": 100, "B": 50, "C": 30}
    assert moves(ledger)[-1] == ("release", RESERVED, AVAILABLE, 70)
    ledger.check()


def test_releasing_a_hold_after_a_clawback_pays_the_debt_first():
    ledger = MemberLedger(member_pk=1)
    earn(ledger, 100, "A", expires_at=at(9, 1))
    allocations = ledger.hold(100, "hold")
    # a refund while the hold is open takes 30 the member no longer has available
    ledger.clawback(30, order_id="ord-1", rule_id="base", explanation="refund")
    assert balances(ledger) == (-30, 0, 100)
    ledger.release(100, allocations, "released")
    # 100 released - 30 debt = 70
    assert balances(ledger) == (70, 0, 0)
    assert remaining(ledger) == {"A": 70}
    ledger.check()


# -- clawback -------------------------------------------------------------------------------

def test_clawback_takes_the_orders_pending_lot_first():
    ledger = three_lots()
    earn(ledger, 40, "evt-ord-1", pending=True, available_at=at(3, 4), order_id="ord-1")
    earn(ledger, 25, "evt-ord-2", pending=True, available_at=at(3, 4), order_id="ord-2")
    ledger.postings.clear()
    # When 60 points of ord-1 are clawed back
    ledger.clawback(60, order_id="ord-1", rule_id="base", explanation="refund")
    # Then its own pending lot gives 40, then the available lot expiring first (B) 20;
    # the pending lot of ord-2 is untouched
    assert remaining(ledger) == {"A": 100, "B": 30, "C": 30, "evt-ord-1": 0, "evt-ord-2": 25}
    assert balances(ledger) == (160, 25, 0)  # 180 - 20, 65 - 40
    assert moves(ledger) == [("clawback", PENDING, ISSUED, 40),
                             ("clawback", AVAILABLE, ISSUED, 20)]
    ledger.check()


def test_clawback_without_pending_points_takes_available_earliest_expiry_first():
    ledger = three_lots()
    ledger.clawback(60, order_id="ord-1", rule_id="base", explanation="refund")
    # B 50, then A 10
    assert remaining(ledger) == {"A": 90, "B": 0, "C": 30}
    assert balances(ledger) == (120, 0, 0)
    ledger.check()


def test_clawback_beyond_the_balance_leaves_a_debt():
    ledger = MemberLedger(member_pk=1)
    earn(ledger, 10, "A")
    ledger.clawback(30, order_id="ord-1", rule_id="base", explanation="refund")
    # 10 - 30 = -20
    assert balances(ledger) == (-20, 0, 0)
    assert ledger.debt == 20
    assert remaining(ledger) == {"A": 0}
    assert moves(ledger)[-1] == ("clawback", AVAILABLE, ISSUED, 30)
    assert ledger.postings[-1].debit_balance_after == -20
    ledger.check()


def test_a_debt_is_repaid_first_by_later_earning():
    ledger = MemberLedger(member_pk=1)
    ledger.clawback(20, order_id="ord-1", rule_id="base", explanation="refund")
    assert balances(ledger) == (-20, 0, 0)
    # 50 earned - 20 debt = 30 spendable
    earn(ledger, 50, "evt-2")
    assert balances(ledger) == (30, 0, 0)
    assert remaining(ledger) == {"evt-2": 30}
    ledger.check()


def test_earning_less_than_the_debt_reduces_it():
    ledger = MemberLedger(member_pk=1)
    ledger.clawback(20, order_id="ord-1", rule_id="base", explanation="refund")
    earn(ledger, 5, "evt-2")
    assert balances(ledger) == (-15, 0, 0)
    assert remaining(ledger) == {"evt-2": 0}
    ledger.check()


def test_a_debt_is_repaid_first_by_activation():
    ledger = MemberLedger(member_pk=1)
    earn(ledger, 50, "evt-2", pending=True, available_at=at(3, 4))
    ledger.clawback(20, order_id="ord-1", rule_id="base", explanation="refund")
    assert balances(ledger) == (-20, 50, 0)
    ledger.activate(at(3, 4))
    # 50 activated - 20 debt = 30
    assert balances(ledger) == (30, 0, 0)
    assert remaining(ledger) == {"evt-2": 30}
    ledger.check()


def test_a_member_in_debt_cannot_spend():
    ledger = MemberLedger(member_pk=1)
    ledger.clawback(20, order_id="ord-1", rule_id="base", explanation="refund")
    with pytest.raises(InsufficientPoints) as info:
        ledger.spend(1, code="redeem", credit=REDEEMED, explanation="")
    assert info.value.extra["available"] == 0
    assert balances(ledger) == (-20, 0, 0)


# -- expiry ---------------------------------------------------------------------------------

def test_rolling_expiry_expires_only_the_lots_that_are_due():
    ledger = three_lots()
    ledger.spend(20, code="redeem", credit=REDEEMED, explanation="")  # B 50 -> 30
    ledger.postings.clear()
    # On 2027-06-01 10:00 B is due (expires_at <= as_of); A (September) and C are not
    assert ledger.expire_due_lots(at(6, 1)) == 30
    assert remaining(ledger) == {"A": 100, "B": 0, "C": 30}
    assert balances(ledger) == (130, 0, 0)
    assert moves(ledger) == [("expire", AVAILABLE, EXPIRED, 30)]
    ledger.check()


def test_rolling_expiry_before_the_time_expires_nothing():
    ledger = three_lots()
    assert ledger.expire_due_lots(at(6, 1) - timedelta(seconds=1)) == 0
    assert balances(ledger) == (180, 0, 0)
    assert ledger.postings == []


def test_rolling_expiry_is_idempotent():
    ledger = three_lots()
    assert ledger.expire_due_lots(at(9, 1)) == 150  # A 100 + B 50
    assert ledger.expire_due_lots(at(9, 1)) == 0
    assert balances(ledger) == (30, 0, 0)
    assert len(ledger.postings) == 2


def test_inactivity_expiry_expires_every_available_point_in_one_posting():
    ledger = three_lots()
    earn(ledger, 40, "P", pending=True, available_at=at(3, 4))
    ledger.postings.clear()
    assert ledger.expire_all("no activity for 12 months") == 180
    assert balances(ledger) == (0, 40, 0)  # pending points stay
    assert remaining(ledger) == {"A": 0, "B": 0, "C": 0, "P": 40}
    assert moves(ledger) == [("expire", AVAILABLE, EXPIRED, 180)]
    ledger.check()


def test_inactivity_expiry_of_an_empty_ledger_posts_nothing():
    ledger = MemberLedger(member_pk=1)
    assert ledger.expire_all("nothing") == 0
    assert ledger.postings == []


# -- invariants -----------------------------------------------------------------------------

def test_check_catches_lots_that_disagree_with_the_available_balance():
    ledger = three_lots()
    ledger.available += 1
    with pytest.raises(AssertionError):
        ledger.check()


def test_check_catches_lots_that_disagree_with_the_pending_balance():
    ledger = MemberLedger(member_pk=1)
    earn(ledger, 40, "P", pending=True, available_at=at(3, 4))
    ledger.lots[1].remaining = 39
    with pytest.raises(AssertionError):
        ledger.check()


def test_a_posting_must_move_a_positive_amount_between_two_accounts():
    with pytest.raises(AssertionError):
        Posting(code="earn", debit=ISSUED, credit=AVAILABLE, points=0)
    with pytest.raises(AssertionError):
        Posting(code="earn", debit=AVAILABLE, credit=AVAILABLE, points=1)


def test_the_journal_of_a_busy_member_sums_to_the_balances():
    # Given a mix of every operation
    ledger = MemberLedger(member_pk=1)
    earn(ledger, 100, "A", expires_at=at(9, 1))
    earn(ledger, 50, "B", expires_at=at(6, 1))
    earn(ledger, 30, "C", expires_at=None)
    earn(ledger, 40, "P", pending=True, available_at=at(3, 4), order_id="ord-1")
    held = ledger.hold(60, "hold")
    ledger.clawback(50, order_id="ord-1", rule_id="base", explanation="refund")
    ledger.release(60, held, "release")
    ledger.spend(25, code="redeem", credit=REDEEMED, explanation="")
    ledger.activate(at(3, 4))
    ledger.expire_due_lots(at(6, 1))
    # Then each member account's balance equals what the postings moved into it
    net = {AVAILABLE: 0, PENDING: 0, RESERVED: 0}
    for posting in ledger.postings:
        if posting.debit in net:
            net[posting.debit] -= posting.points
        if posting.credit in net:
            net[posting.credit] += posting.points
    assert net == {AVAILABLE: ledger.available, PENDING: ledger.pending, RESERVED: ledger.reserved}
    # hold 60: B 50 + A 10 -> A 90, B 0, C 30. clawback 50: P 40, then A 10 -> A 80.
    # release 60: B 50, A 90 -> 170. spend 25: B 25. activation: P has 0 left.
    # expiry on 06-01: B 25 -> available 170 - 25 - 25 = 120
    assert remaining(ledger) == {"A": 90, "B": 0, "C": 30, "P": 0}
    assert balances(ledger) == (120, 0, 0)
    ledger.check()
