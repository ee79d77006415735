"""Tiers: the metric over its window, moving up at once, reviews (CONTRACT.md section 1)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from setia.domain.programme import Programme, compile_programme, validate_document
from setia.domain.tiers import (
    Bucket,
    after_event,
    after_taken_back,
    higher,
    level_for,
    metric_value,
    next_level,
    rank,
    review,
    review_period,
    window_months,
)

MYT = timezone(timedelta(hours=8))
LEVELS = [
    {"id": "member", "name": "Member", "threshold": 0},
    {"id": "gold", "name": "Gold", "threshold": 350, "multiplier": 1.25},
    {"id": "platinum", "name": "Platinum", "threshold": 1000, "multiplier": 1.5},
]


def programme(**tiers: Any) -> Programme:
    doc = {
        "id": "kopi-setia",
        "name": "Kopi Setia",
        "currency": "MYR",
        "timezone": "Asia/Kuala_Lumpur",
        "tiers": {"metric": "spend", "window": "calendar_year", "levels": LEVELS, **tiers},
    }
    return compile_programme(validate_document(doc), version=1)


def local(year: int, month: int, day: int, hour: int = 10) -> datetime:
    return datetime(year, month, day, hour, tzinfo=MYT)


def spend(**months: str) -> dict[str, Bucket]:
    """spend(m2027_06="400.00") -> {"2027-06": Bucket(spend=400.00)}"""
    return {key[1:].replace("_", "-"): Bucket(spend=Decimal(value))
            for key, value in months.items()}


@pytest.mark.parametrize(
    ("value", "level"),
    [
        ("0", "member"),
        ("349.99", "member"),
        ("350.00", "gold"),
        ("999.99", "gold"),
        ("1000.00", "platinum"),
        ("5000.00", "platinum"),
    ],
)
def test_level_for_is_the_highest_level_whose_threshold_is_reached(value: str, level: str):
    assert level_for(programme(), Decimal(value)).id == level


def test_a_member_moves_up_as_soon_as_the_metric_reaches_a_threshold():
    prog = programme()
    # Given 300.00 spent earlier in March and 50.00 now: 350.00 in 2027
    buckets = spend(m2027_03="350.00")
    assert after_event(prog, prog.level("member"), buckets, local(2027, 3, 20)).id == "gold"


def test_after_event_never_moves_down():
    prog = programme()
    # Given a Gold member whose 2027 spend is only 100.00 (after a refund, say)
    buckets = spend(m2027_03="100.00")
    assert after_event(prog, prog.level("gold"), buckets, local(2027, 3, 20)).id == "gold"


def test_after_event_with_calendar_year_counts_only_this_year():
    prog = programme()
    # Given 400.00 spent in December 2026 and nothing in 2027
    buckets = spend(m2026_12="400.00")
    assert after_event(prog, prog.level("member"), buckets, local(2027, 1, 2)).id == "member"


def test_calendar_year_window_is_the_twelve_months_of_the_year():
    months = window_months(programme(), local(2027, 7, 15))
    assert months == [f"2027-{m:02d}" for m in range(1, 13)]


def test_calendar_year_status_earned_in_y_lasts_through_y_plus_1():
    prog = programme()
    # Given 400.00 spent in June 2027 (Gold reached in 2027)
    buckets = spend(m2027_06="400.00")
    # When the review runs at the start of 2028, with nothing spent in 2028
    tier = review(prog, prog.level("gold"), buckets, local(2028, 1, 1, 0))
    # Then the member stays Gold for 2028
    assert tier.id == "gold"
    # And a review late in 2028 still keeps Gold
    assert review(prog, tier, buckets, local(2028, 12, 31, 23)).id == "gold"


def test_calendar_year_status_drops_in_y_plus_2():
    prog = programme()
    buckets = spend(m2027_06="400.00")
    # Nothing spent in 2028: the review at the start of 2029 drops the member to Member
    assert review(prog, prog.level("gold"), buckets, local(2029, 1, 1, 0)).id == "member"


def test_calendar_year_review_drops_platinum_to_the_level_last_year_reached():
    prog = programme()
    buckets = spend(m2027_06="400.00")
    assert review(prog, prog.level("platinum"), buckets, local(2028, 1, 1, 0)).id == "gold"


def test_calendar_year_review_keeps_a_level_already_reached_this_year():
    prog = programme()
    # Nothing in 2027, 1000.00 in January 2028
    buckets = spend(m2028_01="1000.00")
    assert review(prog, prog.level("member"), buckets, local(2028, 2, 1)).id == "platinum"


def test_review_period_is_the_year_for_calendar_year():
    assert review_period(programme(), local(2028, 1, 1, 0)) == "2028"


def test_rolling_window_is_the_current_month_and_the_months_before_it():
    prog = programme(window="rolling_months", window_months=3)
    assert window_months(prog, local(2027, 3, 15)) == ["2027-01", "2027-02", "2027-03"]
    # across a year boundary
    assert window_months(prog, local(2027, 1, 31)) == ["2026-11", "2026-12", "2027-01"]


def test_a_twelve_month_rolling_window():
    prog = programme(window="rolling_months", window_months=12)
    months = window_months(prog, local(2027, 3, 31))
    assert months[0] == "2026-04"
    assert months[-1] == "2027-03"
    assert len(months) == 12


def test_rolling_review_sets_the_level_of_the_window_up_or_down():
    prog = programme(window="rolling_months", window_months=3)
    # Given 400.00 spent in December 2026
    buckets = spend(m2026_12="400.00")
    # In February 2027 the window is Dec-Feb: Gold
    assert review(prog, prog.level("member"), buckets, local(2027, 2, 15)).id == "gold"
    # In March 2027 the window is Jan-Mar: back to Member
    assert review(prog, prog.level("gold"), buckets, local(2027, 3, 1)).id == "member"


def test_review_period_is_the_day_for_rolling_windows():
    prog = programme(window="rolling_months", window_months=3)
    assert review_period(prog, local(2027, 3, 1)) == "2027-03-01"


def test_metric_sums_spend_net_of_refunds_over_the_window():
    prog = programme()
    # Given 300.00 in March and 120.00 in May less a 70.00 refund booked to May
    buckets = spend(m2027_03="300.00", m2027_05="50.00", m2026_12="999.00")
    assert metric_value(prog, buckets, window_months(prog, local(2027, 6, 1))) == Decimal("350.00")


def test_points_metric():
    prog = programme(metric="points")
    buckets = {"2027-03": Bucket(points=200), "2027-04": Bucket(points=150)}
    # 200 + 150 = 350 -> Gold
    assert metric_value(prog, buckets, window_months(prog, local(2027, 4, 1))) == 350
    assert after_event(prog, prog.level("member"), buckets, local(2027, 4, 1)).id == "gold"


def test_visits_metric():
    prog = programme(metric="visits", levels=[
        {"id": "member", "name": "Member", "threshold": 0},
        {"id": "regular", "name": "Regular", "threshold": 10},
    ])
    buckets = {"2027-03": Bucket(visits=9)}
    assert after_event(prog, prog.level("member"), buckets, local(2027, 3, 5)).id == "member"
    buckets = {"2027-03": Bucket(visits=10)}
    assert after_event(prog, prog.level("member"), buckets, local(2027, 3, 5)).id == "regular"


def test_next_level_shows_what_remains_to_the_next_threshold():
    prog = programme()
    buckets = spend(m2027_03="100.00")
    progress = next_level(prog, prog.level("member"), buckets, local(2027, 3, 20))
    # 350 - 100.00 = 250.00
    assert progress == {"id": "gold", "threshold": "350", "metric": "spend",
                        "remaining": "250.00"}


def test_next_level_remaining_is_never_negative():
    prog = programme()
    # A Gold member kept from last year has already spent 1200.00 this year
    buckets = spend(m2027_03="1200.00")
    progress = next_level(prog, prog.level("gold"), buckets, local(2027, 3, 20))
    assert progress is not None
    assert progress["id"] == "platinum"
    assert Decimal(str(progress["remaining"])) == 0


def test_next_level_of_the_top_level_is_none():
    prog = programme()
    assert next_level(prog, prog.level("platinum"), {}, local(2027, 3, 20)) is None


def test_next_level_of_a_whole_number_metric_is_an_int():
    prog = programme(metric="visits", levels=[
        {"id": "member", "name": "Member", "threshold": 0},
        {"id": "regular", "name": "Regular", "threshold": 10},
    ])
    progress = next_level(prog, prog.level("member"), {"2027-03": Bucket(visits=4)},
                          local(2027, 3, 5))
    assert progress == {"id": "regular", "threshold": 10, "metric": "visits", "remaining": 6}


def test_ranks_are_the_programmes_own_positions_of_its_levels():
    prog = programme()
    assert prog.tier_ranks == {"member": 0, "gold": 1, "platinum": 2}
    assert prog.tier_ranks is prog.tier_ranks  # worked out once per programme version
    assert [rank(prog, i) for i in ("member", "gold", "platinum", "bronze")] == [0, 1, 2, 0]
    assert higher(prog, prog.level("gold"), prog.level("platinum")).id == "platinum"
    assert higher(prog, prog.level("gold"), prog.level("member")).id == "gold"
    assert higher(prog, prog.level("member"), prog.level("member")).id == "member"
    # an unknown id (or none) is the first level, as its rank is the first's
    assert prog.level("bronze").id == "member" and prog.level(None).id == "member"
    assert prog.level("platinum").threshold == Decimal(1000)


@pytest.mark.parametrize(("current", "held_then", "buckets", "floor", "expected"), [
    # a lift to Platinum taken back: what this year's RM 400 earns (Gold)
    ("platinum", "member", {"m2027_03": "400.00"}, None, "gold"),
    # never below the tier held when the purchase was made
    ("platinum", "gold", {"m2027_03": "100.00"}, None, "gold"),
    # nor below a paid membership's floor
    ("platinum", "member", {"m2027_03": "100.00"}, "gold", "gold"),
    # nor below the status last year's metric earned (calendar year: it lasts this year)
    ("platinum", "member", {"m2026_05": "1200.00", "m2027_03": "100.00"}, None, "platinum"),
    # reached by the other purchases still: stays
    ("gold", "member", {"m2027_03": "350.00"}, None, "gold"),
    # the purchase lifted nothing (held then as now): stays, even where the metric is lower
    ("gold", "gold", {}, None, "gold"),
])
def test_a_tier_lift_taken_back_goes_back_to_what_the_metric_earns(
        current: str, held_then: str, buckets: dict[str, str], floor: str | None,
        expected: str) -> None:
    p = programme()
    level = after_taken_back(p, p.level(current), p.level(held_then), spend(**buckets),
                             local(2027, 3, 20), p.level(floor) if floor else None)
    assert level.id == expected
