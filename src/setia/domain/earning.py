"""How many points an event earns: CONTRACT.md section 1, "Semantics".

Every matching rule adds its points. A rate rule gives
floor(rate x matching amount x tier multiplier); the matching amount is the
event amount or, with categories/skus, the sum of the matching lines. A
fixed rule gives its points (times the multiplier only with
``tier_multiplier: true``). The event that crosses a tier threshold earns at
the tier held before it, so the caller passes the tier held at the event.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from setia.domain.conditions import ConditionError
from setia.domain.events import Event, Line
from setia.domain.money import currency_symbol
from setia.domain.programme import WEEKDAYS, EarnRule, Level, Programme


@dataclass(frozen=True, slots=True)
class MemberFacts:
    """What the rules may ask about the member, as it was just before the event."""

    id: str
    tier: Level
    purchases: int
    attributes: Mapping[str, Any]
    enrolled_at: datetime


@dataclass(frozen=True, slots=True)
class _Plan:
    """What evaluation looks up in the programme for every event, worked out once."""

    programme: Programme
    rules: dict[str, tuple[EarnRule, ...]]
    is_rate: dict[str, bool]
    filters_lines: dict[str, bool]
    uses_multiplier: dict[str, bool]
    points_name: str
    symbol: str
    context_fields: dict[str, frozenset[str] | None]  # what the conditions read


_plans: dict[int, _Plan] = {}
_texts: dict[Decimal, str] = {}


def _plan(programme: Programme) -> _Plan:
    """The programme's plan, cached by identity (programmes are immutable once compiled)."""
    plan = _plans.get(id(programme))
    if plan is not None and plan.programme is programme:
        return plan
    rules: dict[str, list[EarnRule]] = {}
    for rule in programme.model.earn:
        rules.setdefault(rule.on, []).append(rule)
    plan = _Plan(
        programme=programme,
        rules={on: tuple(found) for on, found in rules.items()},
        is_rate={rule.id: rule.is_rate for rule in programme.model.earn},
        filters_lines={rule.id: rule.filters_lines for rule in programme.model.earn},
        uses_multiplier={rule.id: rule.uses_tier_multiplier for rule in programme.model.earn},
        points_name=programme.model.points.name,
        symbol=currency_symbol(programme.currency),
        context_fields=context_fields(programme),
    )
    if len(_plans) > 256:
        _plans.clear()
    _plans[id(programme)] = plan
    return plan


def _normalized(value: Decimal) -> str:
    """``f"{value.normalize():f}"``, remembered: rates and multipliers are few."""
    text = _texts.get(value)  # equal decimals normalize alike
    if text is None:
        text = f"{value.normalize():f}"
        if len(_texts) > 4096:
            _texts.clear()
        _texts[value] = text
    return text


@dataclass(frozen=True, slots=True)
class Award:
    rule_id: str
    points: int
    explanation: str
    fixed: bool
    limit_key: str | None = None


def period_key(per: str, local: datetime) -> str:
    """The bucket a limit counts in, in the programme's time zone."""
    if per == "day":
        return local.strftime("%Y-%m-%d")
    if per == "week":
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    if per == "month":
        return local.strftime("%Y-%m")
    if per == "year":
        return local.strftime("%Y")
    return "lifetime"


def matching_amount(rule: EarnRule, event: Event, lines: tuple[Line, ...] | None = None) -> Decimal:
    """The part of the event's amount a rule counts: all of it, or its lines."""
    return _matching_amount(rule, event, lines, rule.filters_lines)


def _matching_amount(
    rule: EarnRule, event: Event, lines: tuple[Line, ...] | None, filters_lines: bool
) -> Decimal:
    lines = event.lines if lines is None else lines
    if not filters_lines:
        if lines:
            return sum((line.amount for line in lines), Decimal(0))
        return event.amount or Decimal(0)
    total = Decimal(0)
    categories, skus = rule.categories, rule.skus
    for line in lines:
        if (
            categories is not None
            and line.category in categories
            or skus is not None
            and line.sku in skus
        ):
            total += line.amount
    return total


def rate_points(rate: Decimal, amount: Decimal, multiplier: Decimal) -> int:
    return math.floor(rate * amount * multiplier)


def _scope_matches(rule: EarnRule, event: Event, local: datetime, member: MemberFacts) -> bool:
    if rule.stores is not None and event.store not in rule.stores:
        return False
    if rule.channels is not None and event.channel not in rule.channels:
        return False
    if rule.partners is not None and event.partner not in rule.partners:
        return False
    if rule.days is not None and WEEKDAYS[local.weekday()] not in rule.days:
        return False
    if rule.from_ is not None and local.date() < rule.from_:
        return False
    if rule.until is not None and local.date() > rule.until:
        return False
    if rule.tiers is not None and member.tier.id not in rule.tiers:
        return False
    return not (rule.first_purchase and member.purchases > 0)


_EVENT_FIELDS: dict[str, Callable[[Event, datetime], Any]] = {
    "id": lambda event, local: event.id,
    "type": lambda event, local: event.type,
    "member": lambda event, local: event.member,
    "occurred_at": lambda event, local: event.occurred_at.isoformat(),
    "amount": lambda event, local: float(event.amount or 0),
    "currency": lambda event, local: event.currency or "",
    "store": lambda event, local: event.store or "",
    "channel": lambda event, local: event.channel or "",
    "order_id": lambda event, local: event.order_id or "",
    "categories": lambda event, local: sorted(
        {line.category for line in event.lines if line.category}),
    "skus": lambda event, local: [line.sku for line in event.lines],
    "lines": lambda event, local: [
        {
            "sku": line.sku,
            "category": line.category or "",
            "quantity": line.quantity,
            "amount": float(line.amount),
        }
        for line in event.lines
    ],
    "weekday": lambda event, local: WEEKDAYS[local.weekday()],
    "attributes": lambda event, local: dict(event.attributes),
}
_MEMBER_FIELDS: dict[str, Callable[[MemberFacts], Any]] = {
    "id": lambda member: member.id,
    "tier": lambda member: member.tier.id,
    "attributes": lambda member: dict(member.attributes),
    "enrolled_at": lambda member: member.enrolled_at.isoformat(),
    "purchases": lambda member: member.purchases,
}
Fields = Mapping[str, frozenset[str] | None]


def condition_context(event: Event, local: datetime, member: MemberFacts,
                      fields: Fields | None = None) -> dict[str, Any]:
    """What a condition sees (conditions.py): every field of ``event`` and ``member``, or
    with ``fields`` (``Condition.fields``) only those; ``None`` for a variable means all
    of its fields, a variable left out gets none."""
    if fields is None:
        event_fields: frozenset[str] | None = None
        member_fields: frozenset[str] | None = None
    else:
        event_fields = fields.get("event", frozenset())
        member_fields = fields.get("member", frozenset())
    return {
        "event": {name: value(event, local) for name, value in _EVENT_FIELDS.items()
                  if event_fields is None or name in event_fields},
        "member": {name: value(member) for name, value in _MEMBER_FIELDS.items()
                   if member_fields is None or name in member_fields},
    }


def context_fields(programme: Programme) -> dict[str, frozenset[str] | None]:
    """The fields of each variable that any of the programme's conditions reads."""
    union: dict[str, frozenset[str] | None] = {}
    for condition in programme.conditions.values():
        for name, fields in condition.fields.items():
            if name not in union:
                union[name] = fields
            else:
                held = union[name]
                union[name] = None if held is None or fields is None else held | fields
    return union


def evaluate(
    programme: Programme, event: Event, member: MemberFacts, usage: Mapping[tuple[str, str], int],
    *, local: datetime | None = None, explain: bool = True,
) -> list[Award]:
    """The points each matching rule gives for ``event``; rules with nothing to give are left out.

    ``usage`` maps (rule id, period key) to how often the rule already paid this member.
    ``local`` is the event's time in the programme's time zone when the caller has it
    already; with ``explain=False`` the awards carry no explanation text (the what-if
    replay, which shows none, skips the formatting; the points are the same).
    """
    plan = _plan(programme)
    rules = plan.rules.get(event.type)
    if not rules:
        return []
    if local is None:
        local = event.occurred_at.astimezone(programme.tz)
    awards: list[Award] = []
    context: dict[str, Any] | None = None
    event_amount = event.amount or Decimal(0)
    for rule in rules:
        if not _scope_matches(rule, event, local, member):
            continue
        filters_lines = plan.filters_lines[rule.id]
        amount = _matching_amount(rule, event, None, filters_lines)
        if filters_lines and amount == 0:
            continue  # no line of the order is in the rule's categories or skus
        if rule.min_amount is not None and event_amount < rule.min_amount:
            continue
        limit_key = None
        if rule.limit is not None:
            limit_key = period_key(rule.limit.per, local)
            if usage.get((rule.id, limit_key), 0) >= rule.limit.count:
                continue
        condition = programme.conditions.get(rule.id)
        if condition is not None:
            if context is None:
                context = condition_context(event, local, member, plan.context_fields)
            try:
                if not condition.evaluate(context):
                    continue
            except ConditionError:
                # A condition that cannot be evaluated for this event (a missing attribute)
                # does not hold: one rule must never block a purchase (decisions/cel.md).
                continue
        if explain:
            points, explanation = _award_points(
                rule, amount, member.tier, plan, plan.uses_multiplier[rule.id], plan.points_name
            )
        else:
            points, explanation = _points_only(rule, amount, member.tier,
                                               plan.uses_multiplier[rule.id]), ""
        if points > 0:
            awards.append(
                Award(rule.id, points, explanation, fixed=not plan.is_rate[rule.id],
                      limit_key=limit_key)
            )
    return awards


def award_points(
    rule: EarnRule, amount: Decimal, tier: Level, programme: Programme, points_name: str
) -> tuple[int, str]:
    plan = _plan(programme)
    return _award_points(rule, amount, tier, plan, plan.uses_multiplier[rule.id], points_name)


_ONE = Decimal(1)


def _points_only(rule: EarnRule, amount: Decimal, tier: Level, uses_multiplier: bool) -> int:
    """The points of ``_award_points`` without the explanation (same arithmetic)."""
    multiplier = tier.multiplier if uses_multiplier else _ONE
    rate = rule.rate
    if rate is not None:
        return rate_points(rate, amount, multiplier)
    assert rule.points is not None
    return math.floor(rule.points * multiplier)


def _award_points(
    rule: EarnRule, amount: Decimal, tier: Level, plan: _Plan, uses_multiplier: bool,
    points_name: str,
) -> tuple[int, str]:
    multiplier = tier.multiplier if uses_multiplier else _ONE
    at_tier = f" at {tier.name}" if multiplier != 1 else ""
    points = _points_only(rule, amount, tier, uses_multiplier)
    rate = rule.rate
    if rate is not None:
        factor_text = _normalized(rate * multiplier)
        money = f"{plan.symbol} {amount}"  # format_money, the symbol looked up once
        return points, f"{factor_text} × {money}{at_tier} = {points} {points_name} ({rule.id})"
    if multiplier != 1:
        return (
            points,
            f"{rule.points} × {_normalized(multiplier)}{at_tier} = "
            f"{points} {points_name} ({rule.id})",
        )
    return points, f"{points} {points_name} ({rule.id})"


def recompute_after_refund(
    programme: Programme,
    rule_id: str,
    awarded: int,
    event: Event,
    remaining_lines: tuple[Line, ...],
    remaining_amount: Decimal,
    tier: Level,
) -> int:
    """Points a rule gives for what is left of an order, under the original version and tier.

    Conditions other than the amount (days, stores, first purchase, limits, CEL)
    were decided at purchase time and stand; a fixed bonus whose ``min_amount``
    no longer holds is taken back whole. Never more than was awarded.
    """
    rule = next((r for r in programme.model.earn if r.id == rule_id), None)
    if rule is None:
        return awarded
    if rule.min_amount is not None and remaining_amount < rule.min_amount:
        return 0
    if rule.is_rate:
        if rule.filters_lines:
            amount = matching_amount(rule, event, remaining_lines)
        else:
            amount = remaining_amount
        points, _ = award_points(rule, amount, tier, programme, "")
    else:
        left = (
            matching_amount(rule, event, remaining_lines)
            if rule.filters_lines
            else remaining_amount
        )
        points = awarded if left > 0 else 0
    return min(points, awarded)


def pending_until(programme: Programme, occurred_at: datetime) -> datetime:
    return occurred_at + timedelta(days=programme.model.points.pending_days)


def lot_expires_at(programme: Programme, available_at: datetime) -> datetime | None:
    """Rolling expiry: a lot expires ``months`` after it became spendable (wall clock of the
    programme's time zone). Other policies put no date on the lot."""
    expiry = programme.model.points.expiry
    if expiry.policy != "rolling":
        return None
    assert expiry.months is not None
    local = available_at.astimezone(programme.tz)
    return add_months(local, expiry.months)


def inactivity_expires_at(programme: Programme, last_activity_at: datetime) -> datetime | None:
    """Inactivity expiry: every point expires ``months`` after the last earn or redeem, on
    the wall clock of the programme's time zone, as rolling lots do (``lot_expires_at``).
    Months counted in UTC would move the date by up to three days around a month's end
    that is on another day in UTC. Other policies answer None."""
    expiry = programme.model.points.expiry
    if expiry.policy != "inactivity":
        return None
    assert expiry.months is not None
    return add_months(last_activity_at.astimezone(programme.tz), expiry.months)


# How far the instant ``months`` after a time counted in the programme's zone may fall from
# the one counted in UTC: a day clamped to a shorter month's end (3 days) and the zone's
# offset changing between the two (hours). Wider than that: a query selecting candidates
# in UTC with it misses no one, and each candidate is checked exactly.
MONTHS_SLACK = timedelta(days=4)


def add_months(moment: datetime, months: int) -> datetime:
    """``moment + relativedelta(months=months)``: the same wall-clock time ``months`` later,
    the day clamped to the end of a shorter month (31 Aug + 6 months = 28/29 Feb)."""
    total = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(total, 12)
    month += 1
    day = moment.day
    if day > 28:
        day = min(day, calendar.monthrange(year, month)[1])
    # the constructor, not replace(year=..., ...): half the cost, once per lot earned
    return datetime(year, month, day, moment.hour, moment.minute, moment.second,
                    moment.microsecond, moment.tzinfo)
