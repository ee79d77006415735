"""Ingesting events: one event, one transaction (``ingest_event``); the importer and
run-due call ``apply_event`` inside their own units of work.

Every check that can refuse an event runs before anything changes, so a
refused event leaves balances, lots and the journal exactly as they were.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

import sqlalchemy as sa

from setia.adapters.db.store import PostingContext, UnitOfWork
from setia.domain import earning, tiers
from setia.domain.errors import (
    IdempotencyConflict,
    InvalidField,
    SetiaError,
    UnknownMember,
    UnknownOrder,
)
from setia.domain.events import Event, check_sent, parse_event, purchase_order
from setia.domain.member import Member
from setia.domain.money import minor_digits
from setia.domain.programme import Level, Programme
from setia.domain.refunds import Order, OrderLine, remaining_lines, split_refund
from setia.service import coupons, engagement, fraud, outbox, privacy, referrals, store_credit
from setia.service import partners as partner_settlement
from setia.service.common import Clock, request_hash, require_programme, transaction, utc_now
from setia.service.views import balances, tier_view


def ingest_event(
    engine: sa.Engine, program_id: str, payload: Any, clock: Clock = utc_now
) -> dict[str, Any]:
    """Apply one event (or replay its first result); the event id is the idempotency key."""

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme, event = _programme_and_event(uow, program_id, payload)
        result = apply_event(uow, programme, event, payload, clock(), sent=True)
        uow.commit()
        return result

    return transaction(engine, work)


def _programme_and_event(uow: UnitOfWork, program_id: str, payload: Any) -> tuple[Programme, Event]:
    """The current programme and the event parsed for it, with the member locked and its
    stored event and order looked up: one statement to lock (which also reads the
    programme's current version) and one for the rest, when the programme cached in this
    process is still current. Errors come in the same order as with ``require_programme``
    first: an unknown programme, then a malformed event."""
    programme = uow.cached_programme(program_id)
    if programme is None:
        programme = require_programme(uow, program_id)
    try:
        event = parse_event(payload, programme.currency)
    except SetiaError:
        fresh = require_programme(uow, program_id)  # the cached one may be stale
        if fresh is programme:
            raise
        programme, event = fresh, parse_event(payload, fresh.currency)
    uow.expect(program_id, event.id, event.order_id if event.type == "purchase" else None)
    uow.member(program_id, event.member)
    if not uow.is_current(programme):
        fresh = require_programme(uow, program_id)
        if fresh is not programme:
            programme, event = fresh, parse_event(payload, fresh.currency)
    return programme, event


def simulate_event(
    engine: sa.Engine, program_id: str, payload: Any, clock: Clock = utc_now
) -> dict[str, Any]:
    """What the event would earn now; the transaction is rolled back, nothing is written."""

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        event = parse_event(payload, programme.currency)
        result = apply_event(uow, programme, event, payload, clock(), store=False, sent=True)
        result["status"] = "simulated"
        return result  # no commit: the unit of work rolls back

    return transaction(engine, work)


class StoredEvent(NamedTuple):
    request_hash: str
    result: dict[str, Any]


def replay_or_conflict(stored: Any, digest: str, event_id: str) -> dict[str, Any]:
    if stored.request_hash != digest:
        raise IdempotencyConflict(
            f"event id {event_id!r} was already used for a different event", field="id"
        )
    result = dict(stored.result)
    result["status"] = "replayed"
    return result


def apply_event(
    uow: UnitOfWork,
    programme: Programme,
    event: Event,
    payload: Any,
    now: datetime,
    *,
    store: bool = True,
    known: dict[str, Any] | None = None,
    digest: str | None = None,
    sent: bool = False,
) -> dict[str, Any]:
    """Apply one parsed event (``payload``: its request, whose ``request_hash`` is
    ``digest`` when the caller has it already); ``sent`` by a client, not posted by Setia
    itself (enrolment, run-due), which alone may post some types (``check_sent``)."""
    if digest is None:
        digest = request_hash(payload)
    # An event refused changes nothing, so a member it would enrol is enrolled only after
    # every refusal it could meet: a batch or a group of events that goes on after a
    # refused one must not keep that one's enrolment. After what only enrolling can refuse
    # (the member id, the signup's event id), the refusals come in the same order for a new
    # member as for a known one.
    member = uow.member(programme.id, event.member)
    if member is None:
        if not programme.model.auto_enroll:
            raise UnknownMember(
                f"no member {event.member!r} in programme {programme.id}", field="member"
            )
        from setia.service.members import enrol, require_member_id, signup_taken

        require_member_id(event.member)
        if event.id == f"signup:{event.member}":
            raise InvalidField(f"the event id {event.id!r} is kept for the signup of member "
                               f"{event.member!r}, which this event would enrol", field="id")
    stored = known.get(event.id) if known is not None else uow.stored_event(programme.id, event.id)
    if stored is not None:
        return replay_or_conflict(stored, digest, event.id)
    if sent:
        check_sent(event)
    if member is None:
        # Refused here if another event holds the signup's id. Found taken by this id's
        # own signup: a person erased and enrolling again, or another transaction that
        # enrolled this member after it was looked up (then ``enrol`` finds that member).
        taken = signup_taken(uow, programme, event.member, event.occurred_at, known)
    partner_settlement.check_event(programme, event)
    privacy.check_event_age(programme, event, now)
    if member is None:
        if event.type == "purchase" and _order_recorded(uow, programme, event):
            # Without a member to lock, the event was looked up before its order: a copy of
            # this event committed in between recorded the order, and this one replays it.
            if (replayed := _replayed_since(uow, programme, event, digest, known)) is not None:
                return replayed
            raise _recorded_order(event)
        if event.type == "refund":  # a new member has no order yet
            raise _unknown_order(event)
        member, created = enrol(uow, programme, event.member, {},
                                enrolled_at=event.occurred_at, now=now, known=known,
                                taken=taken)
        # Enrolling waited for a concurrent enrolment of the same member, if any, which
        # may have applied this very event meanwhile (a till that sent it twice).
        if not created and (replayed := _replayed_since(uow, programme, event, digest,
                                                        known)) is not None:
            return replayed
    tier_before = member.tier_id

    if event.type == "purchase":
        # before any lock but the member's (a simulation too: it counts what it would)
        fraud.lock_receipt(uow, programme, event.store, event.amount)
        made = _purchase(uow, programme, member, event, now)
    elif event.type == "refund":
        made = _refund(uow, programme, member, event, now)
    else:
        made = _other(programme, member, event, now)
    made += engagement.after_event(uow, programme, member, event, now, tier_before=tier_before)
    if event.type == "refund" and made < 0 and programme.model.fraud is not None:
        # What the refund took back of the purchase's points (its rules', campaigns' and
        # membership's) is no longer the purchase's review's to take.
        refunded = uow.order(programme.id, event.order_id or "", programme.currency)
        assert refunded is not None, "the refund has found its order"
        fraud.taken_back(uow, programme.id, refunded.event_id, -made)
    # Screened when simulated too, so that a simulation answers the hold a real event would
    # get (its review is queued in the transaction a simulation rolls back)
    review = fraud.screen(uow, programme, member, event, made, now)
    context = PostingContext(
        ref=event.id, program_version=programme.version, occurred_at=event.occurred_at
    )
    postings = uow.record(programme.id, member, context)
    partner_settlement.settle_event(uow, programme, event, postings)
    result = {
        "event": event.id,
        "status": "applied",
        "points": made,
        "postings": [
            {
                "rule": p.rule_id,
                "points": p.points if p.code in ("earn",) else -p.points,
                "explanation": p.explanation,
            }
            for p in postings
        ],
        "balances": balances(member),
        "tier": _tier_summary(programme, member),
    }
    if review is not None:
        result["review"] = review
    if store:
        uow.add_event(programme.id, event, digest, payload, result, now)
        outbox.changed(uow, programme, member, postings, event.id, now, tier_before=tier_before)
        if known is not None:  # a repeat later in the same batch replays this result
            known[event.id] = StoredEvent(digest, result)
    return result


def _replayed_since(uow: UnitOfWork, programme: Programme, event: Event, digest: str,
                    known: dict[str, Any] | None) -> dict[str, Any] | None:
    """The event's answer if another transaction stored it since it was looked up, read
    again; None if it did not. Only in the single-event path: a batch reads its stored
    events once its new members' rows are in and its members locked."""
    if known is not None:
        return None
    stored = uow.stored_event(programme.id, event.id, fresh=True)
    return None if stored is None else replay_or_conflict(stored, digest, event.id)


_windows: dict[tuple[int, int, int], tuple[Programme, list[str]]] = {}
_summaries: dict[tuple[int, str], tuple[Programme, dict[str, Any]]] = {}


def _after_event(programme: Programme, current: Level, member: Member, local: datetime,
                 now: datetime) -> Level:
    """``tiers.after_event`` with the window's month keys worked out once per month: the
    window depends only on the programme and the month of ``local``.

    An event sent late moves the member up only by a window still in force ``now``: with
    ``calendar_year``, its year's status lasts through the next year, so an event of two
    years ago lifts nothing; with ``rolling_months``, the window that ends now (or at the
    event, if it is dated later) counts it if it is recent enough."""
    now_local = now.astimezone(programme.tz)
    if programme.model.tiers.window == "calendar_year":
        if local.year < now_local.year - 1:
            return current
    elif now_local > local:
        local = now_local
    key = (id(programme), local.year, local.month)
    found = _windows.get(key)
    if found is None or found[0] is not programme:
        if len(_windows) > 4096:
            _windows.clear()
        found = _windows[key] = (programme, tiers.window_months(programme, local))
    months = found[1]
    reached = tiers.level_for(programme, tiers.metric_value(programme, member.buckets, months))
    return tiers.higher(programme, reached, current)


def _tier_summary(programme: Programme, member: Member) -> dict[str, Any]:
    """``tier_view(..., progress=False)``, a new dict each time, built once per level."""
    key = (id(programme), member.tier_id)
    found = _summaries.get(key)
    if found is None or found[0] is not programme:
        if len(_summaries) > 4096:
            _summaries.clear()
        view = tier_view(programme, member, datetime.now(UTC), progress=False)
        found = _summaries[key] = (programme, view)
    return dict(found[1])


def earn_awards(
    programme: Programme, member: Member, event: Event, awards: list[earning.Award]
) -> int:
    """Credit each award into the event's lot; count limited rules; return the total."""
    pending_days = programme.model.points.pending_days
    available_at = earning.pending_until(programme, event.occurred_at)
    expires_at = earning.lot_expires_at(programme, available_at)
    total = 0
    for award in awards:
        member.ledger.earn(
            award.points,
            source=event.id,
            rule_id=award.rule_id,
            explanation=award.explanation,
            available_at=available_at,
            pending=pending_days > 0,
            expires_at=expires_at,
            order_id=purchase_order(event),
        )
        if award.limit_key is not None:
            member.count_use(award.rule_id, award.limit_key)
        total += award.points
    if total > 0:
        member.active_at(event.occurred_at)
    return total


def member_facts(programme: Programme, member: Member) -> earning.MemberFacts:
    return earning.MemberFacts(
        id=member.id,
        tier=programme.level(member.tier_id),
        purchases=member.purchases,
        attributes=member.attributes,
        enrolled_at=member.enrolled_at,
    )


def _purchase(uow: UnitOfWork, programme: Programme, member: Member, event: Event,
              now: datetime) -> int:
    assert event.order_id is not None and event.amount is not None
    if _order_recorded(uow, programme, event):
        raise _recorded_order(event)
    tier_before = programme.level(member.tier_id)
    awards = earning.evaluate(programme, event, member_facts(programme, member), member.usage)
    # Nothing below can refuse the event.
    total = earn_awards(programme, member, event, awards)
    store_credit.on_purchase(uow, programme, member, event, now)
    member.purchases += 1
    local = event.occurred_at.astimezone(programme.tz)
    member.add_to_bucket(tiers.month_key(local), spend=event.amount, points=total, visits=1)
    member.tier_id = _after_event(programme, tier_before, member, local, now).id
    uow.add_order(
        programme.id,
        Order(
            order_id=event.order_id,
            member_pk=member.pk,
            event_id=event.id,
            program_version=programme.version,
            tier_id=tier_before.id,
            occurred_at=event.occurred_at,
            amount=event.amount,
            refunded=Decimal(0),
            lines=[
                OrderLine(
                    sku=line.sku,
                    category=line.category,
                    quantity=line.quantity,
                    amount=line.amount,
                    refunded=Decimal(0),
                )
                for line in event.lines
            ],
            awards={award.rule_id: award.points for award in awards},
            payload=_order_payload(event),
        ),
    )
    referrals.after_purchase(uow, programme, member, event)
    return total


def _order_recorded(uow: UnitOfWork, programme: Programme, event: Event) -> bool:
    assert event.order_id is not None
    return uow.order(programme.id, event.order_id, programme.currency) is not None


def _recorded_order(event: Event) -> InvalidField:
    return InvalidField(
        f"order {event.order_id!r} was already recorded by another event", field="order_id"
    )


def _unknown_order(event: Event) -> UnknownOrder:
    return UnknownOrder(
        f"no order {event.order_id!r} for member {event.member!r}", field="order_id"
    )


def _order_payload(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "member": event.member,
        "occurred_at": event.occurred_at.isoformat(),
        "order_id": event.order_id,
        "amount": str(event.amount),
        "store": event.store,
        "channel": event.channel,
        **({"partner": event.partner} if event.partner is not None else {}),
        "lines": [
            {
                "sku": line.sku,
                "category": line.category,
                "quantity": line.quantity,
                "amount": str(line.amount),
            }
            for line in event.lines
        ],
    }


def _refund(uow: UnitOfWork, programme: Programme, member: Member, event: Event,
            now: datetime) -> int:
    assert event.order_id is not None
    order = uow.order(programme.id, event.order_id, programme.currency)
    if order is None or order.member_pk != member.pk:
        raise _unknown_order(event)
    digits = minor_digits(programme.currency)
    split = split_refund(event, order.amount, order.refunded, order.lines, digits)
    original = require_programme(uow, programme.id, order.program_version)
    purchase = parse_event(
        {k: v for k, v in order.payload.items() if v is not None}, programme.currency
    )
    left_lines = remaining_lines(order.lines, split.per_line)
    left_amount = order.left - split.total
    tier = original.level(order.tier_id)
    # A purchase rejected as fraud kept nothing to take back: no points (its awards are
    # zero), no cashback, and no spend or visit in the tier metrics (``fraud``).
    rejected = fraud.purchase_rejected(uow, original, order)
    # Nothing below can refuse the event.
    store_credit.on_refund(uow, programme, original, member, event, order, left_lines, left_amount,
                           now, rejected=rejected)
    clawed = 0
    for rule_id, awarded in sorted(order.awards.items()):
        keep = earning.recompute_after_refund(
            original, rule_id, awarded, purchase, left_lines, left_amount, tier
        )
        back = awarded - keep
        if back > 0:
            member.ledger.clawback(
                back,
                order_id=order.order_id,
                rule_id=rule_id,
                explanation=f"refund of {split.total} on order {order.order_id}: "
                f"{rule_id} now gives {keep} instead of {awarded}",
            )
            order.awards[rule_id] = keep
            clawed += back
    order.refunded += split.total
    order.lines = [
        replace(line, refunded=line.refunded + split.per_line.get(line.sku, Decimal(0)))
        for line in order.lines
    ]
    order.dirty = True
    referrals.after_refund(uow, programme, member, order, event.occurred_at, told_at=now)
    coupons.after_refund(uow, programme, order.order_id, order.left, event.occurred_at)
    if not rejected:
        month = tiers.month_key(order.occurred_at.astimezone(programme.tz))
        member.add_to_bucket(
            month, spend=-split.total, points=-clawed, visits=-1 if order.left == 0 else 0
        )
    return -clawed


def _other(programme: Programme, member: Member, event: Event, now: datetime) -> int:
    awards = earning.evaluate(programme, event, member_facts(programme, member), member.usage)
    total = earn_awards(programme, member, event, awards)
    if total:
        local = event.occurred_at.astimezone(programme.tz)
        member.add_to_bucket(tiers.month_key(local), points=total)
        member.tier_id = _after_event(programme, programme.level(member.tier_id), member, local,
                                      now).id
    return total
