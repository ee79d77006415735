"""The shapes callers see (CONTRACT.md section 2), built from domain objects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from setia.domain import earning, tiers
from setia.domain.member import Member
from setia.domain.money import minor_digits
from setia.domain.programme import Programme

EXPIRING_WINDOW_DAYS = 30


def balances(member: Member) -> dict[str, int]:
    ledger = member.ledger
    return {"available": ledger.available, "pending": ledger.pending, "reserved": ledger.reserved}


def tier_view(
    programme: Programme, member: Member, now: datetime, *, progress: bool
) -> dict[str, Any]:
    level = programme.level(member.tier_id)
    view: dict[str, Any] = {
        "id": level.id,
        "name": level.name,
        "multiplier": f"{level.multiplier.normalize():f}",
    }
    if progress:
        upcoming = tiers.next_level(programme, level, member.buckets, now.astimezone(programme.tz))
        if upcoming is not None and programme.model.tiers.metric == "spend":
            unit = Decimal(1).scaleb(-minor_digits(programme.currency))
            for key in ("threshold", "remaining"):
                upcoming[key] = str(Decimal(str(upcoming[key])).quantize(unit))
        view["next"] = upcoming
    return view


def expiring(programme: Programme, member: Member, now: datetime) -> list[dict[str, Any]]:
    """Points that will expire within the next 30 days if nothing else happens."""
    horizon = now + timedelta(days=EXPIRING_WINDOW_DAYS)
    expiry = programme.model.points.expiry
    lots = member.ledger.available_lots()
    if expiry.policy == "inactivity" and member.last_activity_at is not None:
        # UTC, as the expiry reminder (service/outbox.py) names the same time
        at = earning.inactivity_expires_at(programme, member.last_activity_at)
        assert at is not None
        at = at.astimezone(UTC)
        total = sum(lot.remaining for lot in lots)
        if at <= horizon and total > 0:
            return [{"points": total, "expires_at": at.isoformat()}]
        return []
    by_time: dict[datetime, int] = {}
    for lot in lots:
        if lot.expires_at is not None and lot.expires_at <= horizon:
            by_time[lot.expires_at] = by_time.get(lot.expires_at, 0) + lot.remaining
    return [
        {"points": points, "expires_at": at.isoformat()} for at, points in sorted(by_time.items())
    ]


def member_view(programme: Programme, member: Member, now: datetime) -> dict[str, Any]:
    view = member.profile()
    view["tier"] = tier_view(programme, member, now, progress=True)
    view["balances"] = balances(member)
    view["expiring"] = expiring(programme, member, now)
    return view
