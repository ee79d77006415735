"""Partners (a coalition): merchants within one programme who issue and burn its points.

Each event may name its ``partner``; earning rules may be limited to some
partners. Points move value between settlement accounts at the programme's
agreed ``point_value`` (money per point, up to 4 decimals):

- points issued at partner A (an earning):  A -> coalition, points x value
- points burned at partner B (a redemption or a hold): coalition -> B
- a clawback of A's points (a refund), a released hold at B: the reverse.

So a partner's balance is negative when it owes the coalition and positive
when it is owed; the ``coalition`` account holds the value of the points still
outstanding (issued, not yet burned). Over all accounts the sum is zero.
Amounts are kept in units of 10^-4 of the currency (``amount_e4``), so
points x value is always exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from setia.domain.errors import SetiaError
from setia.domain.ledger import AVAILABLE, ISSUED, REDEEMED, RESERVED

COALITION = "coalition"
PARTNER_PREFIX = "partner:"

Id = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]


class UnknownPartner(SetiaError):
    type = "unknown-partner"
    title = "No such partner in the programme"
    status = 422


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Partner(_Strict):
    id: Id
    name: Annotated[str, Field(min_length=1, max_length=120)]


class PartnersConfig(_Strict):
    point_value: Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=4)]
    merchants: Annotated[list[Partner], Field(min_length=1)]

    def ids(self) -> list[str]:
        return [partner.id for partner in self.merchants]


def partners_errors(config: PartnersConfig | None, earn: Sequence[Any]) -> list[tuple[str, str]]:
    """Duplicate partner ids; earning rules that name an unknown partner."""
    errors: list[tuple[str, str]] = []
    known: list[str] = []
    if config is not None:
        for i, partner in enumerate(config.merchants):
            if partner.id in known:
                errors.append((f"partners.merchants[{i}].id",
                               f"duplicate partner id {partner.id!r}"))
            known.append(partner.id)
    for i, rule in enumerate(earn):
        wanted = getattr(rule, "partners", None)
        if wanted is None:
            continue
        if config is None:
            errors.append((f"earn[{i}].partners", "needs a partners section"))
            continue
        for j, partner_id in enumerate(wanted):
            if partner_id not in known:
                errors.append((f"earn[{i}].partners[{j}]", f"unknown partner {partner_id!r}"))
    return errors


def require_partner(config: PartnersConfig | None, partner_id: Any, field: str = "partner") -> str:
    if not isinstance(partner_id, str) or not partner_id:
        raise UnknownPartner(f"{field} must be a partner id", field=field)
    if config is None:
        raise UnknownPartner(f"this programme has no partners, so {field} is not allowed",
                             field=field)
    if partner_id not in config.ids():
        raise UnknownPartner(
            f"no partner {partner_id!r}; the programme's partners are "
            f"{', '.join(config.ids())}", field=field)
    return partner_id


def account(partner_id: str) -> str:
    return PARTNER_PREFIX + partner_id


def value_e4(points: int, point_value: Decimal) -> int:
    exact = points * point_value * 10_000
    assert exact == exact.to_integral_value(), "point_value has at most 4 decimals"
    return int(exact)


@dataclass(frozen=True, slots=True)
class Transfer:
    """A settlement posting: ``amount_e4`` moves from ``debit`` to ``credit``."""

    code: str
    debit: str
    credit: str
    points: int
    amount_e4: int


def transfer_for(code: str, debit: str, credit: str, points: int, partner_id: str,
                 point_value: Decimal) -> Transfer | None:
    """The settlement a points posting causes at a partner, if any."""
    mine, pool = account(partner_id), COALITION
    amount = value_e4(points, point_value)
    if debit == ISSUED:  # issued at the partner: it owes their value
        return Transfer(code, mine, pool, points, amount)
    if credit == ISSUED:  # a clawback: the issuing partner gets the value back
        return Transfer(code, pool, mine, points, amount)
    if debit == AVAILABLE and credit in (REDEEMED, RESERVED):  # burned at the partner
        return Transfer(code, pool, mine, points, amount)
    if debit == RESERVED and credit == AVAILABLE:  # a hold released: not burned after all
        return Transfer(code, mine, pool, points, amount)
    return None  # captures, activations, expiries, adjustments move no value between partners
