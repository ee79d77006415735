"""Reversals correct a mistake with reversing postings; the journal keeps both."""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa

from setia.domain.errors import AlreadyReversed, InvalidField, UnknownReference
from setia.service import analytics as an
from setia.service import privacy
from setia.service.batch import ingest_batch
from setia.service.check import check
from setia.service.events import ingest_event
from setia.service.members import get_member, upsert_member
from setia.service.redemptions import adjust
from setia.service.reversals import reverse
from setia.service.run_due import run_due
from tests.conftest import KOPI_SETIA, assert_journal_ok, at, fixed_clock, load_programme

P = "kopi-setia"
CLOCK = fixed_clock("2027-02-01T09:00:00+08:00")


def balances(engine: sa.Engine) -> dict[str, int]:
    return get_member(engine, P, "ali", CLOCK)["balances"]


def journal_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("select count(*) from postings")).scalar_one())


def account_total(engine: sa.Engine, account: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(
            "select coalesce(sum(case when credit = :a then points else 0 end), 0)"
            " - coalesce(sum(case when debit = :a then points else 0 end), 0) from postings"),
            {"a": account}).scalar_one())


def test_reversing_a_positive_adjustment_takes_the_points_back_to_adjustments(kopi):
    # Given a member with 50 pending welcome Beans and an adjustment of +30 available
    upsert_member(kopi, P, "ali", {}, CLOCK)
    adjust(kopi, P, {"member": "ali", "points": 30, "reason": "goodwill"}, "a1", CLOCK)
    assert balances(kopi) == {"available": 30, "pending": 50, "reserved": 0}
    # When it is reversed
    result = reverse(kopi, P, {"ref": "adjust:a1", "reason": "entered twice"}, "r1", CLOCK)
    # Then the 30 go back to the adjustments account; the welcome Beans stay
    assert result["members"] == [{"member": "ali", "balances": {
        "available": 0, "pending": 50, "reserved": 0}}]
    assert account_total(kopi, "adjustments") == 0
    # And a replay of the same key answers the same, a second reversal is refused
    assert reverse(kopi, P, {"ref": "adjust:a1", "reason": "entered twice"}, "r1", CLOCK) == result
    rows = journal_rows(kopi)
    with pytest.raises(AlreadyReversed) as refused:
        reverse(kopi, P, {"ref": "adjust:a1", "reason": "again"}, "r2", CLOCK)
    assert refused.value.field == "ref"
    assert journal_rows(kopi) == rows
    assert balances(kopi) == {"available": 0, "pending": 50, "reserved": 0}
    assert_journal_ok(kopi)


def test_reversing_a_negative_adjustment_gives_the_points_back(kopi):
    upsert_member(kopi, P, "ali", {}, CLOCK)
    adjust(kopi, P, {"member": "ali", "points": 40, "reason": "promo"}, "a1", CLOCK)
    adjust(kopi, P, {"member": "ali", "points": -25, "reason": "mistake"}, "a2", CLOCK)
    assert balances(kopi)["available"] == 15
    reverse(kopi, P, {"ref": "adjust:a2", "reason": "the -25 was wrong"}, "r1", CLOCK)
    # 15 + 25 = 40 available again
    assert balances(kopi) == {"available": 40, "pending": 50, "reserved": 0}
    assert_journal_ok(kopi)


def test_reversing_a_review_takes_its_pending_points_first(kopi):
    # Given 50 welcome Beans pending and a review's 5 Beans pending
    upsert_member(kopi, P, "ali", {}, CLOCK)
    ingest_event(kopi, P, {"id": "rev-1", "type": "review", "member": "ali",
                           "occurred_at": "2027-02-01T10:00:00+08:00"}, CLOCK)
    assert balances(kopi) == {"available": 0, "pending": 55, "reserved": 0}
    # When the review is reversed, its own pending 5 go back to issued
    reverse(kopi, P, {"ref": "rev-1", "reason": "fake review"}, "r1", CLOCK)
    assert balances(kopi) == {"available": 0, "pending": 50, "reserved": 0}
    # And run-due activates only the 50 welcome Beans
    run_due(kopi, at("2027-02-10T00:00:00+08:00"))
    assert balances(kopi) == {"available": 50, "pending": 0, "reserved": 0}
    assert_journal_ok(kopi)


def test_a_purchase_or_an_unknown_reference_cannot_be_reversed(kopi):
    upsert_member(kopi, P, "ali", {}, CLOCK)
    ingest_event(kopi, P, {"id": "p1", "type": "purchase", "member": "ali", "order_id": "o1",
                           "occurred_at": "2027-02-01T10:00:00+08:00", "amount": "12.00"}, CLOCK)
    before, rows = balances(kopi), journal_rows(kopi)
    with pytest.raises(InvalidField) as purchase:
        reverse(kopi, P, {"ref": "p1", "reason": "oops"}, "r1", CLOCK)
    assert purchase.value.field == "ref"
    with pytest.raises(UnknownReference) as unknown:
        reverse(kopi, P, {"ref": "nothing-here", "reason": "oops"}, "r2", CLOCK)
    assert unknown.value.field == "ref"
    assert (balances(kopi), journal_rows(kopi)) == (before, rows)
    assert_journal_ok(kopi)


def metric_points(engine: sa.Engine) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(  # type: ignore[misc]
            "SELECT month, points FROM metric_buckets ORDER BY month"))]


def test_reversing_an_event_lowers_the_points_metric_in_the_events_month(kopi):
    # Given ali's February: 50 welcome Beans and a review's 5, both counted by the metric
    upsert_member(kopi, P, "ali", {}, CLOCK)
    ingest_event(kopi, P, {"id": "rev-1", "type": "review", "member": "ali",
                           "occurred_at": "2027-02-01T10:00:00+08:00"}, CLOCK)
    adjust(kopi, P, {"member": "ali", "points": 30, "reason": "goodwill"}, "a1", CLOCK)
    assert metric_points(kopi) == [("2027-02", 55)]

    # When the review is reversed in March, and the adjustment too
    march = fixed_clock("2027-03-02T09:00:00+08:00")
    reverse(kopi, P, {"ref": "rev-1", "reason": "fake review"}, "r1", march)
    reverse(kopi, P, {"ref": "adjust:a1", "reason": "entered twice"}, "r2", march)

    # Then February counts the welcome Beans only (an adjustment was never counted), and
    # March nothing
    assert metric_points(kopi) == [("2027-02", 50)]
    assert balances(kopi) == {"available": 0, "pending": 50, "reserved": 0}
    assert_journal_ok(kopi)


def review_cafe_with_a_campaign(engine: sa.Engine) -> None:
    """Tiers by points (Gold at 5), and ali's review rev-1: 5 points by its rule, counted,
    which made her Gold, and 20 by a campaign, never counted."""
    load_programme(engine, {
        "id": "review-cafe", "name": "Review Cafe", "currency": "MYR", "timezone": "UTC",
        "earn": [{"id": "review", "on": "review", "points": 5}],
        "campaigns": [{"id": "reviews", "name": "Review bonus", "on": "review", "points": 20}],
        "tiers": {"metric": "points", "levels": [
            {"id": "member", "name": "Member", "threshold": 0},
            {"id": "gold", "name": "Gold", "threshold": 5}]}})
    upsert_member(engine, "review-cafe", "ali", {}, CLOCK)
    result = ingest_event(engine, "review-cafe", {
        "id": "rev-1", "type": "review", "member": "ali",
        "occurred_at": "2027-02-01T10:00:00+00:00"}, CLOCK)
    assert (result["points"], result["tier"]["id"]) == (25, "gold")


def test_reversing_an_event_lowers_the_points_metric_by_its_earn_rules_points_only(engine):
    review_cafe_with_a_campaign(engine)
    assert metric_points(engine) == [("2027-02", 5)]

    # When the review is reversed (all 25 taken back)
    reverse(engine, "review-cafe", {"ref": "rev-1", "reason": "fake review"}, "r1", CLOCK)

    # Then the metric loses the 5 it counted, not 25; the tier waits for its review
    assert metric_points(engine) == [("2027-02", 0)]
    member = get_member(engine, "review-cafe", "ali", CLOCK)
    assert (member["balances"], member["tier"]["id"]) == (
        {"available": 0, "pending": 0, "reserved": 0}, "gold")
    assert_journal_ok(engine)


def test_reversing_an_event_takes_a_campaigns_points_back_under_its_rule(engine):
    review_cafe_with_a_campaign(engine)

    # When the review is reversed
    reverse(engine, "review-cafe", {"ref": "rev-1", "reason": "fake review"}, "r1", CLOCK)

    # Then the campaign's 20 go back under its rule, the rule's 5 under none
    with engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT rule_id, debit, credit, points FROM postings WHERE code = 'reverse' "
            "ORDER BY points")).all() == [(None, "available", "issued", 5),
                                          ("campaign:reviews", "available", "issued", 20)]
        assert conn.execute(sa.text(
            "SELECT awarded, kept FROM campaign_awards")).all() == [(20, 0)]
    # and the campaign's figures net them, as the check agrees
    data = an.load(engine, "review-cafe")
    frame = an.campaigns(data, an.options_for(data.programme, date(2027, 2, 1),
                                              date(2027, 2, 28)))
    assert frame.select("campaign", "points", "members").rows() == [("reviews", 0, 1)]
    assert check(engine).problems == []
    assert_journal_ok(engine)


def test_reversing_an_event_pruned_since_lowers_the_points_metric_too(engine):
    # Given tiers by points and ali's review of February (5 points, counted), in a
    # programme that keeps stored events 6 months
    load_programme(engine, {
        "id": "review-cafe", "name": "Review Cafe", "currency": "MYR", "timezone": "UTC",
        "earn": [{"id": "review", "on": "review", "points": 5}],
        "tiers": {"metric": "points", "window": "calendar_year", "levels": [
            {"id": "member", "name": "Member", "threshold": 0},
            {"id": "gold", "name": "Gold", "threshold": 100}]},
        "privacy": {"event_retention_months": 6}})
    upsert_member(engine, "review-cafe", "ali", {}, CLOCK)
    ingest_event(engine, "review-cafe", {"id": "rev-1", "type": "review", "member": "ali",
                                         "occurred_at": "2027-02-01T10:00:00+00:00"}, CLOCK)
    # and the stored events pruned in September (the journal stays)
    assert privacy.prune_events(engine, at("2027-09-01T00:00:00+00:00")) == {"review-cafe": 2}

    # When the review is reversed
    reverse(engine, "review-cafe", {"ref": "rev-1", "reason": "fake review"}, "r1",
            fixed_clock("2027-09-01T09:00:00+00:00"))

    # Then February's metric loses its 5 as it would have before the pruning
    assert metric_points(engine) == [("2027-02", 0)]
    assert account_total(engine, "available") == 0
    assert_journal_ok(engine)


@pytest.mark.postgres
def test_a_reference_is_reversed_once_when_four_admins_reverse_it_at_once(pg_engine):
    # Given an adjustment of 30 Beans, five times over
    from tests.integration.test_concurrency import all_at_once

    load_programme(pg_engine, KOPI_SETIA)
    upsert_member(pg_engine, P, "ali", {}, CLOCK)
    start = balances(pg_engine)["available"]
    outcomes = []
    for i in range(5):
        adjust(pg_engine, P, {"member": "ali", "points": 30, "reason": "goodwill"}, f"a{i}",
               CLOCK)
        # When four admins reverse it at once, each with their own idempotency key
        outcomes += all_at_once([lambda i=i, j=j: reverse(
            pg_engine, P, {"ref": f"adjust:a{i}", "reason": "entered twice"}, f"r{i}-{j}",
            CLOCK) for j in range(4)], workers=4)
    # Then each is reversed once: the others wait for the first and find its reversal
    assert sorted(kind if kind == "ok" else type(value).__name__
                  for kind, value in outcomes) == ["AlreadyReversed"] * 15 + ["ok"] * 5
    assert balances(pg_engine)["available"] == start
    assert_journal_ok(pg_engine)


INACTIVE = {"id": "inact", "name": "Inactivity", "currency": "MYR",
            "timezone": "Asia/Kuala_Lumpur",
            "points": {"pending_days": 0, "expiry": {"policy": "inactivity", "months": 6}},
            "earn": [{"id": "base", "on": "purchase", "rate": 1}]}


def inactive_member(engine: sa.Engine) -> None:
    load_programme(engine, INACTIVE)
    upsert_member(engine, "inact", "m1", {}, fixed_clock("2027-01-01T09:00:00+08:00"))
    ingest_event(engine, "inact", {"id": "p1", "type": "purchase", "member": "m1",
                                   "order_id": "o1", "amount": "80.00",
                                   "occurred_at": "2027-01-02T10:00:00+08:00"},
                 fixed_clock("2027-01-02T10:00:00+08:00"))


def available(engine: sa.Engine, when: str) -> int:
    return get_member(engine, "inact", "m1", fixed_clock(when))["balances"]["available"]


def test_an_inactivity_expiry_undone_is_not_expired_again_by_the_next_run_due(engine):
    # Given 80 Beans expired after six months without an earn or redeem
    inactive_member(engine)
    expired_at = at("2027-07-02T10:00:00+08:00")
    assert run_due(engine, expired_at, program_id="inact").points_expired == 80
    # When an admin undoes the expiry, and run-due runs a minute later
    reverse(engine, "inact", {"ref": f"run-due:{expired_at.isoformat()}",
                              "reason": "expired in error"}, "rev-1",
            fixed_clock("2027-07-03T09:00:00+08:00"))
    report = run_due(engine, at("2027-07-03T09:01:00+08:00"), program_id="inact")
    # Then the 80 stay (they were expired again: the undo did not count as activity)
    assert (report.points_expired, available(engine, "2027-07-03T09:01:00+08:00")) == (0, 80)
    assert_journal_ok(engine)


def test_goodwill_points_for_a_long_inactive_member_are_not_expired_at_once(engine):
    inactive_member(engine)
    run_due(engine, at("2027-07-02T10:00:00+08:00"), program_id="inact")
    adjust(engine, "inact", {"member": "m1", "points": 100, "reason": "goodwill"}, "adj-1",
           fixed_clock("2027-08-01T09:00:00+08:00"))
    report = run_due(engine, at("2027-08-01T09:01:00+08:00"), program_id="inact")
    assert (report.points_expired, available(engine, "2027-08-01T09:01:00+08:00")) == (0, 100)
    # and they expire six months after the adjustment, as after any earn
    assert run_due(engine, at("2028-02-01T09:00:00+08:00"),
                   program_id="inact").points_expired == 100
    assert_journal_ok(engine)


def test_a_key_or_reference_too_long_for_the_journal_is_refused_and_changes_nothing(kopi):
    # (the posting's reference adjust:<key> or reverse:<ref> passed its 200 characters: a
    # 500 at the commit on PostgreSQL)
    upsert_member(kopi, P, "ali", {}, CLOCK)
    rows = journal_rows(kopi)
    with pytest.raises(InvalidField) as refused:
        adjust(kopi, P, {"member": "ali", "points": 10, "reason": "goodwill"}, "k" * 186, CLOCK)
    assert (refused.value.field, refused.value.detail) == (
        "Idempotency-Key", "Idempotency-Key may be at most 185 characters here: the "
                           "journal's reference is reverse:adjust:<Idempotency-Key>")
    with pytest.raises(InvalidField) as refused:
        reverse(kopi, P, {"ref": "x" * 193, "reason": "typo"}, "rev-1", CLOCK)
    assert refused.value.field == "ref"
    assert journal_rows(kopi) == rows
    # the longest key an adjustment takes leaves room for its reversal
    key = "k" * 185
    adjust(kopi, P, {"member": "ali", "points": 10, "reason": "goodwill"}, key, CLOCK)
    reverse(kopi, P, {"ref": f"adjust:{key}", "reason": "typo"}, "rev-1", CLOCK)
    assert journal_rows(kopi) == rows + 2
    assert balances(kopi)["available"] == 0
    assert_journal_ok(kopi)


@pytest.mark.parametrize("event_id", ["adjust:k1", "credit-adjust:k1", "reverse:adjust:k1",
                                      "review:7", "referral:r1", "run-due:2027-02-01",
                                      "rdm_0123456789abcdef0123", "svr_0123456789abcdef0123"])
def test_an_event_id_shaped_like_a_reference_of_setias_own_postings_is_refused(kopi, event_id):
    # Given ali, and an admin's adjustment under key k1 (reference adjust:k1)
    upsert_member(kopi, P, "ali", {}, CLOCK)
    adjust(kopi, P, {"member": "ali", "points": 500, "reason": "goodwill"}, "k1", CLOCK)
    rows, before = journal_rows(kopi), balances(kopi)
    review = {"id": event_id, "type": "review", "member": "ali",
              "occurred_at": "2027-02-01T10:00:00+08:00"}
    # When a till sends an event whose id is shaped like such a reference, alone or in a batch
    with pytest.raises(InvalidField) as refused:
        ingest_event(kopi, P, review, CLOCK)
    batched = ingest_batch(kopi, P, [review], CLOCK)
    # Then it is refused by name, and nothing is written
    prefix = event_id.split(":", 1)[0] + ":" if ":" in event_id else event_id[:4]
    assert (refused.value.field, refused.value.detail) == (
        "id", f"an event id cannot begin with {prefix!r}: Setia's own postings are "
              "referenced so")
    assert batched[0]["status"] == "rejected"
    assert batched[0]["problem"]["field"] == "events[0].id"
    assert (journal_rows(kopi), balances(kopi)) == (rows, before)
    # and the adjustment is reversed alone: 500 back, nothing of an event's
    reverse(kopi, P, {"ref": "adjust:k1", "reason": "entered twice"}, "r1", CLOCK)
    assert balances(kopi) == {**before, "available": before["available"] - 500}
    assert_journal_ok(kopi)
