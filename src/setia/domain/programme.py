"""The programme file (CONTRACT.md section 1): its model, validation and compiled form.

``load_programme`` turns a parsed YAML/JSON document into a ``Programme`` or
raises ``InvalidProgramme`` listing every error at once, each with its path
(``tiers.levels[2].threshold``) and reason.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from setia.domain import coupons as coupons_
from setia.domain import donations as donations_
from setia.domain import referrals as referrals_
from setia.domain import surveys as surveys_
from setia.domain.conditions import Condition, ConditionError, compile_condition
from setia.domain.engagement_sections import Campaign, MembershipPlan, StampCard, section_errors
from setia.domain.errors import InvalidProgramme
from setia.domain.money import known_currencies, minor_digits
from setia.domain.partners import PartnersConfig, partners_errors
from setia.domain.store_credit import CashbackConfig, cashback_errors
from setia.domain.trust import FraudConfig, PrivacyConfig

Id = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
EventType = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Period = Literal["day", "week", "month", "year", "lifetime"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Expiry(_Strict):
    policy: Literal["none", "rolling", "inactivity"] = "none"
    months: Annotated[int, Field(gt=0, le=600)] | None = None


class PointsConfig(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=40)] = "Points"
    pending_days: Annotated[int, Field(ge=0, le=365)] = 0
    expiry: Expiry = Expiry()


class Limit(_Strict):
    count: Annotated[int, Field(gt=0)]
    per: Period


class EarnRule(_Strict):
    id: Id
    on: EventType
    rate: Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=4)] | None = None
    points: Annotated[int, Field(gt=0, le=10_000_000)] | None = None
    categories: list[str] | None = None
    skus: list[str] | None = None
    stores: list[str] | None = None
    channels: list[str] | None = None
    days: list[Weekday] | None = None
    from_: date | None = Field(default=None, alias="from")
    until: date | None = None
    first_purchase: bool = False
    min_amount: Annotated[Decimal, Field(ge=0)] | None = None
    limit: Limit | None = None
    tiers: list[str] | None = None
    condition: Annotated[str, Field(min_length=1, max_length=2000)] | None = None
    tier_multiplier: bool | None = None
    partners: list[str] | None = None

    @property
    def is_rate(self) -> bool:
        return self.rate is not None

    @property
    def uses_tier_multiplier(self) -> bool:
        if self.tier_multiplier is not None:
            return self.tier_multiplier
        return self.is_rate

    @property
    def filters_lines(self) -> bool:
        return self.categories is not None or self.skus is not None


class Level(_Strict):
    id: Id
    name: Annotated[str, Field(min_length=1, max_length=60)]
    threshold: Annotated[Decimal, Field(ge=0)]
    multiplier: Annotated[Decimal, Field(gt=0, le=100)] = Decimal(1)


DEFAULT_LEVELS = [Level(id="member", name="Member", threshold=Decimal(0))]


class Tiers(_Strict):
    metric: Literal["spend", "points", "visits"] = "spend"
    window: Literal["calendar_year", "rolling_months"] = "calendar_year"
    window_months: Annotated[int, Field(gt=0, le=120)] | None = None
    levels: Annotated[list[Level], Field(min_length=1)] = Field(
        default_factory=lambda: list(DEFAULT_LEVELS)
    )


class VoucherSpec(_Strict):
    free_item: Annotated[str, Field(min_length=1)] | None = None
    amount_off: Annotated[Decimal, Field(gt=0)] | None = None
    percent_off: Annotated[Decimal, Field(gt=0, le=100)] | None = None
    valid_days: Annotated[int, Field(gt=0, le=3650)] = 30

    @property
    def kind(self) -> str:
        if self.free_item is not None:
            return "free_item"
        if self.amount_off is not None:
            return "amount_off"
        return "percent_off"


class Reward(_Strict):
    id: Id
    name: Annotated[str, Field(min_length=1, max_length=120)]
    cost: Annotated[int, Field(gt=0)]
    voucher: VoucherSpec | None = None
    stock: Annotated[int, Field(ge=0)] | None = None
    per_member_limit: Annotated[int, Field(gt=0)] | None = None
    tiers: list[str] | None = None
    from_: date | None = Field(default=None, alias="from")
    until: date | None = None
    donation: donations_.DonationSpec | None = None  # a donation to a cause (docs/growth-a.md)


class AnalyticsConfig(_Strict):
    """Settings of the analytics reports (docs/analytics.md)."""

    cost_per_point: Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=6)] = Decimal(0)
    churn_days: Annotated[int, Field(ge=1, le=3650)] = 90


class ProgrammeModel(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,64}$")]
    name: Annotated[str, Field(min_length=1, max_length=120)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    timezone: str = "UTC"
    locale: str = "en"
    auto_enroll: bool = False
    points: PointsConfig = PointsConfig()
    earn: list[EarnRule] = Field(default_factory=list)
    tiers: Tiers = Tiers()
    rewards: list[Reward] = Field(default_factory=list)
    analytics: AnalyticsConfig | None = None
    # Referrals, coupons, surveys and donation causes (docs/growth-a.md). None when
    # absent, so that the definition hash of a programme without them does not change.
    referrals: referrals_.ReferralsConfig | None = None
    coupons: list[coupons_.Coupon] | None = None
    surveys: list[surveys_.Survey] | None = None
    causes: list[donations_.Cause] | None = None
    # None when absent, so that the stored definition (and its hash) of a programme
    # without these sections stays what it was
    campaigns: list[Campaign] | None = None
    stamp_cards: list[StampCard] | None = None
    memberships: list[MembershipPlan] | None = None
    cashback: CashbackConfig | None = None
    partners: PartnersConfig | None = None
    fraud: FraudConfig | None = None  # domain/trust.py, docs/programme.md
    privacy: PrivacyConfig | None = None  # domain/trust.py, docs/programme.md


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = "from" if part == "from_" else part
            out += f".{name}" if out else str(name)
    return out or "(root)"


def _semantic_errors(model: ProgrammeModel) -> list[tuple[str, str]]:
    """Checks across fields that pydantic's per-field validation cannot express."""
    errors: list[tuple[str, str]] = []
    if model.currency not in known_currencies():
        errors.append(("currency", f"{model.currency!r} is not an ISO 4217 currency"))
    try:
        ZoneInfo(model.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        errors.append(("timezone", f"{model.timezone!r} is not an IANA time zone"))
    try:
        Locale.parse(model.locale)
    except (UnknownLocaleError, ValueError):
        errors.append(("locale", f"{model.locale!r} is not a known locale"))
    expiry = model.points.expiry
    if expiry.policy != "none" and expiry.months is None:
        errors.append(("points.expiry.months", f"required when policy is {expiry.policy}"))
    if expiry.policy == "none" and expiry.months is not None:
        errors.append(("points.expiry.months", "must be omitted when policy is none"))

    tiers = model.tiers
    level_ids = [level.id for level in tiers.levels]
    if tiers.window == "rolling_months" and tiers.window_months is None:
        errors.append(("tiers.window_months", "required when window is rolling_months"))
    if tiers.window == "calendar_year" and tiers.window_months is not None:
        errors.append(("tiers.window_months", "only allowed when window is rolling_months"))
    if tiers.levels and tiers.levels[0].threshold != 0:
        errors.append(("tiers.levels[0].threshold", "the first level must have threshold 0"))
    for i, level in enumerate(tiers.levels):
        if i > 0 and level.threshold <= tiers.levels[i - 1].threshold:
            errors.append(
                (
                    f"tiers.levels[{i}].threshold",
                    f"must be greater than the previous level's threshold "
                    f"({tiers.levels[i - 1].threshold}); levels are ascending",
                )
            )
        if tiers.metric != "spend" and level.threshold != level.threshold.to_integral_value():
            errors.append(
                (
                    f"tiers.levels[{i}].threshold",
                    f"must be a whole number for metric {tiers.metric}",
                )
            )
        if level_ids.index(level.id) != i:
            errors.append((f"tiers.levels[{i}].id", f"duplicate level id {level.id!r}"))

    digits = minor_digits(model.currency) if model.currency in known_currencies() else 2
    seen_rules: set[str] = set()
    for i, rule in enumerate(model.earn):
        at = f"earn[{i}]"
        if rule.id in seen_rules:
            errors.append((f"{at}.id", f"duplicate rule id {rule.id!r}"))
        seen_rules.add(rule.id)
        if (rule.rate is None) == (rule.points is None):
            errors.append((at, "exactly one of rate or points is required"))
        if rule.first_purchase and rule.on != "purchase":
            errors.append((f"{at}.first_purchase", "only applies to rules on purchase"))
        if rule.filters_lines and rule.on not in ("purchase",):
            errors.append((at, "categories and skus only apply to rules on purchase"))
        if rule.from_ and rule.until and rule.from_ > rule.until:
            errors.append((f"{at}.until", "must not be before from"))
        if rule.min_amount is not None and -int(rule.min_amount.as_tuple().exponent) > digits:
            errors.append((f"{at}.min_amount", f"more decimals than {model.currency} allows"))
        for j, tier in enumerate(rule.tiers or []):
            if tier not in level_ids:
                errors.append((f"{at}.tiers[{j}]", f"unknown tier {tier!r}"))
        for key in ("categories", "skus", "stores", "channels", "days", "tiers", "partners"):
            if getattr(rule, key) == []:
                errors.append((f"{at}.{key}", "must not be empty; omit it to match everything"))
        if rule.condition is not None:
            try:
                compile_condition(rule.condition)
            except ConditionError as exc:
                errors.append((f"{at}.condition", str(exc)))

    seen_rewards: set[str] = set()
    for i, reward in enumerate(model.rewards):
        at = f"rewards[{i}]"
        if reward.id in seen_rewards:
            errors.append((f"{at}.id", f"duplicate reward id {reward.id!r}"))
        seen_rewards.add(reward.id)
        if reward.from_ and reward.until and reward.from_ > reward.until:
            errors.append((f"{at}.until", "must not be before from"))
        for j, tier in enumerate(reward.tiers or []):
            if tier not in level_ids:
                errors.append((f"{at}.tiers[{j}]", f"unknown tier {tier!r}"))
        voucher = reward.voucher
        if voucher is not None:
            kinds = [voucher.free_item, voucher.amount_off, voucher.percent_off]
            if sum(k is not None for k in kinds) != 1:
                errors.append(
                    (f"{at}.voucher", "exactly one of free_item, amount_off or percent_off")
                )
            if (
                voucher.amount_off is not None
                and -int(voucher.amount_off.as_tuple().exponent) > digits
            ):
                errors.append(
                    (f"{at}.voucher.amount_off", f"more decimals than {model.currency} allows")
                )
    errors += _growth_errors(model, digits)
    errors += section_errors(model, digits)
    errors += cashback_errors(model.cashback, digits) + partners_errors(model.partners, model.earn)
    return errors


def _growth_errors(model: ProgrammeModel, digits: int) -> list[tuple[str, str]]:
    """Referrals, coupons, surveys and donations (their own modules' checks)."""
    return (
        referrals_.semantic_errors(model.referrals,
                                   {r.id: r.voucher is not None for r in model.rewards}, digits)
        + coupons_.semantic_errors(model.coupons or [], digits, model.currency)
        + surveys_.semantic_errors(model.surveys or [])
        + donations_.semantic_errors(
            model.causes or [],
            [(i, r.donation.cause if r.donation else None, r.voucher is not None)
             for i, r in enumerate(model.rewards)],
        )
    )


def _related(a: str, b: str) -> bool:
    """True if one path is the other or lies inside it."""
    if a == "(root)" or b == "(root)":
        return True
    short, long = sorted((a, b), key=len)
    return long == short or long.startswith((short + ".", short + "["))


def _semantic_errors_without(
    document: dict[str, Any], exc: ValidationError
) -> list[tuple[str, str]]:
    """The cross-field errors of a document that also has field errors, so that every
    error is reported at once: the keys at fault are dropped and the rest checked again.

    An unknown key hides nothing. Dropping a bad value may bring in a default, so cross-field
    errors inside the object that held it are left out. Nothing is added when a key at
    fault cannot be dropped (a missing key, a bad list item)."""
    pruned = copy.deepcopy(document)
    hidden: list[str] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        parent: Any = pruned
        for part in loc[:-1]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                return []
        if not loc or not isinstance(parent, dict) or loc[-1] not in parent:
            return []
        del parent[loc[-1]]
        if err["type"] != "extra_forbidden":
            hidden.append(_path(loc[:-1]))
    try:
        model = ProgrammeModel.model_validate(pruned)
    except ValidationError:
        return []
    return [
        (path, reason)
        for path, reason in _semantic_errors(model)
        if not any(_related(path, parent_path) for parent_path in hidden)
    ]


def validate_document(document: Any) -> ProgrammeModel:
    """Validate a parsed programme document; raise InvalidProgramme with every error."""
    if not isinstance(document, dict):
        raise InvalidProgramme([("(root)", "the programme must be a mapping of keys to values")])
    try:
        model = ProgrammeModel.model_validate(document)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            reason = err["msg"]
            if err["type"] == "extra_forbidden":
                reason = "unknown key"
            errors.append((_path(tuple(err["loc"])), reason))
        errors += _semantic_errors_without(document, exc)
        raise InvalidProgramme(errors) from None
    semantic = _semantic_errors(model)
    if semantic:
        raise InvalidProgramme(semantic)
    return model


def canonical_json(model: ProgrammeModel) -> str:
    return json.dumps(
        model.model_dump(mode="json", by_alias=True, exclude_none=True),
        sort_keys=True,
        separators=(",", ":"),
    )


def definition_hash(model: ProgrammeModel) -> str:
    return hashlib.sha256(canonical_json(model).encode()).hexdigest()


@dataclass(frozen=True)
class Programme:
    """A stored, immutable programme version, compiled for evaluation."""

    model: ProgrammeModel
    version: int
    tz: ZoneInfo
    conditions: dict[str, Condition] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.model.id

    @property
    def currency(self) -> str:
        return self.model.currency

    @cached_property
    def tier_ranks(self) -> dict[str, int]:
        """Each level's position in the ladder (0 the first), worked out once per version:
        ``tiers.rank``, ``tiers.higher`` and ``level`` look it up instead of walking the
        levels (validation refuses a level id listed twice; the first would count)."""
        ranks: dict[str, int] = {}
        for i, level in enumerate(self.model.tiers.levels):
            ranks.setdefault(level.id, i)
        return ranks

    def level(self, level_id: str | None) -> Level:
        """The level of that id; the first level for an unknown id (or None)."""
        return self.model.tiers.levels[self.tier_ranks.get(level_id or "", 0)]

    def reward(self, reward_id: str) -> Reward | None:
        for reward in self.model.rewards:
            if reward.id == reward_id:
                return reward
        return None

    def rules_for(self, event_type: str) -> list[EarnRule]:
        return [rule for rule in self.model.earn if rule.on == event_type]


def compile_programme(model: ProgrammeModel, version: int) -> Programme:
    conditions = {
        rule.id: compile_condition(rule.condition)
        for rule in model.earn
        if rule.condition is not None
    }
    return Programme(
        model=model, version=version, tz=ZoneInfo(model.timezone), conditions=conditions
    )
