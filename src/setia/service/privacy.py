"""Privacy (PDPA Malaysia, PDP Indonesia, PDPA Taiwan, GDPR): export a member's data,
erase a member, keep events only as long as the programme says.

Erasure pseudonymises: the member row keeps its primary key, balances, lots, tier and
history (the journal refers to members by primary key, so every total and ``setia
check`` stay exactly as they were), while its id becomes ``erased-<random>`` and its
name, email, phone, birthday and attributes are cleared. Stored events, orders and
outbox messages are re-labelled with the pseudonym. The journal itself is never touched.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from dateutil.relativedelta import relativedelta

from setia.adapters.db import partitions
from setia.adapters.db import tables as t
from setia.adapters.db import tables_outbox as to
from setia.adapters.db import tables_trust as tt
from setia.adapters.db.store import UnitOfWork
from setia.domain.errors import UnknownMember
from setia.domain.events import Event
from setia.domain.programme import Programme
from setia.domain.trust import EventTooOld
from setia.service import audit
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
        out.append({key: iso(value) if isinstance(value, datetime) else value
                    for key, value in row.items()})
    return out


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
        }
        audit.record(uow, "member.export", program_id=program_id, target=f"member #{pk}",
                     before=None, after=None, now=now)
        uow.commit()
        return data

    return transaction(engine, work)


def erase_member(engine: sa.Engine, program_id: str, member_id: str, key: str,
                 clock: Clock = utc_now) -> dict[str, Any]:
    """Pseudonymise one member (the right to erasure); once per idempotency key."""

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
            _relabel_messages(uow, program_id, member_id, pseudonym)
            uow.execute(tt.member_tokens.update().where(
                tt.member_tokens.c.member_pk == pk, tt.member_tokens.c.revoked_at.is_(None)
            ).values(revoked_at=now))
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


def _relabel_messages(uow: UnitOfWork, program_id: str, member_id: str,
                      pseudonym: str) -> None:
    """Relabel the member's outbox messages, sent or not: their ``member_id`` and each
    field of their data that names her (``member``; ``referred`` in another member's
    ``referral.paid``). A message not yet sent then goes out under the pseudonym, and its
    email finds no address (an erased member has none), even if the same id enrols
    again. Message keys stay, as event ids do. One pass over the programme's outbox,
    which has no index by member: erasure is rare, every event writes a message."""
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
