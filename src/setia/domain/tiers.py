"""Tiers: the metric over its window, moving up at once, reviews by run-due.

The metric (spend net of refunds, points earned net of clawbacks, or visits)
is kept per member in monthly buckets, keyed by the month (programme time
zone) of the purchase it comes from; a refund lowers the bucket of its
original purchase. ``calendar_year`` counts the twelve months of a year;
``rolling_months`` counts the current month and the ``window_months - 1``
before it (docs/decisions/tier-windows.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from dateutil.relativedelta import relativedelta

from setia.domain.programme import Level, Programme


@dataclass(slots=True)
class Bucket:
    spend: Decimal = Decimal(0)
    points: int = 0
    visits: int = 0


def counts_in_points_metric(rule_id: str | None) -> bool:
    """Whether points earned under ``rule_id`` count in the points tier metric: those of a
    programme's own earn rule, whose id holds no ``:``. Campaigns, stamp cards,
    memberships, surveys and referrals give ``<feature>:<id>`` and count in no metric;
    nor do points posted under no rule (adjustments). Reversals and fraud rejections lower
    the metric by what they take of these points; analytics' ``rule_points`` tells them
    apart by the same test."""
    return rule_id is not None and ":" not in rule_id


def month_key(local: datetime) -> str:
    return f"{local.year:04d}-{local.month:02d}"


def window_months(programme: Programme, local: datetime) -> list[str]:
    """The month keys of the window that contains ``local``."""
    tiers = programme.model.tiers
    if tiers.window == "calendar_year":
        return [f"{local.year}-{m:02d}" for m in range(1, 13)]
    assert tiers.window_months is not None
    first = local.replace(day=1) - relativedelta(months=tiers.window_months - 1)
    return [month_key(first + relativedelta(months=i)) for i in range(tiers.window_months)]


def metric_value(programme: Programme, buckets: Mapping[str, Bucket], months: list[str]) -> Decimal:
    metric = programme.model.tiers.metric
    total = Decimal(0)
    for month in months:
        bucket = buckets.get(month)
        if bucket is None:
            continue
        if metric == "spend":
            total += bucket.spend
        elif metric == "points":
            total += bucket.points
        else:
            total += bucket.visits
    return total


def level_for(programme: Programme, value: Decimal) -> Level:
    """The highest level whose threshold the metric reaches."""
    reached = programme.model.tiers.levels[0]
    for level in programme.model.tiers.levels:
        if value >= level.threshold:
            reached = level
    return reached


def rank(programme: Programme, level_id: str) -> int:
    """The level's position in the ladder (``Programme.tier_ranks``); 0 for an unknown id."""
    return programme.tier_ranks.get(level_id, 0)


def higher(programme: Programme, a: Level, b: Level) -> Level:
    return a if rank(programme, a.id) >= rank(programme, b.id) else b


def after_event(
    programme: Programme, current: Level, buckets: Mapping[str, Bucket], local: datetime
) -> Level:
    """Moving up happens as soon as the metric reaches a threshold; never down here."""
    reached = level_for(
        programme, metric_value(programme, buckets, window_months(programme, local))
    )
    return higher(programme, reached, current)


def review_period(programme: Programme, local: datetime) -> str:
    """The period a review belongs to: the year, or the day for rolling windows."""
    if programme.model.tiers.window == "calendar_year":
        return local.strftime("%Y")
    return local.strftime("%Y-%m-%d")


def review(
    programme: Programme, current: Level, buckets: Mapping[str, Bucket], local: datetime
) -> Level:
    """The tier a run-due review sets at ``local``.

    calendar_year: the highest level last year's metric reached (status earned
    in year Y lasts through Y+1), or this year's if it is already higher.
    rolling_months: the level the metric over the window reaches, up or down.
    """
    if programme.model.tiers.window == "calendar_year":
        last_year = local.replace(day=1, month=1) - relativedelta(years=1)
        earned = level_for(
            programme, metric_value(programme, buckets, window_months(programme, last_year))
        )
        this_year = level_for(
            programme, metric_value(programme, buckets, window_months(programme, local))
        )
        return higher(programme, earned, this_year)
    return level_for(programme, metric_value(programme, buckets, window_months(programme, local)))


def after_taken_back(programme: Programme, current: Level, held_then: Level,
                     buckets: Mapping[str, Bucket], local: datetime,
                     floor: Level | None = None) -> Level:
    """The tier once a purchase that may have lifted it is taken back as fraud (its spend,
    visit and points already out of ``buckets``): what the metric now earns, as a review
    at ``local`` would set it, but never below ``held_then`` (the tier held when the
    purchase was made: the order keeps it) nor a paid membership's ``floor``, and never
    above ``current``. A tier held since before the purchase, or reached by other
    purchases since, stays."""
    if rank(programme, current.id) <= rank(programme, held_then.id):
        return current
    level = higher(programme, held_then, review(programme, current, buckets, local))
    if floor is not None:
        level = higher(programme, level, floor)
    return level if rank(programme, level.id) < rank(programme, current.id) else current


def next_level(
    programme: Programme, current: Level, buckets: Mapping[str, Bucket], local: datetime
) -> dict[str, object] | None:
    """Progress toward the next level for the member view."""
    levels = programme.model.tiers.levels
    index = rank(programme, current.id)
    if index + 1 >= len(levels):
        return None
    upcoming = levels[index + 1]
    value = metric_value(programme, buckets, window_months(programme, local))
    remaining = max(upcoming.threshold - value, Decimal(0))
    metric = programme.model.tiers.metric
    return {
        "id": upcoming.id,
        "threshold": str(upcoming.threshold) if metric == "spend" else int(upcoming.threshold),
        "metric": metric,
        "remaining": str(remaining) if metric == "spend" else int(remaining),
    }
