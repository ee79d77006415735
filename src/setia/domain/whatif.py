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
    buckets: Mapping[str, tuple[Decimal, int, int]]  # month -> (spend, points, visits)


@dataclass
class Replay:
    """Points per member and rule under each programme, and the tiers at the end."""

    points: dict[str, tuple[int, int]] = field(default_factory=dict)  # member -> (a, b)
    rules: dict[tuple[int, str], int] = field(default_factory=dict)  # (side, rule) -> points
    tiers: dict[str, tuple[str, str]] = field(default_factory=dict)  # member -> (a, b)
    events: int = 0


def _start_tier(programme: Programme, start: MemberStart, buckets: Mapping[str, tiers.Bucket],
                local: datetime) -> str:
    """The tier the member holds under ``programme`` at the start: its live tier where the
    programme has that level, at least the level its window's metric reaches."""
    known = {level.id for level in programme.model.tiers.levels}
    current = programme.level(start.tier_id if start.tier_id in known else None)
    return tiers.after_event(programme, current, buckets, local).id


def _side(programme: Programme, start: MemberStart, local: datetime) -> Side:
    buckets = {m: tiers.Bucket(spend, points, visits)
               for m, (spend, points, visits) in start.buckets.items()}
    return Side(_start_tier(programme, start, buckets, local), buckets)


def _apply(programme: Programme, side: Side, start: MemberStart, purchases: int,
           event: Event, local: datetime, rules: dict[tuple[int, str], int], index: int) -> int:
    facts = earning.MemberFacts(
        id=start.id, tier=programme.level(side.tier_id), purchases=purchases,
        attributes=start.attributes, enrolled_at=start.enrolled_at,
    )
    awards = earning.evaluate(programme, event, facts, side.usage)
    total = 0
    for award in awards:
        total += award.points
        key = (index, award.rule_id)
        rules[key] = rules.get(key, 0) + award.points
        if award.limit_key is not None:
            usage_key = (award.rule_id, award.limit_key)
            side.usage[usage_key] = side.usage.get(usage_key, 0) + 1
    month = tiers.month_key(local)
    if event.type == "purchase" or total:
        bucket = side.buckets.setdefault(month, tiers.Bucket())
        bucket.points += total
        if event.type == "purchase":
            bucket.spend += event.amount or Decimal(0)
            bucket.visits += 1
        current = programme.level(side.tier_id)
        side.tier_id = tiers.after_event(programme, current, side.buckets, local).id
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
    for event in events:
        start = starts.get(event.member)
        if start is None:
            continue
        local = event.occurred_at.astimezone(tz)
        pair = sides.get(event.member)
        if pair is None:
            pair = sides[event.member] = (_side(live, start, local), _side(draft, start, local))
            purchases[event.member] = start.purchases
        count = purchases[event.member]
        _apply(live, pair[0], start, count, event, local, result.rules, 0)
        _apply(draft, pair[1], start, count, event, local, result.rules, 1)
        if event.type == "purchase":
            purchases[event.member] = count + 1
        result.events += 1
    for member, (a, b) in sides.items():
        result.points[member] = (a.points, b.points)
        result.tiers[member] = (a.tier_id, b.tier_id)
    return result
