"""Donations: a reward kind that turns points into a donation to a named cause.

``causes:`` in the programme file names each cause and what one point is worth
to it; a reward with ``donation: {cause: ...}`` gives its cost in points to
that cause. A donation is a redemption: its journal posting (points from the
member to ``redeemed``) carries the rule id ``donation:<cause id>``, and a row
of the ``donations`` table records the cause, the points and the money value.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from setia.domain.errors import SetiaError
from setia.domain.ledger import Posting


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Cause(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,54}$")]
    name: Annotated[str, Field(min_length=1, max_length=120)]
    value_per_point: Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=6)] = \
        Decimal("0.01")


class DonationSpec(_Strict):
    cause: Annotated[str, Field(min_length=1)]


class UnknownCause(SetiaError):
    type = "unknown-cause"
    title = "No such cause"
    status = 404


def rule_id(cause_id: str) -> str:
    return f"donation:{cause_id}"


def semantic_errors(causes: list[Cause], rewards: list[tuple[int, str | None, bool]]
                    ) -> list[tuple[str, str]]:
    """``rewards``: (index, donation cause or None, has a voucher) of each reward."""
    errors: list[tuple[str, str]] = []
    ids: set[str] = set()
    for i, cause in enumerate(causes):
        if cause.id in ids:
            errors.append((f"causes[{i}].id", f"duplicate cause id {cause.id!r}"))
        ids.add(cause.id)
    for i, cause_id, has_voucher in rewards:
        if cause_id is None:
            continue
        if cause_id not in ids:
            errors.append((f"rewards[{i}].donation.cause", f"unknown cause {cause_id!r}"))
        if has_voucher:
            errors.append((f"rewards[{i}].donation", "a donation reward gives no voucher"))
    return errors


def find(causes: list[Cause], cause_id: str) -> Cause:
    for cause in causes:
        if cause.id == cause_id:
            return cause
    raise UnknownCause(f"no cause {cause_id!r} in the programme", field="cause")


def amount(cause: Cause, points: int, digits: int) -> Decimal:
    """The money value of ``points`` to the cause, rounded half up to the currency."""
    return (cause.value_per_point * points).quantize(Decimal(1).scaleb(-digits),
                                                     rounding=ROUND_HALF_UP)


def tag(postings: list[Posting], cause_id: str) -> int:
    """Mark the redemption's spending postings (redeem, capture) as this cause's."""
    tagged = 0
    for posting in postings:
        if posting.code in ("redeem", "capture"):
            posting.rule_id = rule_id(cause_id)
            tagged += 1
    return tagged
