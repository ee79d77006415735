"""Privacy (PDPA Malaysia, PDP Indonesia, PDPA Taiwan, GDPR): export a member's data,
erase a member, keep events only as long as the programme says.

Erasure pseudonymises: the member row keeps its primary key, balances, lots, tier and
history (the journal refers to members by primary key, so every total and ``setia
check`` stay exactly as they were), while its id becomes ``erased-<random>`` and its
name, email, phone, birthday and attributes are cleared. Every other row that names her
is re-labelled with the pseudonym (events, orders, outbox messages, coupon uses, survey
responses, membership purchases, campaign hold-outs, stored command results) or loses
what has no use after erasure (sessions, sign-in links, her language, free-text survey
answers, the IP of her referral, sign-in throttle rows keyed by her email). The journal
itself is never touched.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
import sqlalchemy as sa
from dateutil.relativedelta import relativedelta

from setia.adapters.db import partitions
from setia.adapters.db import tables as t
from setia.adapters.db import tables_coupons as tc
from setia.adapters.db import tables_engagement as te
from setia.adapters.db import tables_outbox as to
from setia.adapters.db import tables_referrals as tr
from setia.adapters.db import tables_surveys as ts
from setia.adapters.db import tables_trust as tt
from setia.adapters.db import tables_web as tw
from setia.adapters.db.store import UnitOfWork
from setia.domain.errors import UnknownMember
from setia.domain.events import Event
from setia.domain.programme import Programme
from setia.domain.trust import EventTooOld
from setia.service import audit, staff
from setia.service.common import (
    Clock,
    idempotent,
    iso,
    require_programme,
    transaction,
    utc_now,
)
from setia.service.views import member_view

PROFILE_FIELDS = ("name", "email", "phone", "birthday", "attributes")


def _pk(uow: UnitOfWork, program_id: str, member_id: str) -> int:
    pk = uow.execute(sa.select(t.members.c.pk).where(
        t.members.c.program_id == program_id, t.members.c.id == member_id)).scalar()
    if pk is None:
        raise UnknownMember(f"no member {member_id!r} in programme {program_id}", field="member")
    return int(pk)


def _rows(uow: UnitOfWork, query: Any) -> list[dict[str, Any]]:
    out = []
    for row in uow.execute(query).mappings():
        out.append({key: _plain(value) for key, value in row.items()})
    return out


def _plain(value: Any) -> Any:
    """A column's value as JSON-ready data: times in ISO 8601, money as decimal strings."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Decimal):
        return str(value)
    return value


def export_member(engine: sa.Engine, program_id: str, member_id: str,
                  clock: Clock = utc_now) -> dict[str, Any]:
    """Everything stored about one member, as JSON-ready data (a subject access request).
    The export itself is written to the audit log."""

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        now = clock()
        pk = _pk(uow, program_id, member_id)
        member = uow.member(program_id, member_id, lock=False, usage=False)
        assert member is not None
        p, o, r, v = t.postings, t.orders, t.redemptions, t.vouchers
        data = {
            "exported_at": iso(now),
            "programme": program_id,
            "member": member_view(programme, member, now),
            "lots": _rows(uow, sa.select(t.lots).where(t.lots.c.member_pk == pk)
                          .order_by(t.lots.c.seq)),
            "journal": _rows(uow, sa.select(p).where(p.c.member_pk == pk).order_by(p.c.id)),
            "events": [
                {"id": row["id"], "type": row["type"], "occurred_at": row["occurred_at"],
                 "recorded_at": row["recorded_at"], "payload": row["payload"]}
                for row in _rows(uow, sa.select(t.events).where(
                    t.events.c.program_id == program_id, t.events.c.member_id == member_id)
                    .order_by(t.events.c.occurred_at, t.events.c.id))
            ],
            "orders": _rows(uow, sa.select(o).where(o.c.program_id == program_id,
                                                    o.c.member_pk == pk).order_by(o.c.order_id)),
            "redemptions": _rows(uow, sa.select(r).where(r.c.member_pk == pk)
                                 .order_by(r.c.created_at, r.c.id)),
            "vouchers": _rows(uow, sa.select(v).where(v.c.member_pk == pk)
                              .order_by(v.c.issued_at, v.c.code)),
            "reviews": _rows(uow, sa.select(tt.fraud_reviews)
                             .where(tt.fraud_reviews.c.member_pk == pk)
                             .order_by(tt.fraud_reviews.c.id)),
            **_growth_export(uow, program_id, pk),
        }
        audit.record(uow, "member.export", program_id=program_id, target=f"member #{pk}",
                     before=None, after=None, now=now)
        uow.commit()
        return data

    return transaction(engine, work)


def _growth_export(uow: UnitOfWork, program_id: str, pk: int) -> dict[str, Any]:
    """Her coupon uses, survey responses, membership purchases, campaign hold-outs, her
    referral code and her referrals. A referral she made names its referee only by
    status and dates: the referee's id, IP and order are the referee's data."""
    cu, sr, mp, ch = (tc.coupon_uses, ts.survey_responses, te.membership_purchases,
                      te.campaign_holdouts)
    rf = tr.referrals
    referred = _rows(uow, sa.select(
        rf.c.id, rf.c.code, rf.c.status, rf.c.ip, rf.c.order_id, rf.c.created_at,
        rf.c.qualifies_at, rf.c.decided_at, rf.c.paid_at, rf.c.clawed_back_at)
        .where(rf.c.program_id == program_id, rf.c.referee_pk == pk).order_by(rf.c.id))
    made = _rows(uow, sa.select(
        rf.c.id, rf.c.code, rf.c.status, rf.c.created_at, rf.c.qualifies_at, rf.c.decided_at,
        rf.c.paid_at, rf.c.clawed_back_at)
        .where(rf.c.program_id == program_id, rf.c.referrer_pk == pk)
        .order_by(rf.c.created_at, rf.c.id))
    return {
        "coupon_uses": _rows(uow, sa.select(cu).where(cu.c.member_pk == pk)
                             .order_by(cu.c.used_at, cu.c.id)),
        "survey_responses": _rows(uow, sa.select(sr).where(
            sr.c.program_id == program_id, sr.c.member_pk == pk)
            .order_by(sr.c.submitted_at, sr.c.id)),
        "membership_purchases": _rows(uow, sa.select(mp).where(mp.c.member_pk == pk)
                                      .order_by(mp.c.created_at, mp.c.id)),
        "campaign_holdouts": _rows(uow, sa.select(ch).where(
            ch.c.program_id == program_id, ch.c.member_pk == pk).order_by(ch.c.campaign_id)),
        "referral_code": uow.execute(sa.select(tr.referral_codes.c.code).where(
            tr.referral_codes.c.member_pk == pk)).scalar(),
        "referrals": {"as_referee": referred, "as_referrer": made},
    }


def erase_member(engine: sa.Engine, program_id: str, member_id: str, key: str,
                 clock: Clock = utc_now) -> dict[str, Any]:
    """Pseudonymise one member (the right to erasure); once per idempotency key. Erases
    the member who has ``member_id`` now: a key must not be reused for the same id once
    it may have enrolled again (the CLI makes a new key per run)."""

    def work(uow: UnitOfWork) -> dict[str, Any]:
        require_programme(uow, program_id)
        now = clock()

        def run() -> dict[str, Any]:
            member = uow.member(program_id, member_id, usage=False)  # locked
            if member is None:
                raise UnknownMember(f"no member {member_id!r} in programme {program_id}",
                                    field="member")
            pk = member.pk
            pseudonym = f"erased-{secrets.token_hex(8)}"
            cleared = [name for name in PROFILE_FIELDS if getattr(member, name)]
            m, e, o = t.members, t.events, t.orders
            uow.execute(m.update().where(m.c.pk == pk).values(
                id=pseudonym, name=None, email=None, phone=None, birthday=None, attributes={}))
            for row in uow.execute(sa.select(e.c.id, e.c.occurred_at, e.c.payload).where(
                    e.c.program_id == program_id, e.c.member_id == member_id)).all():
                uow.execute(e.update().where(
                    e.c.program_id == program_id, e.c.id == row.id,
                    e.c.occurred_at == row.occurred_at,
                ).values(member_id=pseudonym, payload=_relabel(row.payload, pseudonym)))
            for row in uow.execute(sa.select(o.c.order_id, o.c.event).where(
                    o.c.program_id == program_id, o.c.member_pk == pk)).all():
                uow.execute(o.update().where(o.c.program_id == program_id,
                                             o.c.order_id == row.order_id)
                            .values(event=_relabel(row.event, pseudonym)))
            messages = _relabel_messages(uow, program_id, member_id, pseudonym)
            uow.execute(tt.member_tokens.update().where(
                tt.member_tokens.c.member_pk == pk, tt.member_tokens.c.revoked_at.is_(None)
            ).values(revoked_at=now))
            _erase_growth(uow, program_id, pk, pseudonym)
            _erase_web(uow, program_id, member_id, member.email)
            _scrub_commands(uow, program_id, member_id, pseudonym)
            _scrub_delivery_errors(uow, messages)
            audit.record(uow, "member.erase", program_id=program_id, target=f"member #{pk}",
                         before={"cleared": cleared}, after={"id": pseudonym}, now=now)
            return {"member": pseudonym, "erased_at": iso(now), "cleared": cleared}

        result = idempotent(uow, program_id, key, "member.erase", {"member": member_id}, run, now)
        uow.commit()
        return result

    return transaction(engine, work)


def _relabel(payload: Any, pseudonym: str) -> Any:
    if isinstance(payload, dict) and "member" in payload:
        return {**payload, "member": pseudonym}
    return payload


def _erase_growth(uow: UnitOfWork, program_id: str, pk: int, pseudonym: str) -> None:
    """Her coupon uses, survey responses, membership purchases and campaign hold-outs
    name the pseudonym (their rows stay: counts, caps and analytics depend on them); her
    free-text survey answers are blanked (scores stay, as the response's ``nps`` and
    ``rating`` do); the IP of the referral that brought her is cleared."""
    cu, sr, mp, ch = (tc.coupon_uses, ts.survey_responses, te.membership_purchases,
                      te.campaign_holdouts)
    uow.execute(cu.update().where(cu.c.member_pk == pk).values(member_id=pseudonym))
    uow.execute(mp.update().where(mp.c.member_pk == pk).values(member=pseudonym))
    uow.execute(ch.update().where(ch.c.program_id == program_id, ch.c.member_pk == pk)
                .values(member_id=pseudonym))
    for row in uow.execute(sa.select(sr.c.id, sr.c.answers).where(
            sr.c.program_id == program_id, sr.c.member_pk == pk)).all():
        uow.execute(sr.update().where(sr.c.id == row.id).values(
            member_id=pseudonym, answers=_scores_only(row.answers)))
    rf = tr.referrals
    uow.execute(rf.update().where(rf.c.referee_pk == pk, rf.c.ip.is_not(None)).values(ip=None))


def _scores_only(answers: Any) -> Any:
    """A survey response's answers without the free text (scores are whole numbers)."""
    if not isinstance(answers, dict):
        return {}
    return {question: value for question, value in answers.items()
            if not isinstance(value, str)}


def _erase_web(uow: UnitOfWork, program_id: str, member_id: str, email: str | None) -> None:
    """End her portal sessions and unused sign-in links (named by id, they would act for
    whoever enrols with the id next), forget her language and the sign-in throttle rows
    keyed by her email (``staff.request_link``; older rows are pruned as new ones come)."""
    s, links, locales = tw.web_sessions, tw.signin_links, tw.member_locales
    uow.execute(s.delete().where(s.c.kind == "member", s.c.program_id == program_id,
                                 s.c.member_id == member_id))
    uow.execute(links.delete().where(links.c.program_id == program_id,
                                     links.c.member_id == member_id))
    uow.execute(locales.delete().where(locales.c.program_id == program_id,
                                       locales.c.member_id == member_id))
    if email:
        failures = tw.login_failures
        uow.execute(failures.delete().where(
            failures.c.key == staff.link_throttle_key(program_id, email)))


def _scrub_commands(uow: UnitOfWork, program_id: str, member_id: str, pseudonym: str) -> None:
    """Stored command results (what a retried request with the same key is answered)
    that name her: her id becomes the pseudonym, her name, email, phone and referral IP
    become null, and a survey response's free-text answers are dropped. Keys stay, as
    event ids do; the key the CLI used before (``cli:erase:<member>``) is deleted. One
    pass over the programme's commands, which have no index by member."""
    c = t.commands
    uow.execute(c.delete().where(c.c.program_id == program_id,
                                 c.c.key == f"cli:erase:{member_id}",
                                 c.c.operation == "member.erase"))
    named = orjson.dumps(member_id).decode()  # results are stored as orjson's JSON text
    rows = uow.execute(sa.select(c.c.key, c.c.operation, c.c.result).where(
        c.c.program_id == program_id,
        sa.cast(c.c.result, sa.Text).contains(named, autoescape=True))).all()
    changes = []
    for row in rows:
        if not _names(row.result, member_id):
            continue
        result = _scrubbed(row.result, member_id, pseudonym)
        if row.operation == "survey-response" and isinstance(result, dict):
            result["answers"] = _scores_only(result.get("answers"))
        changes.append({"row_key": row.key, "new_result": result})
    if changes:
        uow.execute(c.update().where(c.c.program_id == program_id,
                                     c.c.key == sa.bindparam("row_key"))
                    .values(result=sa.bindparam("new_result", type_=c.c.result.type)),
                    changes)


# Fields of a stored result that name a member, and the personal ones of a dict naming
# her. Only these change: an order id or a note equal to her id or her name is not hers.
MEMBER_FIELDS = frozenset({"member", "member_id", "referrer", "referee", "referred"})
PERSONAL_FIELDS = frozenset({"name", "email", "phone", "ip"})


def _hers(value: dict[str, Any], member_id: str) -> bool:
    """Whether a dict of a stored result is about her: a member field names her, or it
    is her member view (``id`` and ``enrolled_at``)."""
    return (any(value.get(name) == member_id for name in MEMBER_FIELDS)
            or ("enrolled_at" in value and value.get("id") == member_id))


def _names(value: Any, member_id: str) -> bool:
    if isinstance(value, dict):
        return _hers(value, member_id) or any(
            key == member_id or _names(item, member_id) for key, item in value.items())
    if isinstance(value, list):
        return any(_names(item, member_id) for item in value)
    return False


def _scrubbed(value: Any, member_id: str, pseudonym: str) -> Any:
    """``value`` with the fields that name her relabelled, the personal fields of what is
    about her cleared, and keys that are her id relabelled; nothing else."""
    if isinstance(value, list):
        return [_scrubbed(item, member_id, pseudonym) for item in value]
    if not isinstance(value, dict):
        return value
    hers = _hers(value, member_id)
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = pseudonym if key == member_id else key
        if hers and item == member_id and (key in MEMBER_FIELDS or key == "id"):
            out[name] = pseudonym
        elif hers and key in PERSONAL_FIELDS and (
                key != "ip" or value.get("referee") == member_id):  # the IP is the referee's
            out[name] = None
        else:
            out[name] = _scrubbed(item, member_id, pseudonym)
    return out


def _scrub_delivery_errors(uow: UnitOfWork, message_ids: list[int]) -> None:
    """A mail server's refusal kept as a delivery's last error may quote her address, and
    not only the one she has now (a refused address is why people change it): every last
    error of her emails is cleared."""
    d = to.deliveries
    for start in range(0, len(message_ids), 500):
        uow.execute(d.update().where(
            d.c.outbox_id.in_(message_ids[start:start + 500]), d.c.channel == "email",
            d.c.last_error.is_not(None)).values(last_error=None))


def _relabel_messages(uow: UnitOfWork, program_id: str, member_id: str,
                      pseudonym: str) -> list[int]:
    """Relabel the member's outbox messages, sent or not: their ``member_id`` and each
    field of their data that names her (``member``; ``referred`` in another member's
    ``referral.paid``). A message not yet sent then goes out under the pseudonym, and its
    email finds no address (an erased member has none), even if the same id enrols
    again. Message keys stay, as event ids do. One pass over the programme's outbox,
    which has no index by member: erasure is rare, every event writes a message.
    Answers the ids of the messages relabelled."""
    o = to.outbox
    named = f'"{member_id}"'  # only rows whose JSON text names her are parsed
    rows = uow.execute(sa.select(o.c.id, o.c.data).where(
        o.c.program_id == program_id,
        sa.or_(o.c.member_id == member_id, o.c.data.contains(named, autoescape=True)))).all()
    changes = list(_relabelled(rows, member_id, pseudonym))
    if changes:
        uow.execute(o.update().where(o.c.id == sa.bindparam("row_id"))
                    .values(member_id=sa.bindparam("new_member"), data=sa.bindparam("new_data")),
                    changes)
    return [change["row_id"] for change in changes]


def _relabelled(rows: Iterable[Any], member_id: str, pseudonym: str) -> Iterator[dict[str, Any]]:
    """Each row's new ``member_id`` and data; a row's ``member_id`` is its data's
    ``member`` (``outbox.write``). Rows naming her only inside another value are skipped."""
    for row in rows:
        data = orjson.loads(row.data)
        fields = [name for name in ("member", "referred") if data.get(name) == member_id]
        if fields:
            data.update(dict.fromkeys(fields, pseudonym))
            yield {"row_id": row.id, "new_member": data["member"],
                   "new_data": orjson.dumps(data).decode()}


# -- retention ---------------------------------------------------------------------------

def check_event_age(programme: Programme, event: Event, now: datetime) -> None:
    """Refuse a new event older than the programme keeps events: once pruned, its id
    could no longer be recognised as a resend. No query; nothing to do without a setting."""
    privacy = programme.model.privacy
    if privacy is None or privacy.event_retention_months is None:
        return
    cutoff = now - relativedelta(months=privacy.event_retention_months)
    if event.occurred_at < cutoff:
        raise EventTooOld(
            f"occurred_at is before {cutoff.date()}: programme {programme.id} keeps events "
            f"for {privacy.event_retention_months} months", field="occurred_at")


def prune_events(engine: sa.Engine, now: datetime) -> dict[str, int]:
    """Delete the stored events each programme no longer keeps (``privacy.
    event_retention_months``); on PostgreSQL also drop monthly partitions left empty
    before every programme's cutoff. The event ids stay registered (PostgreSQL), and
    ``check_event_age`` refuses resends that old. Answers the rows deleted per programme."""
    deleted: dict[str, int] = {}
    with engine.connect() as conn:
        program_ids = list(conn.execute(sa.select(t.programs.c.id)).scalars())
    earliest: datetime | None = None
    for program_id in program_ids:
        def work(uow: UnitOfWork, program_id: str = program_id) -> tuple[int, datetime | None]:
            programme = require_programme(uow, program_id)
            privacy = programme.model.privacy
            if privacy is None or privacy.event_retention_months is None:
                return 0, None
            cutoff = now - relativedelta(months=privacy.event_retention_months)
            count = uow.execute(t.events.delete().where(
                t.events.c.program_id == program_id, t.events.c.occurred_at < cutoff)).rowcount
            audit.record(uow, "events.prune", program_id=program_id, target="events",
                         before=None, after={"deleted": count, "before": iso(cutoff)}, now=now)
            uow.commit()
            return int(count), cutoff

        count, cutoff = transaction(engine, work)
        deleted[program_id] = count
        if cutoff is None:
            earliest = now  # a programme keeps everything: never drop a partition
        elif earliest is None or cutoff < earliest:
            earliest = cutoff
    if engine.dialect.name == "postgresql" and earliest is not None and earliest < now:
        with engine.begin() as conn:
            if partitions.is_partitioned(conn, "events"):
                partitions.drop_empty_months_before(conn, "events", earliest.date())
    return deleted
