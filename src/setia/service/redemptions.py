"""Redemptions (one step, or hold then capture/release), vouchers, adjustments, reversals.

Lock order, the same for every command: the member row, then the reward's
stock row (one conditional UPDATE), then the voucher row.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.adapters.db.store import (
    PostingContext,
    UnitOfWork,
    allocations_from_json,
    allocations_json,
)
from setia.domain import earning, rewards
from setia.domain.errors import (
    InvalidField,
    RedemptionNotHeld,
    RewardSoldOut,
    UnknownMember,
    UnknownRedemption,
    UnknownVoucher,
)
from setia.domain.ledger import ADJUSTMENTS, REDEEMED
from setia.domain.member import Member
from setia.domain.programme import Programme, Reward
from setia.service import audit, donations, outbox, partners
from setia.service.common import (
    Clock,
    idempotent,
    require_programme,
    require_reason,
    require_ref_fits,
    transaction,
    utc_now,
)
from setia.service.views import balances

RandomBytes = Callable[[int], bytes]
MAX_POINTS = 10**12


def _member(uow: UnitOfWork, programme: Programme, member_id: Any) -> Member:
    if not isinstance(member_id, str) or not member_id:
        raise InvalidField("member must be a member id", field="member")
    member = uow.member(programme.id, member_id)
    if member is None:
        raise UnknownMember(f"no member {member_id!r} in programme {programme.id}", field="member")
    return member


def _points(value: Any, field: str, *, allow_negative: bool = False) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidField(f"{field} must be a whole number of points", field=field)
    if value == 0 or (value < 0 and not allow_negative):
        raise InvalidField(
            f"{field} must be {'non-zero' if allow_negative else 'positive'}", field=field
        )
    if abs(value) > MAX_POINTS:
        raise InvalidField(f"{field} is too large", field=field)
    return value


def _view(row: dict[str, Any], member: Member, voucher: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": row["id"],
        "status": row["status"],
        "member": member.id,
        "reward": row["reward_id"],
        "points": row["points"],
        "voucher": voucher,
        "balances": balances(member),
    }


def issue_reward_voucher(
    uow: UnitOfWork,
    programme: Programme,
    reward: Reward,
    member: Member,
    redemption_id: str,
    now: datetime,
    random_bytes: RandomBytes,
) -> dict[str, Any] | None:
    """A voucher of ``reward`` for ``member``, kept under ``redemption_id`` (what gave it);
    its code and expiry, or None for a reward without a voucher."""
    if reward.voucher is None:
        return None
    expires_at = rewards.voucher_expires_at(reward, now)
    for _ in range(5):  # a collision of 60 random bits is not expected; bound the loop anyway
        code = rewards.voucher_code(random_bytes(8))
        inserted = uow.insert_ignore(
            t.vouchers,
            {
                "program_id": programme.id,
                "code": code,
                "redemption_id": redemption_id,
                "member_pk": member.pk,
                "reward_id": reward.id,
                "benefit": rewards.voucher_benefit(reward),
                "issued_at": now,
                "expires_at": expires_at,
                "used_at": None,
                "used_ref": None,
            },
            ["program_id", "code"],
        )
        if inserted:
            return {"code": code, "expires_at": expires_at.isoformat() if expires_at else None}
    raise AssertionError("five voucher codes in a row collided")


def _take_stock(uow: UnitOfWork, programme: Programme, reward: Reward) -> None:
    if reward.stock is None:
        return
    uow.insert_ignore(
        t.reward_stock,
        {"program_id": programme.id, "reward_id": reward.id, "redeemed": 0},
        ["program_id", "reward_id"],
    )
    taken = uow.execute(
        t.reward_stock.update()
        .where(
            t.reward_stock.c.program_id == programme.id,
            t.reward_stock.c.reward_id == reward.id,
            t.reward_stock.c.redeemed < reward.stock,
        )
        .values(redeemed=t.reward_stock.c.redeemed + 1)
    ).rowcount
    if not taken:
        raise RewardSoldOut(f"all {reward.stock} of reward {reward.id} are gone", field="reward")


def _give_back_stock(uow: UnitOfWork, program_id: str, reward_id: str) -> None:
    uow.execute(
        t.reward_stock.update()
        .where(
            t.reward_stock.c.program_id == program_id,
            t.reward_stock.c.reward_id == reward_id,
            t.reward_stock.c.redeemed > 0,
        )
        .values(redeemed=t.reward_stock.c.redeemed - 1)
    )


def _redeemed_by_member(uow: UnitOfWork, member: Member, reward_id: str) -> int:
    return int(
        uow.execute(
            sa.select(sa.func.count())
            .select_from(t.redemptions)
            .where(
                t.redemptions.c.member_pk == member.pk,
                t.redemptions.c.reward_id == reward_id,
                t.redemptions.c.status.in_(("held", "captured")),
            )
        ).scalar_one()
    )


def redeem(
    engine: sa.Engine,
    program_id: str,
    body: Any,
    key: str,
    clock: Clock = utc_now,
    random_bytes: RandomBytes = secrets.token_bytes,
) -> dict[str, Any]:
    """Redeem a reward or pay with points; with ``hold: true`` only reserve them."""
    if not isinstance(body, dict):
        raise InvalidField("the redemption must be a JSON object", field="(body)")
    unknown = sorted(set(body) - {"member", "reward", "points", "hold", "partner"})
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
    hold = body.get("hold", False)
    if not isinstance(hold, bool):
        raise InvalidField("hold must be true or false", field="hold")
    if ("reward" in body) == ("points" in body):
        raise InvalidField("give either reward or points", field="reward")

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        now = clock()

        def run() -> dict[str, Any]:
            member = _member(uow, programme, body.get("member"))
            reward: Reward | None = None
            if "reward" in body:
                reward = rewards.find_reward(programme, body["reward"])
                rewards.check_redeemable(
                    programme,
                    reward,
                    tier_id=member.tier_id,
                    now=now,
                    redeemed_by_member=_redeemed_by_member(uow, member, reward.id)
                    if reward.per_member_limit is not None
                    else 0,
                )
                points = reward.cost
                what = f"reward {reward.id}"
            else:
                points = _points(body["points"], "points")
                what = "points as payment"
            redemption_id = "rdm_" + secrets.token_hex(10)
            if hold:
                allocations = member.ledger.hold(points, f"hold for {what}")
                status = "held"
            else:
                allocations = member.ledger.spend(
                    points, code="redeem", credit=REDEEMED, explanation=f"redeemed {what}"
                )
                status = "captured"
            if reward is not None:
                _take_stock(uow, programme, reward)
            # Nothing below can refuse the redemption.
            if not hold:  # a hold is activity when captured: a released one redeemed nothing
                member.active_at(now)
            voucher = None
            if reward is not None and not hold:
                voucher = issue_reward_voucher(
                    uow, programme, reward, member, redemption_id, now, random_bytes
                )
                donations.after_capture(uow, programme, reward, member, redemption_id, points,
                                        now)
            row = {
                "id": redemption_id,
                "program_id": programme.id,
                "member_pk": member.pk,
                "reward_id": reward.id if reward else None,
                "points": points,
                "status": status,
                "voucher_code": voucher["code"] if voucher else None,
                "allocations": allocations_json(allocations),
                "created_at": now,
                "hold_expires_at": now + timedelta(minutes=rewards.HOLD_MINUTES) if hold else None,
                "updated_at": now,
                "program_version": programme.version,
            }
            uow.execute(t.redemptions.insert().values(**row))
            made = uow.record(programme.id, member,
                              PostingContext(redemption_id, programme.version, now))
            outbox.changed(uow, programme, member, made, redemption_id, now, voucher=voucher,
                           reward=reward.id if reward else None)
            partners.settle_redemption(uow, programme, body.get("partner"), redemption_id, made,
                                       now)
            return _view(row, member, voucher)

        result = idempotent(uow, program_id, key, "redeem", body, run, now)
        uow.commit()
        return result

    return transaction(engine, work)


def _held(
    uow: UnitOfWork, programme: Programme, redemption_id: str
) -> tuple[dict[str, Any], Member]:
    row = (
        uow.execute(
            sa.select(t.redemptions).where(
                t.redemptions.c.id == redemption_id, t.redemptions.c.program_id == programme.id
            )
        )
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise UnknownRedemption(f"no redemption {redemption_id!r}", field="id")
    member = uow.members_for_update(programme.id, [row["member_pk"]])[0]
    # Re-read under the member's lock: a concurrent capture or release may have won.
    row = (
        uow.execute(sa.select(t.redemptions).where(t.redemptions.c.id == redemption_id))
        .mappings()
        .one()
    )
    return dict(row), member


def finish_hold(
    uow: UnitOfWork,
    programme: Programme,
    redemption_id: str,
    action: str,
    now: datetime,
    random_bytes: RandomBytes = secrets.token_bytes,
) -> dict[str, Any]:
    """Capture or release an open hold (run-due releases timed-out holds through this too)."""
    row, member = _held(uow, programme, redemption_id)
    if row["status"] != "held":
        raise RedemptionNotHeld(
            f"redemption {redemption_id} is {row['status']}, not held", field="id"
        )
    voucher = None
    # The reward as it was when held: a version stored since may have removed or renamed it,
    # or given it a stock the hold did not take.
    held_under = programme if row["program_version"] in (None, programme.version) else \
        require_programme(uow, programme.id, row["program_version"])
    reward = held_under.reward(row["reward_id"]) if row["reward_id"] else None
    if action == "capture":
        member.ledger.capture(row["points"], f"captured redemption {redemption_id}")
        member.active_at(now)  # the redeem that inactivity expiry counts from
        row["status"] = "captured"
        donations.after_capture(uow, held_under, reward, member, redemption_id, row["points"],
                                now)
        if reward is not None:
            voucher = issue_reward_voucher(
                uow, programme, reward, member, redemption_id, now, random_bytes
            )
            row["voucher_code"] = voucher["code"] if voucher else None
    else:
        allocations = allocations_from_json(row["allocations"])
        uow.load_lots(member, [a.lot_seq for a in allocations])
        member.ledger.release(row["points"], allocations, f"released redemption {redemption_id}")
        row["status"] = "released"
        if reward is not None and reward.stock is not None:  # the hold took one
            _give_back_stock(uow, programme.id, reward.id)
    uow.execute(
        t.redemptions.update()
        .where(t.redemptions.c.id == redemption_id)
        .values(status=row["status"], voucher_code=row["voucher_code"], updated_at=now)
    )
    made = uow.record(programme.id, member, PostingContext(redemption_id, programme.version, now))
    outbox.changed(uow, programme, member, made, redemption_id, now, voucher=voucher,
                   reward=row["reward_id"])
    partners.settle_redemption(uow, programme, None, redemption_id, made, now)
    return _view(row, member, voucher)


def capture_or_release(
    engine: sa.Engine,
    program_id: str,
    redemption_id: str,
    action: str,
    key: str,
    clock: Clock = utc_now,
) -> dict[str, Any]:
    assert action in ("capture", "release")

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        now = clock()
        result = idempotent(
            uow,
            program_id,
            key,
            action,
            {"redemption": redemption_id},
            lambda: finish_hold(uow, programme, redemption_id, action, now),
            now,
        )
        uow.commit()
        return result

    return transaction(engine, work)


def _voucher_row(uow: UnitOfWork, programme: Programme, code: str, *, lock: bool) -> dict[str, Any]:
    normalised = rewards.normalise_code(code)
    if not rewards.is_code(normalised):
        raise UnknownVoucher(f"no voucher {code!r}", field="code")
    query = sa.select(t.vouchers).where(
        t.vouchers.c.program_id == programme.id, t.vouchers.c.code == normalised
    )
    if lock:
        query = query.with_for_update()
    row = uow.execute(query).mappings().one_or_none()
    if row is None:
        raise UnknownVoucher(f"no voucher {code!r}", field="code")
    return dict(row)


def _voucher_view(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    status = (
        "used"
        if row["used_at"]
        else ("expired" if row["expires_at"] is not None and now >= row["expires_at"] else "valid")
    )
    return {
        "code": row["code"],
        "status": status,
        "reward": row["reward_id"],
        "benefit": row["benefit"],
        "issued_at": row["issued_at"].isoformat(),
        "expires_at": row["expires_at"].isoformat() if row["expires_at"] else None,
        "used_at": row["used_at"].isoformat() if row["used_at"] else None,
    }


def void_unused(uow: UnitOfWork, programme: Programme, member: Member, which: Any, *,
                ref: str, used_ref: str, at: datetime, told_at: datetime) -> int:
    """Void the vouchers ``which`` selects (a condition on ``vouchers``) that are not used
    yet: marked used at ``at`` by ``used_ref`` (``GET /vouchers/{code}`` then answers them
    as used), and the member told (``voucher.voided``, ``ref``) of each not expired by
    then. A voucher used already stays used. Answers how many were voided."""
    v = t.vouchers
    voided = uow.execute(v.update().where(v.c.program_id == programme.id, which,
                                          v.c.used_at.is_(None))
                         .values(used_at=at, used_ref=used_ref[:200])
                         .returning(v.c.code, v.c.reward_id, v.c.expires_at)).all()
    for row in voided:
        if row.expires_at is not None and row.expires_at <= at:
            continue  # it had lapsed already: nothing is taken from the member
        outbox.voucher_voided(uow, programme, member, code=row.code, reward=row.reward_id,
                              ref=ref, voided_at=at, told_at=told_at)
    return len(voided)


def check_voucher(
    engine: sa.Engine, program_id: str, code: str, clock: Clock = utc_now
) -> dict[str, Any]:
    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        return _voucher_view(_voucher_row(uow, programme, code, lock=False), clock())

    return transaction(engine, work, read_only=True)


def use_voucher(
    engine: sa.Engine,
    program_id: str,
    code: str,
    key: str,
    body: Any = None,
    clock: Clock = utc_now,
) -> dict[str, Any]:
    """Use a voucher once; a used or expired voucher is refused."""

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        now = clock()

        def run() -> dict[str, Any]:
            row = _voucher_row(uow, programme, code, lock=True)
            rewards.check_usable(
                expires_at=row["expires_at"], used_at=row["used_at"], now=now, code=row["code"]
            )
            used = uow.execute(
                t.vouchers.update()
                .where(
                    t.vouchers.c.program_id == programme.id,
                    t.vouchers.c.code == row["code"],
                    t.vouchers.c.used_at.is_(None),
                )
                .values(used_at=now, used_ref=key)
            ).rowcount
            if not used:  # lost a race with another till: the other one used it
                from setia.domain.errors import VoucherUsed

                raise VoucherUsed(f"voucher {row['code']} was just used", field="code")
            row["used_at"] = now
            outbox.voucher_used(uow, programme, row, now)
            return _voucher_view(row, now)

        # The code as the till reads it: a retry typed another way is the same request.
        request = {"code": rewards.normalise_code(code), "body": body}
        result = idempotent(uow, program_id, key, "use-voucher", request, run, now)
        uow.commit()
        return result

    return transaction(engine, work)


def adjust(
    engine: sa.Engine, program_id: str, body: Any, key: str, clock: Clock = utc_now
) -> dict[str, Any]:
    """An admin's correction with a reason; a negative one never takes the balance below zero."""
    if not isinstance(body, dict):
        raise InvalidField("the adjustment must be a JSON object", field="(body)")
    unknown = sorted(set(body) - {"member", "points", "reason"})
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
    points = _points(body.get("points"), "points", allow_negative=True)
    reason = require_reason(body)
    # room for its reversal's reference too: reverse:adjust:<key>
    require_ref_fits("reverse:adjust:", key, "Idempotency-Key")

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        now = clock()

        def run() -> dict[str, Any]:
            member = _member(uow, programme, body.get("member"))
            before = balances(member)
            ref = f"adjust:{key}"
            if points > 0:
                member.active_at(now)  # an earn, for inactivity expiry
                member.ledger.earn(
                    points,
                    source=ref,
                    rule_id=None,
                    explanation=reason,
                    available_at=now,
                    pending=False,
                    expires_at=earning.lot_expires_at(programme, now),
                    code="adjust",
                    debit=ADJUSTMENTS,
                )
            else:
                member.ledger.spend(-points, code="adjust", credit=ADJUSTMENTS, explanation=reason)
            made = uow.record(programme.id, member, PostingContext(ref, programme.version, now))
            outbox.changed(uow, programme, member, made, ref, now)
            audit.record(uow, "adjust", program_id=program_id, target=f"member #{member.pk}",
                         before={"balances": before}, after={"balances": balances(member),
                                                             "points": points, "reason": reason},
                         now=now)
            return {
                "member": member.id,
                "points": points,
                "reason": reason,
                "balances": balances(member),
            }

        result = idempotent(uow, program_id, key, "adjust", body, run, now)
        uow.commit()
        return result

    return transaction(engine, work)
