"""Guest sales: purchases by people who are not members, recorded so that the average
order value of members can be compared with theirs. Idempotent by the sale id."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from setia.adapters.db.store import UnitOfWork
from setia.adapters.db.tables_analytics import guest_sales
from setia.domain.errors import IdempotencyConflict, InvalidField
from setia.domain.events import parse_time
from setia.domain.money import parse_amount
from setia.service.common import Clock, require_programme, transaction, utc_now

MAX_SALES = 1000
_KEYS = {"id", "occurred_at", "amount", "currency", "store", "channel", "partner"}


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
