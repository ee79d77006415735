"""Domain errors. Each class is one problem type of the API (docs/api.md).

An error names the business fact, the field at fault (a dotted path such as
``lines[1].amount``) and the reason in plain words.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SetiaError(Exception):
    """Base of every error a caller can cause. Never raised for a broken invariant."""

    type: ClassVar[str] = "invalid-request"
    title: ClassVar[str] = "Invalid request"
    status: ClassVar[int] = 422

    def __init__(self, detail: str, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra

    def to_problem(self) -> dict[str, Any]:
        problem: dict[str, Any] = {
            "type": f"https://setia.dev/problems/{self.type}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.field is not None:
            problem["field"] = self.field
        problem.update(self.extra)
        return problem


class InvalidField(SetiaError):
    type = "invalid-field"
    title = "A field is missing or invalid"


class InvalidAmount(SetiaError):
    type = "invalid-amount"
    title = "An amount is negative, malformed or more precise than the currency allows"


class CurrencyMismatch(SetiaError):
    type = "currency-mismatch"
    title = "The currency is not the programme's"


class InvalidTime(SetiaError):
    type = "invalid-time"
    title = "A time is missing, malformed or has no UTC offset"


class DuplicateLineSku(SetiaError):
    type = "duplicate-line-sku"
    title = "Two lines of one order name the same sku"


class InvalidProgramme(SetiaError):
    type = "invalid-programme"
    title = "The programme file is invalid"

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        lines = "; ".join(f"{path}: {reason}" for path, reason in errors)
        super().__init__(
            f"{len(errors)} error(s): {lines}",
            field=errors[0][0] if errors else None,
            errors=[{"field": path, "reason": reason} for path, reason in errors],
        )
        self.errors = errors


class UnknownProgramme(SetiaError):
    type = "unknown-programme"
    title = "No such programme"
    status = 404


class UnknownMember(SetiaError):
    type = "unknown-member"
    title = "No such member"
    status = 404


class UnknownOrder(SetiaError):
    type = "unknown-order"
    title = "No such order for this member"
    status = 404


class RefundExceedsOrder(SetiaError):
    type = "refund-exceeds-order"
    title = "The refund is larger than what is left of the order"


class UnknownReward(SetiaError):
    type = "unknown-reward"
    title = "No such reward"
    status = 404


class RewardSoldOut(SetiaError):
    type = "reward-sold-out"
    title = "The reward is sold out"
    status = 409


class RewardLimitReached(SetiaError):
    type = "reward-limit-reached"
    title = "The member has reached the reward's per-member limit"
    status = 409


class RewardNotForTier(SetiaError):
    type = "reward-not-for-tier"
    title = "The reward is reserved for other tiers"
    status = 403


class RewardNotAvailable(SetiaError):
    type = "reward-not-available"
    title = "The reward is outside its from/until window"
    status = 409


class InsufficientPoints(SetiaError):
    type = "insufficient-points"
    title = "Not enough available points"
    status = 409


class UnknownRedemption(SetiaError):
    type = "unknown-redemption"
    title = "No such redemption"
    status = 404


class RedemptionNotHeld(SetiaError):
    type = "redemption-not-held"
    title = "The redemption is not an open hold"
    status = 409


class UnknownVoucher(SetiaError):
    type = "unknown-voucher"
    title = "No such voucher"
    status = 404


class VoucherExpired(SetiaError):
    type = "voucher-expired"
    title = "The voucher has expired"
    status = 409


class VoucherUsed(SetiaError):
    type = "voucher-used"
    title = "The voucher has already been used"
    status = 409


class UnknownReference(SetiaError):
    type = "unknown-reference"
    title = "Nothing in the journal has this reference"
    status = 404


class AlreadyReversed(SetiaError):
    type = "already-reversed"
    title = "This reference was already reversed"
    status = 409


class IdempotencyConflict(SetiaError):
    type = "idempotency-conflict"
    title = "This key was already used with a different request"
    status = 409


class VersionConflict(SetiaError):
    """A programme draft saved over a version it was not edited from (web pages)."""

    type = "version-conflict"
    title = "The programme changed while this draft was edited"
    status = 409


class UnknownWebhook(SetiaError):
    type = "unknown-webhook"
    title = "No such webhook endpoint"
    status = 404


class Busy(SetiaError):
    type = "busy"
    title = "The database is busy; retry shortly"
    status = 503
