"""Campaigns, stamp cards and the paid-membership multiplier, applied with each event.

``after_event`` is called by ``service.events.apply_event`` once an event's own
points are worked out, in the same transaction and under the member's lock: it
adds campaign and membership points and stamps (or, for a refund, takes back
what the refunded part of the order earned) and answers the points it added.
Lock order: the member row (taken by the caller), then each campaign's budget
row, in programme order.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.adapters.db import tables_engagement as te
from setia.adapters.db.store import UnitOfWork
from setia.domain import earning
from setia.domain import engagement as rules
from setia.domain.engagement_sections import Campaign, MembershipPlan, StampCard, VoucherGrant
from setia.domain.events import Event, Line, parse_event, purchase_order
from setia.domain.member import Member
from setia.domain.money import minor_digits
from setia.domain.programme import Programme
from setia.domain.rewards import voucher_code
from setia.service import outbox
from setia.service.common import require_programme
from setia.service.redemptions import void_unused


def has_engagement(programme: Programme) -> bool:
    model = programme.model
    return bool(model.campaigns or model.stamp_cards or model.memberships)


def after_event(uow: UnitOfWork, programme: Programme, member: Member, event: Event,
                now: datetime, *, tier_before: str) -> int:
    """Campaign, stamp-card and membership effects of one event, applied at ``now``; the
    points they add (negative for a refund's clawbacks). ``tier_before``: the member's tier
    before the event (its own points may have raised ``member.tier_id`` already). Nothing
    here refuses the event."""
    if event.type == "refund":
        # even when the current version has none of the sections: the order may have
        # earned campaign points or stamps under an earlier one
        return _after_refund(uow, programme, member, event, now)
    if not has_engagement(programme):
        return 0
    rule_points: dict[str, int] = {}
    for posting in member.ledger.postings:
        if posting.code == "earn" and posting.rule_id is not None:
            rule_points[posting.rule_id] = rule_points.get(posting.rule_id, 0) + posting.points
    added = _campaigns(uow, programme, member, event, rule_points, now, tier_before)
    added += _membership_multiplier(uow, programme, member, event, rule_points)
    added += _stamps(uow, programme, member, event, now)
    return added


# -- shared -------------------------------------------------------------------------------


def credit(programme: Programme, member: Member, event: Event, points: int, rule_id: str,
           explanation: str) -> None:
    """Points into the event's lot, pending and expiring like the event's own points; an
    earn like theirs for inactivity expiry too (it counts from the latest earn)."""
    available_at = earning.pending_until(programme, event.occurred_at)
    member.ledger.earn(
        points, source=event.id, rule_id=rule_id, explanation=explanation,
        available_at=available_at, pending=programme.model.points.pending_days > 0,
        expires_at=earning.lot_expires_at(programme, available_at),
        order_id=purchase_order(event),
    )
    member.active_at(event.occurred_at)


def issue_voucher(uow: UnitOfWork, programme: Programme, member: Member, grant: VoucherGrant,
                  source: str, issued_at: datetime, *, ref: str, name: str,
                  told_at: datetime) -> dict[str, Any]:
    """A voucher the member did not pay points for, usable at the till like any other
    (GET/POST /vouchers/{code}); ``source`` names what gave it (``campaign:<id>`` ...).
    Its ``voucher.issued`` message names it ``name`` and what caused it, ``ref`` (an event
    id, a membership purchase id), and is written at ``told_at`` (the event's is when it
    was applied: its time, ``issued_at``, may be long past)."""
    expires_at = issued_at + timedelta(days=grant.valid_days)
    for _ in range(5):  # 60 random bits: a collision is not expected; bound the loop anyway
        code = voucher_code(secrets.token_bytes(8))
        if uow.insert_ignore(t.vouchers, {
            "program_id": programme.id, "code": code,
            "redemption_id": "grant_" + secrets.token_hex(10), "member_pk": member.pk,
            "reward_id": source[:64], "benefit": grant.benefit(), "issued_at": issued_at,
            "expires_at": expires_at, "used_at": None, "used_ref": None,
        }, ["program_id", "code"]):
            voucher = {"code": code, "expires_at": expires_at.isoformat()}
            outbox.voucher_issued(uow, programme, member, voucher, ref=ref,
                                  reward=source[:64], reward_name=name, occurred_at=told_at)
            return voucher
    raise AssertionError("five voucher codes in a row collided")


def _tier_at_event(uow: UnitOfWork, programme: Programme, event: Event,
                   tier_before: str) -> str:
    """The tier held before the event (a purchase that crosses a threshold counts at the
    tier it was made in, as for earning; so does a review whose points cross one)."""
    if event.type == "purchase" and event.order_id is not None:
        order = uow.order(programme.id, event.order_id, programme.currency)
        if order is not None:
            return order.tier_id
    return tier_before


def _last_purchase_at(uow: UnitOfWork, programme: Programme, member: Member,
                      event: Event) -> datetime | None:
    """The member's last purchase before the event: the orders written, and those of
    earlier events of this unit of work (a batch, a group of live events) that only its
    commit writes, so that a batch gives what the events sent one by one would."""
    o = t.orders
    query = sa.select(sa.func.max(o.c.occurred_at)).where(
        o.c.program_id == programme.id, o.c.member_pk == member.pk,
        o.c.occurred_at < event.occurred_at)
    if event.order_id is not None:
        query = query.where(o.c.order_id != event.order_id)
    found = uow.execute(query).scalar_one_or_none()
    last = found if isinstance(found, datetime) else None
    for made_at in uow.new_order_times(programme.id, member.pk):
        # the event's own order, added already, is not before it
        if made_at < event.occurred_at and (last is None or made_at > last):
            last = made_at
    return last


# -- campaigns ----------------------------------------------------------------------------


def _campaigns(uow: UnitOfWork, programme: Programme, member: Member, event: Event,
               rule_points: dict[str, int], now: datetime, tier_before: str) -> int:
    campaigns = programme.model.campaigns or []
    if not campaigns:
        return 0
    local = event.occurred_at.astimezone(programme.tz)
    facts: rules.AudienceFacts | None = None
    added = 0
    for campaign in campaigns:
        if not rules.campaign_applies(campaign, event, local):
            continue
        if facts is None:
            facts = rules.AudienceFacts(
                tier_id=_tier_at_event(uow, programme, event, tier_before),
                attributes=member.attributes, birthday=member.birthday,
                enrolled_at=member.enrolled_at,
                last_purchase_at=_last_purchase_at(uow, programme, member, event)
                if any(c.audience.lapsed_days is not None for c in campaigns) else None,
            )
        if not rules.audience_matches(campaign.audience, facts, local):
            continue
        if rules.in_holdout(programme.id, campaign.id, member.id, campaign.holdout):
            # Held out only where the campaign would have given something: a member it
            # would have left empty-handed (nothing earned, budget spent, cap reached) is
            # no one to compare its members with.
            if _grant(uow, programme, member, event, campaign, rule_points,
                      spend=False)[0] > 0:
                uow.insert_ignore(te.campaign_holdouts, {
                    "program_id": programme.id, "campaign_id": campaign.id,
                    "member_pk": member.pk, "member_id": member.id,
                    "recorded_at": event.occurred_at,
                }, ["program_id", "campaign_id", "member_pk"])
            continue
        added += _award_campaign(uow, programme, member, event, campaign, rule_points, now)
    return added


def _grant(uow: UnitOfWork, programme: Programme, member: Member, event: Event,
           campaign: Campaign, rule_points: dict[str, int], *,
           spend: bool) -> tuple[int, int, str]:
    """What the campaign gives for the event within its budget and the member's cap, what
    it wanted to give, and why: (grant, wanted, explanation). ``spend``: the grant is about
    to be given, so the budget row is locked (else only read)."""
    if campaign.voucher is not None:
        wanted, explanation = 1, ""
    else:
        wanted, explanation = rules.campaign_points(
            campaign, event, rule_points, programme.model.points.name)
    if wanted <= 0:
        return 0, wanted, explanation
    a = te.campaign_awards
    exists = uow.execute(sa.select(a.c.ref).where(
        a.c.program_id == programme.id, a.c.campaign_id == campaign.id, a.c.ref == event.id
    )).first()
    if exists is not None:  # the same event id again (a replay in one batch): never twice
        return 0, wanted, explanation
    member_used = 0
    if campaign.per_member is not None:
        member_used = int(uow.execute(sa.select(sa.func.coalesce(sa.func.sum(a.c.awarded), 0))
                                      .where(a.c.member_pk == member.pk,
                                             a.c.program_id == programme.id,
                                             a.c.campaign_id == campaign.id)).scalar_one())
    used = 0
    if campaign.budget is not None:
        used = (_lock_budget(uow, programme.id, campaign.id) if spend
                else _budget_used(uow, programme.id, campaign.id))
    grant = rules.grant_within(wanted, budget=campaign.budget, used=used,
                               per_member=campaign.per_member, member_used=member_used)
    return grant, wanted, explanation


def _award_campaign(uow: UnitOfWork, programme: Programme, member: Member, event: Event,
                    campaign: Campaign, rule_points: dict[str, int], now: datetime) -> int:
    grant, wanted, explanation = _grant(uow, programme, member, event, campaign, rule_points,
                                        spend=True)
    if grant <= 0:
        return 0
    a = te.campaign_awards
    if campaign.budget is not None:
        b = te.campaign_budgets
        uow.execute(b.update().where(b.c.program_id == programme.id,
                                     b.c.campaign_id == campaign.id)
                    .values(used=b.c.used + grant))
    rule_id = rules.CAMPAIGN_RULE + campaign.id
    code = None
    points = 0
    if campaign.voucher is not None:
        code = issue_voucher(uow, programme, member, campaign.voucher, rule_id,
                             event.occurred_at, ref=event.id, name=campaign.name,
                             told_at=now)["code"]
    else:
        if grant < wanted:
            explanation += f", capped to {grant}"
        credit(programme, member, event, grant, rule_id, explanation)
        points = grant
    uow.execute(a.insert().values(
        program_id=programme.id, campaign_id=campaign.id, ref=event.id, member_pk=member.pk,
        order_id=purchase_order(event),
        program_version=programme.version, awarded=grant, kept=grant, voucher_code=code,
        awarded_at=event.occurred_at,
    ))
    return points


def _awarded(program_id: str, campaign_id: str) -> Any:
    """Everything the campaign ever awarded (points, or vouchers), under every programme
    version: what its budget row counts (``setia check`` compares the two)."""
    a = te.campaign_awards
    return (sa.select(sa.func.coalesce(sa.func.sum(a.c.awarded), 0))
            .where(a.c.program_id == program_id, a.c.campaign_id == campaign_id)
            .scalar_subquery())


def _budget_used(uow: UnitOfWork, program_id: str, campaign_id: str) -> int:
    """The budget used so far, read without a lock (nothing is taken from it)."""
    b = te.campaign_budgets
    found = uow.execute(sa.select(b.c.used).where(
        b.c.program_id == program_id, b.c.campaign_id == campaign_id)).scalar()
    if found is None:  # no award counted against a budget yet: what it would start from
        found = uow.execute(sa.select(_awarded(program_id, campaign_id))).scalar()
    return int(found or 0)


def _lock_budget(uow: UnitOfWork, program_id: str, campaign_id: str) -> int:
    """The budget used so far, its row locked until the transaction ends. The row is made
    by the first award counted against a budget; a budget added by a later programme
    version starts from what the campaign awarded before it (docs/engagement.md)."""
    b = te.campaign_budgets
    query = (sa.select(b.c.used)
             .where(b.c.program_id == program_id, b.c.campaign_id == campaign_id)
             .with_for_update())
    used = uow.execute(query).scalar()
    if used is None:  # once per campaign: the sum is not taken again with every award
        uow.insert_ignore(b, {"program_id": program_id, "campaign_id": campaign_id,
                              "used": _awarded(program_id, campaign_id)},
                          ["program_id", "campaign_id"])
        used = uow.execute(query).scalar_one()
    return int(used)


# -- paid membership multiplier ----------------------------------------------------------


def membership_covering(uow: UnitOfWork, programme: Programme, member_pk: int,
                        moment: datetime) -> Any:
    """The membership row whose period covered ``moment`` when it was paid for, whatever
    its status now: an expired one by its window, a cancelled one only before it was
    cancelled. The multiplier of an event counts by its ``occurred_at`` (a purchase made
    in the period and sent after run-due expired it, or after a cancel, still earns it)."""
    m = te.membership_purchases
    return uow.execute(sa.select(m).where(
        m.c.member_pk == member_pk, m.c.program == programme.id,
        m.c.starts_at <= moment, m.c.ends_at > moment,
        sa.or_(m.c.status.in_(("active", "expired")),
               sa.and_(m.c.status == "cancelled", m.c.cancelled_at > moment)),
    ).order_by(m.c.starts_at)).mappings().first()


def plan_of(programme: Programme, plan_id: str) -> MembershipPlan | None:
    return next((p for p in programme.model.memberships or [] if p.id == plan_id), None)


def _membership_multiplier(uow: UnitOfWork, programme: Programme, member: Member, event: Event,
                           rule_points: dict[str, int]) -> int:
    if not any(p.multiplier for p in programme.model.memberships or []) or not rule_points:
        return 0
    row = membership_covering(uow, programme, member.pk, event.occurred_at)
    plan = plan_of(programme, row["plan_id"]) if row is not None else None
    if plan is None:
        return 0
    points, explanation = rules.membership_points(plan, rule_points,
                                                  programme.model.points.name)
    if points <= 0:
        return 0
    rule_id = rules.MEMBERSHIP_RULE + plan.id
    credit(programme, member, event, points, rule_id, explanation)
    if event.type == "purchase":  # remembered so that a refund can take it back
        uow.execute(te.campaign_awards.insert().values(
            program_id=programme.id, campaign_id=rule_id, ref=event.id, member_pk=member.pk,
            order_id=event.order_id, program_version=programme.version, awarded=points,
            kept=points, voucher_code=None, awarded_at=event.occurred_at,
        ))
    return points


# -- stamp cards --------------------------------------------------------------------------


def _stamps(uow: UnitOfWork, programme: Programme, member: Member, event: Event,
            now: datetime) -> int:
    cards = programme.model.stamp_cards or []
    if not cards:
        return 0
    local = event.occurred_at.astimezone(programme.tz)
    digits = minor_digits(programme.currency)
    added = 0
    for card in cards:
        if not rules.card_applies(card, event, local):
            continue
        stamps = rules.stamps_for(card, event, digits)
        if stamps <= 0:
            continue
        period = rules.stamp_period(card, local)
        added += add_stamps(uow, programme, member, card, period, stamps, event, now)
        if event.type == "purchase" and event.order_id is not None:
            uow.execute(te.stamp_orders.insert().values(
                program_id=programme.id, card_id=card.id, order_id=event.order_id,
                member_pk=member.pk, period=period, stamps=stamps))
    return added


def _progress(uow: UnitOfWork, program_id: str, card_id: str, member_pk: int,
              period: str) -> Any:
    s = te.stamp_progress
    return uow.execute(sa.select(s.c.stamps, s.c.completions).where(
        s.c.program_id == program_id, s.c.card_id == card_id, s.c.member_pk == member_pk,
        s.c.period == period)).first()


def add_stamps(uow: UnitOfWork, programme: Programme, member: Member, card: StampCard,
               period: str, stamps: int, event: Event, now: datetime) -> int:
    """Add (or, negative, take away) stamps; a card that fills gives its reward (a voucher
    told of at ``now``). Runs under the member's lock, so two events of one member never
    complete a card twice."""
    s = te.stamp_progress
    found = _progress(uow, programme.id, card.id, member.pk, period)
    total = (found.stamps if found else 0) + stamps
    completions = found.completions if found else 0
    target = rules.stamp_target(card, minor_digits(programme.currency))
    due = rules.completions_due(card, total, target)
    added = 0
    for number in range(completions + 1, due + 1):
        source = rules.STAMP_RULE + card.id
        if card.reward.points is not None:
            credit(programme, member, event, card.reward.points, source,
                   f"{card.name}: card {number} complete, {card.reward.points} "
                   f"{programme.model.points.name}")
            added += card.reward.points
        else:
            assert card.reward.voucher is not None
            issue_voucher(uow, programme, member, card.reward.voucher, source, event.occurred_at,
                          ref=event.id, name=card.name, told_at=now)
    completions = max(completions, due)
    values = {"stamps": total, "completions": completions, "updated_at": event.occurred_at}
    if found is None:
        uow.execute(s.insert().values(program_id=programme.id, card_id=card.id,
                                      member_pk=member.pk, period=period, **values))
    else:
        uow.execute(s.update().where(s.c.program_id == programme.id, s.c.card_id == card.id,
                                     s.c.member_pk == member.pk, s.c.period == period)
                    .values(**values))
    return added


# -- refunds ------------------------------------------------------------------------------


def _after_refund(uow: UnitOfWork, programme: Programme, member: Member, event: Event,
                  now: datetime) -> int:
    """Take back what the refunded part of the order earned: campaign and membership
    points are recomputed on what is left (never more than was given), a campaign's
    voucher is voided (if not used yet) once what is left no longer qualifies, and the
    stamps the order gave are lowered. Rewards of cards already completed stay
    (docs/engagement.md)."""
    assert event.order_id is not None
    order = uow.order(programme.id, event.order_id, programme.currency)
    assert order is not None, "the core refund has checked the order"
    left_lines = tuple(Line(sku=line.sku, category=line.category, quantity=line.quantity,
                            amount=line.amount - line.refunded) for line in order.lines)
    purchase = parse_event({k: v for k, v in order.payload.items() if v is not None},
                           programme.currency)
    a = te.campaign_awards
    clawed = 0
    awards = uow.execute(sa.select(a).where(
        a.c.program_id == programme.id, a.c.order_id == order.order_id,
        a.c.member_pk == member.pk, a.c.kept > 0,
    ).order_by(a.c.campaign_id)).mappings().all()
    for row in awards:
        original = uow.programme(programme.id, row["program_version"]) or programme
        if row["voucher_code"] is not None:
            _void_campaign_voucher(uow, programme, original, member, row, order, event, now)
            continue
        keep = _kept_after_refund(original, row, purchase, left_lines, order.left,
                                  order.awards)
        back = row["kept"] - keep
        if back <= 0:
            continue
        rule_id = rules.award_rule(row["campaign_id"])
        member.ledger.clawback(
            back, order_id=order.order_id, rule_id=rule_id,
            explanation=f"refund on order {order.order_id}: {rule_id} now gives {keep} "
                        f"instead of {row['kept']}")
        uow.execute(a.update().where(a.c.program_id == programme.id,
                                     a.c.campaign_id == row["campaign_id"],
                                     a.c.ref == row["ref"]).values(kept=keep))
        clawed += back
    _lower_stamps(uow, programme, member, order, event)
    return -clawed


def _void_campaign_voucher(uow: UnitOfWork, programme: Programme, original: Programme,
                           member: Member, row: Any, order: Any, event: Event,
                           now: datetime) -> None:
    """A voucher campaign's award once a refund leaves the order short of the campaign
    (refunded in full, or below its ``min_amount``: ``rules.campaign_still_qualifies``):
    ``void_award_voucher``, as of the refund."""
    campaign = next((c for c in original.model.campaigns or [] if c.id == row["campaign_id"]),
                    None)
    if campaign is None or rules.campaign_still_qualifies(campaign, order.left):
        return
    void_award_voucher(uow, programme, member, row, ref=event.id,
                       used_ref=f"refund {event.id}", at=event.occurred_at, told_at=now)


def void_award_voucher(uow: UnitOfWork, programme: Programme, member: Member, row: Any, *,
                       ref: str, used_ref: str, at: datetime, told_at: datetime) -> None:
    """A campaign award's voucher (``row``: its ``campaign_awards`` row) taken back, by a
    refund that left its order short of the campaign or a fraud rejection of the purchase
    (``ref``): the award keeps nothing, and the voucher is voided if not used yet
    (``redemptions.void_unused``)."""
    a = te.campaign_awards
    uow.execute(a.update().where(a.c.program_id == programme.id,
                                 a.c.campaign_id == row["campaign_id"],
                                 a.c.ref == row["ref"]).values(kept=0))
    void_unused(uow, programme, member, t.vouchers.c.code == row["voucher_code"], ref=ref,
                used_ref=used_ref, at=at, told_at=told_at)


def void_order_vouchers(uow: UnitOfWork, programme: Programme, member: Member,
                        order_id: str, *, ref: str, used_ref: str, at: datetime,
                        told_at: datetime) -> None:
    """Every campaign voucher an order still keeps, taken back (``void_award_voucher``):
    a purchase rejected as fraud keeps none."""
    a = te.campaign_awards
    for row in uow.execute(sa.select(a).where(
            a.c.program_id == programme.id, a.c.order_id == order_id,
            a.c.member_pk == member.pk, a.c.kept > 0, a.c.voucher_code.is_not(None))
            .order_by(a.c.campaign_id)).mappings().all():
        void_award_voucher(uow, programme, member, row, ref=ref, used_ref=used_ref, at=at,
                           told_at=told_at)


def _kept_after_refund(original: Programme, row: Any, purchase: Event,
                       left_lines: tuple[Line, ...], left_amount: Decimal,
                       rule_points_left: dict[str, int]) -> int:
    kept = int(row["kept"])
    campaign_id: str = row["campaign_id"]
    if campaign_id.startswith(rules.MEMBERSHIP_RULE):
        plan = plan_of(original, campaign_id.removeprefix(rules.MEMBERSHIP_RULE))
        if plan is None or left_amount <= 0:
            return 0 if left_amount <= 0 else kept
        points, _ = rules.membership_points(plan, rule_points_left, "")
        return min(kept, points)
    campaign = next((c for c in original.model.campaigns or [] if c.id == campaign_id), None)
    if campaign is None:
        return kept
    return min(kept, rules.campaign_points_after_refund(
        campaign, int(row["awarded"]), purchase, left_lines, left_amount, rule_points_left))


def _lower_stamps(uow: UnitOfWork, programme: Programme, member: Member, order: Any,
                  event: Event) -> None:
    so = te.stamp_orders
    rows = uow.execute(sa.select(so).where(so.c.program_id == programme.id,
                                           so.c.order_id == order.order_id)
                       .order_by(so.c.card_id)).mappings().all()
    digits = minor_digits(programme.currency)
    pairs = [(Line(sku=line.sku, category=line.category, quantity=line.quantity,
                   amount=line.amount), line.refunded) for line in order.lines]
    # What is left of the order counts under the card as it was when the order earned its
    # stamps (its programme version), as a refund recomputes the order's points
    original = (require_programme(uow, programme.id, order.program_version)
                if rows else programme)
    for row in rows:
        card = next((c for c in original.model.stamp_cards or [] if c.id == row["card_id"]),
                    None)
        if card is None:
            continue
        left = rules.stamps_left(card, pairs, order.left, order.amount, digits)
        lost = row["stamps"] - left
        if lost <= 0:
            continue
        uow.execute(so.update().where(so.c.program_id == programme.id,
                                      so.c.card_id == card.id,
                                      so.c.order_id == order.order_id).values(stamps=left))
        add_stamps(uow, programme, member, card, row["period"], -lost, event,
                   event.occurred_at)  # fewer stamps: no voucher to tell of
