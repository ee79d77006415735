"""``check`` verifies the journal from the database and finds tampering."""

from __future__ import annotations

import sqlalchemy as sa

from setia.service.check import check
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from setia.service.redemptions import adjust, redeem
from tests.conftest import assert_journal_ok, fixed_clock

P = "kopi-setia"
CLOCK = fixed_clock("2027-03-01T09:00:00+08:00")


def given_some_activity(engine: sa.Engine) -> None:
    # welcome 50 + purchase 12.30 (base 12, first-visit 100) pending; 1000 adjusted in,
    # 150 redeemed, 400 held
    upsert_member(engine, P, "cust-1", {}, CLOCK)
    ingest_event(engine, P, {"id": "e1", "type": "purchase", "member": "cust-1",
                             "order_id": "o1", "occurred_at": "2027-03-02T10:00:00+08:00",
                             "amount": "12.30"}, CLOCK)
    adjust(engine, P, {"member": "cust-1", "points": 1000, "reason": "opening"}, "a1", CLOCK)
    redeem(engine, P, {"member": "cust-1", "reward": "free-latte"}, "r1", CLOCK)
    redeem(engine, P, {"member": "cust-1", "reward": "rm10-off", "hold": True}, "r2", CLOCK)


def test_a_clean_journal_passes_with_programme_totals(kopi):
    given_some_activity(kopi)

    report = check(kopi)

    # issued -(50 + 112), adjustments -1000, redeemed +150; member side 450 + 162 + 400
    assert report.ok
    assert report.problems == []
    assert report.members == 1
    assert report.totals == {P: {"issued": -162, "adjustments": -1000, "redeemed": 150}}
    assert_journal_ok(kopi)


def test_a_cached_balance_changed_behind_the_journal_is_reported(kopi):
    given_some_activity(kopi)

    # When someone adds 5 to the cached balance with SQL
    with kopi.begin() as conn:
        conn.execute(sa.text("UPDATE members SET available = available + 5"))

    # Then check reports both the journal and the lots disagreeing
    report = check(kopi)
    assert not report.ok
    assert report.problems == [
        f"{P}/cust-1: cached available 455 but the journal says 450",
        f"{P}/cust-1: lots hold 450 available points, balance is 455",
    ]


def test_a_deleted_lot_is_reported(kopi):
    given_some_activity(kopi)

    # When the pending lot of the purchase (112) is deleted
    with kopi.begin() as conn:
        conn.execute(sa.text("DELETE FROM lots WHERE source = 'e1'"))

    # Then check reports the pending lots short of the pending balance
    report = check(kopi)
    assert report.problems == [f"{P}/cust-1: pending lots hold 50, pending balance is 162"]


def test_a_deleted_posting_breaks_the_zero_sum(kopi):
    given_some_activity(kopi)

    # When the 150-point redemption posting is deleted
    with kopi.begin() as conn:
        conn.execute(sa.text("DELETE FROM postings WHERE code = 'redeem'"))

    # Then the cached balance no longer matches the journal (each posting names two
    # accounts, so the zero sum itself still holds)
    # and the hold after it says 450 were left available, where the journal now says 600
    with kopi.connect() as conn:
        hold, member_pk = conn.execute(sa.text(
            "SELECT id, member_pk FROM postings WHERE code = 'hold'")).one()
    report = check(kopi)
    assert report.problems == [
        f"{P}/cust-1: cached available 450 but the journal says 600",
        f"posting {hold}: member #{member_pk}'s points available after it is 450, the "
        "journal says 600"]
    assert "redeemed" not in report.totals[P]


def test_a_hold_changed_behind_the_journal_is_reported(kopi):
    given_some_activity(kopi)

    with kopi.begin() as conn:
        conn.execute(sa.text("UPDATE redemptions SET status = 'released' WHERE status = 'held'"))

    report = check(kopi)
    assert report.problems == [f"{P}/cust-1: open holds reserve 0, reserved balance is 400"]


def test_points_moved_between_lots_and_a_wrong_balance_after_are_reported(kopi):
    given_some_activity(kopi)
    with kopi.connect() as conn:
        lots = conn.execute(sa.text("SELECT seq, points, remaining, pending FROM lots "
                                    "ORDER BY seq")).all()
        last = conn.execute(sa.text("SELECT max(id) FROM postings")).scalar_one()
        member_pk = conn.execute(sa.text("SELECT pk FROM members")).scalar_one()
    assert [tuple(row) for row in lots] == [(1, 50, 50, True), (2, 112, 112, True),
                                            (3, 1000, 450, False)]
    # When 60 points are moved from one pending lot to the other (the sums stay right),
    # and the balance after the last posting is changed
    with kopi.begin() as conn:
        conn.execute(sa.text("UPDATE lots SET remaining = remaining - 60 WHERE seq = 1"))
        conn.execute(sa.text("UPDATE lots SET remaining = remaining + 60 WHERE seq = 2"))
        conn.execute(sa.text("UPDATE postings SET debit_balance_after = 999 WHERE id = :id"),
                     {"id": last})
    # Then check names the two lots and the posting (it saw nothing wrong before)
    assert check(kopi).problems == [
        f"member #{member_pk}: lot 1 keeps -10 of its 50 points",
        f"member #{member_pk}: lot 2 keeps 172 of its 112 points",
        f"posting {last}: member #{member_pk}'s points available after it is 999, the "
        "journal says 450"]
