"""What-if: replay events through two programme versions side by side, with the same
``earning.evaluate`` and tier rules as live ingestion, and nothing stored.

Each member starts the period with its tier, its purchases so far, its tier buckets
of the months before the period, and no limit usage inside the period. Purchases
add to the buckets and move the tier up as live ingestion does; run-due's tier
reviews, expiry and refunds are not replayed (docs/decisions/whatif.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from setia.domain import earning, tiers
from setia.domain.events import Event
from setia.domain.programme import Programme


@dataclass(slots=True)
class Side:
    """One member under one programme during the replay."""

    tier_id: str
    buckets: dict[str, tiers.Bucket]
    usage: dict[tuple[str, str], int] = field(default_factory=dict)
    points: int = 0


@dataclass(slots=True)
class MemberStart:
    id: str
    tier_id: str
    purchases: int
    attributes: Mapping[str, Any]
    enrolled_at: datetime
    buckets: Mapping[str, tiers.Bucket]  # months before the period: read, never changed


@dataclass
class Replay:
    """Points per member and rule under each programme, and the tiers at the end."""

    points: dict[str, tuple[int, int]] = field(default_factory=dict)  # member -> (a, b)
    rules: dict[tuple[int, str], int] = field(default_factory=dict)  # (side, rule) -> points
    tiers: dict[str, tuple[str, str]] = field(default_factory=dict)  # member -> (a, b)
    events: int = 0
    windows: dict[tuple[int, int, int], list[str]] = field(default_factory=dict)


def _after_event(programme: Programme, current_id: str, buckets: Mapping[str, tiers.Bucket],
                 local: datetime, result: Replay) -> str:
    """``tiers.after_event`` with the window's months worked out once per month, on level
    ids (the ranks are the programme's own: ``Programme.tier_ranks``)."""
    levels = programme.model.tiers.levels
    if current_id == levels[-1].id:
        return current_id  # at the top already: nothing is higher (tiers.higher)
    key = (id(programme), local.year, local.month)
    months = result.windows.get(key)
    if months is None:
        months = result.windows[key] = tiers.window_months(programme, local)
    reached = tiers.level_for(programme, tiers.metric_value(programme, buckets, months)).id
    ranks = programme.tier_ranks
    current_rank = ranks.get(current_id)
    if current_rank is None:  # programme.level of an unknown id is the first level
        current_id, current_rank = levels[0].id, 0
    return reached if ranks[reached] >= current_rank else current_id


def _side(programme: Programme, start: MemberStart, local: datetime, result: Replay) -> Side:
    """The member under ``programme`` at the start: its live tier where the programme has
    that level, at least the level its window's metric reaches."""
    buckets = dict(start.buckets)  # the replay adds months of the period only
    current = programme.level(start.tier_id).id
    return Side(_after_event(programme, current, buckets, local, result), buckets)


def _apply(programme: Programme, side: Side, start: MemberStart, purchases: int,
           event: Event, local: datetime, month: str, result: Replay, index: int,
           programme_local: datetime) -> int:
    """``event`` through one programme: ``local`` is the event's time in the live
    programme's time zone (buckets and tier windows), ``programme_local`` in this one's."""
    rules = result.rules
    facts = earning.MemberFacts(
        id=start.id, tier=programme.level(side.tier_id), purchases=purchases,
        attributes=start.attributes, enrolled_at=start.enrolled_at,
    )
    awards = earning.evaluate(programme, event, facts, side.usage, local=programme_local,
                              explain=False)
    total = 0
    for award in awards:
        total += award.points
        key = (index, award.rule_id)
        rules[key] = rules.get(key, 0) + award.points
        if award.limit_key is not None:
            usage_key = (award.rule_id, award.limit_key)
            side.usage[usage_key] = side.usage.get(usage_key, 0) + 1
    if event.type == "purchase" or total:
        bucket = side.buckets.setdefault(month, tiers.Bucket())
        bucket.points += total
        if event.type == "purchase":
            bucket.spend += event.amount or Decimal(0)
            bucket.visits += 1
        side.tier_id = _after_event(programme, side.tier_id, side.buckets, local, result)
    side.points += total
    return total


def replay(live: Programme, draft: Programme, starts: Mapping[str, MemberStart],
           events: Iterable[Event]) -> Replay:
    """Every event (in time order) through both programmes; events of members without a
    start are skipped."""
    result = Replay()
    sides: dict[str, tuple[Side, Side]] = {}
    purchases: dict[str, int] = {}
    tz = live.tz
    same_zone = draft.tz is tz or str(draft.tz) == str(tz)
    for event in events:
        start = starts.get(event.member)
        if start is None:
            continue
        local = event.occurred_at.astimezone(tz)
        pair = sides.get(event.member)
        if pair is None:
            pair = sides[event.member] = (_side(live, start, local, result),
                                          _side(draft, start, local, result))
            purchases[event.member] = start.purchases
        count = purchases[event.member]
        month = f"{local.year:04d}-{local.month:02d}"  # tiers.month_key, without strftime
        _apply(live, pair[0], start, count, event, local, month, result, 0, local)
        _apply(draft, pair[1], start, count, event, local, month, result, 1,
               local if same_zone else event.occurred_at.astimezone(draft.tz))
        if event.type == "purchase":
            purchases[event.member] = count + 1
        result.events += 1
    for member, (a, b) in sides.items():
        result.points[member] = (a.points, b.points)
        result.tiers[member] = (a.tier_id, b.tier_id)
    return result


def merge(parts: Iterable[Replay]) -> Replay:
    """The replays of disjoint sets of members as one: members' points and tiers side by
    side, the points of each rule and the events added up."""
    out = Replay()
    for part in parts:
        overlap = out.points.keys() & part.points.keys()
        assert not overlap, f"members replayed twice: {sorted(overlap)[:3]}"
        out.points.update(part.points)
        out.tiers.update(part.tiers)
        for key, points in part.rules.items():
            out.rules[key] = out.rules.get(key, 0) + points
        out.events += part.events
    return out
