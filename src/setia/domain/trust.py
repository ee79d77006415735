"""Fraud rules and privacy settings of a programme (its ``fraud`` and ``privacy`` sections),
and the pure decisions made from them.

An event is *suspicious* when, counting the event itself, a member's earning
events or earned points within the last hour or day exceed a velocity limit,
or when another purchase at the same store with the same amount was recorded
within the duplicate-receipt window. The points of a suspicious event are held
(kept pending) until an admin approves or rejects them from the review queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from setia.domain.errors import SetiaError

WINDOWS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Velocity(_Strict):
    per: Literal["hour", "day"]
    max_events: Annotated[int, Field(gt=0, le=1_000_000)] | None = None
    max_points: Annotated[int, Field(gt=0, le=10**12)] | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> Velocity:
        if self.max_events is None and self.max_points is None:
            raise ValueError("give max_events or max_points (or both)")
        return self


class DuplicateReceipts(_Strict):
    window_minutes: Annotated[int, Field(gt=0, le=7 * 24 * 60)] = 10


class FraudConfig(_Strict):
    velocity: Annotated[list[Velocity], Field(max_length=8)] = Field(default_factory=list)
    duplicate_receipts: DuplicateReceipts | None = None
    hold: bool = True  # False: suspicious events are queued for review, points stay spendable

    @property
    def active(self) -> bool:
        return bool(self.velocity) or self.duplicate_receipts is not None


class PrivacyConfig(_Strict):
    event_retention_months: Annotated[int, Field(gt=0, le=1200)] | None = None


@dataclass(frozen=True)
class Recent:
    """What a member (and the store) did before the event being screened."""

    events: dict[str, int]  # earning events in the last hour / day, this one excluded
    points: dict[str, int]  # points earned in the last hour / day, this one excluded
    duplicates: int  # other purchases, same store and amount, within the window


def reasons(config: FraudConfig, recent: Recent, points: int) -> list[str]:
    """Why an event that earned ``points`` is suspicious; empty if it is not."""
    found: list[str] = []
    for rule in config.velocity:
        events = recent.events[rule.per] + 1
        earned = recent.points[rule.per] + points
        span = "an hour" if rule.per == "hour" else "a day"
        if rule.max_events is not None and events > rule.max_events:
            found.append(f"velocity: {events} earning events in {span} (limit {rule.max_events})")
        if rule.max_points is not None and earned > rule.max_points:
            found.append(f"velocity: {earned} points in {span} (limit {rule.max_points})")
    if config.duplicate_receipts is not None and recent.duplicates:
        found.append(f"duplicate receipt: {recent.duplicates} other purchase(s) with the same "
                     f"store and amount within {config.duplicate_receipts.window_minutes} minutes")
    return found


class UnknownReview(SetiaError):
    type = "unknown-review"
    title = "No such review"
    status = 404


class ReviewDecided(SetiaError):
    type = "review-decided"
    title = "The review was already decided"
    status = 409


class EventTooOld(SetiaError):
    type = "event-too-old"
    title = "The event is older than the programme keeps events"
    status = 422


class UnknownToken(SetiaError):
    type = "unknown-token"
    title = "No such member token"
    status = 404
