"""Time-driven work, all driven by ``as_of`` and idempotent: running it twice with the
same time changes nothing the second time.

Order: holds that timed out, pending activation, expiry, tier reviews,
birthdays. Members are processed in batches, each one transaction, locked
with SKIP LOCKED on PostgreSQL so several workers can run at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from dateutil.relativedelta import relativedelta

from setia.adapters.db import tables as t
from setia.adapters.db.store import UnitOfWork
from setia.domain import earning, tiers
from setia.domain.errors import RedemptionNotHeld, UnknownProgramme
from setia.domain.events import Event
from setia.domain.member import Member
from setia.domain.programme import Programme
from setia.service import outbox, referrals, store_credit
from setia.service.common import request_hash, require_programme, transaction
from setia.service.due_members import Work, each_member
from setia.service.engagement_due import engagement_due
from setia.service.events import apply_event
from setia.service.memberships import held_floor
from setia.service.redemptions import finish_hold


@dataclass
class DueReport:
    holds_released: int = 0
    points_activated: int = 0
    points_expired: int = 0
    tiers_reviewed: int = 0
    tiers_changed: int = 0
    birthdays: int = 0
    credit_holds_released: int = 0
    rebates_credited: int = 0
    expiry_notices: int = 0
    programmes: list[str] = field(default_factory=list)
    engagement: dict[str, int] = field(default_factory=dict)  # memberships, anniversaries

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_due(engine: sa.Engine, as_of: datetime, program_id: str | None = None,
            progress: Callable[[str], None] | None = None) -> DueReport:
    report = DueReport()
    with engine.connect() as conn:
        query = sa.select(t.programs.c.id).order_by(t.programs.c.id)
        if program_id is not None:
            query = query.where(t.programs.c.id == program_id)
        program_ids = list(conn.execute(query).scalars())
    if program_id is not None and not program_ids:
        raise UnknownProgramme(f"no programme {program_id!r}", field="program")
    for pid in program_ids:
        report.programmes.append(pid)
        _holds(engine, pid, as_of, report)
        _activate(engine, pid, as_of, report)
        _expire(engine, pid, as_of, report)
        _review_tiers(engine, pid, as_of, report)
        _birthdays(engine, pid, as_of, report)
        referrals.pay_due(engine, pid, as_of)
        engagement_due(engine, pid, as_of, report.engagement)
        released, rebated = store_credit.run_due(engine, pid, as_of)
        report.credit_holds_released += released
        report.rebates_credited += rebated
        if progress:
            progress(pid)
    return report


def _scalars(engine: sa.Engine, query: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


def _in_batches(engine: sa.Engine, program_id: str, pks: list[int], as_of: datetime,
                work: Work, report: DueReport) -> None:
    """``work`` counts what it did in the report's field names (``each_member``)."""
    for name, count in each_member(engine, program_id, pks, as_of, work,
                                   announce=True).items():
        setattr(report, name, getattr(report, name) + count)


def _holds(engine: sa.Engine, program_id: str, as_of: datetime, report: DueReport) -> None:
    ids = _scalars(engine, sa.select(t.redemptions.c.id).where(
        t.redemptions.c.program_id == program_id, t.redemptions.c.status == "held",
        t.redemptions.c.hold_expires_at <= as_of,
    ).order_by(t.redemptions.c.id))
    for redemption_id in ids:
        def work(uow: UnitOfWork, redemption_id: str = redemption_id) -> bool:
            programme = require_programme(uow, program_id)
            try:
                finish_hold(uow, programme, redemption_id, "release", as_of)
            except RedemptionNotHeld:
                return False  # captured or released meanwhile
            uow.commit()
            return True

        if transaction(engine, work):
            report.holds_released += 1


def _activate(engine: sa.Engine, program_id: str, as_of: datetime, report: DueReport) -> None:
    pks = _scalars(engine, sa.select(t.lots.c.member_pk).distinct().where(
        t.lots.c.program_id == program_id, t.lots.c.pending.is_(True),
        t.lots.c.available_at <= as_of,
    ))

    def work(uow: UnitOfWork, programme: Programme, member: Member, tally: Counter[str]) -> None:
        tally["points_activated"] += member.ledger.activate(as_of)

    _in_batches(engine, program_id, sorted(pks), as_of, work, report)


def _expire(engine: sa.Engine, program_id: str, as_of: datetime, report: DueReport) -> None:
    with UnitOfWork(engine) as uow:
        programme = require_programme(uow, program_id)
    expiry = programme.model.points.expiry
    report.expiry_notices += outbox.expiring_soon(engine, programme, as_of)
    if expiry.policy == "rolling":
        pks = _scalars(engine, sa.select(t.lots.c.member_pk).distinct().where(
            t.lots.c.program_id == program_id, t.lots.c.pending.is_(False),
            t.lots.c.remaining > 0, t.lots.c.expires_at <= as_of,
        ))

        def rolling(uow: UnitOfWork, programme: Programme, member: Member,
                    tally: Counter[str]) -> None:
            tally["points_expired"] += member.ledger.expire_due_lots(as_of, programme.tz)

        _in_batches(engine, program_id, sorted(pks), as_of, rolling, report)
    elif expiry.policy == "inactivity":
        assert expiry.months is not None
        # Months are counted on the programme's wall clock: the query selects in UTC with
        # a slack, and only members whose own expiry time has come are locked and worked.
        cutoff = as_of - relativedelta(months=expiry.months) + earning.MONTHS_SLACK
        with engine.connect() as conn:
            pks = [row.pk for row in conn.execute(sa.select(
                t.members.c.pk, t.members.c.last_activity_at).where(
                t.members.c.program_id == program_id, t.members.c.available > 0,
                t.members.c.last_activity_at <= cutoff,
            )) if _inactive_since(programme, row.last_activity_at, as_of)]

        def inactive(uow: UnitOfWork, programme: Programme, member: Member,
                     tally: Counter[str]) -> None:
            last = member.last_activity_at
            if last is not None and _inactive_since(programme, last, as_of):
                tally["points_expired"] += member.ledger.expire_all(
                    f"no earn or redeem since {last.astimezone(programme.tz).date()}: "
                    "all points expired"
                )

        _in_batches(engine, program_id, sorted(pks), as_of, inactive, report)


def _inactive_since(programme: Programme, last_activity_at: datetime, as_of: datetime) -> bool:
    expires_at = earning.inactivity_expires_at(programme, last_activity_at)
    return expires_at is not None and expires_at <= as_of


def _review_tiers(engine: sa.Engine, program_id: str, as_of: datetime, report: DueReport) -> None:
    with UnitOfWork(engine) as uow:
        programme = require_programme(uow, program_id)
    local = as_of.astimezone(programme.tz)
    period = tiers.review_period(programme, local)
    pks = _scalars(engine, sa.select(t.members.c.pk).where(
        t.members.c.program_id == program_id, t.members.c.tier_reviewed < period,
    ))

    def work(uow: UnitOfWork, programme: Programme, member: Member, tally: Counter[str]) -> None:
        if member.tier_reviewed >= period:
            return
        reviewed = tiers.review(programme, programme.level(member.tier_id), member.buckets, local)
        if tiers.rank(programme, reviewed.id) < tiers.rank(programme, member.tier_id) and (
                floor := held_floor(uow, programme, member, as_of)) is not None:
            # A paid membership's floor holds through the review: lowered here and lifted
            # again by its run-due, the member was told of two tier changes every day. (Read
            # only for a member the review would lower: not one query per member a day.)
            reviewed = tiers.higher(programme, floor, reviewed)
        tally["tiers_reviewed"] += 1
        if reviewed.id != member.tier_id:
            tally["tiers_changed"] += 1
            before, member.tier_id = member.tier_id, reviewed.id
            outbox.tier_reviewed(uow, programme, member, before, f"review:{period}", as_of)
        member.tier_reviewed = period

    _in_batches(engine, program_id, sorted(pks), as_of, work, report)


def birthday_in(year: int, birthday: date) -> date:
    """The day a birthday is celebrated in ``year``: 29 February falls on the 28th otherwise."""
    try:
        return birthday.replace(year=year)
    except ValueError:
        return date(year, 2, 28)


def _birthdays(engine: sa.Engine, program_id: str, as_of: datetime, report: DueReport) -> None:
    with UnitOfWork(engine) as uow:
        programme = require_programme(uow, program_id)
    local = as_of.astimezone(programme.tz)
    year = local.year
    pks = _scalars(engine, sa.select(t.members.c.pk).where(
        t.members.c.program_id == program_id, t.members.c.birthday.is_not(None),
        sa.or_(t.members.c.birthday_year.is_(None), t.members.c.birthday_year < year),
    ))

    def work(uow: UnitOfWork, programme: Programme, member: Member, tally: Counter[str]) -> None:
        if member.birthday is None or (member.birthday_year or 0) >= year:
            return
        day = birthday_in(year, member.birthday)
        enrolled_day = member.enrolled_at.astimezone(programme.tz).date()
        if day > local.date() or day < enrolled_day:
            return
        member.birthday_year = year
        event_id = f"birthday:{member.id}:{year}"
        payload = {"id": event_id, "type": "birthday", "member": member.id,
                   "occurred_at": as_of.isoformat()}
        stored = uow.stored_events(programme.id, [event_id]).get(event_id)
        digest = request_hash(payload)
        if stored is not None and stored.request_hash != digest:
            # The id holds another event, or held one since pruned (its id registered on
            # PostgreSQL: the first attempt collides with it, and the batch's retry finds
            # it): this year's birthday of a person since erased and enrolled again under
            # the same id (one birthday a year per id, as one signup), or a client's own
            # event. Skipped, and not tried again this year.
            return
        apply_event(uow, programme, Event(id=event_id, type="birthday", member=member.id,
                                          occurred_at=as_of), payload, as_of, digest=digest)
        tally["birthdays"] += 1

    _in_batches(engine, program_id, sorted(pks), as_of, work, report)

