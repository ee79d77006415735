"""Paid memberships: buy, renew, cancel and read; run-due expires them and hands out the
monthly vouchers (``engagement_due``). One transaction per command, under the member's
lock; every write is idempotent by its Idempotency-Key.

A member has at most one membership at a time; a renewal is a new purchase row that
starts when the current one ends. Each row records the fee paid (revenue for analytics).
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from setia.adapters.db import tables_engagement as te
from setia.adapters.db.store import UnitOfWork
from setia.domain import engagement as rules
from setia.domain import tiers
from setia.domain.errors import InvalidField, UnknownMember
from setia.domain.member import Member
from setia.domain.programme import Level, Programme
from setia.service import audit, outbox
from setia.service.common import (
    Clock,
    idempotent,
    iso,
    require_programme,
    require_reason,
    transaction,
    utc_now,
)
from setia.service.engagement import issue_voucher, plan_of


def _member(uow: UnitOfWork, programme: Programme, member_id: str) -> Member:
    member = uow.member(programme.id, member_id)
    if member is None:
        raise UnknownMember(f"no member {member_id!r} in programme {programme.id}",
                            field="member")
    return member


def _body(body: Any, allowed: set[str]) -> dict[str, Any]:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidField("the body must be a JSON object", field="(body)")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
    return body


def _plan(programme: Programme, plan_id: Any) -> Any:
    if not isinstance(plan_id, str) or not plan_id:
        raise InvalidField("plan must be a membership plan id", field="plan")
    plan = plan_of(programme, plan_id)
    if plan is None:
        raise rules.UnknownPlan(f"no membership plan {plan_id!r} in programme {programme.id}",
                                field="plan")
    return plan


def _rows(uow: UnitOfWork, programme: Programme, member: Member) -> list[dict[str, Any]]:
    m = te.membership_purchases
    return [dict(row) for row in uow.execute(
        sa.select(m).where(m.c.member_pk == member.pk, m.c.program == programme.id)
        .order_by(m.c.starts_at, m.c.id)).mappings()]


def _open(rows: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Active rows that have not ended: the current one and any renewal after it."""
    return [row for row in rows if row["status"] == "active" and row["ends_at"] > now]


def membership_view(programme: Programme, member: Member, rows: list[dict[str, Any]],
                    now: datetime) -> dict[str, Any]:
    current = next((row for row in _open(rows, now) if row["starts_at"] <= now), None)
    plan = plan_of(programme, current["plan_id"]) if current else None
    ends_at = max((row["ends_at"] for row in _open(rows, now)), default=None)
    return {
        "member": member.id,
        "status": "active" if current else "none",
        "plan": current["plan_id"] if current else None,
        "ends_at": iso(ends_at) if current else None,
        "benefits": None if plan is None else {
            "multiplier": str(plan.multiplier) if plan.multiplier else None,
            "monthly_voucher": plan.monthly_voucher.benefit() if plan.monthly_voucher else None,
            "tier_floor": plan.tier_floor,
        },
        "tier": member.tier_id,
        "purchases": [{
            "id": row["id"], "plan": row["plan_id"], "kind": row["kind"],
            "fee": str(programme_amount(programme, row["fee"])), "currency": row["currency"],
            "starts_at": iso(row["starts_at"]), "ends_at": iso(row["ends_at"]),
            "status": row["status"], "vouchers_issued": row["vouchers_issued"],
        } for row in rows],
    }


def programme_amount(programme: Programme, value: Any) -> Any:
    from decimal import Decimal

    from setia.domain.money import minor_digits

    return Decimal(value).quantize(Decimal(1).scaleb(-minor_digits(programme.currency)))


def apply_tier_floor(programme: Programme, member: Member, plan: Any) -> None:
    if plan is None or plan.tier_floor is None:
        return
    floor = programme.level(plan.tier_floor)
    member.tier_id = tiers.higher(programme, floor, programme.level(member.tier_id)).id


def held_floor(uow: UnitOfWork, programme: Programme, member: Member,
               as_of: datetime) -> Level | None:
    """The highest tier floor among the member's paid memberships current at ``as_of``
    (none without plans that have one: no query)."""
    if not any(plan.tier_floor for plan in programme.model.memberships or []):
        return None
    m = te.membership_purchases
    floor: Level | None = None
    for plan_id in uow.execute(sa.select(m.c.plan_id).where(
            m.c.member_pk == member.pk, m.c.program == programme.id, m.c.status == "active",
            m.c.starts_at <= as_of, m.c.ends_at > as_of)).scalars():
        plan = plan_of(programme, plan_id)
        if plan is not None and plan.tier_floor is not None:
            level = programme.level(plan.tier_floor)
            floor = level if floor is None else tiers.higher(programme, level, floor)
    return floor


def restore_tier(programme: Programme, member: Member, now: datetime,
                 ended: list[dict[str, Any]]) -> None:
    """When memberships with a tier floor end (``ended``: their purchase rows), the tier is
    again what the member's own metric earns. Plans without a floor never moved it: it is
    hers, and stays until her next review (a refund lowers no tier before it)."""
    if all((plan := plan_of(programme, row["plan_id"])) is not None and plan.tier_floor is None
           for row in ended):
        return
    local = now.astimezone(programme.tz)
    member.tier_id = tiers.review(programme, programme.level(member.tier_id), member.buckets,
                                  local).id


def _insert(uow: UnitOfWork, programme: Programme, member: Member, plan: Any, kind: str,
            starts_at: datetime, now: datetime,
            anchor: datetime | None = None) -> dict[str, Any]:
    ends_at = (rules.membership_ends_at(plan, starts_at, programme.tz) if anchor is None
               else rules.renewal_ends_at(plan, anchor, starts_at, programme.tz))
    row = {
        "id": "mbr_" + secrets.token_hex(10), "program": programme.id, "member": member.id,
        "member_pk": member.pk, "plan_id": plan.id, "kind": kind, "fee": plan.fee,
        "currency": programme.currency, "starts_at": starts_at,
        "ends_at": ends_at,
        "status": "active", "tier_before": member.tier_id, "vouchers_issued": 0,
        "created_at": now, "cancelled_at": None,
    }
    uow.execute(te.membership_purchases.insert().values(**row))
    return row


def issue_monthly(uow: UnitOfWork, programme: Programme, member: Member, row: dict[str, Any],
                  as_of: datetime) -> int:
    """The monthly vouchers owed by ``as_of`` that were not issued yet, each with its
    ``voucher.issued`` message (ref: the purchase id; reward: ``membership:<plan>``, as the
    voucher row and its ``voucher.used`` message name it)."""
    plan = plan_of(programme, row["plan_id"])
    if plan is None or plan.monthly_voucher is None:
        return 0
    due = rules.monthly_vouchers_due(plan, row["starts_at"], row["ends_at"], as_of,
                                     programme.tz)
    source = rules.MEMBERSHIP_RULE + plan.id
    issued = 0
    for _ in range(row["vouchers_issued"], due):
        issue_voucher(uow, programme, member, plan.monthly_voucher, source, as_of,
                      ref=row["id"], name=plan.name, told_at=as_of)
        issued += 1
    if issued:
        m = te.membership_purchases
        uow.execute(m.update().where(m.c.id == row["id"]).values(vouchers_issued=due))
        row["vouchers_issued"] = due
    return issued


def _command(engine: sa.Engine, program_id: str, member_id: str, operation: str, body: Any,
             key: str, clock: Clock, act: Any) -> dict[str, Any]:
    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        now = clock()

        def run() -> dict[str, Any]:
            member = _member(uow, programme, member_id)
            act(uow, programme, member, now)
            return membership_view(programme, member, _rows(uow, programme, member), now)

        result = idempotent(uow, program_id, key, operation,
                            {"member": member_id, "body": body}, run, now)
        uow.commit()
        return result

    return transaction(engine, work)


def buy(engine: sa.Engine, program_id: str, member_id: str, body: Any, key: str,
        clock: Clock = utc_now) -> dict[str, Any]:
    """Buy a plan: ``{"plan": id}``. Refused while a membership is active (renew it)."""
    fields = _body(body, {"plan"})

    def act(uow: UnitOfWork, programme: Programme, member: Member, now: datetime) -> None:
        plan = _plan(programme, fields.get("plan"))
        if _open(_rows(uow, programme, member), now):
            raise rules.MembershipActive(
                f"member {member.id!r} already has an active membership; renew it instead",
                field="plan")
        row = _insert(uow, programme, member, plan, "buy", now, now)
        apply_tier_floor(programme, member, plan)
        outbox.tier_reviewed(uow, programme, member, row["tier_before"], row["id"], now)
        issue_monthly(uow, programme, member, row, now)

    return _command(engine, program_id, member_id, "membership-buy", fields, key, clock, act)


def renew(engine: sa.Engine, program_id: str, member_id: str, body: Any, key: str,
          clock: Clock = utc_now) -> dict[str, Any]:
    """Renew: a new period that starts when the last open one ends, of the same plan or
    of ``{"plan": id}``."""
    fields = _body(body, {"plan"})

    def act(uow: UnitOfWork, programme: Programme, member: Member, now: datetime) -> None:
        rows = _rows(uow, programme, member)
        open_rows = _open(rows, now)
        if not open_rows:
            raise rules.NoActiveMembership(
                f"member {member.id!r} has no active membership to renew; buy one",
                field="member")
        last = max(open_rows, key=lambda row: row["ends_at"])
        plan = _plan(programme, fields.get("plan", last["plan_id"]))
        # The renewal starts later: no tier or voucher now (run-due gives them), no message.
        _insert(uow, programme, member, plan, "renew", last["ends_at"], now,
                anchor=_chain_start(rows, last))

    return _command(engine, program_id, member_id, "membership-renew", fields, key, clock, act)


def _chain_start(rows: list[dict[str, Any]], last: dict[str, Any]) -> datetime:
    """When the unbroken run of periods ending with ``last`` began: each renewal starts
    as the period before it ends."""
    start = last
    while (before := next((row for row in rows if row["ends_at"] == start["starts_at"]
                           and row["status"] != "cancelled"), None)) is not None:
        start = before
    return start["starts_at"]


def cancel(engine: sa.Engine, program_id: str, member_id: str, body: Any, key: str,
           clock: Clock = utc_now) -> dict[str, Any]:
    """Cancel now: the benefits stop at once, renewals not yet started are cancelled too.
    Fees are not refunded (docs/engagement.md)."""
    fields = _body(body, {"reason"})
    reason = require_reason(fields) if "reason" in fields else None

    def act(uow: UnitOfWork, programme: Programme, member: Member, now: datetime) -> None:
        open_rows = _open(_rows(uow, programme, member), now)
        if not open_rows:
            raise rules.NoActiveMembership(
                f"member {member.id!r} has no active membership to cancel", field="member")
        # the reason is kept with the cancellation in the audit log, by the member's row
        # (an erasure never changes the audit log)
        audit.record(uow, "membership.cancel", program_id=programme.id,
                     target=f"member #{member.pk}",
                     before={"memberships": [row["id"] for row in open_rows]},
                     after={"reason": reason}, now=now)
        m = te.membership_purchases
        uow.execute(m.update().where(m.c.id.in_([row["id"] for row in open_rows]))
                    .values(status="cancelled", cancelled_at=now))
        before = member.tier_id
        # Only periods that had begun can have lifted the tier: a renewal queued after the
        # current one never applied its floor.
        restore_tier(programme, member, now,
                     [row for row in open_rows if row["starts_at"] <= now])
        outbox.tier_reviewed(uow, programme, member, before,
                             f"{open_rows[0]['id']}:cancelled", now)

    return _command(engine, program_id, member_id, "membership-cancel", fields, key, clock, act)


def get_membership(engine: sa.Engine, program_id: str, member_id: str,
                   clock: Clock = utc_now) -> dict[str, Any]:
    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        member = uow.member(program_id, member_id, lock=False, usage=False)
        if member is None:
            raise UnknownMember(f"no member {member_id!r} in programme {program_id}",
                                field="member")
        return membership_view(programme, member, _rows(uow, programme, member), clock())

    return transaction(engine, work, read_only=True)
