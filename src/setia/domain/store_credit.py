"""Store credit: cashback and rebates, a second asset in the same journal.

Store credit is money the programme owes a member, kept in the currency's
minor units (sen for MYR) under the asset ``credit:<currency>`` (e.g.
``credit:MYR``). A member has two accounts of it, ``available`` and
``reserved`` (a till's open hold); the programme has ``issued`` (where
cashback and rebates come from) and ``redeemed`` (where spent credit goes).

- Instant cashback (``cashback.instant``): a percentage of a purchase, of all
  of it or of the lines of some categories, credited with the purchase. Per
  rule per purchase: floor(percent / 100 x matching amount) in minor units.
  A refund recomputes it on what is left of the order and claws back the
  difference (which may leave a debt, like points).
- Tiered rebates (``cashback.tiered``): a percentage of the member's net spend
  in a period (month, quarter, year), in marginal bands like income tax
  ("1% up to RM 500, 2% above": RM 800 gives 5.00 + 6.00 = 11.00), credited by
  run-due once the period has ended.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from setia.domain.errors import InvalidField, SetiaError
from setia.domain.events import Line
from setia.domain.ledger import ADJUSTMENTS, AVAILABLE, ISSUED, REDEEMED, RESERVED, Posting

CREDIT_ASSET_PREFIX = "credit:"
CREDIT_MEMBER_ACCOUNTS = (AVAILABLE, RESERVED)
HOLD_MINUTES = 15

Id = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Percent = Annotated[Decimal, Field(gt=0, le=100, max_digits=7, decimal_places=4)]


def credit_asset(currency: str) -> str:
    return f"{CREDIT_ASSET_PREFIX}{currency}"


# -- errors ---------------------------------------------------------------------------


class InsufficientCredit(SetiaError):
    type = "insufficient-credit"
    title = "Not enough store credit"
    status = 409


class UnknownCreditHold(SetiaError):
    type = "unknown-credit-hold"
    title = "No such store-credit hold"
    status = 404


class CreditHoldNotOpen(SetiaError):
    type = "credit-hold-not-open"
    title = "The store-credit hold is already captured or released"
    status = 409


# -- programme file -------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class CashbackRule(_Strict):
    id: Id
    percent: Percent
    categories: list[str] | None = None


class RebateBand(_Strict):
    up_to: Annotated[Decimal, Field(gt=0)] | None = None  # the band's upper bound; None: no bound
    percent: Annotated[Decimal, Field(ge=0, le=100, max_digits=7, decimal_places=4)]


class TieredRebate(_Strict):
    id: Id
    per: Literal["month", "quarter", "year"]
    bands: Annotated[list[RebateBand], Field(min_length=1)]


class CashbackConfig(_Strict):
    instant: list[CashbackRule] = Field(default_factory=list)
    tiered: list[TieredRebate] = Field(default_factory=list)
    hold_minutes: Annotated[int, Field(gt=0, le=1440)] = HOLD_MINUTES


def cashback_errors(config: CashbackConfig | None, digits: int) -> list[tuple[str, str]]:
    """Checks across fields of the ``cashback`` section."""
    if config is None:
        return []
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()
    ids = [("instant", i, rule.id) for i, rule in enumerate(config.instant)]
    ids += [("tiered", i, rebate.id) for i, rebate in enumerate(config.tiered)]
    for kind, i, rule_id in ids:
        if rule_id in seen:
            errors.append((f"cashback.{kind}[{i}].id", f"duplicate rule id {rule_id!r}"))
        seen.add(rule_id)
    for i, rule in enumerate(config.instant):
        if rule.categories == []:
            errors.append((f"cashback.instant[{i}].categories",
                           "must not be empty; omit it to match every line"))
    for i, rebate in enumerate(config.tiered):
        at = f"cashback.tiered[{i}].bands"
        previous = Decimal(0)
        for j, band in enumerate(rebate.bands):
            last = j == len(rebate.bands) - 1
            if band.up_to is None and not last:
                errors.append((f"{at}[{j}].up_to", "required on every band but the last"))
            if band.up_to is not None and last:
                errors.append((f"{at}[{j}].up_to", "the last band has no upper bound; omit it"))
            if band.up_to is not None:
                if band.up_to <= previous:
                    errors.append((f"{at}[{j}].up_to",
                                   f"must be greater than the previous band's ({previous})"))
                if -int(band.up_to.as_tuple().exponent) > digits:
                    errors.append((f"{at}[{j}].up_to", "more decimals than the currency allows"))
                previous = band.up_to
    return errors


# -- amounts --------------------------------------------------------------------------


def to_minor_floor(amount: Decimal, digits: int) -> int:
    return math.floor(amount * (10**digits))


def matching_amount(rule: CashbackRule, lines: Sequence[Line], amount: Decimal) -> Decimal:
    """What a rule counts: the whole purchase, or the lines of its categories."""
    if rule.categories is None:
        return sum((line.amount for line in lines), Decimal(0)) if lines else amount
    return sum((line.amount for line in lines if line.category in rule.categories), Decimal(0))


@dataclass(frozen=True, slots=True)
class CreditAward:
    rule_id: str
    amount_minor: int
    explanation: str


def instant_cashback(config: CashbackConfig | None, lines: Sequence[Line], amount: Decimal,
                     digits: int, symbol: str) -> list[CreditAward]:
    """The cashback each instant rule gives for a purchase (or what is left of one)."""
    if config is None:
        return []
    awards: list[CreditAward] = []
    for rule in config.instant:
        base = matching_amount(rule, lines, amount)
        minor = to_minor_floor(rule.percent * base / 100, digits)
        if minor > 0:
            awards.append(CreditAward(
                rule.id, minor,
                f"{rule.percent.normalize():f}% of {symbol} {base} = "
                f"{symbol} {from_minor(minor, digits)} cashback ({rule.id})",
            ))
    return awards


def tiered_rebate(bands: Sequence[RebateBand], spend: Decimal, digits: int) -> int:
    """Marginal bands: each band's percent applies to the part of the spend inside it."""
    if spend <= 0:
        return 0
    total = Decimal(0)
    lower = Decimal(0)
    for band in bands:
        upper = band.up_to
        inside = (min(spend, upper) if upper is not None else spend) - lower
        if inside <= 0:
            break
        total += inside * band.percent / 100
        if upper is None:
            break
        lower = upper
    return to_minor_floor(total, digits)


def from_minor(amount_minor: int, digits: int) -> Decimal:
    return Decimal(amount_minor).scaleb(-digits)


def money_text(amount_minor: int, digits: int) -> str:
    return f"{from_minor(amount_minor, digits):.{digits}f}"


# -- periods --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """A calendar period in the programme's time zone: ``2027-03``, ``2027-Q1`` or ``2027``."""

    key: str
    per: str
    first_day: date
    next_first_day: date  # the day after the period's last day

    def bounds(self, tz: ZoneInfo) -> tuple[datetime, datetime]:
        return (datetime.combine(self.first_day, time(), tz),
                datetime.combine(self.next_first_day, time(), tz))

    def following(self) -> Period:
        return period_of(self.per, self.next_first_day)


def _month_after(year: int, month: int) -> date:
    return date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)


def period_of(per: str, day: date) -> Period:
    if per == "month":
        return Period(f"{day.year}-{day.month:02d}", per, date(day.year, day.month, 1),
                      _month_after(day.year, day.month))
    if per == "quarter":
        quarter = (day.month - 1) // 3 + 1
        first_month = 3 * (quarter - 1) + 1
        return Period(f"{day.year}-Q{quarter}", per, date(day.year, first_month, 1),
                      _month_after(day.year, first_month + 2))
    assert per == "year", per
    return Period(str(day.year), per, date(day.year, 1, 1), date(day.year + 1, 1, 1))


def credited_through(credited: Iterable[Period]) -> date | None:
    """The end (exclusive) of the last period credited, whatever its ``per``; None if none."""
    return max((period.next_first_day for period in credited), default=None)


def uncredited_spans(period: Period, credited: Iterable[Period]) -> list[tuple[date, date]]:
    """The days of ``period`` no credited period covers, as [first, next_first) spans.

    A rebate whose ``per`` changed may have credited part of ``period`` under its old
    ``per`` (monthly through April, then quarterly: April of 2027-Q2). Periods are credited
    in order, so what is left is one span at the end of ``period``: its start clipped to
    the end of the last period credited. Any other shape is subtracted just as well."""
    spans: list[tuple[date, date]] = []
    day = period.first_day
    for done in sorted(credited, key=lambda p: p.first_day):
        if done.next_first_day <= day:
            continue
        if done.first_day >= period.next_first_day:
            break
        if done.first_day > day:
            spans.append((day, done.first_day))
        day = done.next_first_day
    if day < period.next_first_day:
        spans.append((day, period.next_first_day))
    return spans


def parse_period(text: Any, field_name: str = "period") -> Period:
    """``2027-03`` (a month), ``2027-Q1`` (a quarter) or ``2027`` (a year)."""
    hint = "a month (2027-03), a quarter (2027-Q1) or a year (2027)"
    if not isinstance(text, str) or not text:
        raise InvalidField(f"{field_name} is required: {hint}", field=field_name)
    if text[:4].isdigit() and not 1900 <= int(text[:4]) <= 2199:
        # near year 1 a period's bounds overflow when moved to UTC
        raise InvalidField(f"{field_name} {text!r} must fall in the years 1900 to 2199",
                           field=field_name)
    try:
        if len(text) == 4 and text.isdigit():
            return period_of("year", date(int(text), 1, 1))
        year_text, sep, rest = text.partition("-")
        if sep and len(year_text) == 4 and year_text.isdigit():
            if len(rest) == 2 and rest[0] == "Q" and rest[1] in "1234":
                return period_of("quarter", date(int(year_text), 3 * int(rest[1]) - 2, 1))
            if len(rest) == 2 and rest.isdigit():
                return period_of("month", date(int(year_text), int(rest), 1))
    except ValueError:
        pass
    raise InvalidField(f"{field_name} {text!r} is not {hint}", field=field_name)


# -- the member's store-credit accounts -------------------------------------------------


@dataclass
class CreditAccount:
    """One member's store credit, loaded under its lock; amounts in minor units."""

    member_pk: int
    available: int = 0
    reserved: int = 0
    postings: list[Posting] = field(default_factory=list)

    def _balance(self, account: str) -> int | None:
        if account == AVAILABLE:
            return self.available
        if account == RESERVED:
            return self.reserved
        return None

    def _add(self, account: str, delta: int) -> None:
        if account == AVAILABLE:
            self.available += delta
        elif account == RESERVED:
            self.reserved += delta

    def _post(self, code: str, debit: str, credit: str, amount: int,
              rule_id: str | None, explanation: str) -> Posting:
        self._add(debit, -amount)
        self._add(credit, amount)
        posting = Posting(code=code, debit=debit, credit=credit, points=amount, rule_id=rule_id,
                          explanation=explanation, debit_balance_after=self._balance(debit),
                          credit_balance_after=self._balance(credit))
        self.postings.append(posting)
        return posting

    def earn(self, amount: int, *, code: str, rule_id: str | None, explanation: str) -> None:
        if amount > 0:
            self._post(code, ISSUED, AVAILABLE, amount, rule_id, explanation)

    def clawback(self, amount: int, *, rule_id: str | None, explanation: str) -> None:
        """Take back cashback; what was already spent becomes a debt (a negative balance)."""
        if amount > 0:
            self._post("clawback", AVAILABLE, ISSUED, amount, rule_id, explanation)

    def _require(self, amount: int, field_name: str) -> None:
        if amount > self.available:
            raise InsufficientCredit(
                f"needs {amount} minor units of store credit but only "
                f"{max(self.available, 0)} are available",
                field=field_name, available=max(self.available, 0), required=amount,
            )

    def adjust(self, amount: int, explanation: str) -> None:
        """An admin's correction: credit given (``amount`` > 0) or taken back, never below
        zero (a mistake's debt is not made by hand)."""
        assert amount != 0
        if amount > 0:
            self._post("adjust", ADJUSTMENTS, AVAILABLE, amount, None, explanation)
            return
        self._require(-amount, "amount")
        self._post("adjust", AVAILABLE, ADJUSTMENTS, -amount, None, explanation)

    def hold(self, amount: int, explanation: str) -> None:
        assert amount > 0
        self._require(amount, "amount")
        self._post("hold", AVAILABLE, RESERVED, amount, None, explanation)
        assert self.available >= 0

    def capture(self, amount: int, explanation: str) -> None:
        assert 0 < amount <= self.reserved, "a capture takes only what its hold reserved"
        self._post("capture", RESERVED, REDEEMED, amount, None, explanation)

    def release(self, amount: int, explanation: str) -> None:
        assert 0 < amount <= self.reserved
        self._post("release", RESERVED, AVAILABLE, amount, None, explanation)

    def check(self) -> None:
        assert self.reserved >= 0, f"reserved store credit is negative: {self.reserved}"


def member_delta(debit: str, credit: str, amount: int) -> int:
    """How a posting changes the member's total store credit (available + reserved)."""
    delta = 0
    if credit in CREDIT_MEMBER_ACCOUNTS:
        delta += amount
    if debit in CREDIT_MEMBER_ACCOUNTS:
        delta -= amount
    return delta
