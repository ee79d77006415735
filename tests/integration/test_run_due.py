"""run-due: expiry, pending activation, tier reviews, birthdays, holds; idempotent per as_of."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from setia.service import privacy
from setia.service.events import ingest_event
from setia.service.members import get_member, upsert_member
from setia.service.programmes import parse_text
from setia.service.redemptions import adjust, redeem
from setia.service.run_due import run_due
from tests.conftest import KOPI_SETIA, assert_journal_ok, at, fixed_clock, load_programme

P = "kopi-setia"
JAN = fixed_clock("2027-01-04T09:00:00+08:00")  # Monday

INACTIVITY = {
    "id": "idle", "name": "Idle", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "points": {"pending_days": 0, "expiry": {"policy": "inactivity", "months": 6}},
    "earn": [{"id": "base", "on": "purchase", "rate": 1}],
}

ROLLING_TIERS = {
    "id": "roll", "name": "Roll", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "earn": [{"id": "base", "on": "purchase", "rate": 1}],
    "tiers": {"metric": "spend", "window": "rolling_months", "window_months": 3,
              "levels": [{"id": "member", "name": "Member", "threshold": 0},
                         {"id": "silver", "name": "Silver", "threshold": 100,
                          "multiplier": 2}]},
}


def purchase(engine: sa.Engine, program: str, event_id: str, when: str, amount: str,
             member: str = "cust-1") -> dict[str, Any]:
    return ingest_event(engine, program, {
        "id": event_id, "type": "purchase", "member": member, "order_id": event_id,
        "occurred_at": when, "amount": amount}, JAN)


def view(engine: sa.Engine, program: str = P, member: str = "cust-1",
         now: str = "2027-01-04T09:00:00+08:00") -> dict[str, Any]:
    return get_member(engine, program, member, fixed_clock(now))


def state(engine: sa.Engine) -> tuple[int, list[tuple[Any, ...]]]:
    """The journal size and every member's cached state."""
    with engine.connect() as conn:
        postings = conn.execute(sa.text("SELECT count(*) FROM postings")).scalar_one()
        members = conn.execute(sa.text(
            "SELECT id, available, pending, reserved, tier_id, tier_reviewed, birthday_year "
            "FROM members ORDER BY pk")).all()
    return postings, [tuple(row) for row in members]


def test_rolling_expiry_takes_each_lot_six_months_after_it_became_available(kopi):
    # Given welcome 50 (available 2027-01-07T09:00, expires 2027-07-07T09:00) and a
    # RM 20.00 purchase on 2027-02-02 = base 20 + first-visit 100 (available
    # 2027-02-05T10:00, expires 2027-08-05T10:00), both activated
    upsert_member(kopi, P, "cust-1", {}, JAN)
    purchase(kopi, P, "e1", "2027-02-02T10:00:00+08:00", "20.00")
    assert run_due(kopi, at("2027-02-06T00:00:00+08:00"), P).points_activated == 170
    # and 30 spent, taken from the lot that expires first: welcome 50 -> 20
    redeem(kopi, P, {"member": "cust-1", "points": 30}, "pay-1",
           fixed_clock("2027-03-01T10:00:00+08:00"))

    # Then 30 days before, the 20 show as expiring
    expiring = view(kopi, now="2027-06-10T00:00:00+08:00")["expiring"]
    assert [(e["points"], at(e["expires_at"])) for e in expiring] == [
        (20, at("2027-07-07T09:00:00+08:00"))]

    # When run-due runs one minute before, then at the welcome lot's expiry
    assert run_due(kopi, at("2027-07-07T08:59:00+08:00"), P).points_expired == 0
    assert run_due(kopi, at("2027-07-07T09:00:00+08:00"), P).points_expired == 20

    # Then 120 remain until the purchase lot expires too
    assert view(kopi)["balances"] == {"available": 120, "pending": 0, "reserved": 0}
    assert run_due(kopi, at("2027-08-05T10:00:00+08:00"), P).points_expired == 120
    assert view(kopi)["balances"] == {"available": 0, "pending": 0, "reserved": 0}
    assert_journal_ok(kopi)


def test_inactivity_expiry_takes_every_point_six_months_after_the_last_earn(engine):
    # Given a programme without pending days whose points expire after 6 idle months,
    # and purchases of 100.00 on 2027-01-10 and 50.00 on 2027-03-10
    load_programme(engine, INACTIVITY)
    upsert_member(engine, "idle", "cust-1", {}, JAN)
    purchase(engine, "idle", "e1", "2027-01-10T10:00:00+08:00", "100.00")
    purchase(engine, "idle", "e2", "2027-03-10T10:00:00+08:00", "50.00")

    # When run-due runs 6 months after the first purchase, and just before 6 months
    # after the last
    assert run_due(engine, at("2027-07-10T10:00:00+08:00"), "idle").points_expired == 0
    assert run_due(engine, at("2027-09-10T09:59:00+08:00"), "idle").points_expired == 0
    assert view(engine, "idle")["balances"]["available"] == 150

    # When it runs 6 months after the last earn
    report = run_due(engine, at("2027-09-10T10:00:00+08:00"), "idle")

    # Then all 150 expire at once
    assert report.points_expired == 150
    assert view(engine, "idle")["balances"] == {"available": 0, "pending": 0, "reserved": 0}
    assert_journal_ok(engine)


def test_a_redemption_counts_as_activity_for_inactivity_expiry(engine):
    # Given 100 earned on 2027-01-10 and 10 redeemed on 2027-05-01
    load_programme(engine, INACTIVITY)
    upsert_member(engine, "idle", "cust-1", {}, JAN)
    purchase(engine, "idle", "e1", "2027-01-10T10:00:00+08:00", "100.00")
    redeem(engine, "idle", {"member": "cust-1", "points": 10}, "pay",
           fixed_clock("2027-05-01T10:00:00+08:00"))

    # Then nothing expires 6 months after the earn, all 90 do 6 months after the redemption
    assert run_due(engine, at("2027-07-10T10:00:00+08:00"), "idle").points_expired == 0
    assert run_due(engine, at("2027-11-01T10:00:00+08:00"), "idle").points_expired == 90
    assert view(engine, "idle")["balances"]["available"] == 0
    assert_journal_ok(engine)


def test_inactivity_expiry_counts_months_in_the_programmes_time_zone(engine):
    # Given 100 earned on 1 March 07:00 in Kuala Lumpur (28 February 23:00 UTC), in a
    # programme whose points expire after 6 idle months
    load_programme(engine, INACTIVITY)
    upsert_member(engine, "idle", "cust-1", {}, JAN)
    purchase(engine, "idle", "e1", "2027-03-01T07:00:00+08:00", "100.00")

    # When run-due runs, on a clock in UTC as the worker's, at 28 August 23:00 UTC
    # (6 months counted in UTC; 29 August 07:00 local): nothing expires, and the
    # reminder and the member view name 1 September 07:00 in Kuala Lumpur
    assert run_due(engine, at("2027-08-28T23:00:00+00:00"), "idle").points_expired == 0
    with engine.connect() as conn:
        notices = [json.loads(data)["expires_at"] for (data,) in conn.execute(sa.text(
            "SELECT data FROM outbox WHERE type = 'points.expiring'"))]
    expiring = view(engine, "idle", now="2027-08-29T07:00:00+08:00")["expiring"]
    assert notices == ["2027-08-31T23:00:00+00:00"]
    assert expiring == [{"points": 100, "expires_at": "2027-08-31T23:00:00+00:00"}]
    assert at(notices[0]) == at("2027-09-01T07:00:00+08:00")

    # When it runs one minute before 1 September 07:00 local, then at it
    assert run_due(engine, at("2027-08-31T22:59:00+00:00"), "idle").points_expired == 0
    assert view(engine, "idle")["balances"]["available"] == 100
    assert run_due(engine, at("2027-08-31T23:00:00+00:00"), "idle").points_expired == 100

    # Then all 100 are gone
    assert view(engine, "idle")["balances"] == {"available": 0, "pending": 0, "reserved": 0}
    assert_journal_ok(engine)


def test_calendar_year_status_earned_in_2027_lasts_through_2028(kopi):
    # Given a member who reached gold with RM 400.00 in May 2027
    upsert_member(kopi, P, "cust-1", {}, JAN)
    purchase(kopi, P, "e1", "2027-05-04T10:00:00+08:00", "400.00")
    assert view(kopi)["tier"]["id"] == "gold"

    # When run-due runs on the last evening of 2027 (Kuala Lumpur), no review is due
    assert run_due(kopi, at("2027-12-31T15:59:00+00:00"), P).tiers_reviewed == 0

    # When it runs at midnight in Kuala Lumpur (16:00 UTC)
    new_year = run_due(kopi, at("2027-12-31T16:00:00+00:00"), P)

    # Then 2027's 400.00 keeps gold for 2028
    assert (new_year.tiers_reviewed, new_year.tiers_changed) == (1, 0)
    assert view(kopi)["tier"]["id"] == "gold"
    assert run_due(kopi, at("2028-12-31T23:59:00+08:00"), P).tiers_reviewed == 0
    assert view(kopi)["tier"]["id"] == "gold"

    # When 2029 begins with nothing spent in 2028
    report = run_due(kopi, at("2029-01-01T00:00:00+08:00"), P)

    # Then the member is back to Member
    assert (report.tiers_reviewed, report.tiers_changed) == (1, 1)
    assert view(kopi)["tier"]["id"] == "member"
    assert_journal_ok(kopi)


def test_a_rolling_months_review_sets_the_level_of_the_last_window(engine):
    # Given silver at 100.00 over 3 months, and 150.00 spent on 2027-01-10
    load_programme(engine, ROLLING_TIERS)
    upsert_member(engine, "roll", "cust-1", {}, JAN)
    purchase(engine, "roll", "e1", "2027-01-10T10:00:00+08:00", "150.00")
    assert view(engine, "roll")["tier"]["id"] == "silver"

    # When run-due reviews on 2027-03-31 (window January to March)
    march = run_due(engine, at("2027-03-31T12:00:00+08:00"), "roll")
    assert (march.tiers_reviewed, march.tiers_changed) == (1, 0)
    assert view(engine, "roll")["tier"]["id"] == "silver"

    # When it reviews on 2027-04-01 (window February to April: nothing spent)
    april = run_due(engine, at("2027-04-01T00:00:00+08:00"), "roll")

    # Then the member goes down to Member
    assert (april.tiers_reviewed, april.tiers_changed) == (1, 1)
    assert view(engine, "roll")["tier"]["id"] == "member"
    assert_journal_ok(engine)


def test_a_birthday_is_celebrated_once_a_year_on_its_local_day(kopi):
    # Given a member born on 17 May, enrolled in January (welcome 50)
    upsert_member(kopi, P, "cust-1", {"birthday": "1990-05-17"}, JAN)

    # When run-due runs at 23:59:59 on 16 May in Kuala Lumpur
    assert run_due(kopi, at("2027-05-16T15:59:59+00:00"), P).birthdays == 0

    # When it runs at midnight of 17 May in Kuala Lumpur
    report = run_due(kopi, at("2027-05-16T16:00:00+00:00"), P)

    # Then the birthday pays 250, pending like any earning; the welcome 50 activated
    assert report.birthdays == 1
    assert view(kopi)["balances"] == {"available": 50, "pending": 250, "reserved": 0}

    # When run-due runs again at the same time and later that year
    before = state(kopi)
    again = run_due(kopi, at("2027-05-16T16:00:00+00:00"), P)
    assert again.birthdays == 0
    assert state(kopi) == before
    assert run_due(kopi, at("2027-12-31T12:00:00+08:00"), P).birthdays == 0

    # Then only next year's birthday pays again; by then 2027's points (available
    # 2027-01-07 and 2027-05-20) have expired after 6 months
    assert run_due(kopi, at("2028-05-17T08:00:00+08:00"), P).birthdays == 1
    assert view(kopi)["balances"] == {"available": 0, "pending": 250, "reserved": 0}
    assert_journal_ok(kopi)


def test_a_birthday_already_paid_this_year_under_the_same_id_is_skipped(kopi):
    # Given a member born on 17 May whose 2027 birthday was paid, then erased, and who
    # enrolled again under the same id with the same birthday the same afternoon
    upsert_member(kopi, P, "cust-1", {"birthday": "1990-05-17"}, JAN)
    upsert_member(kopi, P, "cust-2", {"birthday": "1985-05-18"}, JAN)
    assert run_due(kopi, at("2027-05-17T00:05:00+08:00"), P).birthdays == 1
    privacy.erase_member(kopi, P, "cust-1", "erase-1", fixed_clock("2027-05-17T10:00:00+08:00"))
    upsert_member(kopi, P, "cust-1", {"birthday": "1990-05-17"},
                  fixed_clock("2027-05-17T15:00:00+08:00"))

    # When run-due runs the next day (cust-2's birthday)
    report = run_due(kopi, at("2027-05-18T00:05:00+08:00"), P)

    # Then cust-2 is paid and cust-1 skipped: "birthday:cust-1:2027" holds the first
    # one's, which stays on the pseudonymous account; she is not tried again this year
    assert report.birthdays == 1
    assert view(kopi, member="cust-1")["balances"] == {"available": 0, "pending": 0,
                                                       "reserved": 0}
    with kopi.connect() as conn:
        refs = conn.execute(sa.text(
            "SELECT ref, points FROM postings WHERE rule_id = 'birthday' ORDER BY id")).all()
        year = conn.execute(sa.text(
            "SELECT birthday_year FROM members WHERE id = 'cust-1'")).scalar_one()
    assert [tuple(r) for r in refs] == [("birthday:cust-1:2027", 250),
                                        ("birthday:cust-2:2027", 250)]
    assert year == 2027
    assert run_due(kopi, at("2027-05-19T00:05:00+08:00"), P).birthdays == 0
    assert_journal_ok(kopi)


@pytest.mark.postgres
def test_a_birthday_id_pruned_but_registered_is_skipped_on_postgresql(pg_engine):
    # Given Kopi Setia keeping events 3 months, a member born on 10 January whose 2027
    # birthday was paid, her events pruned in May (PostgreSQL keeps their ids), then
    # erased, and enrolled again under the same id with a birthday on 1 October
    document = parse_text(KOPI_SETIA.read_text())
    document.update(privacy={"event_retention_months": 3})
    load_programme(pg_engine, document)
    upsert_member(pg_engine, P, "cust-1", {"birthday": "1990-01-10"}, JAN)
    assert run_due(pg_engine, at("2027-01-10T00:05:00+08:00"), P).birthdays == 1
    assert privacy.prune_events(pg_engine, at("2027-05-01T00:00:00+08:00")) == {P: 2}
    privacy.erase_member(pg_engine, P, "cust-1", "erase-1",
                         fixed_clock("2027-05-01T10:00:00+08:00"))
    upsert_member(pg_engine, P, "cust-1", {"birthday": "1990-10-01"},
                  fixed_clock("2027-05-02T10:00:00+08:00"))
    # and cust-2, born on 1 October too, in the same batch of run-due's members
    upsert_member(pg_engine, P, "cust-2", {"birthday": "1988-10-01"},
                  fixed_clock("2027-05-02T11:00:00+08:00"))

    # When run-due runs on 1 October
    report = run_due(pg_engine, at("2027-10-01T00:05:00+08:00"), P)

    # Then her birthday is skipped (posting "birthday:cust-1:2027" again collides with its
    # registered id; the batch's retry finds it), and not tried again this year; cust-2's
    # is paid and counted once, though the batch that pays it ran twice
    assert report.birthdays == 1
    assert view(pg_engine, member="cust-1")["balances"]["pending"] == 0
    assert view(pg_engine, member="cust-2")["balances"]["pending"] == 250
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT birthday_year FROM members WHERE id = 'cust-1'")
                            ).scalar_one() == 2027
    assert run_due(pg_engine, at("2027-10-02T00:05:00+08:00"), P).birthdays == 0
    assert_journal_ok(pg_engine)


def test_a_29_february_birthday_is_celebrated_on_28_february_in_2027(kopi):
    # Given a member born on 29 February 2000
    upsert_member(kopi, P, "cust-1", {"birthday": "2000-02-29"}, JAN)

    # When run-due runs on 27 February, then on 28 February 2027 (no 29th)
    assert run_due(kopi, at("2027-02-27T23:59:00+08:00"), P).birthdays == 0
    assert run_due(kopi, at("2027-02-28T00:00:00+08:00"), P).birthdays == 1
    assert run_due(kopi, at("2027-03-01T00:00:00+08:00"), P).birthdays == 0

    # Then the 250 were posted once, under the 2027 birthday event
    with kopi.connect() as conn:
        refs = conn.execute(sa.text(
            "SELECT ref, points FROM postings WHERE rule_id = 'birthday'")).all()
    assert [tuple(r) for r in refs] == [("birthday:cust-1:2027", 250)]
    assert_journal_ok(kopi)


def test_running_run_due_twice_with_the_same_time_changes_nothing(kopi):
    # Given a bit of everything due on 2028-01-01: an open hold, pending points,
    # an expiring lot, a tier review and a birthday
    upsert_member(kopi, P, "a", {"birthday": "1990-01-01"}, JAN)
    upsert_member(kopi, P, "b", {"birthday": "1985-06-30"}, JAN)
    purchase(kopi, P, "e1", "2027-05-04T10:00:00+08:00", "400.00", member="a")
    purchase(kopi, P, "e2", "2027-12-30T10:00:00+08:00", "30.00", member="b")
    adjust(kopi, P, {"member": "b", "points": 500, "reason": "gift"}, "gift",
           fixed_clock("2027-06-01T10:00:00+08:00"))
    redeem(kopi, P, {"member": "b", "reward": "free-latte", "hold": True}, "hold",
           fixed_clock("2027-12-31T23:00:00+08:00"))
    as_of = at("2028-01-01T00:00:00+08:00")

    # When run-due runs
    first = run_due(kopi, as_of, P)

    # Then: the hold (23:00 + 15 min) released; a: welcome 50 and 400 + 100 activated,
    # expiring 2027-07-07 and 2027-11-07, so all 550 expire; b: welcome 50 activated and
    # expired (2027-07-07), the 30 + 100 of 2027-12-30 still pending, the 500 gift expired
    # (2027-12-01); a review for both (a keeps gold); a's birthday 250 pending
    assert first.holds_released == 1
    assert first.points_activated == 50 + 500 + 50
    assert first.points_expired == 550 + 50 + 500
    assert (first.tiers_reviewed, first.tiers_changed) == (2, 0)
    assert first.birthdays == 1
    assert view(kopi, member="a")["balances"] == {"available": 0, "pending": 250, "reserved": 0}
    assert view(kopi, member="b")["balances"] == {"available": 0, "pending": 130, "reserved": 0}
    assert view(kopi, member="a")["tier"]["id"] == "gold"
    before = state(kopi)

    # When it runs again with the same as_of
    second = run_due(kopi, as_of, P)

    # Then it did nothing
    assert (second.holds_released, second.points_activated, second.points_expired,
            second.tiers_reviewed, second.tiers_changed, second.birthdays) == (0, 0, 0, 0, 0, 0)
    assert state(kopi) == before
    assert_journal_ok(kopi)


def test_a_rolling_expiry_names_the_day_earned_on_the_programmes_clock(kopi):
    # Given 5 Beans of a purchase at 07:00 on 1 March in Kuala Lumpur, available three
    # days later at 07:00 there (23:00 on 3 March in UTC)
    upsert_member(kopi, P, "cust-1", {}, fixed_clock("2027-02-01T09:00:00+08:00"))
    purchase(kopi, P, "e1", "2027-03-01T07:00:00+08:00", "5.00")
    run_due(kopi, at("2027-03-04T07:00:00+08:00"), P)
    # When they expire six months on
    run_due(kopi, at("2027-09-04T07:00:00+08:00"), P)
    # Then the expiry says the day of Kuala Lumpur, not of UTC
    with kopi.connect() as conn:
        texts = conn.execute(sa.text("SELECT explanation FROM postings WHERE code = 'expire' "
                                     "ORDER BY id")).scalars().all()
    assert texts == ["50 points earned 2027-02-04 expired",
                     "5 points earned 2027-03-04 expired"]  # was 2027-03-03
    assert_journal_ok(kopi)
