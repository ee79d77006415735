"""Campaigns, stamp cards and paid memberships: the pure rules (docs/engagement.md).

Nothing here reads a clock or a database: the service passes the event, the
member's facts and the counters it read under the member's lock.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from setia.domain.earning import add_months
from setia.domain.engagement_sections import Audience, Campaign, MembershipPlan, StampCard
from setia.domain.errors import SetiaError
from setia.domain.events import Event, Line

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CAMPAIGN_RULE = "campaign:"
STAMP_RULE = "stamp:"
MEMBERSHIP_RULE = "membership:"
HOLDOUT_BUCKETS = 10_000


class UnknownCampaign(SetiaError):
    type = "unknown-campaign"
    title = "No such campaign"
    status = 404


class UnknownPlan(SetiaError):
    type = "unknown-membership-plan"
    title = "No such membership plan"
    status = 404


class MembershipActive(SetiaError):
    type = "membership-active"
    title = "The member already has an active paid membership; renew it instead"
    status = 409


class NoActiveMembership(SetiaError):
    type = "no-active-membership"
    title = "The member has no active paid membership"
    status = 409


def award_rule(campaign_id: str) -> str:
    """The rule id of a campaign award's postings (``campaign_awards.campaign_id``: a
    campaign's id, or ``membership:<plan>`` for a membership's multiplier)."""
    return campaign_id if campaign_id.startswith(MEMBERSHIP_RULE) else CAMPAIGN_RULE + campaign_id


def is_engagement_rule(rule_id: str | None) -> bool:
    return rule_id is not None and rule_id.startswith((CAMPAIGN_RULE, STAMP_RULE, MEMBERSHIP_RULE))


# -- campaigns ---------------------------------------------------------------------------


def in_holdout(program_id: str, campaign_id: str, member_id: str, share: Decimal) -> bool:
    """Whether the member is held out of the campaign: at random but deterministic, so the
    same member is always on the same side, and independent between campaigns."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{program_id}\x00{campaign_id}\x00{member_id}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % HOLDOUT_BUCKETS
    return bucket < share * HOLDOUT_BUCKETS


def in_window(campaign: Campaign | StampCard, local: datetime) -> bool:
    day = local.date()
    if campaign.from_ is not None and day < campaign.from_:
        return False
    return not (campaign.until is not None and day > campaign.until)


@dataclass(frozen=True, slots=True)
class AudienceFacts:
    """The member as the audience sees it, just before the event."""

    tier_id: str
    attributes: Mapping[str, Any]
    birthday: date | None
    enrolled_at: datetime
    last_purchase_at: datetime | None  # before this event; None if it is the first


def audience_matches(audience: Audience, facts: AudienceFacts, local: datetime) -> bool:
    if audience.tiers is not None and facts.tier_id not in audience.tiers:
        return False
    for key, wanted in (audience.attributes or {}).items():
        if facts.attributes.get(key) != wanted:
            return False
    if audience.birthday_month and (facts.birthday is None
                                    or facts.birthday.month != local.month):
        return False
    if audience.lapsed_days is not None:
        # win-back: a member who bought before, but not in the last N days
        if facts.last_purchase_at is None:
            return False
        if (local - facts.last_purchase_at).total_seconds() < audience.lapsed_days * 86400:
            return False
    if audience.enrolled_within_days is not None:
        age = (local - facts.enrolled_at).total_seconds()
        if age > audience.enrolled_within_days * 86400:
            return False
    return True


def campaign_applies(campaign: Campaign, event: Event, local: datetime) -> bool:
    """The campaign's own filters (window, days, stores, channels, minimum amount)."""
    if campaign.on != event.type or not in_window(campaign, local):
        return False
    if campaign.days is not None and WEEKDAYS[local.weekday()] not in campaign.days:
        return False
    if campaign.stores is not None and event.store not in campaign.stores:
        return False
    if campaign.channels is not None and event.channel not in campaign.channels:
        return False
    return not (campaign.min_amount is not None
                and (event.amount or Decimal(0)) < campaign.min_amount)


def _matching(categories: list[str] | None, lines: Iterable[Line], amount: Decimal) -> Decimal:
    lines = list(lines)
    if categories is None:
        return sum((line.amount for line in lines), Decimal(0)) if lines else amount
    return sum((line.amount for line in lines if line.category in categories), Decimal(0))


def campaign_points(campaign: Campaign, event: Event, rule_points: Mapping[str, int],
                    points_name: str) -> tuple[int, str]:
    """What a points campaign gives for the event, before caps and budget, and why.

    ``rule_points`` is what each earn rule gave this event (tier multiplier included)."""
    if campaign.points is not None:
        return campaign.points, f"{campaign.points} {points_name} ({campaign.name})"
    if campaign.rate is not None:
        amount = _matching(campaign.categories, event.lines, event.amount or Decimal(0))
        points = math.floor(campaign.rate * amount)
        rate = f"{campaign.rate.normalize():f}"
        return points, f"{rate} × {amount} = {points} {points_name} ({campaign.name})"
    assert campaign.multiplier is not None
    base = multiplied_base(campaign, rule_points)
    points = math.floor((campaign.multiplier - 1) * base)
    factor = f"{campaign.multiplier.normalize():f}"
    return points, (f"×{factor} on {base} {points_name}: +{points} {points_name} "
                    f"({campaign.name})")


def multiplied_base(campaign: Campaign, rule_points: Mapping[str, int]) -> int:
    return sum(points for rule_id, points in rule_points.items()
               if not is_engagement_rule(rule_id)
               and (campaign.rules is None or rule_id in campaign.rules))


def campaign_points_after_refund(campaign: Campaign, awarded: int, purchase: Event,
                                 left_lines: tuple[Line, ...], left_amount: Decimal,
                                 rule_points_left: Mapping[str, int]) -> int:
    """What a points campaign keeps of ``awarded`` for what is left of the order: a fixed
    bonus goes whole when the order is refunded in full or falls below min_amount; a rate
    or multiplier is recomputed on what is left. Never more than was awarded (a capped or
    budget-limited award stays capped)."""
    if not campaign_still_qualifies(campaign, left_amount):
        return 0
    if campaign.points is not None:
        return awarded
    if campaign.rate is not None:
        lines = left_lines if purchase.lines else ()
        amount = _matching(campaign.categories, lines, left_amount)
        return min(awarded, math.floor(campaign.rate * amount))
    assert campaign.multiplier is not None
    base = multiplied_base(campaign, rule_points_left)
    return min(awarded, math.floor((campaign.multiplier - 1) * base))


def campaign_still_qualifies(campaign: Campaign, left_amount: Decimal) -> bool:
    """Whether what is left of an order after refunds still qualifies for the campaign:
    not once it is refunded in full or falls below ``min_amount``. A fixed points bonus or
    a voucher stays whole while it does, and goes whole when it does not."""
    return left_amount > 0 and (campaign.min_amount is None
                                or left_amount >= campaign.min_amount)


def grant_within(wanted: int, *, budget: int | None, used: int, per_member: int | None,
                 member_used: int) -> int:
    """How much of ``wanted`` may be given: never past the budget or the member's cap."""
    grant = wanted
    if budget is not None:
        grant = min(grant, budget - used)
    if per_member is not None:
        grant = min(grant, per_member - member_used)
    return max(grant, 0)


# -- stamp cards -------------------------------------------------------------------------


def stamp_period(card: StampCard, local: datetime) -> str:
    if card.period == "month":
        return local.strftime("%Y-%m")
    if card.period == "quarter":
        return f"{local.year}-Q{(local.month - 1) // 3 + 1}"
    if card.period == "year":
        return local.strftime("%Y")
    return "all"


def stamp_scale(card: StampCard, digits: int) -> int:
    """Stamps are integers: spend counts in the currency's minor units."""
    return 10**digits if card.count == "spend" else 1


def stamp_target(card: StampCard, digits: int) -> int:
    return int(card.target * stamp_scale(card, digits))


def card_applies(card: StampCard, event: Event, local: datetime) -> bool:
    if card.on != event.type or not in_window(card, local):
        return False
    if card.stores is not None and event.store not in card.stores:
        return False
    return not (card.min_amount is not None and (event.amount or Decimal(0)) < card.min_amount)


def _line_matches(card: StampCard, line: Line) -> bool:
    if card.categories is None and card.skus is None:
        return True
    return bool((card.categories is not None and line.category in card.categories)
                or (card.skus is not None and line.sku in card.skus))


def stamps_for(card: StampCard, event: Event, digits: int) -> int:
    """The stamps an event gives on the card (before any refund); ``card_applies`` decides
    whether the card counts the event at all."""
    return _stamps_of(card, event.lines, event.amount or Decimal(0), digits)


def _stamps_of(card: StampCard, lines: tuple[Line, ...], amount: Decimal, digits: int) -> int:
    """The stamps of a purchase of ``lines`` for ``amount``: one rule for a purchase and
    for what a refund leaves of it."""
    if card.count == "events":
        return 1
    matching = [line for line in lines if _line_matches(card, line)]
    filters = card.categories is not None or card.skus is not None
    if card.count == "visits":
        return 1 if matching or not filters else 0
    if card.count == "quantity":
        if not lines:
            return 0 if filters else 1
        return sum(line.quantity for line in matching)
    spent = sum((line.amount for line in matching), Decimal(0)) if lines or filters \
        else amount
    return int(spent * stamp_scale(card, digits))


def line_left(line: Line, refunded: Decimal) -> Line | None:
    """What a refund leaves of an order line: None when it is refunded in full; else its
    remaining amount, and the quantity that amount pays for at the line's unit price
    (rounded down). A line of 0.00 cannot be refunded and keeps its whole quantity."""
    left = line.amount - refunded
    if line.amount <= 0:
        return line
    if left <= 0:
        return None
    quantity = int(line.quantity * left // line.amount)  # exact: Decimal integer division
    return Line(sku=line.sku, category=line.category, quantity=quantity, amount=left)


def stamps_left(card: StampCard, lines: Iterable[tuple[Line, Decimal]], order_left: Decimal,
                order_amount: Decimal, digits: int) -> int:
    """The stamps what is left of an order still gives: exactly what ``stamps_for`` gives
    a purchase of what is left (the rule is in docs/engagement.md, stamp cards).

    ``lines`` pairs each original line with the amount refunded of it so far; ``order_left``
    is what is left of the order's amount (``order_amount`` is the order's whole amount).
    What is left is a purchase of ``order_left`` with each line as ``line_left`` leaves
    it (lines refunded in full are gone). An order refunded in full is no purchase: no
    stamps, whatever the card counts. The card's ``min_amount`` is checked again on
    ``order_left``, as ``card_applies`` checks it on a purchase (its window and stores do
    not change with a refund). So on a quantity card a partly refunded line keeps the
    quantity its remaining amount pays for, and a free line its whole quantity; a visit
    needs a matching line with something left."""
    if order_left <= 0:
        return 0
    if card.min_amount is not None and order_left < card.min_amount:
        return 0
    left = tuple(kept for line, refunded in lines
                 if (kept := line_left(line, refunded)) is not None)
    return _stamps_of(card, left, order_left, digits)


def completions_due(card: StampCard, stamps: int, target: int) -> int:
    """Completions the stamps have earned: every ``target`` stamps, or once only."""
    if stamps <= 0:
        return 0
    done = stamps // target
    return done if card.repeat else min(done, 1)


# -- memberships -------------------------------------------------------------------------


def membership_ends_at(plan: MembershipPlan, starts_at: datetime, tz: Any) -> datetime:
    """``months`` calendar months later on the programme's wall clock."""
    return add_months(starts_at.astimezone(tz), plan.months)


def renewal_ends_at(plan: MembershipPlan, anchor: datetime, starts_at: datetime,
                    tz: Any) -> datetime:
    """The end of a renewal starting at ``starts_at``, counted in months from ``anchor``,
    the start of the unbroken run of periods it continues, so that month ends do not
    drift: bought on 31 January for a month and renewed, it ends on 28 February, then
    31 March and 30 April, not on the 28th of each month."""
    first, start = anchor.astimezone(tz), starts_at.astimezone(tz)
    months_before = (start.year - first.year) * 12 + start.month - first.month
    return add_months(first, months_before + plan.months)


def monthly_vouchers_due(plan: MembershipPlan, starts_at: datetime, ends_at: datetime,
                         as_of: datetime, tz: Any) -> int:
    """Monthly vouchers owed by ``as_of``: one at the start of each month of the plan."""
    if plan.monthly_voucher is None or as_of < starts_at:
        return 0
    local = starts_at.astimezone(tz)
    due = 0
    for month in range(plan.months):
        moment = add_months(local, month)
        if moment > as_of or moment >= ends_at:
            break
        due += 1
    return due


def membership_points(plan: MembershipPlan, rule_points: Mapping[str, int],
                      points_name: str) -> tuple[int, str]:
    if plan.multiplier is None:
        return 0, ""
    base = sum(points for rule_id, points in rule_points.items()
               if not is_engagement_rule(rule_id))
    points = math.floor((plan.multiplier - 1) * base)
    factor = f"{plan.multiplier.normalize():f}"
    return points, f"{plan.name} ×{factor} on {base} {points_name}: +{points} {points_name}"
