"""Referrals: codes, links, fraud guards and what each side is given.

The ``referrals:`` section of the programme file. A referral links a new member
(the referee) to the member whose code they enrolled with (the referrer). It
pays both sides when the referee's first purchase of at least ``min_purchase``
is past ``pending_days``, and is clawed back if that purchase is refunded
below it. A referral that trips a fraud guard waits in a review queue instead.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from setia.domain.errors import SetiaError

CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 8  # 40 random bits


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ReferralReward(_Strict):
    points: Annotated[int, Field(gt=0, le=10_000_000)] | None = None
    reward: Annotated[str, Field(min_length=1)] | None = None  # a reward id: its voucher


class ReferrerCap(_Strict):
    count: Annotated[int, Field(gt=0)]
    per: Literal["day", "week", "month", "year", "lifetime"]


class ReferralsConfig(_Strict):
    link: Annotated[str, Field(min_length=1, max_length=300)] = "https://example.com/join?ref={code}"
    min_purchase: Annotated[Decimal, Field(ge=0)]
    pending_days: Annotated[int, Field(ge=0, le=365)] = 14
    referrer: ReferralReward
    referee: ReferralReward
    max_per_referrer: ReferrerCap | None = None
    max_per_ip_per_day: Annotated[int, Field(gt=0)] | None = None
    phone_country_code: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,3}$")] | None = None


def semantic_errors(config: ReferralsConfig | None, vouchers: dict[str, bool],
                    digits: int) -> list[tuple[str, str]]:
    """``vouchers``: each reward id of the programme, and whether it gives a voucher (a
    referral's reward is paid as one)."""
    if config is None:
        return []
    errors: list[tuple[str, str]] = []
    if "{code}" not in config.link:
        errors.append(("referrals.link", "must contain {code}"))
    if -int(config.min_purchase.as_tuple().exponent) > digits:
        errors.append(("referrals.min_purchase", "more decimals than the currency allows"))
    for side in ("referrer", "referee"):
        given: ReferralReward = getattr(config, side)
        if (given.points is None) == (given.reward is None):
            errors.append((f"referrals.{side}", "exactly one of points or reward"))
        if given.reward is not None and given.reward not in vouchers:
            errors.append((f"referrals.{side}.reward", f"unknown reward {given.reward!r}"))
        elif given.reward is not None and not vouchers[given.reward]:
            errors.append((f"referrals.{side}.reward",
                           f"reward {given.reward!r} gives no voucher"))
    return errors


# -- problem types ----------------------------------------------------------------------


class UnknownReferralCode(SetiaError):
    type = "unknown-referral-code"
    title = "No member has this referral code"
    status = 404


class UnknownReferral(SetiaError):
    type = "unknown-referral"
    title = "No such referral"
    status = 404


class ReferralsNotConfigured(SetiaError):
    type = "referrals-not-configured"
    title = "The programme has no referrals section"
    status = 409


class AlreadyReferred(SetiaError):
    type = "already-referred"
    title = "The member was already referred"
    status = 409


class NotANewMember(SetiaError):
    type = "not-a-new-member"
    title = "Only a member without purchases can be referred"
    status = 409


class SelfReferral(SetiaError):
    type = "self-referral"
    title = "A member cannot use their own referral code"
    status = 409


class ReferralNotInReview(SetiaError):
    type = "referral-not-in-review"
    title = "The referral is not waiting for review"
    status = 409


# -- normalisation and guards -----------------------------------------------------------

GMAIL = ("gmail.com", "googlemail.com")


def normalise_email(email: str | None) -> str | None:
    """Lower case; at Gmail, dots and +tags do not count (a.b+x@gmail.com = ab@gmail.com).
    Elsewhere a +tag is dropped too: most providers deliver it to the same mailbox."""
    if not email or "@" not in email:
        return None
    local, _, domain = email.strip().lower().rpartition("@")
    local = local.split("+", 1)[0]
    if domain in GMAIL:
        local = local.replace(".", "")
        domain = "gmail.com"
    return f"{local}@{domain}" if local else None


def normalise_phone(phone: str | None, country_code: str | None) -> str | None:
    """Digits only, in international form: "+60 12-345 6789", "0060123456789" and (with
    ``phone_country_code: "60"``) "012-345 6789" are all 60123456789."""
    if not phone:
        return None
    text = phone.strip()
    digits = re.sub(r"[^0-9]", "", text)
    if not digits:
        return None
    if text.startswith("+"):
        return digits
    if digits.startswith("00"):
        return digits[2:]
    if digits.startswith("0") and country_code is not None:
        return country_code + digits[1:]
    return digits


def is_self_referral(config: ReferralsConfig, referrer: dict[str, Any],
                     referee: dict[str, Any]) -> bool:
    """Same normalised email or phone on both sides."""
    a, b = normalise_email(referrer.get("email")), normalise_email(referee.get("email"))
    if a is not None and a == b:
        return True
    cc = config.phone_country_code
    p, q = normalise_phone(referrer.get("phone"), cc), normalise_phone(referee.get("phone"), cc)
    return p is not None and p == q


def referrer_period_start(per: str, local: datetime) -> datetime | None:
    """The start (local time) of the period a referrer cap counts in; None: lifetime."""
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if per == "day":
        return day
    if per == "week":
        return day - timedelta(days=day.weekday())
    if per == "month":
        return day.replace(day=1)
    if per == "year":
        return day.replace(month=1, day=1)
    return None


def guard_reasons(config: ReferralsConfig, *, self_referral: bool, referrer_count: int,
                  ip_count_today: int, loop: bool = False) -> list[str]:
    """Why a referral must be reviewed before it pays (empty: it may pay)."""
    reasons = []
    if self_referral:
        reasons.append("self-referral: the same email or phone as the referrer")
    if loop:
        reasons.append("referral loop: the new member referred the referrer, directly or "
                       "through others")
    cap = config.max_per_referrer
    if cap is not None and referrer_count >= cap.count:
        reasons.append(f"referrer cap: {referrer_count} referral(s) this {cap.per} "
                       f"already (at most {cap.count})")
    if config.max_per_ip_per_day is not None and ip_count_today >= config.max_per_ip_per_day:
        reasons.append(f"IP cap: {ip_count_today} referral(s) from this IP today already "
                       f"(at most {config.max_per_ip_per_day})")
    return reasons


def qualifies_at(config: ReferralsConfig, occurred_at: datetime) -> datetime:
    return occurred_at + timedelta(days=config.pending_days)


def referral_code(random_bytes: bytes) -> str:
    number = int.from_bytes(random_bytes[:5], "big")
    chars = []
    for _ in range(CODE_LENGTH):
        chars.append(CODE_ALPHABET[number & 31])
        number >>= 5
    return "".join(chars)


RULE_PREFIX = "referral:"  # rule id and reference of a referral's rewards: referral:<id>


def normalise_code(code: str) -> str:
    cleaned = code.strip().upper().replace("-", "").replace(" ", "")
    return cleaned.translate(str.maketrans("OIL", "011"))


def link(config: ReferralsConfig, code: str) -> str:
    return config.link.replace("{code}", code)


def day_bounds(local_day: date, tz: Any) -> tuple[datetime, datetime]:
    start = datetime(local_day.year, local_day.month, local_day.day, tzinfo=tz)
    return start, start + timedelta(days=1)

