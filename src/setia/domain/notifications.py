"""What members and shops are told: outbox message types, the messages a set of postings
makes, emails in the member's language, and the retry schedule of deliveries. Pure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_decimal

from setia.domain.ledger import MEMBER_ACCOUNTS, Posting

# Message types (webhook "type"; docs/operations.md lists each with its data).
POINTS_EARNED = "points.earned"
POINTS_REDEEMED = "points.redeemed"
POINTS_EXPIRED = "points.expired"
POINTS_EXPIRING = "points.expiring"
POINTS_CLAWED_BACK = "points.clawed_back"
POINTS_ADJUSTED = "points.adjusted"
POINTS_REVERSED = "points.reversed"
TIER_CHANGED = "tier.changed"
VOUCHER_ISSUED = "voucher.issued"
VOUCHER_USED = "voucher.used"
VOUCHER_VOIDED = "voucher.voided"
MEMBER_ENROLLED = "member.enrolled"
REFERRAL_PAID = "referral.paid"
CREDIT_EARNED = "credit.earned"
CREDIT_CLAWED_BACK = "credit.clawed_back"
CREDIT_SPENT = "credit.spent"
CREDIT_ADJUSTED = "credit.adjusted"

MESSAGE_TYPES = (POINTS_EARNED, POINTS_REDEEMED, POINTS_EXPIRED, POINTS_EXPIRING,
                 POINTS_CLAWED_BACK, POINTS_ADJUSTED, POINTS_REVERSED, TIER_CHANGED,
                 VOUCHER_ISSUED, VOUCHER_USED, VOUCHER_VOIDED, MEMBER_ENROLLED, REFERRAL_PAID,
                 CREDIT_EARNED, CREDIT_CLAWED_BACK, CREDIT_SPENT, CREDIT_ADJUSTED)

# Posting code -> message type. Holds, releases and activations move points between a
# member's own accounts (or back) and tell the member nothing new: no message.
_BY_CODE = {
    "earn": POINTS_EARNED,
    "redeem": POINTS_REDEEMED,
    "capture": POINTS_REDEEMED,
    "expire": POINTS_EXPIRED,
    "clawback": POINTS_CLAWED_BACK,
    "review_reject": POINTS_CLAWED_BACK,  # a fraud review rejected: the event's points go
    "adjust": POINTS_ADJUSTED,
    "reverse": POINTS_REVERSED,
}
_SIGNED = frozenset({POINTS_ADJUSTED, POINTS_REVERSED})

# Store credit's posting codes -> message type. A hold and its release move credit between
# the member's own accounts: no message, as for points.
_CREDIT_BY_CODE = {
    "cashback": CREDIT_EARNED,
    "rebate": CREDIT_EARNED,
    "clawback": CREDIT_CLAWED_BACK,
    "capture": CREDIT_SPENT,
    "adjust": CREDIT_ADJUSTED,
}

# Types a member gets an email for.
EMAIL_TYPES = frozenset({MEMBER_ENROLLED, POINTS_EXPIRING, TIER_CHANGED, VOUCHER_ISSUED})


@dataclass(frozen=True)
class Message:
    type: str
    key: str  # unique per programme: a repeat of the same change writes nothing
    data: dict[str, Any]


KEY_LENGTH = 300  # the outbox's key column


def message_key(kind: str, member_id: str, ref: str) -> str:
    """The key of a message of ``kind`` to ``member_id`` about ``ref``: one per change, so a
    repeat of it writes nothing. ``kind:member:ref`` when that reads one way only (member ids
    may hold ``:``, and ``a:b`` + ``c`` would read as ``a`` + ``b:c``) and fits the column
    (a cut key could be another's); otherwise ``kind:#`` and a SHA-256 of the two. A member
    id never starts with ``#``, so the two forms never meet."""
    key = f"{kind}:{member_id}:{ref}"
    if ":" not in member_id and len(key) <= KEY_LENGTH:
        return key
    digest = hashlib.sha256(f"{member_id}\n{ref}".encode()).hexdigest()
    return f"{kind}:#{digest}"


def _member_side(posting: Posting) -> int:
    """The posting's effect on the member's own accounts together (0 for a move between
    them, such as capture from reserved, which still counts as a redemption below)."""
    delta = 0
    if posting.credit in MEMBER_ACCOUNTS:
        delta += posting.points
    if posting.debit in MEMBER_ACCOUNTS:
        delta -= posting.points
    return delta


def _totals(postings: Iterable[Posting], kinds: dict[str, str],
            change: Callable[[Posting, str], int]) -> dict[str, int]:
    """The ``change`` of ``postings`` summed by message kind (``kinds``: by posting code;
    a code not there tells nothing)."""
    totals: dict[str, int] = {}
    for posting in postings:
        kind = kinds.get(posting.code)
        if kind is not None:
            totals[kind] = totals.get(kind, 0) + change(posting, kind)
    return totals


def _points_change(posting: Posting, kind: str) -> int:
    """A capture counts its points; a signed kind (adjustments) the member's side as it
    moved; any other kind the size of the member's side."""
    if kind in _SIGNED:
        return _member_side(posting)
    return posting.points if posting.code == "capture" else abs(_member_side(posting))


def from_postings(postings: Iterable[Posting], *, member_id: str, ref: str,
                  balances: dict[str, int]) -> list[Message]:
    """One message per kind of change in ``postings`` (all made by ``ref``)."""
    totals = _totals(postings, _BY_CODE, _points_change)
    return [
        Message(kind, message_key(kind, member_id, ref),
                {"member": member_id, "ref": ref, "points": points, "balances": balances})
        for kind, points in totals.items() if points != 0
    ]


def from_credit_postings(postings: Iterable[Posting], *, member_id: str, ref: str,
                         currency: str, as_text: Callable[[int], str],
                         balances: dict[str, str]) -> list[Message]:
    """One message per kind of change to store credit in ``postings`` (all made by
    ``ref``); amounts in minor units, told as money text by ``as_text``."""
    totals = _totals(postings, _CREDIT_BY_CODE, lambda posting, kind: (
        _credit_side(posting) if kind == CREDIT_ADJUSTED else posting.points))
    return [
        Message(kind, message_key(kind, member_id, ref),
                {"member": member_id, "ref": ref, "amount": as_text(amount),
                 "currency": currency, "balances": balances})
        for kind, amount in totals.items()
    ]


def _credit_side(posting: Posting) -> int:
    """An adjustment of store credit as the member's available credit moved (signed)."""
    return posting.points if posting.credit == "available" else -posting.points


def tier_changed(member_id: str, ref: str, before: tuple[str, int], after: tuple[str, int],
                 names: dict[str, str]) -> Message:
    """``before`` and ``after`` are (level id, position in the ladder)."""
    direction = "up" if after[1] > before[1] else "down"
    return Message(TIER_CHANGED, message_key(TIER_CHANGED, member_id, ref),
                   {"member": member_id, "ref": ref, "from": before[0], "to": after[0],
                    "to_name": names.get(after[0], after[0]), "direction": direction})


# -- retries -------------------------------------------------------------------------------

RETRY_WINDOW = timedelta(hours=24)
FIRST_RETRY = timedelta(seconds=30)
LONGEST_WAIT = timedelta(hours=2)


def next_attempt(attempts: int, failed_at: datetime,
                 window_started_at: datetime) -> datetime | None:
    """When to try again after ``attempts`` failed tries (30 s, 1 min, 2 min ... doubling,
    at most 2 h apart); None once that would fall after the 24-hour window: dead."""
    assert attempts >= 1
    wait = min(FIRST_RETRY * 2 ** min(attempts - 1, 20), LONGEST_WAIT)
    moment = failed_at + wait
    if moment > window_started_at + RETRY_WINDOW:
        return None
    return moment


# -- email -----------------------------------------------------------------------------------

LANGUAGES = ("en", "ms", "id", "zh_Hant")

# (subject, body) per language and email kind. Fields: name, programme, points, points_name,
# available, tier, expires_on, reward, code.
TEMPLATES: dict[str, dict[str, tuple[str, str]]] = {
    "en": {
        "welcome": ("Welcome to {programme}",
                    "Hello {name},\n\nWelcome to {programme}! You have {available} "
                    "{points_name}.\n"),
        "expiring": ("{points} {points_name} expire on {expires_on}",
                     "Hello {name},\n\n{points} of your {points_name} expire on {expires_on}. "
                     "Use them before then.\n"),
        "tier_up": ("You reached {tier}",
                    "Hello {name},\n\nCongratulations: you are now {tier} in {programme}.\n"),
        "tier_down": ("Your tier is now {tier}",
                      "Hello {name},\n\nYour tier in {programme} is now {tier}.\n"),
        "voucher": ("Your voucher for {reward}",
                    "Hello {name},\n\nHere is your voucher for {reward}: {code}\n"
                    "Valid until {expires_on}.\n"),
    },
    "ms": {
        "welcome": ("Selamat datang ke {programme}",
                    "Helo {name},\n\nSelamat datang ke {programme}! Anda mempunyai {available} "
                    "{points_name}.\n"),
        "expiring": ("{points} {points_name} akan luput pada {expires_on}",
                     "Helo {name},\n\n{points} {points_name} anda akan luput pada {expires_on}. "
                     "Gunakannya sebelum itu.\n"),
        "tier_up": ("Anda kini {tier}",
                    "Helo {name},\n\nTahniah: anda kini {tier} dalam {programme}.\n"),
        "tier_down": ("Tahap anda kini {tier}",
                      "Helo {name},\n\nTahap anda dalam {programme} kini {tier}.\n"),
        "voucher": ("Baucar anda untuk {reward}",
                    "Helo {name},\n\nIni baucar anda untuk {reward}: {code}\n"
                    "Sah sehingga {expires_on}.\n"),
    },
    "id": {
        "welcome": ("Selamat datang di {programme}",
                    "Halo {name},\n\nSelamat datang di {programme}! Anda memiliki {available} "
                    "{points_name}.\n"),
        "expiring": ("{points} {points_name} kedaluwarsa pada {expires_on}",
                     "Halo {name},\n\n{points} {points_name} Anda kedaluwarsa pada "
                     "{expires_on}. Gunakan sebelum itu.\n"),
        "tier_up": ("Anda mencapai {tier}",
                    "Halo {name},\n\nSelamat: Anda sekarang {tier} di {programme}.\n"),
        "tier_down": ("Tingkat Anda sekarang {tier}",
                      "Halo {name},\n\nTingkat Anda di {programme} sekarang {tier}.\n"),
        "voucher": ("Voucher Anda untuk {reward}",
                    "Halo {name},\n\nIni voucher Anda untuk {reward}: {code}\n"
                    "Berlaku hingga {expires_on}.\n"),
    },
    "zh_Hant": {
        "welcome": ("歡迎加入{programme}",
                    "{name} 您好：\n\n歡迎加入{programme}！您目前有 {available} {points_name}。\n"),
        "expiring": ("{points} {points_name}將於 {expires_on} 到期",
                     "{name} 您好：\n\n您有 {points} {points_name}將於 {expires_on} 到期，"
                     "請在此之前使用。\n"),
        "tier_up": ("您已升級為{tier}",
                    "{name} 您好：\n\n恭喜！您在{programme}已升級為{tier}。\n"),
        "tier_down": ("您的等級已變更為{tier}",
                      "{name} 您好：\n\n您在{programme}的等級已變更為{tier}。\n"),
        "voucher": ("您的{reward}兌換券",
                    "{name} 您好：\n\n這是您的{reward}兌換券：{code}\n有效期限至 {expires_on}。\n"),
    },
}


def language_for(preferred: Iterable[str | None]) -> str:
    """The first of ``preferred`` (member's language, programme locale) that we have a
    template for, matched by language and script (zh-TW -> zh_Hant); English otherwise."""
    for tag in preferred:
        if not tag:
            continue
        try:
            locale = Locale.parse(str(tag).replace("-", "_"))
        except (ValueError, UnknownLocaleError):
            continue
        if locale.language == "zh":
            script = locale.script or ("Hans" if locale.territory in (None, "CN", "SG")
                                       else "Hant")
            if script == "Hant":
                return "zh_Hant"
            continue
        if locale.language in TEMPLATES:
            return locale.language
    return "en"


@dataclass(frozen=True)
class Email:
    subject: str
    text: str
    language: str


def render_email(message_type: str, data: dict[str, Any], *, language: str, name: str | None,
                 programme_name: str, points_name: str, timezone: Any) -> Email | None:
    """The email for one outbox message, or None if this type sends none."""
    if message_type not in EMAIL_TYPES:
        return None

    def number(value: int) -> str:
        return format_decimal(value, locale=language)

    def day(value: str | None) -> str:
        if not value:
            return "-"
        moment = datetime.fromisoformat(value).astimezone(timezone)
        return format_date(moment.date(), format="long", locale=language)

    fields = {"name": name or "", "programme": programme_name, "points_name": points_name,
              "points": number(int(data.get("points", 0))),
              "available": number(int(data.get("balances", {}).get("available", 0))),
              "tier": data.get("to_name", ""), "expires_on": day(data.get("expires_at")),
              "reward": data.get("reward_name") or data.get("reward", ""),
              "code": data.get("code", "")}
    kind = {MEMBER_ENROLLED: "welcome", POINTS_EXPIRING: "expiring",
            VOUCHER_ISSUED: "voucher"}.get(message_type)
    if message_type == TIER_CHANGED:
        kind = "tier_up" if data.get("direction") == "up" else "tier_down"
    assert kind is not None
    subject, body = TEMPLATES[language][kind]
    return Email(subject.format(**fields), body.format(**fields), language)
