"""Reversals: a mistake is corrected by reversing postings, never by editing the journal.

``reverse`` takes back what one reference (an event id other than a purchase
or refund, or ``adjust:<key>`` of an adjustment) did to each member's points:
earned points are taken back like a clawback (the reference's own pending
points first, then the lots that expire first, the rest as a debt); points an
adjustment removed are given back. Purchases are undone by refunds, which
also correct the order and the tier metric. A reference is reversed once.

Like a refund or a rejected review, taking an event's points back lowers the
member's points tier metric by what it takes of the points the metric counted
(``_lower_points_metric``), and gives the partner the event was settled with
the value of the points back (``partners.settle_taken_back``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.adapters.db import tables_trust as tt
from setia.adapters.db.store import PostingContext, UnitOfWork
from setia.domain import earning, referrals, tiers
from setia.domain.errors import AlreadyReversed, InvalidField, UnknownReference
from setia.domain.ledger import ASSET_POINTS, ISSUED, MEMBER_ACCOUNTS, PROGRAMME_ACCOUNTS
from setia.domain.member import Member
from setia.domain.programme import Programme
from setia.service import audit, fraud, outbox, partners
from setia.service import referrals as referral_payouts
from setia.service.common import (
    Clock,
    advisory_xact_lock,
    idempotent,
    require_programme,
    require_reason,
    require_ref_fits,
    transaction,
    utc_now,
)
from setia.service.views import balances

# A review's hold moves an event's points between the member's own accounts: an event
# held for review is reversed like any other (what it earned is taken back).
REVERSIBLE_CODES = frozenset({"earn", "adjust", "activate", "expire", "review_hold"})


def _net_by_member(rows: Sequence[Any]) -> dict[int, dict[str, int]]:
    """Per member and programme account: points that went to the member (+) or back (-)."""
    net: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        if row.debit in PROGRAMME_ACCOUNTS and row.credit in MEMBER_ACCOUNTS:
            net[row.member_pk][row.debit] += row.points
        elif row.debit in MEMBER_ACCOUNTS and row.credit in PROGRAMME_ACCOUNTS:
            net[row.member_pk][row.credit] -= row.points
    return net


def _lower_points_metric(programme: Programme, member: Member, rows: Sequence[Any],
                         taken: int) -> None:
    """Lower the points tier metric by what the reversal takes of the points it counted.

    The metric counted an event's earn rules' points, in the month of the event
    (``events._other``); campaign, stamp and membership points, and points not earned by
    an event (surveys, referrals, adjustments: no earn rule of the programme), it never
    counted. Which points those were is told by their postings' rule ids, so that an event
    pruned since (``privacy.prune_events``) is told apart as well. A rejected review of the
    event lowered the metric already by what it took of them, at most all of them
    (``fraud``): the reversal lowers it by the rest at most, so that it never goes below
    what the event counted."""
    earned = [row for row in rows if row.member_pk == member.pk and row.code == "earn"
              and row.asset == ASSET_POINTS and tiers.counts_in_points_metric(row.rule_id)]
    counted = sum(row.points for row in earned)
    if taken <= 0 or counted <= 0:
        return
    rejected = sum(row.points for row in rows if row.member_pk == member.pk
                   and row.code == "review_reject" and row.asset == ASSET_POINTS)
    lower = min(taken, counted - min(rejected, counted))
    if lower > 0:
        month = tiers.month_key(min(row.occurred_at for row in earned)
                                .astimezone(programme.tz))
        member.add_to_bucket(month, points=-lower)


def reverse(engine: sa.Engine, program_id: str, body: Any, key: str,
            clock: Clock = utc_now) -> dict[str, Any]:
    if not isinstance(body, dict) or set(body) - {"ref", "reason"}:
        raise InvalidField("give {ref, reason}", field="(body)")
    ref = body.get("ref")
    if not isinstance(ref, str) or not ref:
        raise InvalidField("ref names the event id or adjust:<key> to reverse", field="ref")
    reason = require_reason(body)
    require_ref_fits("reverse:", ref, "ref")

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        now = clock()

        def run() -> dict[str, Any]:
            # Reversals of one reference one after the other: the second finds the first's
            # postings (under other idempotency keys, both passed the check below at once)
            advisory_xact_lock(uow, "reverse", program_id, ref)
            p = t.postings
            rows = uow.execute(sa.select(p).where(p.c.program_id == program_id,
                                                  p.c.ref == ref)).all()
            if not rows:
                raise UnknownReference(f"no posting has reference {ref!r}", field="ref")
            if any(row.asset != ASSET_POINTS for row in rows):
                # store credit has accounts of the same names, but it is not points
                raise InvalidField("store credit is not reversed; a credit adjustment "
                                   "corrects it", field="ref")
            # The members first, as the event path and a review's decision lock them before
            # the referral or the review: a rejection committed meanwhile is seen below.
            done = uow.members_for_update(program_id, _net_by_member(rows))
            if uow.execute(sa.select(t.orders.c.order_id).where(
                    t.orders.c.program_id == program_id, t.orders.c.event_id == ref)).first():
                raise InvalidField("a purchase is undone by a refund, which also corrects "
                                   "the order and the tier metric", field="ref")
            referral = (referral_payouts.claim_reversal(uow, programme, ref, now)
                        if ref.startswith(referrals.RULE_PREFIX) else None)
            if any(row.code not in REVERSIBLE_CODES for row in rows):
                raise InvalidField("only events and adjustments can be reversed; a "
                                   "redemption is undone by releasing its hold", field="ref")
            reversal_ref = f"reverse:{ref}"
            if uow.execute(sa.select(p.c.id).where(p.c.program_id == program_id,
                                                   p.c.ref == reversal_ref)).first():
                raise AlreadyReversed(f"{ref!r} was already reversed", field="ref")
            # A rejected review of the event took its points back already, under its own
            # reference: counted here, so they are not taken a second time.
            r = tt.fraud_reviews
            rejected = [f"review:{review_id}" for review_id in uow.execute(
                sa.select(r.c.id).where(r.c.program_id == program_id, r.c.event_id == ref,
                                        r.c.status == "rejected")).scalars()]
            if rejected:
                rows = [*rows, *uow.execute(sa.select(p).where(
                    p.c.program_id == program_id, p.c.ref.in_(rejected))).all()]
            net = _net_by_member(rows)
            changed: list[dict[str, Any]] = []
            audited: list[dict[str, Any]] = []
            for member in done:
                taken = sum(points for points in net[member.pk].values() if points > 0)
                fraud.taken_back(uow, program_id, ref, taken)
                _lower_points_metric(programme, member, rows, taken)
                for account, points in sorted(net[member.pk].items()):
                    if points > 0:
                        # earned points go back under the campaign's (or membership's) rule
                        # as far as it still keeps them, the rest under none
                        parts = (fraud.taken_parts(uow, programme, member, ref, points)
                                 if account == ISSUED else [(None, points)])
                        for rule_id, part in parts:
                            member.ledger.clawback(part, order_id=None, rule_id=rule_id,
                                                   explanation=f"reversal of {ref}: {reason}",
                                                   code="reverse", credit=account, source=ref)
                    elif points < 0:
                        # points given back (an expiry or a spend undone) count as an earn
                        # for inactivity expiry, or the next run-due expires them again
                        member.active_at(now)
                        member.ledger.earn(-points, source=reversal_ref, rule_id=None,
                                           explanation=f"reversal of {ref}: {reason}",
                                           available_at=now, pending=False,
                                           expires_at=earning.lot_expires_at(programme, now),
                                           code="reverse", debit=account)
                posted = uow.record(program_id, member,
                                    PostingContext(reversal_ref, programme.version, now))
                outbox.changed(uow, programme, member, posted, reversal_ref, now)
                # the partner the event's points were settled with gets their value back
                partners.settle_taken_back(uow, programme, ref, reversal_ref, posted, now)
                if posted:
                    changed.append({"member": member.id, "balances": balances(member)})
                    # The audit log is never changed, an erasure included: by the row.
                    audited.append({"member": f"#{member.pk}", "balances": balances(member)})
            if referral is not None:
                # its vouchers not used yet are voided too
                referral_payouts.payout_reversed(uow, programme, referral, ref, now)
            audit.record(uow, "reverse", program_id=program_id, target=ref, before=None,
                         after={"reason": reason, "members": audited}, now=now)
            return {"ref": ref, "reason": reason, "members": changed}

        result = idempotent(uow, program_id, key, "reverse", body, run, now)
        uow.commit()
        return result

    return transaction(engine, work)
