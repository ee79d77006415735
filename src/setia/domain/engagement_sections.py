"""The programme file's engagement sections: ``campaigns``, ``stamp_cards`` and
``memberships`` (docs/engagement.md, docs/programme.md).

Kept apart from programme.py so that those sections change in one place; the
programme model holds one optional list of each, and ``section_errors`` adds
the cross-field checks to the programme's own.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Shorter than rule ids: the journal's rule column holds "campaign:<id>" in 64 characters.
SectionId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]
EventType = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class VoucherGrant(_Strict):
    """A voucher given (not bought): the same keys as a reward's voucher."""

    free_item: Annotated[str, Field(min_length=1, max_length=120)] | None = None
    amount_off: Annotated[Decimal, Field(gt=0)] | None = None
    percent_off: Annotated[Decimal, Field(gt=0, le=100)] | None = None
    valid_days: Annotated[int, Field(gt=0, le=3650)] = 30

    def benefit(self) -> dict[str, str]:
        if self.free_item is not None:
            return {"kind": "free_item", "free_item": self.free_item}
        if self.amount_off is not None:
            return {"kind": "amount_off", "amount_off": str(self.amount_off)}
        return {"kind": "percent_off", "percent_off": str(self.percent_off)}


class Audience(_Strict):
    """Who a campaign is for; every key given must hold."""

    tiers: list[str] | None = None
    attributes: dict[str, str | int | bool] | None = None
    birthday_month: bool = False
    lapsed_days: Annotated[int, Field(gt=0, le=3650)] | None = None
    enrolled_within_days: Annotated[int, Field(gt=0, le=3650)] | None = None


class Campaign(_Strict):
    id: SectionId
    name: Annotated[str, Field(min_length=1, max_length=120)]
    on: EventType = "purchase"
    from_: date | None = Field(default=None, alias="from")
    until: date | None = None
    days: list[Weekday] | None = None
    stores: list[str] | None = None
    channels: list[str] | None = None
    categories: list[str] | None = None
    min_amount: Annotated[Decimal, Field(ge=0)] | None = None
    audience: Audience = Audience()
    # exactly one of these four effects
    points: Annotated[int, Field(gt=0, le=10_000_000)] | None = None
    rate: Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=4)] | None = None
    multiplier: Annotated[Decimal, Field(gt=1, le=100, max_digits=8, decimal_places=4)] | None = (
        None
    )
    voucher: VoucherGrant | None = None
    rules: list[str] | None = None  # the earn rules a multiplier scales; omitted = all
    budget: Annotated[int, Field(gt=0, le=10**12)] | None = None
    per_member: Annotated[int, Field(gt=0, le=10**9)] | None = None
    holdout: Annotated[Decimal, Field(ge=0, lt=1, decimal_places=4)] = Decimal(0)

    @property
    def effect(self) -> str:
        for name in ("points", "rate", "multiplier", "voucher"):
            if getattr(self, name) is not None:
                return name
        return "none"


class StampReward(_Strict):
    points: Annotated[int, Field(gt=0, le=10_000_000)] | None = None
    voucher: VoucherGrant | None = None


class StampCard(_Strict):
    id: SectionId
    name: Annotated[str, Field(min_length=1, max_length=120)]
    on: EventType = "purchase"
    count: Literal["quantity", "visits", "spend", "events"] = "visits"
    target: Annotated[Decimal, Field(gt=0, le=10**9)]
    categories: list[str] | None = None
    skus: list[str] | None = None
    stores: list[str] | None = None
    min_amount: Annotated[Decimal, Field(ge=0)] | None = None
    period: Literal["none", "month", "quarter", "year"] = "none"
    from_: date | None = Field(default=None, alias="from")
    until: date | None = None
    repeat: bool = True
    reward: StampReward


class MembershipPlan(_Strict):
    id: SectionId
    name: Annotated[str, Field(min_length=1, max_length=120)]
    fee: Annotated[Decimal, Field(gt=0, max_digits=14)]
    months: Annotated[int, Field(gt=0, le=120)]
    multiplier: Annotated[Decimal, Field(gt=1, le=100, max_digits=8, decimal_places=4)] | None = (
        None
    )
    monthly_voucher: VoucherGrant | None = None
    tier_floor: str | None = None


def _voucher_errors(at: str, voucher: VoucherGrant | None, digits: int) -> list[tuple[str, str]]:
    if voucher is None:
        return []
    errors: list[tuple[str, str]] = []
    kinds = [voucher.free_item, voucher.amount_off, voucher.percent_off]
    if sum(k is not None for k in kinds) != 1:
        errors.append((at, "exactly one of free_item, amount_off or percent_off"))
    if voucher.amount_off is not None and _decimals(voucher.amount_off) > digits:
        errors.append((f"{at}.amount_off", "more decimals than the currency allows"))
    return errors


def _decimals(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def section_errors(model: Any, digits: int) -> list[tuple[str, str]]:
    """Cross-field errors of the three sections of a validated ProgrammeModel."""
    errors: list[tuple[str, str]] = []
    level_ids = [level.id for level in model.tiers.levels]
    rule_ids = {rule.id for rule in model.earn}
    seen: set[str] = set()
    for i, campaign in enumerate(model.campaigns or []):
        at = f"campaigns[{i}]"
        if campaign.id in seen:
            errors.append((f"{at}.id", f"duplicate campaign id {campaign.id!r}"))
        seen.add(campaign.id)
        effects = [campaign.points, campaign.rate, campaign.multiplier, campaign.voucher]
        if sum(e is not None for e in effects) != 1:
            errors.append((at, "exactly one of points, rate, multiplier or voucher is required"))
        if campaign.from_ and campaign.until and campaign.from_ > campaign.until:
            errors.append((f"{at}.until", "must not be before from"))
        if campaign.rules is not None and campaign.multiplier is None:
            errors.append((f"{at}.rules", "only applies with multiplier"))
        if campaign.categories is not None and campaign.rate is None:
            errors.append((f"{at}.categories", "only applies with rate"))
        for j, rule_id in enumerate(campaign.rules or []):
            if rule_id not in rule_ids:
                errors.append((f"{at}.rules[{j}]", f"unknown earn rule {rule_id!r}"))
        for j, tier in enumerate(campaign.audience.tiers or []):
            if tier not in level_ids:
                errors.append((f"{at}.audience.tiers[{j}]", f"unknown tier {tier!r}"))
        if campaign.min_amount is not None and _decimals(campaign.min_amount) > digits:
            errors.append((f"{at}.min_amount", "more decimals than the currency allows"))
        for key in ("days", "stores", "channels", "categories", "rules"):
            if getattr(campaign, key) == []:
                errors.append((f"{at}.{key}", "must not be empty; omit it to match everything"))
        if campaign.audience.tiers == []:
            errors.append((f"{at}.audience.tiers", "must not be empty; omit it"))
        errors += _voucher_errors(f"{at}.voucher", campaign.voucher, digits)

    seen = set()
    for i, card in enumerate(model.stamp_cards or []):
        at = f"stamp_cards[{i}]"
        if card.id in seen:
            errors.append((f"{at}.id", f"duplicate stamp card id {card.id!r}"))
        seen.add(card.id)
        if (card.reward.points is None) == (card.reward.voucher is None):
            errors.append((f"{at}.reward", "exactly one of points or voucher is required"))
        errors += _voucher_errors(f"{at}.reward.voucher", card.reward.voucher, digits)
        if card.count == "spend":
            if _decimals(card.target) > digits:
                errors.append((f"{at}.target", "more decimals than the currency allows"))
        elif card.target != card.target.to_integral_value():
            errors.append((f"{at}.target", f"must be a whole number when count is {card.count}"))
        if card.count in ("quantity", "visits", "spend") and card.on != "purchase":
            errors.append((f"{at}.count", f"{card.count} only applies to cards on purchase"))
        if card.from_ and card.until and card.from_ > card.until:
            errors.append((f"{at}.until", "must not be before from"))
        for key in ("categories", "skus", "stores"):
            if getattr(card, key) == []:
                errors.append((f"{at}.{key}", "must not be empty; omit it to match everything"))

    seen = set()
    for i, plan in enumerate(model.memberships or []):
        at = f"memberships[{i}]"
        if plan.id in seen:
            errors.append((f"{at}.id", f"duplicate plan id {plan.id!r}"))
        seen.add(plan.id)
        if _decimals(plan.fee) > digits:
            errors.append((f"{at}.fee", "more decimals than the currency allows"))
        if plan.tier_floor is not None and plan.tier_floor not in level_ids:
            errors.append((f"{at}.tier_floor", f"unknown tier {plan.tier_floor!r}"))
        errors += _voucher_errors(f"{at}.monthly_voucher", plan.monthly_voucher, digits)
    return errors
