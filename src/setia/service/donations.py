"""Donations: the redemption hook that records a donation reward, and totals per cause.

The points move through the journal as any redemption's do (member -> redeemed),
with the rule id ``donation:<cause id>``; the ``donations`` table keeps one row
per captured donation with the cause, the points and their money value.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from setia.adapters.db import tables_donations as td
from setia.adapters.db.store import UnitOfWork
from setia.domain import donations as dn
from setia.domain.member import Member
from setia.domain.money import minor_digits
from setia.domain.programme import Programme, Reward
from setia.service.common import require_programme, transaction


def after_capture(uow: UnitOfWork, programme: Programme, reward: Reward | None, member: Member,
                  redemption_id: str, points: int, now: datetime) -> None:
    """The redemption hook, called when a reward's points are spent (one step, or the
    capture of a hold) and before the postings are recorded."""
    if reward is None or reward.donation is None:
        return
    cause = dn.find(programme.model.causes or [], reward.donation.cause)
    tagged = dn.tag(member.ledger.postings, cause.id)
    assert tagged == 1, "a donation is one spending posting"
    uow.execute(td.donations.insert().values(
        redemption_id=redemption_id, program_id=programme.id, cause_id=cause.id,
        member_pk=member.pk, points=points,
        amount=dn.amount(cause, points, minor_digits(programme.currency)),
        currency=programme.currency, donated_at=now))


def totals(engine: sa.Engine, program_id: str) -> dict[str, Any]:
    """Every cause of the programme with its donations, donors, points and money value."""

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        d = td.donations
        found = {row.cause_id: row for row in uow.execute(
            sa.select(d.c.cause_id, sa.func.count().label("donations"),
                      sa.func.count(sa.distinct(d.c.member_pk)).label("donors"),
                      sa.func.sum(d.c.points).label("points"),
                      sa.func.sum(d.c.amount).label("amount"))
            .where(d.c.program_id == programme.id).group_by(d.c.cause_id))}
        quantum = Decimal(1).scaleb(-minor_digits(programme.currency))
        causes = []
        for cause in programme.model.causes or []:
            row = found.get(cause.id)
            causes.append({
                "cause": cause.id, "name": cause.name,
                "donations": int(row.donations) if row else 0,
                "donors": int(row.donors) if row else 0,
                "points": int(row.points) if row else 0,
                "amount": str(Decimal(row.amount if row else 0).quantize(quantum)),
                "currency": programme.currency})
        return {"causes": causes}

    return transaction(engine, work, read_only=True)
