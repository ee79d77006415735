"""A member as the rules see it: profile, tier, ledger, tier metric and rule usage."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from setia.domain.ledger import MemberLedger
from setia.domain.tiers import Bucket


@dataclass
class Member:
    pk: int
    program_id: str
    id: str
    enrolled_at: datetime
    tier_id: str
    tier_reviewed: str
    ledger: MemberLedger
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    birthday: date | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    purchases: int = 0
    last_activity_at: datetime | None = None
    birthday_year: int | None = None
    buckets: dict[str, Bucket] = field(default_factory=dict)
    usage: dict[tuple[str, str], int] = field(default_factory=dict)
    dirty_buckets: set[str] = field(default_factory=set)
    dirty_usage: set[tuple[str, str]] = field(default_factory=set)
    new: bool = False

    def add_to_bucket(self, month: str, *, spend: Decimal = Decimal(0), points: int = 0,
                      visits: int = 0) -> None:
        bucket = self.buckets.setdefault(month, Bucket())
        bucket.spend += spend
        bucket.points += points
        bucket.visits += visits
        self.dirty_buckets.add(month)

    def active_at(self, moment: datetime) -> None:
        """An earn or a redemption at ``moment``: inactivity expiry counts from the latest."""
        if self.last_activity_at is None or moment > self.last_activity_at:
            self.last_activity_at = moment

    def count_use(self, rule_id: str, period: str) -> None:
        key = (rule_id, period)
        self.usage[key] = self.usage.get(key, 0) + 1
        self.dirty_usage.add(key)

    def profile(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "phone": self.phone,
            "birthday": self.birthday.isoformat() if self.birthday else None,
            "attributes": self.attributes,
            "enrolled_at": self.enrolled_at.isoformat(),
        }
