"""Outbox writes: every member-visible change leaves one row in the transaction that made
it. Services call one function here; rows go out with the unit of work's flush (no round
trip of their own). Workers deliver them (``service.deliveries``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from dateutil.relativedelta import relativedelta
from sqlalchemy.dialects import postgresql, sqlite

from setia.adapters.db import tables as t
from setia.adapters.db.store import UnitOfWork
from setia.adapters.db.tables_outbox import outbox
from setia.domain import earning
from setia.domain import notifications as n
from setia.domain.ledger import Posting
from setia.domain.member import Member
from setia.domain.programme import Programme
from setia.service.common import transaction
from setia.service.views import balances

# Sorted keys; times and other values not native to JSON as ``str()`` gives them.
JSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
COLUMNS = ("program_id", "key", "type", "member_id", "data", "occurred_at", "created_at")
EXPIRING_NOTICE_DAYS = 30


def write(uow: UnitOfWork, program_id: str, messages: Iterable[n.Message],
          occurred_at: datetime, now: datetime | None = None) -> None:
    """Queue the messages' rows with the flush; a key already written is skipped."""
    time = uow.driver_time
    at = time(occurred_at)
    created = time(now) if now is not None else at
    rows = [(program_id, m.key[:300], m.type, m.data["member"],
             orjson.dumps({"program": program_id, **m.data}, default=str,
                          option=JSON_OPTIONS).decode(),
             at, created) for m in messages]
    if rows:
        uow.insert_later("outbox", COLUMNS, rows, skip_on=("program_id", "key"))


def _position(programme: Programme, level_id: str) -> int:
    return [level.id for level in programme.model.tiers.levels].index(level_id)


def _tier_message(programme: Programme, member: Member, ref: str,
                  tier_before: str) -> n.Message:
    names = {level.id: level.name for level in programme.model.tiers.levels}
    return n.tier_changed(member.id, ref, (tier_before, _position(programme, tier_before)),
                          (member.tier_id, _position(programme, member.tier_id)), names)


def changed(uow: UnitOfWork, programme: Programme, member: Member, postings: list[Posting],
            ref: str, occurred_at: datetime, *, tier_before: str | None = None,
            voucher: dict[str, Any] | None = None, reward: str | None = None) -> None:
    """The messages of one change to one member: points moved (by posting code), the tier
    if it moved from ``tier_before``, a voucher issued."""
    messages = n.from_postings(postings, member_id=member.id, ref=ref,
                               balances=balances(member))
    if tier_before is not None and tier_before != member.tier_id:
        messages.append(_tier_message(programme, member, ref, tier_before))
    if voucher is not None:
        found = programme.reward(reward) if reward else None
        messages.append(_voucher_message(member, ref, voucher, reward,
                                         found.name if found else reward))
    write(uow, programme.id, messages, occurred_at)


def voucher_issued(uow: UnitOfWork, programme: Programme, member: Member,
                   voucher: dict[str, Any], *, ref: str, reward: str, reward_name: str,
                   occurred_at: datetime) -> None:
    """A voucher given, not bought with points (a campaign, a stamp card, a membership's
    month): ``reward`` is what the voucher row names (``campaign:<id>`` ...)."""
    write(uow, programme.id, [_voucher_message(member, ref, voucher, reward, reward_name)],
          occurred_at)


def _voucher_message(member: Member, ref: str, voucher: dict[str, Any], reward: str | None,
                     reward_name: str | None) -> n.Message:
    return n.Message(n.VOUCHER_ISSUED, f"{n.VOUCHER_ISSUED}:{voucher['code']}", {
        "member": member.id, "ref": ref, "code": voucher["code"], "reward": reward,
        "reward_name": reward_name, "expires_at": voucher.get("expires_at")})


def tier_reviewed(uow: UnitOfWork, programme: Programme, member: Member, tier_before: str,
                  ref: str, occurred_at: datetime) -> None:
    """A tier review (run-due) moved the member from ``tier_before``."""
    if tier_before != member.tier_id:
        write(uow, programme.id, [_tier_message(programme, member, ref, tier_before)],
              occurred_at)


def enrolled(uow: UnitOfWork, programme: Programme, member: Member, occurred_at: datetime) -> None:
    """A new member (the welcome email). Keyed by the enrolment's time too: a person
    erased and enrolled again under the same id is a new member, and is welcomed again."""
    key = f"{n.MEMBER_ENROLLED}:{member.id}:{member.enrolled_at.astimezone(UTC).isoformat()}"
    write(uow, programme.id, [n.Message(n.MEMBER_ENROLLED, key,
                                        {"member": member.id, "balances": balances(member)})],
          occurred_at)


def voucher_used(uow: UnitOfWork, programme: Programme, voucher: dict[str, Any],
                 used_at: datetime) -> None:
    """A voucher used at the till (``voucher``: its row, with member_pk). The member's id
    is read share-locked until the message commits: an erasure meanwhile either waits, and
    then relabels the message with the rest of hers, or went first, and the message names
    her pseudonym (as ``expiring_soon`` does)."""
    member_id = uow.execute(
        sa.select(t.members.c.id).where(t.members.c.pk == voucher["member_pk"])
        .with_for_update(read=True)
    ).scalar_one()
    write(uow, programme.id, [n.Message(n.VOUCHER_USED, f"{n.VOUCHER_USED}:{voucher['code']}", {
        "member": member_id, "code": voucher["code"], "reward": voucher["reward_id"],
        "used_at": used_at.isoformat()})], used_at)


def voucher_voided(uow: UnitOfWork, programme: Programme, member: Member, *, code: str,
                   reward: str, ref: str, voided_at: datetime, told_at: datetime) -> None:
    """A voucher not used yet taken back (a referral's clawback, ``ref``)."""
    write(uow, programme.id, [n.Message(n.VOUCHER_VOIDED, f"{n.VOUCHER_VOIDED}:{code}", {
        "member": member.id, "ref": ref, "code": code, "reward": reward,
        "voided_at": voided_at.isoformat()})], told_at)


def referral_paid(uow: UnitOfWork, programme: Programme, member: Member, *, referral_id: str,
                  referred_member: str, points: int, occurred_at: datetime) -> None:
    """A referral reward paid to ``member`` (the referrer), for the referrals feature to
    call in the transaction that pays it."""
    write(uow, programme.id, [n.Message(n.REFERRAL_PAID, f"{n.REFERRAL_PAID}:{referral_id}", {
        "member": member.id, "referral": referral_id, "referred": referred_member,
        "points": points, "balances": balances(member)})], occurred_at)


def expiring_soon(engine: sa.Engine, programme: Programme, as_of: datetime) -> int:
    """Tell each member with points expiring within 30 days of ``as_of``, once per first
    expiry date: the notice names all points that expire in that window. Returns how many
    notices were new (several workers may run this at once: a key written is skipped)."""
    horizon = as_of + timedelta(days=EXPIRING_NOTICE_DAYS)
    expiry = programme.model.points.expiry
    m, lots = t.members, t.lots
    with engine.connect() as conn:
        if expiry.policy == "rolling":
            found = [(row.pk, row.id, row.first, int(row.points)) for row in conn.execute(
                sa.select(m.c.pk, m.c.id, sa.func.min(lots.c.expires_at).label("first"),
                          sa.func.sum(lots.c.remaining).label("points"))
                .join(m, m.c.pk == lots.c.member_pk)
                .where(lots.c.program_id == programme.id, lots.c.pending.is_(False),
                       lots.c.remaining > 0, lots.c.expires_at > as_of,
                       lots.c.expires_at <= horizon)
                .group_by(m.c.pk, m.c.id).order_by(m.c.id))]
        elif expiry.policy == "inactivity":
            # Selected in UTC with a slack, then each member's own expiry time (counted on
            # the programme's wall clock, as run-due expires it) decides.
            months = relativedelta(months=expiry.months or 0)
            found = []
            for row in conn.execute(
                    sa.select(m.c.pk, m.c.id, m.c.last_activity_at, m.c.available)
                    .where(m.c.program_id == programme.id, m.c.available > 0,
                           m.c.last_activity_at > as_of - months - earning.MONTHS_SLACK,
                           m.c.last_activity_at <= horizon - months + earning.MONTHS_SLACK)
                    .order_by(m.c.id)):
                expires_at = earning.inactivity_expires_at(programme, row.last_activity_at)
                if expires_at is not None and as_of < expires_at <= horizon:
                    found.append((row.pk, row.id, expires_at.astimezone(UTC),
                                  int(row.available)))
        else:
            return 0

    def key(pk: int, first: datetime) -> str:
        # by the member's primary key, which an erasure keeps (her id it replaces)
        return f"{n.POINTS_EXPIRING}:#{pk}:{first.isoformat()}"

    def key_by_id(member_id: str, first: datetime) -> str:
        return f"{n.POINTS_EXPIRING}:{member_id}:{first.isoformat()}"  # written before 2026-11

    def write(uow: UnitOfWork, chunk: list[tuple[int, str, datetime, int]]) -> int:
        # Most notices were written by an earlier run: those keys are skipped unlocked.
        written_before = set(uow.execute(sa.select(outbox.c.key).where(
            outbox.c.program_id == programme.id,
            outbox.c.key.in_([k for pk, member_id, first, _ in chunk
                              for k in (key(pk, first), key_by_id(member_id, first))]),
        )).scalars())
        new = [row for row in chunk if key(row[0], row[2]) not in written_before
               and key_by_id(row[1], row[2]) not in written_before]
        if not new:
            return 0
        # Each new notice names the member as she is now, her row share-locked until it
        # commits: an erasure meanwhile either waits, and then relabels the notice with the
        # rest of her messages, or went first, and the notice names her pseudonym (which
        # has no address to email). The ids read above may be older than either.
        now_named: dict[int, str] = {row.pk: row.id for row in uow.execute(
            sa.select(m.c.pk, m.c.id).where(m.c.pk.in_([pk for pk, _, _, _ in new]))
            .with_for_update(read=True))}
        rows = [{"program_id": programme.id, "key": key(pk, first),
                 "type": n.POINTS_EXPIRING, "member_id": now_named[pk],
                 "data": orjson.dumps({"program": programme.id, "member": now_named[pk],
                                       "points": points, "expires_at": first.isoformat()},
                                      option=JSON_OPTIONS).decode(),
                 "occurred_at": as_of, "created_at": as_of}
                for pk, _, first, points in new if pk in now_named]
        insert = (postgresql.insert(outbox) if uow.dialect == "postgresql"
                  else sqlite.insert(outbox))
        made = len(uow.execute(insert.values(rows).on_conflict_do_nothing(
            index_elements=["program_id", "key"]).returning(outbox.c.id)).all()) if rows else 0
        uow.commit()
        return made

    return sum(transaction(engine, functools.partial(write, chunk=found[start:start + 500]))
               for start in range(0, len(found), 500))
