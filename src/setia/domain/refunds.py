"""Refunds: how much of an order, and of each of its lines, a refund takes back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from setia.domain.errors import InvalidField, RefundExceedsOrder
from setia.domain.events import Event, Line
from setia.domain.money import allocate


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku: str
    category: str | None
    quantity: int
    amount: Decimal
    refunded: Decimal

    @property
    def left(self) -> Decimal:
        return self.amount - self.refunded


@dataclass(frozen=True, slots=True)
class RefundSplit:
    total: Decimal
    per_line: dict[str, Decimal]  # sku -> amount refunded now


def split_refund(event: Event, amount: Decimal, refunded: Decimal, lines: list[OrderLine],
                 minor_digits: int) -> RefundSplit:
    """Check a refund against what is left of the order and spread it over the lines.

    By amount: in proportion to what is left of each line, rounded to the minor
    unit by largest remainder so the parts add up exactly. By lines: each named
    sku, no more than is left of it.
    """
    left = amount - refunded
    if event.refund_lines:
        by_sku = {line.sku: line for line in lines}
        per_line: dict[str, Decimal] = {}
        for i, refund_line in enumerate(event.refund_lines):
            line = by_sku.get(refund_line.sku)
            if line is None:
                raise InvalidField(
                    f"lines[{i}].sku {refund_line.sku!r} is not a line of order {event.order_id}",
                    field=f"lines[{i}].sku",
                )
            if refund_line.amount > line.left:
                raise RefundExceedsOrder(
                    f"lines[{i}] refunds {refund_line.amount} of {refund_line.sku} "
                    f"but only {line.left} is left of that line",
                    field=f"lines[{i}].amount",
                )
            per_line[refund_line.sku] = refund_line.amount
        total = sum(per_line.values(), Decimal(0))
        if total <= 0:
            raise InvalidField("a refund must return more than zero", field="lines")
        return RefundSplit(total=total, per_line=per_line)

    assert event.amount is not None
    if event.amount > left:
        raise RefundExceedsOrder(
            f"refund of {event.amount} is more than the {left} left of order {event.order_id}",
            field="amount",
        )
    return RefundSplit(total=event.amount, per_line=spread(event.amount, lines, minor_digits))


def spread(total: Decimal, lines: list[OrderLine], minor_digits: int) -> dict[str, Decimal]:
    """Spread ``total`` over lines in proportion to what is left of each (largest remainder)."""
    open_lines = [line for line in lines if line.left > 0]
    if not open_lines:
        return {}
    parts = allocate(total, [line.left for line in open_lines], minor_digits)
    return {line.sku: part for line, part in zip(open_lines, parts, strict=True)}


def remaining_lines(lines: list[OrderLine], refunded_now: dict[str, Decimal]) -> tuple[Line, ...]:
    """The order's lines as they stand after this refund."""
    return tuple(
        Line(sku=line.sku, category=line.category, quantity=line.quantity,
             amount=line.left - refunded_now.get(line.sku, Decimal(0)))
        for line in lines
    )


@dataclass
class Order:
    """A purchase as recorded, with what has been refunded of it and the points it earned."""

    order_id: str
    member_pk: int
    event_id: str
    program_version: int
    tier_id: str
    occurred_at: datetime
    amount: Decimal
    refunded: Decimal
    lines: list[OrderLine]
    awards: dict[str, int]
    payload: dict[str, Any]
    new: bool = False
    dirty: bool = False

    @property
    def left(self) -> Decimal:
        return self.amount - self.refunded
