"""Events as the till sends them (CONTRACT.md section 2), parsed and checked.

``parse_event`` is the one gate for events from the API, the CLI importer,
the demo and run-due. It raises a typed error naming the field at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from setia.domain.errors import (
    CurrencyMismatch,
    DuplicateLineSku,
    InvalidAmount,
    InvalidField,
    InvalidTime,
)
from setia.domain.money import MAX_AMOUNT, parse_amount

MAX_LINES = 500
MAX_ID_LENGTH = 128
# The times a client may give: nothing of a loyalty programme happens outside them, and a
# time near year 1 or 9999 overflows when moved to UTC or to the programme's zone.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
EVENT_KEYS = frozenset(
    {
        "id",
        "type",
        "member",
        "occurred_at",
        "order_id",
        "amount",
        "currency",
        "store",
        "channel",
        "lines",
        "attributes",
        "partner",
    }
)


_LINE_AT = [f"lines[{i}]" for i in range(MAX_LINES)]  # field names, made once
_LINE_AMOUNT = [f"{at}.amount" for at in _LINE_AT]


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    category: str | None
    quantity: int
    amount: Decimal


@dataclass(frozen=True, slots=True)
class RefundLine:
    sku: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    member: str
    occurred_at: datetime
    order_id: str | None = None
    amount: Decimal | None = None
    currency: str | None = None
    store: str | None = None
    channel: str | None = None
    lines: tuple[Line, ...] = ()
    refund_lines: tuple[RefundLine, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)
    partner: str | None = None


def _text(raw: dict[str, Any], key: str, *, required: bool, max_length: int = 200) -> str | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise InvalidField(f"{key} is required", field=key)
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(f"{key} must be a non-empty string", field=key)
    if len(value) > max_length:
        raise InvalidField(f"{key} is longer than {max_length} characters", field=key)
    if not value.isprintable():
        raise InvalidField(f"{key} must not contain control characters", field=key)
    return value


def parse_time(value: Any, field_name: str) -> datetime:
    if value is None:
        raise InvalidTime(f"{field_name} is required", field=field_name)
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidTime(
                f"{field_name} is not an ISO 8601 time: {value!r}", field=field_name
            ) from None
    else:
        raise InvalidTime(f"{field_name} must be an ISO 8601 string", field=field_name)
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidTime(
            f"{field_name} must carry a UTC offset, e.g. 2027-03-01T10:00:00+08:00",
            field=field_name,
        )
    # the year alone settles it but at the ends (an offset moves a time a day at most):
    # comparing aware times is slow, and every event's time passes here
    if not 1900 < moment.year < 2199 and not EARLIEST <= moment < LATEST:
        raise InvalidTime(f"{field_name} must fall in the years 1900 to 2199", field=field_name)
    return moment


def _lines(raw: Any, currency: str) -> tuple[Line, ...]:
    if not isinstance(raw, list):
        raise InvalidField("lines must be a list", field="lines")
    if len(raw) > MAX_LINES:
        raise InvalidField(f"lines has more than {MAX_LINES} entries", field="lines")
    lines: list[Line] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        at = _LINE_AT[i]
        if not isinstance(item, dict):
            raise InvalidField(f"{at} must be an object", field=at)
        sku = item.get("sku")
        if not isinstance(sku, str) or not sku:
            raise InvalidField(f"{at}.sku must be a non-empty string", field=f"{at}.sku")
        if sku in seen:
            raise DuplicateLineSku(
                f"{at}.sku {sku!r} appears on an earlier line; merge the lines", field=f"{at}.sku"
            )
        seen.add(sku)
        category = item.get("category")
        if category is not None and not isinstance(category, str):
            raise InvalidField(f"{at}.category must be a string", field=f"{at}.category")
        quantity = item.get("quantity", 1)
        if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity <= 0:
            raise InvalidField(f"{at}.quantity must be a positive integer", field=f"{at}.quantity")
        if quantity > MAX_QUANTITY:
            raise InvalidField(f"{at}.quantity is more than {MAX_QUANTITY:,}",
                               field=f"{at}.quantity")
        if "amount" not in item:
            raise InvalidField(f"{at}.amount is required", field=f"{at}.amount")
        amount = parse_amount(item["amount"], currency, _LINE_AMOUNT[i])
        lines.append(Line(sku, category, quantity, amount))
    return tuple(lines)


def _refund_lines(raw: Any, currency: str) -> tuple[RefundLine, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidField("lines must be a non-empty list", field="lines")
    out: list[RefundLine] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        at = f"lines[{i}]"
        if not isinstance(item, dict):
            raise InvalidField(f"{at} must be an object", field=at)
        sku = item.get("sku")
        if not isinstance(sku, str) or not sku:
            raise InvalidField(f"{at}.sku must be a non-empty string", field=f"{at}.sku")
        if sku in seen:
            raise DuplicateLineSku(f"{at}.sku {sku!r} appears twice", field=f"{at}.sku")
        seen.add(sku)
        if "amount" not in item:
            raise InvalidField(f"{at}.amount is required", field=f"{at}.amount")
        out.append(
            RefundLine(sku=sku, amount=parse_amount(item["amount"], currency, f"{at}.amount"))
        )
    return tuple(out)


# The most one line may hold: quantities count stamps (32-bit columns) and are stored.
MAX_QUANTITY = 1_000_000

# Event types Setia posts itself, once: a client sending one would be paid again each time
# (a birthday bonus every day), so the API, batches and imports refuse them.
POSTED_BY_SETIA = {"signup": "enrolment (PUT .../members/{member}) posts it",
                   "birthday": "run-due posts it on the member's birthday, once a year",
                   "anniversary": "run-due posts it on the enrolment anniversary, once a year"}


# The journal references of Setia's own postings (an adjustment, a reversal, a review's
# decision, a referral's payout, run-due, a store-credit adjustment): an event's id is the
# reference of its postings, so an id like these would share them with that posting (a
# reversal of ``adjust:K`` took back the event's points with the adjustment's).
RESERVED_ID_PREFIXES = ("adjust:", "credit-adjust:", "reverse:", "review:", "referral:",
                        "run-due:", "rdm_", "svr_")  # the last two: redemptions, surveys


def check_sent(event: Event) -> None:
    """An event a client sends (POST /events, /events/batch, /simulate, an import, the
    till) is not of a type Setia posts itself (``POSTED_BY_SETIA``), and its id is not
    shaped like a reference of Setia's own postings (``RESERVED_ID_PREFIXES``). Checked
    once the event id is known not to be stored: a retry of one stored before this check
    replays."""
    if (origin := POSTED_BY_SETIA.get(event.type)) is not None:
        raise InvalidField(f"{event.type} events cannot be sent: {origin}", field="type")
    if event.id.startswith(RESERVED_ID_PREFIXES):
        prefix = next(p for p in RESERVED_ID_PREFIXES if event.id.startswith(p))
        raise InvalidField(f"an event id cannot begin with {prefix!r}: Setia's own "
                           "postings are referenced so", field="id")


def parse_event(raw: Any, currency: str) -> Event:
    """Check one event body against the contract; amounts in the programme's currency."""
    if not isinstance(raw, dict):
        raise InvalidField("the event must be a JSON object", field="(body)")
    if not EVENT_KEYS.issuperset(raw):
        unknown = sorted(set(raw) - EVENT_KEYS)
        raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
    event_id = _text(raw, "id", required=True, max_length=MAX_ID_LENGTH)
    event_type = _text(raw, "type", required=True, max_length=64)
    member = _text(raw, "member", required=True, max_length=MAX_ID_LENGTH)
    assert event_id is not None and event_type is not None and member is not None
    occurred_at = parse_time(raw.get("occurred_at"), "occurred_at")
    given_currency = raw.get("currency")
    if given_currency is not None and given_currency != currency:
        raise CurrencyMismatch(
            f"currency is {given_currency!r} but the programme's currency is {currency}",
            field="currency",
        )
    order_id = _text(
        raw, "order_id", required=event_type in ("purchase", "refund"), max_length=MAX_ID_LENGTH
    )
    amount = (
        parse_amount(raw["amount"], currency, "amount") if raw.get("amount") is not None else None
    )
    attributes = raw.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise InvalidField("attributes must be an object", field="attributes")
    lines: tuple[Line, ...] = ()
    refund_lines: tuple[RefundLine, ...] = ()
    if event_type == "refund":
        if raw.get("lines") is not None:
            if amount is not None:
                raise InvalidField(
                    "give either amount or lines for a refund, not both", field="amount"
                )
            refund_lines = _refund_lines(raw["lines"], currency)
        elif amount is None:
            raise InvalidField("a refund needs amount or lines", field="amount")
        elif amount == 0:
            raise InvalidAmount("amount of a refund must be greater than zero", field="amount")
    elif raw.get("lines") is not None:
        lines = _lines(raw["lines"], currency)
        total = sum((line.amount for line in lines), Decimal(0))
        if total > MAX_AMOUNT:
            # each line is within the limit; their sum must be too, as a given amount is
            raise InvalidAmount(f"the lines add up to more than {MAX_AMOUNT:,}", field="lines")
        if amount is None:
            amount = total
        elif lines and amount != total:
            raise InvalidField(
                f"amount {amount} does not equal the sum of the lines ({total})", field="amount"
            )
    if event_type == "purchase" and amount is None:
        raise InvalidField("a purchase needs amount or lines", field="amount")
    return Event(
        id=event_id,
        type=event_type,
        member=member,
        occurred_at=occurred_at,
        order_id=order_id,
        amount=amount,
        currency=currency,
        store=_text(raw, "store", required=False),
        channel=_text(raw, "channel", required=False),
        lines=lines,
        refund_lines=refund_lines,
        attributes=attributes,
        partner=_text(raw, "partner", required=False, max_length=64),
    )


def purchase_order(event: Event) -> str | None:
    """The order a lot or an award is earned for: a purchase's own. Any event may name an
    order id, but only a purchase records one, whose refund claws back from its lots."""
    return event.order_id if event.type == "purchase" else None
