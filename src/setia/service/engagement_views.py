"""Reads: campaigns with their budget use, a member's stamp cards."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from setia.adapters.db import tables_engagement as te
from setia.adapters.db.store import UnitOfWork
from setia.domain import engagement as rules
from setia.domain.engagement_sections import Campaign
from setia.domain.errors import UnknownMember
from setia.domain.money import minor_digits
from setia.domain.programme import Programme
from setia.service.common import Clock, require_programme, transaction, utc_now


def _campaign_view(programme: Programme, campaign: Campaign, used: int,
                   totals: dict[str, Any], holdouts: int) -> dict[str, Any]:
    return {
        "id": campaign.id,
        "name": campaign.name,
        "on": campaign.on,
        "from": campaign.from_.isoformat() if campaign.from_ else None,
        "until": campaign.until.isoformat() if campaign.until else None,
        "effect": campaign.effect,
        "budget": campaign.budget,
        "budget_used": used,
        "budget_left": None if campaign.budget is None else campaign.budget - used,
        "per_member": campaign.per_member,
        "holdout": str(campaign.holdout),
        "awards": int(totals.get("awards", 0)),
        "members": int(totals.get("members", 0)),
        "points_awarded": int(totals.get("awarded", 0)) if campaign.voucher is None else 0,
        "points_kept": int(totals.get("kept", 0)) if campaign.voucher is None else 0,
        "vouchers": int(totals.get("awards", 0)) if campaign.voucher is not None else 0,
        "holdouts": holdouts,
    }


def campaign_report(uow: UnitOfWork, programme: Programme,
                    only: str | None = None) -> list[dict[str, Any]]:
    campaigns = programme.model.campaigns or []
    if only is not None:
        campaigns = [c for c in campaigns if c.id == only]
        if not campaigns:
            raise rules.UnknownCampaign(f"no campaign {only!r} in programme {programme.id}",
                                        field="campaign")
    b, a, h = te.campaign_budgets, te.campaign_awards, te.campaign_holdouts
    used: dict[str, int] = {row.campaign_id: row.used for row in uow.execute(
        sa.select(b.c.campaign_id, b.c.used).where(b.c.program_id == programme.id))}
    totals = {row.campaign_id: row._asdict() for row in uow.execute(
        sa.select(a.c.campaign_id, sa.func.count().label("awards"),
                  sa.func.count(sa.distinct(a.c.member_pk)).label("members"),
                  sa.func.sum(a.c.awarded).label("awarded"),
                  sa.func.sum(a.c.kept).label("kept"))
        .where(a.c.program_id == programme.id).group_by(a.c.campaign_id))}
    holdouts: dict[str, int] = {row.campaign_id: row.n for row in uow.execute(
        sa.select(h.c.campaign_id, sa.func.count().label("n")).where(h.c.program_id == programme.id)
        .group_by(h.c.campaign_id))}
    # A budget's row is made by its first award (engagement._lock_budget), from everything
    # the campaign awarded before: until then, that is what it has used.
    return [_campaign_view(programme, c, int(used.get(c.id, totals.get(c.id, {}).get(
        "awarded") or 0) if c.budget is not None else 0), totals.get(c.id, {}),
        int(holdouts.get(c.id, 0))) for c in campaigns]


def list_campaigns(engine: sa.Engine, program_id: str) -> dict[str, Any]:
    def work(uow: UnitOfWork) -> dict[str, Any]:
        return {"campaigns": campaign_report(uow, require_programme(uow, program_id))}

    return transaction(engine, work, read_only=True)


def get_campaign(engine: sa.Engine, program_id: str, campaign_id: str) -> dict[str, Any]:
    def work(uow: UnitOfWork) -> dict[str, Any]:
        return campaign_report(uow, require_programme(uow, program_id), campaign_id)[0]

    return transaction(engine, work, read_only=True)


def _units(value: int, scale: int, digits: int) -> str | int:
    if scale == 1:
        return value
    return str((Decimal(value) / scale).quantize(Decimal(1).scaleb(-digits)))


def member_stamp_cards(engine: sa.Engine, program_id: str, member_id: str,
                       clock: Clock = utc_now) -> dict[str, Any]:
    """Each stamp card with the member's progress in the period that contains now."""
    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        member = uow.member(program_id, member_id, lock=False, usage=False)
        if member is None:
            raise UnknownMember(f"no member {member_id!r} in programme {program_id}",
                                field="member")
        return {"member": member.id,
                "stamp_cards": stamp_card_views(uow, programme, member.pk, clock())}

    return transaction(engine, work, read_only=True)


def stamp_card_views(uow: UnitOfWork, programme: Programme, member_pk: int,
                     now: datetime) -> list[dict[str, Any]]:
    s = te.stamp_progress
    found = {(row.card_id, row.period): row for row in uow.execute(
        sa.select(s).where(s.c.program_id == programme.id, s.c.member_pk == member_pk))}
    digits = minor_digits(programme.currency)
    local = now.astimezone(programme.tz)
    views = []
    for card in programme.model.stamp_cards or []:
        period = rules.stamp_period(card, local)
        row = found.get((card.id, period))
        stamps = row.stamps if row else 0
        completions = row.completions if row else 0
        target = rules.stamp_target(card, digits)
        scale = rules.stamp_scale(card, digits)
        finished = not card.repeat and completions >= 1
        toward = 0 if finished else stamps - completions * target
        views.append({
            "id": card.id, "name": card.name, "count": card.count, "period": period,
            "target": _units(target, scale, digits), "stamps": _units(toward, scale, digits),
            "remaining": 0 if finished else _units(max(target - toward, 0), scale, digits),
            "completions": completions, "repeat": card.repeat, "finished": finished,
        })
    return views
