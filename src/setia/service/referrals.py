"""Referrals: a member's code and link, linking a new member to a referrer, the review
queue, paying both sides once the referee's qualifying purchase is past its pending
period (run-due), and clawing the payout back when that purchase is refunded (or its
fraud review rejected).

Payouts are journal postings with the rule id ``referral:<referral id>``. A payout
locks both members (primary key order) and then moves the referral from
``qualified`` to ``paid`` with one conditional UPDATE: however many workers or
approvals race, it pays once.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.adapters.db import tables_referrals as tr
from setia.adapters.db.store import PostingContext, UnitOfWork
from setia.domain import earning
from setia.domain import referrals as r
from setia.domain.errors import AlreadyReversed, InvalidField, UnknownMember
from setia.domain.events import Event
from setia.domain.ledger import ASSET_POINTS, Posting
from setia.domain.member import Member
from setia.domain.programme import Programme
from setia.domain.refunds import Order
from setia.service import outbox
from setia.service.common import (
    Clock,
    idempotent,
    iso,
    require_programme,
    transaction,
    utc_now,
)
from setia.service.redemptions import issue_reward_voucher, void_unused

RandomBytes = Callable[[int], bytes]
STATUSES = ("review", "linked", "qualified", "paid", "clawed_back", "rejected")
MAX_LIST = 500


def _config(programme: Programme) -> r.ReferralsConfig:
    config = programme.model.referrals
    if config is None:
        raise r.ReferralsNotConfigured(
            f"programme {programme.id} has no referrals section", field="program")
    return config


def rule_id(referral_id: str) -> str:
    return f"{r.RULE_PREFIX}{referral_id}"


def _member_pk(uow: UnitOfWork, programme: Programme, member_id: Any, field: str) -> int:
    if not isinstance(member_id, str) or not member_id:
        raise InvalidField(f"{field} must be a member id", field=field)
    pk = uow.execute(sa.select(t.members.c.pk).where(
        t.members.c.program_id == programme.id, t.members.c.id == member_id)
    ).scalar_one_or_none()
    if pk is None:
        raise UnknownMember(f"no member {member_id!r} in programme {programme.id}", field=field)
    return int(pk)


def _ids(uow: UnitOfWork, pks: list[int]) -> dict[int, str]:
    return {row.pk: row.id for row in uow.execute(
        sa.select(t.members.c.pk, t.members.c.id).where(t.members.c.pk.in_(pks)))}


def _view(uow: UnitOfWork, row: Any) -> dict[str, Any]:
    names = _ids(uow, [row["referrer_pk"], row["referee_pk"]])
    return {
        "id": row["id"], "status": row["status"], "referrer": names.get(row["referrer_pk"]),
        "referee": names.get(row["referee_pk"]), "code": row["code"], "ip": row["ip"],
        "guards": list(row["guards"] or []), "order_id": row["order_id"],
        "qualifies_at": iso(row["qualifies_at"]), "created_at": iso(row["created_at"]),
        "decided_at": iso(row["decided_at"]), "decided_reason": row["decided_reason"],
        "paid_at": iso(row["paid_at"]), "clawed_back_at": iso(row["clawed_back_at"]),
    }


def _row(uow: UnitOfWork, programme: Programme, referral_id: str) -> dict[str, Any]:
    row = uow.execute(sa.select(tr.referrals).where(
        tr.referrals.c.id == referral_id, tr.referrals.c.program_id == programme.id)
    ).mappings().one_or_none()
    if row is None:
        raise r.UnknownReferral(f"no referral {referral_id!r}", field="id")
    return dict(row)


# -- codes ------------------------------------------------------------------------------


def code_for(engine: sa.Engine, program_id: str, member_id: str, clock: Clock = utc_now,
             random_bytes: RandomBytes = secrets.token_bytes) -> dict[str, Any]:
    """The member's referral code and link (made on first request, then always the same)."""

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        config = _config(programme)
        pk = _member_pk(uow, programme, member_id, "member")
        rc = tr.referral_codes
        code = uow.execute(sa.select(rc.c.code).where(rc.c.member_pk == pk)).scalar_one_or_none()
        if code is None:
            for _ in range(5):  # 40 random bits; a collision is rare, bound the loop anyway
                candidate = r.referral_code(random_bytes(5))
                if uow.insert_ignore(rc, {"program_id": programme.id, "code": candidate,
                                          "member_pk": pk, "created_at": clock()},
                                     ["program_id", "code"]):
                    code = candidate
                    break
            assert code is not None, "five referral codes in a row collided"
        counts = {row.status: row.n for row in uow.execute(
            sa.select(tr.referrals.c.status, sa.func.count().label("n")).where(
                tr.referrals.c.referrer_pk == pk).group_by(tr.referrals.c.status))}
        uow.commit()
        return {"member": member_id, "code": code, "link": r.link(config, code),
                "referrals": {status: int(counts.get(status, 0)) for status in STATUSES}}

    return transaction(engine, work)


# -- linking ----------------------------------------------------------------------------


def _count_since(uow: UnitOfWork, *where: Any) -> int:
    return int(uow.execute(sa.select(sa.func.count()).select_from(tr.referrals)
                           .where(tr.referrals.c.status != "rejected", *where)).scalar_one())


def link(engine: sa.Engine, program_id: str, body: Any, key: str, clock: Clock = utc_now
         ) -> dict[str, Any]:
    """Link a new member to the owner of a code: ``{code, member, ip?}``. A referral that
    trips a fraud guard is linked in ``review``: it pays only once approved."""
    if not isinstance(body, dict):
        raise InvalidField("the body must be a JSON object", field="(body)")
    unknown = sorted(set(body) - {"code", "member", "ip"})
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
    raw_code = body.get("code")
    if not isinstance(raw_code, str) or not 1 <= len(raw_code) <= 32:
        raise InvalidField("code must be a referral code", field="code")
    ip = body.get("ip")
    if ip is not None and (not isinstance(ip, str) or not 1 <= len(ip) <= 64):
        raise InvalidField("ip must be an IP address of at most 64 characters", field="ip")

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        config = _config(programme)
        now = clock()

        def run() -> dict[str, Any]:
            code = r.normalise_code(raw_code)
            referrer_pk = uow.execute(sa.select(tr.referral_codes.c.member_pk).where(
                tr.referral_codes.c.program_id == programme.id,
                tr.referral_codes.c.code == code)).scalar_one_or_none()
            if referrer_pk is None:
                raise r.UnknownReferralCode(f"no member has referral code {raw_code!r}",
                                            field="code")
            referee_pk = _member_pk(uow, programme, body.get("member"), "member")
            if referee_pk == referrer_pk:
                raise r.SelfReferral("a member cannot use their own referral code",
                                     field="code")
            # Both locked, in primary key order: the referrer's lock serialises its cap count.
            locked = {m.pk: m for m in uow.members_for_update(programme.id,
                                                              [referrer_pk, referee_pk])}
            referrer, referee = locked[referrer_pk], locked[referee_pk]
            if uow.execute(sa.select(tr.referrals.c.id).where(
                    tr.referrals.c.referee_pk == referee_pk)).first() is not None:
                raise r.AlreadyReferred(f"member {referee.id} was already referred",
                                        field="member")
            if referee.purchases > 0:
                raise r.NotANewMember(f"member {referee.id} has made purchases already",
                                      field="member")
            local = now.astimezone(programme.tz)
            referrer_count = 0
            if config.max_per_referrer is not None:
                start = r.referrer_period_start(config.max_per_referrer.per, local)
                since = [] if start is None else [tr.referrals.c.created_at >= start]
                referrer_count = _count_since(uow, tr.referrals.c.referrer_pk == referrer_pk,
                                              *since)
            ip_count = 0
            if config.max_per_ip_per_day is not None and ip is not None:
                day_start, day_end = r.day_bounds(local.date(), programme.tz)
                ip_count = _count_since(uow, tr.referrals.c.program_id == programme.id,
                                        tr.referrals.c.ip == ip,
                                        tr.referrals.c.created_at >= day_start,
                                        tr.referrals.c.created_at < day_end)
            reasons = r.guard_reasons(
                config,
                self_referral=r.is_self_referral(config, referrer.profile(), referee.profile()),
                referrer_count=referrer_count, ip_count_today=ip_count,
                loop=_referred_by(uow, referrer_pk, referee_pk))
            row = {"id": "rfl_" + secrets.token_hex(8), "program_id": programme.id,
                   "referrer_pk": referrer_pk, "referee_pk": referee_pk, "code": code,
                   "ip": ip, "status": "review" if reasons else "linked", "guards": reasons,
                   "order_id": None, "qualifies_at": None, "created_at": now,
                   "decided_at": None, "decided_reason": None, "paid_at": None,
                   "clawed_back_at": None}
            uow.execute(tr.referrals.insert().values(**row))
            return _view(uow, row)

        result = idempotent(uow, program_id, key, "referral-link", body, run, now)
        uow.commit()
        return result

    return transaction(engine, work)


LOOP_DEPTH = 16


def _referred_by(uow: UnitOfWork, member_pk: int, ancestor_pk: int) -> bool:
    """Whether ``ancestor_pk`` referred the member, directly or through others (up to
    ``LOOP_DEPTH`` links, not counting rejected ones): linking the ancestor as the member's
    referee would close a loop that pays its members as referrers and as referees."""
    ref = tr.referrals
    current: int | None = member_pk
    for _ in range(LOOP_DEPTH):
        current = uow.execute(sa.select(ref.c.referrer_pk).where(
            ref.c.referee_pk == current, ref.c.status != "rejected")).scalar_one_or_none()
        if current is None or current == ancestor_pk:
            return current is not None
    return False


# -- hooks from events ------------------------------------------------------------------


def after_purchase(uow: UnitOfWork, programme: Programme, member: Member, event: Event) -> None:
    """The purchase hook: the referee's first purchase of at least ``min_purchase`` makes
    the referral qualify at occurred_at + pending_days (a referral in review keeps its
    status but remembers the purchase)."""
    config = programme.model.referrals
    if config is None or event.amount is None or event.amount < config.min_purchase:
        return
    ref = tr.referrals
    found = uow.execute(sa.select(ref.c.id, ref.c.status).where(
        ref.c.referee_pk == member.pk, ref.c.order_id.is_(None),
        ref.c.status.in_(("linked", "review")))).first()
    if found is None:
        return
    uow.execute(ref.update().where(ref.c.id == found.id).values(
        order_id=event.order_id, qualifies_at=r.qualifies_at(config, event.occurred_at),
        status="qualified" if found.status == "linked" else "review"))


def after_refund(uow: UnitOfWork, programme: Programme, member: Member, order: Order,
                 now: datetime, *, told_at: datetime, cause: str = "refunded") -> None:
    """The refund hook: when the qualifying purchase falls below ``min_purchase``, an unpaid
    referral waits for another purchase, and a paid one is clawed back on both sides
    (``now``: the refund's time; ``told_at``: when it is applied, for the referrer's
    message). A purchase whose fraud review is rejected goes the same way, as if refunded
    in full (``fraud.decide``; ``cause``: what became of the purchase, for the
    explanations); the referral then no longer names the order, or is clawed back, so a
    later refund of it finds nothing to take. Whether what is left still qualifies is
    judged by the purchase's programme version, which qualified it; what is taken back is
    what was paid, by the journal and the vouchers, whatever a version since pays."""
    original = (programme if order.program_version == programme.version
                else uow.programme(programme.id, order.program_version) or programme)
    config = original.model.referrals
    # Refunded in full, the purchase is none, even where any amount qualifies.
    if config is None or (order.left >= config.min_purchase and order.left > 0):
        return
    ref = tr.referrals
    row = uow.execute(sa.select(ref).where(ref.c.referee_pk == member.pk,
                                           ref.c.order_id == order.order_id)
                      ).mappings().one_or_none()
    if row is None:
        return
    if row["status"] in ("qualified", "review"):
        uow.execute(ref.update().where(ref.c.id == row["id"]).values(
            order_id=None, qualifies_at=None,
            status="linked" if row["status"] == "qualified" else "review"))
        return
    if row["status"] != "paid":
        return
    done = uow.execute(ref.update().where(ref.c.id == row["id"], ref.c.status == "paid")
                       .values(status="clawed_back", clawed_back_at=now)).rowcount
    if not done:
        return
    referrer = uow.members_for_update(programme.id, [row["referrer_pk"]])[0]
    _take_back(uow, programme, referrer, row["id"], "referrer", now,
               told_at=told_at, cause=cause)
    # The referee's postings are recorded with the refund event (or the rejection) that
    # caused them.
    _take_back(uow, programme, member, row["id"], "referee", now,
               told_at=told_at, cause=cause, record=False)


def paid_referrer(uow: UnitOfWork, program_id: str, referee_pk: int) -> list[int]:
    """The referrer of the member's referral if it is paid (a clawback of it locks the
    referrer's row), for a caller to lock both members at once in primary key order."""
    ref = tr.referrals
    return list(uow.execute(sa.select(ref.c.referrer_pk).where(
        ref.c.program_id == program_id, ref.c.referee_pk == referee_pk,
        ref.c.status == "paid")).scalars())


def claim_reversal(uow: UnitOfWork, programme: Programme, reference: str,
                   now: datetime) -> Any:
    """An admin reverses a referral's payout (``reversals``; ``reference``:
    ``referral:<id>``): the referral is clawed back first, so that a later refund of its
    qualifying purchase takes nothing a second time, and a referral clawed back already
    (by a refund, a rejection or an earlier reversal) is refused, as its points were
    taken back then, the referee's under the refund's own reference. Returns the
    referral's members for ``payout_reversed``."""
    ref = tr.referrals
    referral_id = reference.removeprefix(r.RULE_PREFIX)
    row = uow.execute(ref.update().where(
        ref.c.program_id == programme.id, ref.c.id == referral_id,
        ref.c.status == "paid").values(status="clawed_back", clawed_back_at=now)
        .returning(ref.c.referrer_pk, ref.c.referee_pk)).first()
    if row is None:
        status = uow.execute(sa.select(ref.c.status).where(
            ref.c.program_id == programme.id, ref.c.id == referral_id)).scalar_one_or_none()
        raise AlreadyReversed(f"referral {referral_id} is {status or 'unknown'}, not paid: "
                              "nothing of it is left to reverse", field="ref")
    return row


def payout_reversed(uow: UnitOfWork, programme: Programme, referral: Any,
                    reference: str, now: datetime) -> None:
    """After a reversal took a referral's points back (``claim_reversal`` gave
    ``referral``): a side paid in a voucher has it voided if not used yet, as a clawback
    would."""
    referral_id = reference.removeprefix(r.RULE_PREFIX)
    row = referral
    # By the vouchers themselves, not the programme's rewards now: a version since may
    # pay the other way, or no longer have referrals.
    v = t.vouchers
    sides = {"referrer": row.referrer_pk, "referee": row.referee_pk}
    unused = set(uow.execute(sa.select(v.c.redemption_id).where(
        v.c.program_id == programme.id, v.c.used_at.is_(None),
        v.c.redemption_id.in_([_voucher_ref(referral_id, side) for side in sides]))).scalars())
    holders = {m.pk: m for m in uow.members_for_update(
        programme.id, [pk for side, pk in sides.items()
                       if _voucher_ref(referral_id, side) in unused])}
    for side, pk in sides.items():
        if pk in holders:
            _void_vouchers(uow, programme, holders[pk], referral_id, side, now, told_at=now)


def _take_back(uow: UnitOfWork, programme: Programme, member: Member, referral_id: str,
               side: str, now: datetime, *, told_at: datetime, cause: str = "refunded",
               record: bool = True) -> None:
    """Take back what the side was paid: its points by the journal (a version since may
    pay more, less or a voucher instead), and its voucher if not used yet."""
    p = t.postings
    paid = uow.execute(sa.select(sa.func.coalesce(sa.func.sum(p.c.points), 0)).where(
        p.c.program_id == programme.id, p.c.member_pk == member.pk,
        p.c.asset == ASSET_POINTS, p.c.code == "earn",
        p.c.rule_id == rule_id(referral_id))).scalar_one()
    if paid:
        member.ledger.clawback(
            int(paid), order_id=None, rule_id=rule_id(referral_id),
            explanation=f"referral {referral_id} clawed back: the referee's purchase was "
                        f"{cause} ({side})",
            source=rule_id(referral_id))
        if record:
            made = uow.record(programme.id, member,
                              PostingContext(rule_id(referral_id), programme.version, now))
            outbox.changed(uow, programme, member, made, rule_id(referral_id), told_at)
    _void_vouchers(uow, programme, member, referral_id, side, now, told_at=told_at)


def _void_vouchers(uow: UnitOfWork, programme: Programme, member: Member, referral_id: str,
                   side: str, now: datetime, *, told_at: datetime) -> None:
    """A side's referral voucher not used yet is voided; a used one stays used."""
    void_unused(uow, programme, member,
                t.vouchers.c.redemption_id == _voucher_ref(referral_id, side),
                ref=rule_id(referral_id), used_ref="referral clawback", at=now,
                told_at=told_at)


# -- paying -----------------------------------------------------------------------------


def _voucher_ref(referral_id: str, side: str) -> str:
    return f"{referral_id}:{side}"[:40]


def _give(uow: UnitOfWork, programme: Programme, given: r.ReferralReward, member: Member,
          referral_id: str, side: str, now: datetime,
          random_bytes: RandomBytes) -> list[Posting]:
    """Pay one side its reward: points (the postings recorded), or a voucher (no postings;
    its ``voucher.issued`` message written here)."""
    ref = rule_id(referral_id)
    if given.points is not None:
        member.ledger.earn(
            given.points, source=ref, rule_id=ref,
            explanation=f"referral reward ({side}) for referral {referral_id}",
            available_at=now, pending=False,
            expires_at=earning.lot_expires_at(programme, now))
        member.active_at(now)
        return uow.record(programme.id, member, PostingContext(ref, programme.version, now))
    reward = programme.reward(given.reward or "")
    assert reward is not None, "the programme check makes sure the reward exists"
    voucher = issue_reward_voucher(uow, programme, reward, member,
                                   _voucher_ref(referral_id, side), now, random_bytes)
    assert voucher is not None, "the programme check makes sure the reward gives a voucher"
    outbox.changed(uow, programme, member, [], ref, now, voucher=voucher, reward=reward.id)
    return []


def pay(uow: UnitOfWork, programme: Programme, referral_id: str, now: datetime,
        random_bytes: RandomBytes = secrets.token_bytes) -> bool:
    """Pay one qualified referral whose time has come; False if it is not (any more) due."""
    config = _config(programme)
    row = _row(uow, programme, referral_id)
    members = {m.pk: m for m in uow.members_for_update(
        programme.id, [row["referrer_pk"], row["referee_pk"]])}
    ref = tr.referrals
    done = uow.execute(ref.update().where(
        ref.c.id == referral_id, ref.c.status == "qualified", ref.c.qualifies_at <= now,
    ).values(status="paid", paid_at=now)).rowcount
    if not done:
        return False
    referrer, referee = members[row["referrer_pk"]], members[row["referee_pk"]]
    _give(uow, programme, config.referrer, referrer, referral_id, "referrer", now,
          random_bytes)
    # The referrer hears of the referral paid (its points, if any, are in it); the referee
    # of the points earned, as from any other rule.
    outbox.referral_paid(uow, programme, referrer, referral_id=referral_id,
                         referred_member=referee.id, points=config.referrer.points or 0,
                         occurred_at=now)
    made = _give(uow, programme, config.referee, referee, referral_id, "referee", now,
                 random_bytes)
    outbox.changed(uow, programme, referee, made, rule_id(referral_id), now)
    return True


def pay_due(engine: sa.Engine, program_id: str, as_of: datetime) -> int:
    """run-due's step: pay every qualified referral whose pending period has passed, each
    in its own transaction. Safe with several workers: each referral pays once."""
    ref = tr.referrals
    with engine.connect() as conn:
        ids = list(conn.execute(sa.select(ref.c.id).where(
            ref.c.program_id == program_id, ref.c.status == "qualified",
            ref.c.qualifies_at <= as_of).order_by(ref.c.qualifies_at, ref.c.id)).scalars())
    paid = 0
    for referral_id in ids:
        def work(uow: UnitOfWork, referral_id: str = referral_id) -> bool:
            programme = require_programme(uow, program_id)
            if programme.model.referrals is None:
                return False
            done = pay(uow, programme, referral_id, as_of)
            uow.commit()
            return done

        paid += transaction(engine, work)
    return paid


# -- review queue -----------------------------------------------------------------------


def _reason(body: Any) -> str | None:
    if body is None:
        return None
    if not isinstance(body, dict) or set(body) - {"reason"}:
        raise InvalidField('the body may hold only {"reason": "..."}', field="(body)")
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or not 1 <= len(reason) <= 300):
        raise InvalidField("reason must be 1 to 300 characters", field="reason")
    return reason


def decide(engine: sa.Engine, program_id: str, referral_id: str, decision: str, body: Any,
           key: str, clock: Clock = utc_now) -> dict[str, Any]:
    """Approve or reject a referral in review. An approved one pays at once if its
    purchase is already past the pending period, else when run-due finds it due."""
    assert decision in ("approve", "reject")
    reason = _reason(body)

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        now = clock()

        def run() -> dict[str, Any]:
            # (a stored decision replays even if a later version dropped referrals)
            _config(programme)
            # Both members' rows first, as the event path locks them before it qualifies or
            # unqualifies the referral: the row read after them is the one to decide on.
            found = _row(uow, programme, referral_id)
            uow.members_for_update(programme.id, [found["referrer_pk"], found["referee_pk"]])
            row = _row(uow, programme, referral_id)
            if decision == "approve":
                status = "qualified" if row["order_id"] is not None else "linked"
            else:
                status = "rejected"
            done = uow.execute(tr.referrals.update().where(
                tr.referrals.c.id == referral_id, tr.referrals.c.status == "review"
            ).values(status=status, decided_at=now, decided_reason=reason)).rowcount
            if not done:
                raise r.ReferralNotInReview(
                    f"referral {referral_id} is {row['status']}, not in review", field="id")
            if status == "qualified" and row["qualifies_at"] <= now:
                pay(uow, programme, referral_id, now)
            return _view(uow, _row(uow, programme, referral_id))

        # no body and {} are one request (as a store-credit capture or release takes them),
        # hashed as no body was before
        result = idempotent(uow, program_id, key, f"referral-{decision}",
                            {"id": referral_id, "body": body or None}, run, now)
        uow.commit()
        return result

    return transaction(engine, work)


def get(engine: sa.Engine, program_id: str, referral_id: str) -> dict[str, Any]:
    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        return _view(uow, _row(uow, programme, referral_id))

    return transaction(engine, work, read_only=True)


def listing(engine: sa.Engine, program_id: str, status: str | None = None,
            limit: int = 100) -> list[dict[str, Any]]:
    """Referrals, oldest first; ``status="review"`` is the review queue."""
    if status is not None and status not in STATUSES:
        raise InvalidField(f"status must be one of {', '.join(STATUSES)}", field="status")
    if not 1 <= limit <= MAX_LIST:
        raise InvalidField(f"limit must be from 1 to {MAX_LIST}", field="limit")

    def work(uow: UnitOfWork) -> list[dict[str, Any]]:
        programme = require_programme(uow, program_id)
        query = sa.select(tr.referrals).where(tr.referrals.c.program_id == programme.id)
        if status is not None:
            query = query.where(tr.referrals.c.status == status)
        rows = uow.execute(query.order_by(tr.referrals.c.created_at, tr.referrals.c.id)
                           .limit(limit)).mappings().all()
        return [_view(uow, row) for row in rows]

    return transaction(engine, work, read_only=True)
