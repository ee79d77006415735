"""Fraud screening on ingestion and the review queue (programme section ``fraud``).

``screen`` is called once per applied event by ``service.events.apply_event``. With no
``fraud`` section it returns at once: no query. With one, it reads the member's recent
earnings and same-store, same-amount purchases in one statement, and if the event is
suspicious holds its points (domain ``MemberLedger.suspend``) and queues a review.
Admins approve (the points become available when they were due) or reject (the points
are taken back; a purchase's cashback and the referral it qualified too, as a refund of
all that is left of its order would take them) with ``decide``.

Two members' purchases of the same store and amount, applied by concurrent transactions,
would each miss the other's order (not committed yet). On PostgreSQL a programme that
screens duplicate receipts therefore takes a transaction-scoped advisory lock on (programme,
store, amount) for every such purchase (``lock_receipt``), held to the commit: the second
waits until the first commits, and its count, a new statement, then finds the first's
order. Every path takes it right after its member's row, before any other lock.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.adapters.db import tables_engagement as te
from setia.adapters.db import tables_trust as tt
from setia.adapters.db.store import PostingContext, UnitOfWork
from setia.domain import tiers, trust
from setia.domain.engagement import award_rule
from setia.domain.errors import InvalidField
from setia.domain.events import Event
from setia.domain.member import Member
from setia.domain.programme import Programme
from setia.domain.refunds import Order
from setia.service import (
    audit,
    engagement,
    memberships,
    outbox,
    partners,
    referrals,
    store_credit,
)
from setia.service.common import (
    Clock,
    advisory_xact_lock,
    advisory_xact_locks,
    idempotent,
    iso,
    require_programme,
    require_programme_id,
    transaction,
    utc_now,
)
from setia.service.views import balances

# Earnings and purchases screened in a unit of work but not yet written (a batch or an
# import applies many events before its one flush): counted as if already stored.
_unwritten: weakref.WeakKeyDictionary[UnitOfWork, list[tuple[Any, ...]]] = (
    weakref.WeakKeyDictionary())


def screen(uow: UnitOfWork, programme: Programme, member: Member, event: Event,
           points: int, now: datetime) -> dict[str, Any] | None:
    """Hold the points of a suspicious event and queue it for review; what the event
    result shows about it (``{"review", "reasons", "held"}``), or None."""
    config = programme.model.fraud
    if config is None or not config.active:
        return None
    seen = _unwritten.setdefault(uow, [])
    if points <= 0:
        # Nothing to hold, but a purchase's order counts for the duplicate check of a later
        # event of the same batch, as it would once written. (It takes no receipt lock: it
        # reads nothing, so a concurrent purchase that misses it is as if applied first.)
        if event.type == "purchase" and config.duplicate_receipts is not None:
            seen.append((member.pk, event.occurred_at, 0, event.store, event.amount))
        return None
    recent = _recent(uow, programme, member, event, config)
    seen.append((member.pk, event.occurred_at, points, event.store, event.amount
                 if event.type == "purchase" else None))
    found = trust.reasons(config, recent, points)
    if not found:
        return None
    ledger = member.ledger
    seq = ledger.new_lots.get((event.id, False)) or ledger.new_lots.get((event.id, True))
    assert seq is not None, "an event that earned points has a lot"
    lot = ledger.lots[seq]
    available_at = lot.available_at
    if config.hold:
        ledger.suspend(seq, f"held for review: {'; '.join(found)}"[:400])
    review_id = uow.execute(tt.fraud_reviews.insert().values(
        program_id=programme.id, member_pk=member.pk, event_id=event.id, lot_seq=seq,
        points=points, reasons={"reasons": found, "held": config.hold},
        available_at=available_at, status="open", created_at=now,
    )).inserted_primary_key[0]  # type: ignore[index]
    return {"review": review_id, "reasons": found, "held": config.hold}


def taken_parts(uow: UnitOfWork, programme: Programme, member: Member, event_id: str,
                take: int) -> list[tuple[str | None, int]]:
    """What a rejection or a reversal (``reversals``) takes back of an event's points, by
    rule: first what each campaign and membership still keeps of them (their awards then
    keep that much less, as ``setia check`` and the campaign metrics count them), the rest
    as the event's own."""
    a = te.campaign_awards
    parts: list[tuple[str | None, int]] = []
    left = take
    for award in uow.execute(sa.select(a.c.campaign_id, a.c.ref, a.c.kept).where(
            a.c.program_id == programme.id, a.c.ref == event_id,
            a.c.member_pk == member.pk, a.c.voucher_code.is_(None), a.c.kept > 0)
            .order_by(a.c.campaign_id)).all():
        part = min(award.kept, left)
        if part <= 0:
            break
        parts.append((award_rule(award.campaign_id), part))
        uow.execute(a.update().where(a.c.program_id == programme.id,
                                     a.c.campaign_id == award.campaign_id, a.c.ref == award.ref)
                    .values(kept=award.kept - part))
        left -= part
    if left > 0:
        parts.append((None, left))
    return parts


def _order_of(uow: UnitOfWork, programme: Programme, member: Member, row: Any) -> Order | None:
    """The order of the reviewed event, if it was a purchase (only a purchase's lot names
    an order)."""
    uow.load_lots(member, [row.lot_seq])
    order_id = member.ledger.lots[row.lot_seq].order_id
    return uow.order(programme.id, order_id, programme.currency) if order_id else None


def _taken_by_rejection(uow: UnitOfWork, programme: Programme, member: Member, row: Any,
                        taken: int, order: Order | None) -> None:
    """What a rejection took of the event's earn rules' points is gone from the member's
    points tier metric (in the month of the event), and a rejected purchase's order keeps
    no awards (nor its campaigns and membership: ``taken_parts``), so a later refund
    takes nothing back a second time.

    A rejected purchase counts in no tier metric: what is left of its spend (net of the
    refunds before) and its visit (unless refunded in full already) leave the buckets of
    its month too. A later refund of it then lowers nothing (``events._refund`` finds
    the rejected review: ``purchase_rejected``)."""
    p = t.postings
    # The metric counted the event's earn rules' points (campaigns, cards and memberships
    # add none to it), less what refunds took back of them: lowered by that, at most.
    earned = uow.execute(sa.select(p.c.occurred_at, p.c.rule_id, p.c.points).where(
        p.c.member_pk == member.pk, p.c.ref == row.event_id, p.c.code == "earn")).all()
    counted = (sum(order.awards.values()) if order is not None
               else sum(e.points for e in earned if tiers.counts_in_points_metric(e.rule_id)))
    if taken > 0 and counted > 0 and earned:
        month = tiers.month_key(min(e.occurred_at for e in earned).astimezone(programme.tz))
        member.add_to_bucket(month, points=-min(taken, counted))
    if order is not None:
        order.awards = {rule_id: 0 for rule_id in order.awards}
        order.dirty = True
        if order.left > 0:
            member.add_to_bucket(tiers.month_key(order.occurred_at.astimezone(programme.tz)),
                                 spend=-order.left, visits=-1)


def _tier_lift_undone(uow: UnitOfWork, programme: Programme, member: Member, order: Order,
                      now: datetime) -> None:
    """A rejected purchase lifts no tier: a member it lifted goes back to what her metric
    now earns (``tiers.after_taken_back``: not below the tier she held when she made it,
    nor her paid membership's floor) at once, not at her next review. Only a tier above
    the one she held then is looked at: no query otherwise."""
    current = programme.level(member.tier_id)
    held_then = programme.level(order.tier_id)
    if tiers.rank(programme, current.id) <= tiers.rank(programme, held_then.id):
        return
    member.tier_id = tiers.after_taken_back(
        programme, current, held_then, member.buckets, now.astimezone(programme.tz),
        memberships.held_floor(uow, programme, member, now)).id


def purchase_rejected(uow: UnitOfWork, original: Programme, order: Order) -> bool:
    """Whether a fraud review of the order's purchase was rejected: the rejection took
    back its points, cashback and referral, and its spend and visit from the tier
    metrics, so a refund of the order takes none of them again. Only a purchase screened
    under a ``fraud`` section (the one of its own programme version, ``original``) has a
    review: no query for the others."""
    config = original.model.fraud
    if config is None or not config.active:
        return False
    r = tt.fraud_reviews
    return uow.execute(sa.select(r.c.id).where(
        r.c.program_id == original.id, r.c.event_id == order.event_id,
        r.c.status == "rejected")).first() is not None


def _purchase_rejected(uow: UnitOfWork, programme: Programme, member: Member, order: Order,
                       review_id: int, now: datetime) -> None:
    """A rejected purchase keeps none of what else it earned, each taken as a refund of all
    that is left of the order would take it: its instant cashback (posted under the
    rejection's reference), its voucher campaigns' vouchers not used yet, and the referral
    it qualified (back to ``linked`` before
    payment, both sides clawed back after). The order itself stays as it is: a later
    refund of it gives its coupons back but finds nothing more to take
    (``events._refund`` sees the rejected review: ``purchase_rejected``; the referral no
    longer names the order, or is clawed back already)."""
    store_credit.on_rejection(uow, programme, member, order, review_id, now)
    engagement.void_order_vouchers(uow, programme, member, order.order_id,
                                   ref=f"review:{review_id}",
                                   used_ref=f"review {review_id} rejected", at=now, told_at=now)
    referrals.after_refund(uow, programme, member, replace(order, refunded=order.amount), now,
                           told_at=now, cause=f"rejected as fraud in review {review_id}")


def taken_back(uow: UnitOfWork, program_id: str, event_id: str, points: int) -> None:
    """Points of a screened event taken back another way (a refund of its order, a
    reversal): its open review holds that much less, so that rejecting it does not take
    them back a second time. (A held review's rejection takes what is left of its lot;
    an unheld one's takes the review's points.)"""
    if points <= 0:
        return
    r = tt.fraud_reviews
    uow.execute(r.update().where(r.c.program_id == program_id, r.c.event_id == event_id,
                                 r.c.status == "open")
                .values(points=sa.case((r.c.points > points, r.c.points - points), else_=0)))


def _receipt(programme: Programme, store: str | None, amount: Decimal | None
             ) -> tuple[str, str, str, int] | None:
    """The name of the receipt lock of a purchase (programme, store, amount), if the
    programme screens duplicate receipts and the purchase names a store and an amount."""
    config = programme.model.fraud
    if (config is None or not config.active or config.duplicate_receipts is None
            or store is None or amount is None):
        return None
    return ("receipt", programme.id, store, int(amount.scaleb(4)))


def lock_receipt(uow: UnitOfWork, programme: Programme, store: str | None,
                 amount: Decimal | None) -> None:
    """Serialise purchases of the same programme, store and amount until commit, so that
    the duplicate count of the second finds the first's order. Every path takes it right
    after its member's row and before any other lock (campaign budgets, coupon counters),
    so that no two commands wait for each other in opposite orders: a single event before
    its purchase is applied, the till before the coupon's locks, a batch for all its
    purchases at once (``lock_receipts``). Nothing in a programme that does not screen
    duplicate receipts."""
    if (name := _receipt(programme, store, amount)) is not None:
        advisory_xact_lock(uow, *name)


def lock_receipts(uow: UnitOfWork, programme: Programme, events: Sequence[Event]) -> None:
    """The receipt locks of a batch's purchases (``lock_receipt``), taken after its members'
    rows, at once and in the order of their keys: two batches that took them event by
    event, in the order of their events, could each hold one the other waits for."""
    advisory_xact_locks(uow, [name for event in events if event.type == "purchase" and (
        name := _receipt(programme, event.store, event.amount)) is not None])


def _recent(uow: UnitOfWork, programme: Programme, member: Member, event: Event,
            config: trust.FraudConfig) -> trust.Recent:
    at = event.occurred_at
    hour, day = at - trust.WINDOWS["hour"], at - trust.WINDOWS["day"]
    p = t.postings
    window = sa.and_(p.c.member_pk == member.pk, p.c.code == "earn", p.c.occurred_at > day,
                     p.c.occurred_at <= at, p.c.ref != event.id)
    in_hour = p.c.occurred_at > hour
    columns: list[Any] = [
        sa.select(sa.func.count(sa.distinct(sa.case((in_hour, p.c.ref)))))
        .where(window).scalar_subquery(),
        sa.select(sa.func.count(sa.distinct(p.c.ref))).where(window).scalar_subquery(),
        sa.select(sa.func.coalesce(sa.func.sum(sa.case((in_hour, p.c.points), else_=0)), 0))
        .where(window).scalar_subquery(),
        sa.select(sa.func.coalesce(sa.func.sum(p.c.points), 0)).where(window).scalar_subquery(),
    ]
    duplicate = config.duplicate_receipts
    check_duplicates = (duplicate is not None and event.type == "purchase"
                        and event.store is not None and event.amount is not None)
    if check_duplicates:
        assert duplicate is not None and event.amount is not None
        o = t.orders
        span = timedelta(minutes=duplicate.window_minutes)
        columns.append(
            sa.select(sa.func.count()).select_from(o).where(
                o.c.program_id == programme.id,
                o.c.amount_e4 == int(event.amount.scaleb(4)),
                o.c.occurred_at >= at - span, o.c.occurred_at <= at + span,
                o.c.order_id != event.order_id,
                o.c.event["store"].as_string() == event.store,
            ).scalar_subquery())
    row: tuple[Any, ...] = tuple(uow.execute(sa.select(*columns)).one())
    events = {"hour": int(row[0]), "day": int(row[1])}
    points = {"hour": int(row[2]), "day": int(row[3])}
    duplicates = int(row[4]) if check_duplicates else 0
    for pk, occurred_at, earned, store, amount in _unwritten.get(uow, ()):
        if pk == member.pk and earned > 0 and day < occurred_at <= at:
            for name, start in (("hour", hour), ("day", day)):
                if occurred_at > start:
                    events[name] += 1
                    points[name] += earned
        if (check_duplicates and duplicate is not None and store == event.store
                and amount == event.amount
                and abs(occurred_at - at) <= timedelta(minutes=duplicate.window_minutes)):
            duplicates += 1
    return trust.Recent(events=events, points=points, duplicates=duplicates)


# -- the review queue -------------------------------------------------------------------

def _view(row: Any, member_id: str, **changes: Any) -> dict[str, Any]:
    values = {**row._mapping, **changes}
    return {
        "id": values["id"], "member": member_id, "event": values["event_id"],
        "points": values["points"], "reasons": values["reasons"]["reasons"],
        "held": values["reasons"]["held"], "status": values["status"],
        "created_at": iso(values["created_at"]), "decided_at": iso(values["decided_at"]),
        "decided_by": values["decided_by"],
    }


def reviews(engine: sa.Engine, program_id: str, status: str = "open", *, after_id: int = 0,
            limit: int = 100) -> list[dict[str, Any]]:
    if status not in ("open", "approved", "rejected"):
        raise InvalidField("status must be open, approved or rejected", field="status")
    r, m = tt.fraud_reviews, t.members
    query = (sa.select(r, m.c.id.label("member_id")).join(m, m.c.pk == r.c.member_pk)
             .where(r.c.program_id == program_id, r.c.status == status, r.c.id > after_id)
             .order_by(r.c.id).limit(min(max(limit, 1), 500)))
    with engine.connect() as conn:
        require_programme_id(conn, program_id)
        return [_view(row, row.member_id) for row in conn.execute(query)]


def decide(engine: sa.Engine, program_id: str, review_id: int, decision: str, key: str,
           clock: Clock = utc_now) -> dict[str, Any]:
    """Approve or reject an open review, once per idempotency key; audited."""
    if decision not in ("approve", "reject"):
        raise InvalidField("decision must be approve or reject", field="decision")

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        now = clock()

        def run() -> dict[str, Any]:
            r = tt.fraud_reviews
            row = uow.execute(sa.select(r).where(r.c.program_id == program_id,
                                                 r.c.id == review_id)).one_or_none()
            if row is None:
                raise trust.UnknownReview(f"no review {review_id} in programme {program_id}",
                                          field="review")
            # A rejection may claw a paid referral back, which locks its referrer too: both
            # are locked here, in one sorted call, as a payout locks them.
            pks = [row.member_pk]
            if decision == "reject" and programme.model.referrals is not None:
                pks += referrals.paid_referrer(uow, program_id, row.member_pk)
            member = next(m for m in uow.members_for_update(program_id, pks)
                          if m.pk == row.member_pk)
            # Locked the member first: a concurrent decision waits, then sees it decided.
            row = uow.execute(sa.select(r).where(r.c.id == review_id)).one()
            if row.status != "open":
                raise trust.ReviewDecided(f"review {review_id} was already {row.status}",
                                          field="review")
            before = balances(member)
            tier_before = member.tier_id
            ledger = member.ledger
            held = bool(row.reasons["held"])
            if decision == "approve":
                if held:
                    ledger.resume(row.lot_seq, row.available_at, now,
                                  f"review {review_id} approved: points released")
                status = "approved"
            else:
                lot = ledger.lots.get(row.lot_seq)
                take = (lot.remaining if held and lot is not None
                        else row.points if not held else 0)
                if held and lot is not None:
                    # no longer under review (written even with nothing left in it)
                    ledger.reschedule(lot.seq, row.available_at)
                for rule_id, points in taken_parts(uow, programme, member, row.event_id, take):
                    ledger.clawback(points, order_id=None, rule_id=rule_id, code="review_reject",
                                    source=row.event_id,
                                    explanation=f"review {review_id} rejected: points taken back")
                order = _order_of(uow, programme, member, row)
                _taken_by_rejection(uow, programme, member, row, take, order)
                if order is not None:
                    _tier_lift_undone(uow, programme, member, order, now)
                    _purchase_rejected(uow, programme, member, order, review_id, now)
                status = "rejected"
            made = uow.record(program_id, member,
                              PostingContext(f"review:{review_id}", programme.version, now))
            outbox.changed(uow, programme, member, made, f"review:{review_id}", now,
                           tier_before=tier_before)
            partners.settle_taken_back(uow, programme, row.event_id, f"review:{review_id}",
                                       made, now)
            actor = audit.current_actor()
            uow.execute(r.update().where(r.c.id == review_id).values(
                status=status, decided_at=now, decided_by=actor[:120]))
            after = balances(member)
            audit.record(uow, f"review.{decision}", program_id=program_id,
                         target=f"review {review_id}", before={"status": "open",
                                                              "balances": before},
                         after={"status": status, "balances": after}, now=now)
            view = _view(row, member.id, status=status, decided_at=now, decided_by=actor[:120])
            view["balances"] = after
            return view

        result = idempotent(uow, program_id, key, f"review.{decision}", {"review": review_id},
                            run, now)
        uow.commit()
        return result

    return transaction(engine, work)

