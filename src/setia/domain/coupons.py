"""Coupons: public codes (WELCOME10) and batches of unique one-use codes.

A coupon is a section of the programme file (``coupons:``). This module holds its
model, the rules that decide whether a code may be used for a basket, the
discount it gives, and the generation of unique codes. Nothing here reads a
database or a clock: counts, member facts and random bytes come in as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from setia.domain.errors import SetiaError
from setia.domain.money import allocate

CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base 32, as voucher codes
BATCH_CODE_LENGTH = 10  # 50 random bits per code, after the batch prefix
MAX_BATCH = 1_000_000
Code = Annotated[str, Field(pattern=r"^[A-Z0-9]{3,32}$")]
Prefix = Annotated[str, Field(pattern=r"^[A-Z0-9]{0,12}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Discount(_Strict):
    amount_off: Annotated[Decimal, Field(gt=0)] | None = None
    percent_off: Annotated[Decimal, Field(gt=0, le=100)] | None = None
    max_off: Annotated[Decimal, Field(gt=0)] | None = None  # a cap for percent_off


class Coupon(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    name: Annotated[str, Field(min_length=1, max_length=120)] | None = None
    code: Code | None = None  # a public code; omitted: codes come from generated batches
    discount: Discount
    from_: date | None = Field(default=None, alias="from")
    until: date | None = None
    max_uses: Annotated[int, Field(gt=0)] | None = None  # in total, over all codes
    per_member: Annotated[int, Field(gt=0)] | None = None
    min_spend: Annotated[Decimal, Field(ge=0)] | None = None
    first_purchase: bool = False
    new_members_days: Annotated[int, Field(gt=0, le=3650)] | None = None
    categories: list[str] | None = None
    release_on_refund: bool = True


def semantic_errors(coupons: list[Coupon], digits: int, currency: str) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    ids: set[str] = set()
    codes: set[str] = set()
    for i, coupon in enumerate(coupons):
        at = f"coupons[{i}]"
        if coupon.id in ids:
            errors.append((f"{at}.id", f"duplicate coupon id {coupon.id!r}"))
        ids.add(coupon.id)
        if coupon.code is not None:
            if coupon.code in codes:
                errors.append((f"{at}.code", f"duplicate coupon code {coupon.code!r}"))
            codes.add(coupon.code)
        d = coupon.discount
        if (d.amount_off is None) == (d.percent_off is None):
            errors.append((f"{at}.discount", "exactly one of amount_off or percent_off"))
        if d.max_off is not None and d.percent_off is None:
            errors.append((f"{at}.discount.max_off", "only applies with percent_off"))
        for key in ("amount_off", "max_off"):
            value = getattr(d, key)
            if value is not None and -int(value.as_tuple().exponent) > digits:
                errors.append((f"{at}.discount.{key}", f"more decimals than {currency} allows"))
        if coupon.min_spend is not None and -int(coupon.min_spend.as_tuple().exponent) > digits:
            errors.append((f"{at}.min_spend", f"more decimals than {currency} allows"))
        if coupon.from_ and coupon.until and coupon.from_ > coupon.until:
            errors.append((f"{at}.until", "must not be before from"))
        if coupon.categories == []:
            errors.append((f"{at}.categories", "must not be empty; omit it to match everything"))
    return errors


# -- problem types ----------------------------------------------------------------------


class UnknownCoupon(SetiaError):
    type = "unknown-coupon"
    title = "No such coupon or coupon code"
    status = 404


class CouponNotActive(SetiaError):
    type = "coupon-not-active"
    title = "The coupon is outside its from/until window"
    status = 409


class CouponExhausted(SetiaError):
    type = "coupon-exhausted"
    title = "The coupon has reached its total number of uses"
    status = 409


class CouponCodeUsed(SetiaError):
    type = "coupon-code-used"
    title = "This one-use coupon code has already been used"
    status = 409


class CouponMemberLimit(SetiaError):
    type = "coupon-member-limit"
    title = "The member has used this coupon as often as allowed"
    status = 409


class CouponMinSpend(SetiaError):
    type = "coupon-min-spend"
    title = "The basket is below the coupon's minimum spend"
    status = 422


class CouponFirstPurchaseOnly(SetiaError):
    type = "coupon-first-purchase-only"
    title = "The coupon is for a member's first purchase only"
    status = 409


class CouponNewMembersOnly(SetiaError):
    type = "coupon-new-members-only"
    title = "The coupon is for recently enrolled members only"
    status = 409


class CouponNoMatchingLines(SetiaError):
    type = "coupon-no-matching-lines"
    title = "The basket has no line in the coupon's categories"
    status = 422


class CouponAlreadyApplied(SetiaError):
    type = "coupon-already-applied"
    title = "This coupon is already applied to this order"
    status = 409


class UnknownCouponBatch(SetiaError):
    type = "unknown-coupon-batch"
    title = "No such coupon batch"
    status = 404


class UnknownCouponUse(SetiaError):
    type = "unknown-coupon-use"
    title = "No active coupon use for this order"
    status = 404


# -- rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BasketLine:
    sku: str
    category: str | None
    amount: Decimal


@dataclass(frozen=True)
class Basket:
    amount: Decimal
    lines: tuple[BasketLine, ...] = ()


@dataclass(frozen=True)
class MemberFacts:
    purchases: int
    enrolled_at: datetime
    uses_of_coupon: int  # this member's active uses of this coupon


def check_window(coupon: Coupon, local_day: date) -> None:
    if coupon.from_ is not None and local_day < coupon.from_:
        raise CouponNotActive(f"coupon {coupon.id} starts on {coupon.from_}", field="code")
    if coupon.until is not None and local_day > coupon.until:
        raise CouponNotActive(f"coupon {coupon.id} ended on {coupon.until}", field="code")


def check_member(coupon: Coupon, facts: MemberFacts, now: datetime) -> None:
    if coupon.per_member is not None and facts.uses_of_coupon >= coupon.per_member:
        raise CouponMemberLimit(
            f"the member has used coupon {coupon.id} {facts.uses_of_coupon} time(s); "
            f"the limit is {coupon.per_member}", field="member")
    if coupon.first_purchase and facts.purchases > 0:
        raise CouponFirstPurchaseOnly(
            f"coupon {coupon.id} is for a first purchase; the member has "
            f"{facts.purchases}", field="member")
    if coupon.first_purchase and facts.uses_of_coupon > 0:
        # Redeemed on an order whose purchase is not recorded yet: that order is her first
        # purchase, so a second order cannot be (until the first use is released).
        raise CouponFirstPurchaseOnly(
            f"coupon {coupon.id} is for a first purchase, and the member has it on an order "
            f"already", field="member")
    if coupon.new_members_days is not None and \
            now - facts.enrolled_at > timedelta(days=coupon.new_members_days):
        raise CouponNewMembersOnly(
            f"coupon {coupon.id} is for members enrolled in the last "
            f"{coupon.new_members_days} days", field="member")


def discount_for(coupon: Coupon, basket: Basket, digits: int) -> Decimal:
    """The discount this coupon gives on the basket, never more than what it applies to."""
    if coupon.min_spend is not None and basket.amount < coupon.min_spend:
        raise CouponMinSpend(
            f"the basket is {basket.amount}; coupon {coupon.id} needs at least "
            f"{coupon.min_spend}", field="amount")
    if coupon.categories is not None:
        wanted = set(coupon.categories)
        eligible = sum((line.amount for line in basket.lines if line.category in wanted),
                       Decimal(0))
        if eligible == 0:
            raise CouponNoMatchingLines(
                f"coupon {coupon.id} applies to {', '.join(sorted(wanted))} lines only",
                field="lines")
    else:
        eligible = basket.amount
    quantum = Decimal(1).scaleb(-digits)
    d = coupon.discount
    if d.amount_off is not None:
        off = d.amount_off
    else:
        assert d.percent_off is not None
        off = (eligible * d.percent_off / 100).quantize(quantum, rounding=ROUND_HALF_UP)
        if d.max_off is not None:
            off = min(off, d.max_off)
    off = min(off, eligible).quantize(quantum)
    assert Decimal(0) <= off <= basket.amount
    return off


def net_lines(coupon: Coupon, lines: tuple[BasketLine, ...], discount: Decimal,
              digits: int) -> tuple[Decimal, ...]:
    """What each line costs after the discount, for the purchase the till records: the
    discount is spread over the lines it applies to (the coupon's categories, else every
    line) in proportion to their amounts, rounded to the minor unit by largest remainder
    (earlier lines first on a tie), so the parts add up to the discount exactly."""
    wanted = set(coupon.categories) if coupon.categories is not None else None
    eligible = [i for i, line in enumerate(lines)
                if line.amount > 0 and (wanted is None or line.category in wanted)]
    base = sum((lines[i].amount for i in eligible), Decimal(0))
    assert Decimal(0) <= discount <= base or discount == 0, "discount beyond its lines"
    parts = allocate(discount, [lines[i].amount for i in eligible], digits)
    shares = dict(zip(eligible, parts, strict=True))
    out = tuple(line.amount - shares.get(i, Decimal(0)) for i, line in enumerate(lines))
    assert sum(out, Decimal(0)) == sum((line.amount for line in lines), Decimal(0)) - discount
    assert all(amount >= 0 for amount in out)
    return out


# -- codes ------------------------------------------------------------------------------


def normalise_code(code: str) -> str:
    """What a cashier types: any case, dashes or spaces; O read as 0, I and L as 1
    (generated codes never hold O, I or L; public codes are matched as written too)."""
    return code.strip().upper().replace("-", "").replace(" ", "")


def crockford_variant(code: str) -> str:
    return code.translate(str.maketrans("OIL", "011"))


def code_candidates(code: str) -> list[str]:
    """The spellings a normalised code is looked up by: as typed, then with O read as 0
    and I, L as 1 (once if they are the same)."""
    return list(dict.fromkeys([code, crockford_variant(code)]))


def batch_codes(prefix: str, count: int, random_bytes: bytes) -> list[str]:
    """``count`` codes of ``prefix`` + 10 Crockford characters from 7 random bytes each
    (50 bits are used). Duplicates inside the batch are dropped: the caller asks again."""
    assert len(random_bytes) >= 7 * count
    alphabet = CODE_ALPHABET
    seen: set[str] = set()
    out: list[str] = []
    for i in range(count):
        number = int.from_bytes(random_bytes[7 * i:7 * i + 7], "big")
        chars = []
        for _ in range(BATCH_CODE_LENGTH):
            chars.append(alphabet[number & 31])
            number >>= 5
        code = prefix + "".join(chars)
        if code not in seen:
            seen.add(code)
            out.append(code)
    return out


def find(coupons: list[Coupon], coupon_id: Any) -> Coupon:
    for coupon in coupons:
        if coupon.id == coupon_id:
            return coupon
    raise UnknownCoupon(f"no coupon {coupon_id!r} in the programme", field="coupon")


def by_public_code(coupons: list[Coupon], code: str) -> Coupon | None:
    for coupon in coupons:
        if coupon.code is not None and coupon.code == code:
            return coupon
    return None
