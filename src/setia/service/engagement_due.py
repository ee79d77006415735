"""Run-due work of campaigns and paid memberships, driven by ``as_of`` and idempotent:
memberships that ended expire (their tier floor goes), active ones get the monthly
vouchers owed and keep their tier floor (after the core's tier review), and members
whose enrolment anniversary has come get an ``anniversary`` event (earn rules and
campaigns ``on: anniversary`` reward it). Each member is one transaction, locked
with SKIP LOCKED on PostgreSQL like the core's run-due.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.adapters.db import tables_engagement as te
from setia.adapters.db.store import UnitOfWork
from setia.domain.events import Event
from setia.domain.programme import Programme
from setia.service import outbox
from setia.service.common import require_programme
from setia.service.due_members import Work, each_member
from setia.service.engagement import plan_of
from setia.service.memberships import apply_tier_floor, issue_monthly, restore_tier


def engagement_due(engine: sa.Engine, program_id: str, as_of: datetime,
                   counts: dict[str, int]) -> None:
    with UnitOfWork(engine) as uow:
        programme = require_programme(uow, program_id)
    for name in ("memberships_expired", "membership_vouchers", "anniversaries"):
        counts.setdefault(name, 0)
    if programme.model.memberships is not None or _has_rows(engine, program_id):
        _memberships(engine, program_id, as_of, counts)
    if any(c.on == "anniversary" for c in programme.model.campaigns or []) or any(
            rule.on == "anniversary" for rule in programme.model.earn):
        _anniversaries(engine, program_id, as_of, counts)


def _has_rows(engine: sa.Engine, program_id: str) -> bool:
    m = te.membership_purchases
    with engine.connect() as conn:
        return conn.execute(sa.select(m.c.id).where(m.c.program == program_id,
                                                    m.c.status == "active").limit(1)).first() \
            is not None


def _for_each_member(engine: sa.Engine, program_id: str, pks: list[int], as_of: datetime,
                     work: Work, counts: dict[str, int]) -> None:
    for name, count in each_member(engine, program_id, pks, as_of, work,
                                   announce=False).items():
        counts[name] += count


def _memberships(engine: sa.Engine, program_id: str, as_of: datetime,
                 counts: dict[str, int]) -> None:
    m = te.membership_purchases
    with engine.connect() as conn:
        pks = sorted(set(conn.execute(sa.select(m.c.member_pk).where(
            m.c.program == program_id, m.c.status == "active",
            m.c.starts_at <= as_of)).scalars()))

    def work(uow: UnitOfWork, programme: Programme, member: Any, tally: Counter[str]) -> None:
        rows = [dict(row) for row in uow.execute(sa.select(m).where(
            m.c.member_pk == member.pk, m.c.program == program_id, m.c.status == "active",
        ).order_by(m.c.starts_at)).mappings()]
        ended = [row for row in rows if row["ends_at"] <= as_of]
        current = next((row for row in rows
                        if row["starts_at"] <= as_of < row["ends_at"]), None)
        before = member.tier_id
        if ended:
            uow.execute(m.update().where(m.c.id.in_([row["id"] for row in ended]))
                        .values(status="expired"))
            tally["memberships_expired"] += len(ended)
            for row in ended:  # the months it began before it ended, if no run-due met them
                tally["membership_vouchers"] += issue_monthly(uow, programme, member, row,
                                                              as_of)
            # What the member's own metric earns, then a renewal's floor (if it has one).
            restore_tier(programme, member, as_of, ended)
        if current is not None:
            tally["membership_vouchers"] += issue_monthly(uow, programme, member, current,
                                                          as_of)
            apply_tier_floor(programme, member, plan_of(programme, current["plan_id"]))
            # The floor moves the tier the first time a purchase is current, and a renewal
            # without one lets it fall: keyed by this run's time, so each move has its
            # message and a re-run (nothing moves) writes none.
            ref = f"{current['id']}:floor:{as_of.isoformat()}"
        elif ended:
            ref = f"{ended[-1]['id']}:expired"  # a purchase expires once
        else:
            return
        outbox.tier_reviewed(uow, programme, member, before, ref, as_of)

    _for_each_member(engine, program_id, pks, as_of, work, counts)


def anniversary_in(year: int, enrolled: date) -> date:
    try:
        return enrolled.replace(year=year)
    except ValueError:  # enrolled on 29 February
        return date(year, 2, 28)


def _anniversaries(engine: sa.Engine, program_id: str, as_of: datetime,
                   counts: dict[str, int]) -> None:
    with UnitOfWork(engine) as uow:
        programme = require_programme(uow, program_id)
    local = as_of.astimezone(programme.tz)
    year = local.year
    mem, done = t.members, te.anniversaries
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(mem.c.pk, mem.c.enrolled_at)
            .outerjoin(done, sa.and_(done.c.member_pk == mem.c.pk, done.c.year == year))
            .where(mem.c.program_id == program_id, done.c.member_pk.is_(None))
        ).all()
    pks = sorted(pk for pk, enrolled_at in rows if _due(programme, enrolled_at, local.date()))

    def work(uow: UnitOfWork, programme: Programme, member: Any, tally: Counter[str]) -> None:
        from setia.service.events import apply_event

        if not _due(programme, member.enrolled_at, local.date()) or not uow.insert_ignore(
                done, {"member_pk": member.pk, "year": year, "celebrated_at": as_of},
                ["member_pk", "year"]):
            return  # not due, or celebrated by a run-due since the members were read
        event_id = f"anniversary:{member.id}:{year}"
        if uow.stored_events(programme.id, [event_id]):
            # Celebrated before these rows were kept (its event stored; or pruned, its id
            # registered on PostgreSQL: the first attempt collides with it, and the batch's
            # retry finds it), or the id holds an event of its own: a client's, or one of a
            # person erased and enrolled again under the same id. Not paid.
            return
        payload = {"id": event_id, "type": "anniversary", "member": member.id,
                   "occurred_at": as_of.isoformat()}
        result = apply_event(uow, programme, Event(id=event_id, type="anniversary",
                                                   member=member.id, occurred_at=as_of),
                             payload, as_of)
        if result["status"] == "applied":
            tally["anniversaries"] += 1

    _for_each_member(engine, program_id, pks, as_of, work, counts)


def _due(programme: Programme, enrolled_at: datetime, today: date) -> bool:
    enrolled = enrolled_at.astimezone(programme.tz).date()
    if enrolled.year >= today.year:
        return False
    return anniversary_in(today.year, enrolled) <= today
