"""The till's purchase with a coupon: the coupon is used for the basket (as ``POST
.../coupons/redeem``) and the purchase of what is left to pay is recorded (as ``POST
.../events``), in one transaction, so that both are written or neither.

The purchase's amount is the basket less the discount; with lines, the discount is
taken from the lines it applies to (domain/coupons.py ``net_lines``), so points are
earned on what the member paid for each line.

Locks, in this order: the member's row, the receipt lock of a programme that screens
duplicate receipts (of the amount paid: the discount is known once the member's row is
locked), the coupon's (the order, the code, the counter), then the purchase's (campaign
budgets). Every path takes the receipt lock right after the member's row
(``fraud.lock_receipt``)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from setia.adapters.db.store import UnitOfWork
from setia.domain import coupons as c
from setia.domain.errors import InvalidField
from setia.domain.events import parse_event
from setia.domain.money import minor_digits
from setia.service import coupons, fraud
from setia.service.common import Clock, require_programme, transaction, utc_now
from setia.service.events import apply_event


def _basket(purchase: dict[str, Any], amount: Decimal, code: str) -> dict[str, Any]:
    """The coupon body for the purchase: its member, amount, lines and order."""
    body: dict[str, Any] = {"code": code, "member": purchase.get("member"),
                            "amount": str(amount), "order_id": purchase.get("order_id")}
    if purchase.get("lines"):
        body["lines"] = purchase["lines"]
    return body


def purchase_with_coupon(engine: sa.Engine, program_id: str, purchase: Any, code: str,
                         key: str, clock: Clock = utc_now) -> dict[str, Any]:
    """``purchase`` is the event as the till would send it without the coupon (the full
    basket); ``key`` the idempotency key of the coupon's use. Answers the use, the
    amount before and after the discount, and the purchase's event result."""
    if not isinstance(purchase, dict) or purchase.get("type") != "purchase":
        raise InvalidField("a purchase event is required", field="type")

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        gross = parse_event(purchase, programme.currency)  # the basket, checked first
        basket_amount = gross.amount
        assert basket_amount is not None
        now = clock()
        use = coupons.redeem_in(
            uow, programme, _basket(purchase, basket_amount, code), key, now,
            before_locks=lambda discount: fraud.lock_receipt(
                uow, programme, gross.store, basket_amount - discount))
        discount = Decimal(use["discount"])
        paid = dict(purchase, amount=str(basket_amount - discount))
        if gross.lines:
            coupon = c.find(programme.model.coupons or [], use["coupon"])
            basket = tuple(c.BasketLine(line.sku, line.category, line.amount)
                           for line in gross.lines)
            amounts = c.net_lines(coupon, basket, discount, minor_digits(programme.currency))
            paid["lines"] = [dict(raw, amount=str(amount))
                             for raw, amount in zip(purchase["lines"], amounts, strict=True)]
        event = parse_event(paid, programme.currency)
        result = apply_event(uow, programme, event, paid, now, sent=True)
        uow.commit()
        return {"coupon": use, "amount": str(gross.amount), "discount": use["discount"],
                "paid": paid["amount"], "purchase": result}

    return transaction(engine, work)
