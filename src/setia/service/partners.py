"""Partner settlement: the value points carry between coalition partners.

``settle_event``, ``settle_redemption`` and ``settle_taken_back`` are called in
the transaction of the points postings they follow and write one settlement
posting per points posting that issues or burns points at a partner
(domain/partners.py says which). New points are valued at the current
``point_value``; points settled earlier and now taken back (a refund's
clawback, a rejected review, a reversal) or a hold released are valued at what
their first settlement recorded, so that undoing gives back exactly what was
settled even if ``point_value`` changed in between. ``settlement`` sums a
period per account: what each partner owes or is owed; the totals, with the
coalition's account, sum to zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

import sqlalchemy as sa

from setia.adapters.db.store import UnitOfWork
from setia.adapters.db.tables_partners import settlement_postings
from setia.domain import referrals
from setia.domain.events import Event
from setia.domain.ledger import AVAILABLE, ISSUED, RESERVED, Posting
from setia.domain.money import minor_digits
from setia.domain.partners import (
    COALITION,
    PARTNER_PREFIX,
    account,
    require_partner,
    transfer_for,
)
from setia.domain.programme import Programme
from setia.domain.store_credit import parse_period
from setia.service.common import require_programme, transaction

# Points postings that take back points issued at a partner: their settlement gives the
# partner their value back and lowers what it issued (it burned nothing).
TAKEN_BACK_CODES = frozenset({"clawback", "review_reject", "reverse"})


def check_event(programme: Programme, event: Event) -> None:
    """Refuse an event that names a partner the programme does not have."""
    if event.partner is not None:
        require_partner(programme.model.partners, event.partner)


class Settled(NamedTuple):
    """The partner a reference's points were settled with, and the value per point then."""

    partner: str
    point_value: Decimal


def _settled(uow: UnitOfWork, program_id: str, ref: str) -> Settled | None:
    """How the points of ``ref`` (an event that issued them, a redemption's hold) were
    settled: the first settlement posting of that reference says with whom and at what
    value per point (its ``amount_e4`` over its ``points``; all settlement postings of one
    transaction have one programme version). None if it settled nothing."""
    s = settlement_postings
    first = uow.execute(
        sa.select(s.c.partner, s.c.points, s.c.amount_e4)
        .where(s.c.program_id == program_id, s.c.ref == ref)
        .order_by(s.c.id).limit(1)).first()
    if first is None:
        return None
    points, amount_e4 = int(first.points), int(first.amount_e4)
    assert amount_e4 % points == 0, "a settled value per point has at most 4 decimals"
    return Settled(first.partner, Decimal(amount_e4 // points).scaleb(-4))


def _undoes(posting: Posting) -> bool:
    """Whether a points posting undoes points settled earlier: issued points taken back
    (to the issued account), or a hold released (reserved back to available)."""
    return posting.credit == ISSUED or (posting.debit == RESERVED
                                         and posting.credit == AVAILABLE)


def _settled_at_partners(postings: Sequence[Posting]) -> list[Posting]:
    """The postings a partner can settle: not a referral's reward, which run-due pays and
    settles with no partner, so that its clawback with a refund or a rejection of the
    purchase that qualified it gives a partner nothing back."""
    return [p for p in postings if not (p.rule_id or "").startswith(referrals.RULE_PREFIX)]


def _write(uow: UnitOfWork, programme: Programme, partner_id: str, ref: str,
           postings: Sequence[Posting], occurred_at: datetime,
           settled: Settled | None = None) -> int:
    """One settlement posting per points posting that moves value at the partner. Points
    that undo an earlier settlement are valued as ``settled`` recorded them (and settle
    nothing if nothing was settled); the others at the current ``point_value`` (none
    without a ``partners`` section: only an undoing settles then)."""
    config = programme.model.partners
    rows = []
    for posting in _settled_at_partners(postings):
        if _undoes(posting):
            if settled is None:
                continue
            value = settled.point_value
        elif config is not None:
            value = config.point_value
        else:
            continue
        transfer = transfer_for(posting.code, posting.debit, posting.credit, posting.points,
                                partner_id, value)
        if transfer is None:
            continue
        rows.append({"program_id": programme.id, "currency": programme.currency,
                     "debit": transfer.debit, "credit": transfer.credit,
                     "amount_e4": transfer.amount_e4, "points": transfer.points,
                     "partner": partner_id, "code": transfer.code, "ref": ref,
                     "program_version": programme.version, "occurred_at": occurred_at})
    if rows:
        uow.execute(settlement_postings.insert(), rows)
    return len(rows)


def settle_event(uow: UnitOfWork, programme: Programme, event: Event,
                 postings: Sequence[Posting]) -> None:
    """Settle an event's points at its partner; a refund's clawbacks at the partner of the
    purchase it refunds (whoever sends the refund), at the value they were settled at,
    whatever the current version says of partners (one stored since the purchase may have
    none: the partner still gets back what it was charged)."""
    if not postings or (programme.model.partners is None and event.type != "refund"):
        return
    partner_id = event.partner
    settled = None
    if event.type == "refund" and event.order_id is not None:
        order = uow.order(programme.id, event.order_id, programme.currency)
        partner_id = order.payload.get("partner") if order is not None else None
        if order is not None and partner_id is not None and any(
                map(_undoes, _settled_at_partners(postings))):
            # the purchase's points go back at the value they were settled at
            settled = _settled(uow, programme.id, order.event_id)
    if partner_id is None:
        return
    _write(uow, programme, partner_id, event.id, postings, event.occurred_at, settled)


def settle_redemption(uow: UnitOfWork, programme: Programme, partner_id: Any, ref: str,
                      postings: Sequence[Posting], now: datetime) -> None:
    """Settle a redemption's points at the partner where they were burned. A capture or a
    release names no partner: it is the partner the redemption's hold was settled with,
    whatever the current version says of partners (a version stored since the hold may
    have none: the partner still gets back what the hold settled)."""
    if partner_id is None and not any(map(_undoes, postings)):
        return  # a one-step redemption without a partner, or a capture: nothing to undo
    settled = None
    if partner_id is None:
        # a release gives back the value its hold was settled at
        settled = _settled(uow, programme.id, ref)
        if settled is None:
            return
        partner_id = settled.partner
    else:
        require_partner(programme.model.partners, partner_id)
    _write(uow, programme, partner_id, ref, postings, now, settled)


def settle_taken_back(uow: UnitOfWork, programme: Programme, event_id: str, ref: str,
                      postings: Sequence[Posting], now: datetime) -> None:
    """Points an event issued at a partner, taken back later under ``ref`` (a rejected
    review, a reversal): the partner its points were settled with gets back their value,
    at the value per point they were settled at, whatever the current version says of
    partners."""
    if not postings:
        return
    settled = _settled(uow, programme.id, event_id)
    if settled is not None:
        _write(uow, programme, settled.partner, ref, postings, now, settled)


def _money(amount_e4: int, digits: int) -> str:
    value = Decimal(amount_e4).scaleb(-4)
    places = max(digits, -int(value.normalize().as_tuple().exponent))
    return f"{value:.{places}f}"


def settlement(engine: sa.Engine, program_id: str, period_text: Any) -> dict[str, Any]:
    """Per settlement account, the period's movements: points issued and burned there, and
    the net value (negative: the partner owes it; positive: it is owed)."""
    period = parse_period(period_text)

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        start, end = period.bounds(programme.tz)
        s = settlement_postings
        in_period = sa.and_(s.c.program_id == program_id, s.c.occurred_at >= start,
                            s.c.occurred_at < end)
        accounts: dict[str, dict[str, int]] = {}
        config = programme.model.partners
        for partner_id in config.ids() if config is not None else []:
            accounts[account(partner_id)] = {"issued": 0, "burned": 0, "net_e4": 0}
        accounts.setdefault(COALITION, {"issued": 0, "burned": 0, "net_e4": 0})
        for row in uow.execute(sa.select(s.c.debit, s.c.credit, s.c.amount_e4, s.c.points,
                                         s.c.code).where(in_period)):
            points, amount = int(row.points), int(row.amount_e4)
            payer = accounts.setdefault(row.debit, {"issued": 0, "burned": 0, "net_e4": 0})
            payee = accounts.setdefault(row.credit, {"issued": 0, "burned": 0, "net_e4": 0})
            payer["net_e4"] -= amount
            payee["net_e4"] += amount
            # Value leaves a partner for points issued there (or a released hold) and comes
            # in for points burned there (or issued points taken back: a refund's clawback,
            # a rejected review, a reversal).
            if row.code == "release":
                payer["burned"] -= points
            elif row.code in TAKEN_BACK_CODES:
                payee["issued"] -= points
            elif row.debit != COALITION:
                payer["issued"] += points
            else:
                payee["burned"] += points
        accounts[COALITION]["issued"] = accounts[COALITION]["burned"] = 0
        digits = minor_digits(programme.currency)
        partners = []
        for name, entry in sorted(accounts.items(), key=lambda item: item[0] == COALITION):
            net = entry["net_e4"]
            partners.append({
                "account": name,
                "partner": name[len(PARTNER_PREFIX):] if name.startswith(PARTNER_PREFIX)
                else None,
                "points_issued": entry["issued"],
                "points_burned": entry["burned"],
                "net": _money(net, digits),
                "position": "owes" if net < 0 else ("is owed" if net > 0 else "settled"),
                "amount": _money(abs(net), digits),
            })
        total = sum(entry["net_e4"] for entry in accounts.values())
        assert total == 0, f"settlement accounts sum to {total}, not 0"
        return {
            "program": program_id, "period": period.key, "currency": programme.currency,
            "from": start.isoformat(), "until": end.isoformat(),
            "point_value": f"{config.point_value.normalize():f}" if config else None,
            "accounts": partners, "total": _money(total, digits),
        }

    return transaction(engine, work, read_only=True)


def check_journal(conn: sa.Connection) -> list[str]:
    """Settlement accounts sum to zero per programme and currency, and every settlement
    posting follows points postings of the same reference."""
    from setia.adapters.db import tables as t

    s = settlement_postings
    problems: list[str] = []
    balances: dict[tuple[str, str], int] = {}
    for column, sign in ((s.c.credit, 1), (s.c.debit, -1)):
        for row in conn.execute(sa.select(s.c.program_id, s.c.currency, column.label("account"),
                                          sa.func.sum(s.c.amount_e4).label("amount"))
                                .group_by(s.c.program_id, s.c.currency, column)):
            key = (row.program_id, row.currency)
            balances[key] = balances.get(key, 0) + sign * int(row.amount)
    for (program_id, currency), total in sorted(balances.items()):
        if total != 0:
            problems.append(f"{program_id}/settlement:{currency}: accounts sum to {total}, not 0")
    orphans = conn.execute(
        sa.select(s.c.program_id, s.c.ref).where(~sa.exists().where(
            t.postings.c.program_id == s.c.program_id, t.postings.c.ref == s.c.ref))
        .limit(10)).all()
    for orphan in orphans:
        problems.append(
            f"{orphan.program_id}: settlement posting {orphan.ref!r} has no points posting")
    return problems
