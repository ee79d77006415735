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

from setia.adapters.db import tables as t
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


def _retired_name(uow: UnitOfWork, programme: Programme, cause_id: str) -> str:
    """The name a cause the current version no longer has bore in the version of its
    latest donation (the cause id if that version cannot be found)."""
    d, r = td.donations, t.redemptions
    version = uow.execute(
        sa.select(sa.func.max(r.c.program_version))
        .select_from(d.join(r, r.c.id == d.c.redemption_id))
        .where(d.c.program_id == programme.id, d.c.cause_id == cause_id)).scalar_one()
    then = uow.programme(programme.id, int(version)) if version is not None else None
    for cause in (then.model.causes or []) if then is not None else []:
        if cause.id == cause_id:
            return cause.name
    return cause_id


def totals(engine: sa.Engine, program_id: str) -> dict[str, Any]:
    """Every cause of the programme with its donations, donors, points and money value;
    then every cause a later version removed (``retired``) that was given to: the money is
    still owed to it."""

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
        current = {cause.id: cause.name for cause in programme.model.causes or []}
        retired = sorted(set(found) - set(current))
        causes = []
        for cause_id, name in [*current.items(),
                               *((c, _retired_name(uow, programme, c)) for c in retired)]:
            row = found.get(cause_id)
            causes.append({
                "cause": cause_id, "name": name,
                "donations": int(row.donations) if row else 0,
                "donors": int(row.donors) if row else 0,
                "points": int(row.points) if row else 0,
                "amount": str(Decimal(row.amount if row else 0).quantize(quantum)),
                "currency": programme.currency, "retired": cause_id not in current})
        return {"causes": causes}

    return transaction(engine, work, read_only=True)
