"""Guest sales: purchases by people who are not members, recorded so that the average
order value of members can be compared with theirs, and their refunds. Idempotent by the
sale id and the refund id."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from setia.adapters.db.store import UnitOfWork
from setia.adapters.db.tables_analytics import guest_refunds, guest_sales
from setia.domain.errors import (
    CurrencyMismatch,
    IdempotencyConflict,
    InvalidAmount,
    InvalidField,
    RefundExceedsOrder,
    UnknownOrder,
)
from setia.domain.events import parse_time
from setia.domain.money import minor_digits, parse_amount
from setia.service.common import Clock, require_programme, transaction, utc_now

MAX_SALES = 1000
_KEYS = {"id", "occurred_at", "amount", "currency", "store", "channel", "partner"}
_REFUND_KEYS = {"id", "sale_id", "occurred_at", "amount", "currency"}


def _text(raw: dict[str, Any], key: str, at: str, limit: int = 128) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= limit or "\x00" in value:
        raise InvalidField(f"{key} must be a text of 1 to {limit} characters", field=f"{at}.{key}")
    return value


def _parse(raw: Any, at: str, currency: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidField("a sale must be a JSON object", field=at)
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r}", field=f"{at}.{unknown[0]}")
    sale_id = _text(raw, "id", at)
    if sale_id is None:
        raise InvalidField("id is required", field=f"{at}.id")
    if raw.get("currency", currency) != currency:
        raise InvalidField(f"currency must be {currency}", field=f"{at}.currency")
    amount = parse_amount(raw.get("amount"), currency, f"{at}.amount")
    return {
        "id": sale_id,
        "occurred_at": parse_time(raw.get("occurred_at"), f"{at}.occurred_at"),
        "amount_e4": int(amount * 10_000),
        "store": _text(raw, "store", at),
        "channel": _text(raw, "channel", at),
        "partner": _text(raw, "partner", at),
    }


def record_guest_sales(engine: sa.Engine, program_id: str, sales: Any,
                       clock: Clock = utc_now) -> dict[str, int]:
    """Store sales without a member. A sale id seen before with the same values is
    replayed; with other values it is refused, and then nothing of the call is stored."""
    if not isinstance(sales, list) or not 0 < len(sales) <= MAX_SALES:
        raise InvalidField(f"sales must be a list of 1 to {MAX_SALES}", field="sales")

    def work(uow: UnitOfWork) -> dict[str, int]:
        programme = require_programme(uow, program_id)
        rows = [_parse(raw, f"sales[{i}]", programme.currency) for i, raw in enumerate(sales)]
        seen: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row["id"] in seen and seen[row["id"]] != row:
                raise IdempotencyConflict(f"sale id {row['id']!r} is given twice, differently",
                                          field="id")
            seen[row["id"]] = row
        stored = {
            r.id: r._asdict()
            for r in uow.conn.execute(
                sa.select(guest_sales.c.id, guest_sales.c.occurred_at, guest_sales.c.amount_e4,
                          guest_sales.c.store, guest_sales.c.channel, guest_sales.c.partner)
                .where(guest_sales.c.program_id == program_id,
                       guest_sales.c.id.in_(list(seen)))
            )
        }
        new = []
        for sale_id, row in seen.items():
            if sale_id in stored:
                if _same(stored[sale_id], row):
                    continue
                raise IdempotencyConflict(
                    f"sale id {sale_id!r} was already used for a different sale", field="id"
                )
            new.append({**row, "program_id": program_id, "recorded_at": clock()})
        if new:
            uow.conn.execute(sa.insert(guest_sales), new)
        uow.commit()
        return {"recorded": len(new), "replayed": len(seen) - len(new)}

    return transaction(engine, work)


def _same(stored: dict[str, Any], row: dict[str, Any]) -> bool:
    when: datetime = row["occurred_at"]
    return bool(stored["occurred_at"] == when and all(
        stored[k] == row[k] for k in ("amount_e4", "store", "channel", "partner")))


# ----------------------------------------------------------------------------- refunds


def _parse_refund(raw: Any, at: str, currency: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidField("a refund must be a JSON object", field=at)
    unknown = sorted(set(raw) - _REFUND_KEYS)
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r}", field=f"{at}.{unknown[0]}")
    found = {key: _text(raw, key, at) for key in ("id", "sale_id")}
    for key, value in found.items():
        if value is None:
            raise InvalidField(f"{key} is required", field=f"{at}.{key}")
    if raw.get("currency", currency) != currency:
        raise CurrencyMismatch(f"currency must be {currency}", field=f"{at}.currency")
    amount = parse_amount(raw.get("amount"), currency, f"{at}.amount")
    if amount == 0:
        raise InvalidAmount(f"{at}.amount must be more than 0", field=f"{at}.amount")
    return {
        **found,
        "occurred_at": parse_time(raw.get("occurred_at"), f"{at}.occurred_at"),
        "amount_e4": int(amount * 10_000),
    }


def record_guest_refunds(engine: sa.Engine, program_id: str, refunds: Any,
                         clock: Clock = utc_now) -> dict[str, int]:
    """Store refunds of guest sales: each names its sale (``sale_id``) and the amount given
    back. A refund id seen before with the same values is replayed; with other values it
    is refused, as is a refund of a sale not recorded or of more than is left of the sale
    (after its refunds stored and those before it in the call); then nothing of the call
    is stored."""
    if not isinstance(refunds, list) or not 0 < len(refunds) <= MAX_SALES:
        raise InvalidField(f"refunds must be a list of 1 to {MAX_SALES}", field="refunds")

    def work(uow: UnitOfWork) -> dict[str, int]:
        programme = require_programme(uow, program_id)
        rows = [_parse_refund(raw, f"refunds[{i}]", programme.currency)
                for i, raw in enumerate(refunds)]
        first: dict[str, int] = {}  # each refund id at its first place in the call
        for i, row in enumerate(rows):
            if row["id"] in first and rows[first[row["id"]]] != row:
                raise IdempotencyConflict(
                    f"refund id {row['id']!r} is given twice, differently",
                    field=f"refunds[{i}].id")
            first.setdefault(row["id"], i)
        r, g = guest_refunds, guest_sales
        sale_ids = sorted({rows[i]["sale_id"] for i in first.values()})
        # The sales refunded are locked (in a stable order) before what is left of them and
        # the refunds stored are read: two refunds of one sale at once cannot both take its
        # last part, and a refund sent again while its first call runs finds it stored
        # (and is replayed) instead of finding the sale refunded by it.
        amounts = dict(uow.conn.execute(
            sa.select(g.c.id, g.c.amount_e4)
            .where(g.c.program_id == program_id, g.c.id.in_(sale_ids))
            .order_by(g.c.id).with_for_update()).all())
        stored = {
            row.id: row._asdict() for row in uow.conn.execute(
                sa.select(r.c.id, r.c.sale_id, r.c.occurred_at, r.c.amount_e4)
                .where(r.c.program_id == program_id, r.c.id.in_(list(first))))
        }
        refunded = dict(uow.conn.execute(
            sa.select(r.c.sale_id, sa.func.sum(r.c.amount_e4))
            .where(r.c.program_id == program_id, r.c.sale_id.in_(sale_ids))
            .group_by(r.c.sale_id)).all())
        digits = minor_digits(programme.currency)
        new = []
        for i in first.values():
            row, at = rows[i], f"refunds[{i}]"
            if row["id"] in stored:
                if _same_refund(stored[row["id"]], row):
                    continue
                raise IdempotencyConflict(
                    f"refund id {row['id']!r} was already used for a different refund",
                    field=f"{at}.id")
            sale_id = row["sale_id"]
            if sale_id not in amounts:
                raise UnknownOrder(f"no guest sale {sale_id!r} in programme {program_id}",
                                   field=f"{at}.sale_id")
            left = int(amounts[sale_id]) - int(refunded.get(sale_id) or 0)
            if row["amount_e4"] > left:
                raise RefundExceedsOrder(
                    f"{_money(row['amount_e4'], digits)} is more than what is left of guest "
                    f"sale {sale_id!r}: {_money(left, digits)}", field=f"{at}.amount")
            refunded[sale_id] = int(refunded.get(sale_id) or 0) + row["amount_e4"]
            new.append({**row, "program_id": program_id, "recorded_at": clock()})
        if new:
            uow.conn.execute(sa.insert(guest_refunds), new)
        uow.commit()
        return {"recorded": len(new), "replayed": len(first) - len(new)}

    return transaction(engine, work)


def _same_refund(stored: dict[str, Any], row: dict[str, Any]) -> bool:
    return bool(stored["occurred_at"] == row["occurred_at"] and all(
        stored[k] == row[k] for k in ("sale_id", "amount_e4")))


def _money(amount_e4: int, digits: int) -> str:
    return str((Decimal(amount_e4) / 10_000).quantize(Decimal(1).scaleb(-digits)))
