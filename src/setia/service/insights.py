"""Read models of the web pages: the dashboard's figures over a period, member search,
a member's lots and vouchers, programme versions with a diff, a draft programme's preview,
rewards with stock, and a member's own data for download. Every figure is computed from
the existing tables; nothing here writes."""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter, defaultdict
from datetime import date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
import yaml

from setia.adapters.db import tables as t
from setia.adapters.db.analytics_read import REFUNDED_IN_FULL_SQL, flow_sql
from setia.adapters.db.store import UnitOfWork
from setia.domain.errors import UnknownMember
from setia.domain.events import parse_event
from setia.domain.ledger import ISSUED, MEMBER_ACCOUNTS, REDEEMED
from setia.domain.money import from_minor
from setia.domain.programme import compile_programme, validate_document
from setia.service.activity import member_activity
from setia.service.common import Clock, require_programme, transaction, utc_now
from setia.service.events import apply_event
from setia.service.members import get_member
from setia.service.programmes import parse_text

MAX_SEARCH = 50


def _period_bounds(programme_tz: Any, start: date, end: date) -> tuple[datetime, datetime]:
    """[start 00:00, end+1 00:00) in the programme's time zone."""
    return (datetime.combine(start, time(), programme_tz),
            datetime.combine(end + timedelta(days=1), time(), programme_tz))


def latest_activity_day(engine: sa.Engine, program_id: str, clock: Clock = utc_now) -> date:
    """The day of the programme's latest posting (or today): the default period's end."""
    def work(uow: UnitOfWork) -> date:
        programme = require_programme(uow, program_id)
        last = uow.execute(sa.select(t.postings.c.occurred_at)
                           .where(t.postings.c.program_id == program_id)
                           .order_by(t.postings.c.occurred_at.desc()).limit(1)).scalar()
        moment: datetime = last or clock()
        return moment.astimezone(programme.tz).date()

    return transaction(engine, work, read_only=True)


def dashboard(engine: sa.Engine, program_id: str, start: date, end: date) -> dict[str, Any]:
    """Headline numbers and series for the period from ``start`` to ``end`` (inclusive)."""
    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        lo, hi = _period_bounds(programme.tz, start, end)
        m, o, p = t.members, t.orders, t.postings
        members_total = uow.execute(sa.select(sa.func.count()).select_from(m).where(
            m.c.program_id == program_id, m.c.enrolled_at < hi)).scalar_one()
        members_new = uow.execute(sa.select(sa.func.count()).select_from(m).where(
            m.c.program_id == program_id, m.c.enrolled_at >= lo, m.c.enrolled_at < hi)
        ).scalar_one()
        order_rows = uow.execute(sa.select(
            o.c.member_pk, o.c.occurred_at, o.c.amount_e4, o.c.refunded_e4,
            sa.literal_column(REFUNDED_IN_FULL_SQL).label("refunded_in_full")).where(
            o.c.program_id == program_id, o.c.occurred_at >= lo, o.c.occurred_at < hi)).all()
        # An order refunded in full is no purchase, visit or activity (as in the reports,
        # docs/analytics.md); its net amount is 0, so the sales below keep every order.
        bought = [row for row in order_rows if not row.refunded_in_full]
        visits = Counter(row.member_pk for row in bought)
        active = len(visits)
        repeat = sum(1 for count in visits.values() if count >= 2)
        sales_e4 = sum(row.amount_e4 - row.refunded_e4 for row in order_rows)
        # Points only (store credit has postings of its own asset), as the reports count
        # them: issued net of clawbacks and reversals, redeemed net of what went back.
        flows = uow.execute(sa.select(
            p.c.occurred_at, sa.literal_column(flow_sql("issued")).label("issued"),
            sa.literal_column(flow_sql("redeemed")).label("redeemed"))
            .where(p.c.program_id == program_id, p.c.asset == "points",
                   p.c.occurred_at >= lo, p.c.occurred_at < hi,
                   sa.or_(p.c.debit.in_((ISSUED, REDEEMED)),
                          p.c.credit.in_((ISSUED, REDEEMED))))).all()
        issued = sum(int(flow.issued) for flow in flows)
        redeemed = sum(int(flow.redeemed) for flow in flows)
        totals = [sa.func.coalesce(sa.func.sum(column), 0)
                  for column in (m.c.available, m.c.pending, m.c.reserved)]
        balances = tuple(uow.execute(sa.select(*totals).where(m.c.program_id == program_id)).one())
        tier_rows = uow.execute(sa.select(m.c.tier_id, sa.func.count().label("n")).where(
            m.c.program_id == program_id).group_by(m.c.tier_id)).all()
        tiers: dict[str, int] = {row.tier_id: row.n for row in tier_rows}
        monthly = (end - start).days > 62
        def bucket(moment: datetime) -> str:
            local = moment.astimezone(programme.tz).date()
            return local.strftime("%Y-%m") if monthly else local.isoformat()
        keys: list[str] = []
        cursor = start
        while cursor <= end:
            key = cursor.strftime("%Y-%m") if monthly else cursor.isoformat()
            if key not in keys:
                keys.append(key)
            cursor += timedelta(days=1)
        purchases: dict[str, int] = defaultdict(int)
        for row in bought:
            purchases[bucket(row.occurred_at)] += 1
        earned: dict[str, int] = defaultdict(int)
        spent: dict[str, int] = defaultdict(int)
        for flow in flows:
            key = bucket(flow.occurred_at)
            earned[key] += int(flow.issued)
            spent[key] += int(flow.redeemed)
        return {
            "start": start, "end": end, "currency": programme.currency,
            "members": members_total, "new_members": members_new, "active": active,
            "repeat_rate": (repeat / active) if active else 0.0, "repeaters": repeat,
            "purchases": len(bought),
            "sales": from_minor(sales_e4 // 10 ** (4 - _digits(programme.currency)),
                                programme.currency),
            "issued": issued, "redeemed": redeemed,
            "liability": {"available": int(balances[0]), "pending": int(balances[1]),
                          "reserved": int(balances[2])},
            "tiers": [(level.id, level.name, int(tiers.get(level.id, 0)))
                      for level in programme.model.tiers.levels],
            "series": {"keys": keys, "monthly": monthly,
                       "purchases": [purchases[k] for k in keys],
                       "issued": [earned[k] for k in keys],
                       "redeemed": [spent[k] for k in keys]},
        }

    return transaction(engine, work, read_only=True)


def _digits(currency: str) -> int:
    from setia.domain.money import minor_digits

    return minor_digits(currency)


def _digits_only(text: str) -> str:
    return re.sub(r"[^0-9+]", "", text)


def find_members(engine: sa.Engine, program_id: str, query: str) -> list[dict[str, Any]]:
    """Members whose id is ``query``, whose phone has its digits, or (three characters or
    more) whose name or email contains it; a member card's QR text ``setia:member:<id>``
    finds that member."""
    query = query.strip()
    if query.startswith("setia:member:"):
        query = query.removeprefix("setia:member:")
    if not query:
        return []
    m = t.members
    digits = _digits_only(query)
    phone: Any = m.c.phone
    for char in (" ", "-", "(", ")"):
        phone = sa.func.replace(phone, char, "")
    conditions = [m.c.id == query]
    if len(digits.lstrip("+")) >= 5:
        conditions.append(phone == digits)
    if len(query) >= 3:
        like = f"%{query.lower()}%"
        conditions += [sa.func.lower(m.c.name).like(like), sa.func.lower(m.c.email).like(like)]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(m.c.id, m.c.name, m.c.phone, m.c.email, m.c.tier_id,
                                      m.c.available).where(m.c.program_id == program_id,
                                                           sa.or_(*conditions))
                            .order_by(m.c.id).limit(MAX_SEARCH)).all()
    exact = [row for row in rows if row.id == query]
    return [dict(row._mapping) for row in (exact or rows)]


def member_page(engine: sa.Engine, program_id: str, member_id: str,
                clock: Clock = utc_now) -> dict[str, Any]:
    """The member's view (balances, tier progress, expiring), open lots, vouchers and
    latest activity."""
    view = get_member(engine, program_id, member_id, clock)

    def work(uow: UnitOfWork) -> dict[str, Any]:
        pk = uow.execute(sa.select(t.members.c.pk).where(
            t.members.c.program_id == program_id, t.members.c.id == member_id)).scalar()
        if pk is None:
            raise UnknownMember(f"no member {member_id!r}", field="member")
        lots = uow.execute(sa.select(t.lots).where(t.lots.c.member_pk == pk,
                                                   t.lots.c.remaining > 0)
                           .order_by(t.lots.c.expires_at.is_(None), t.lots.c.expires_at,
                                     t.lots.c.seq)).mappings().all()
        vouchers = uow.execute(sa.select(t.vouchers).where(
            t.vouchers.c.program_id == program_id, t.vouchers.c.member_pk == pk)
            .order_by(t.vouchers.c.issued_at.desc())).mappings().all()
        return {"lots": [dict(lot) for lot in lots], "vouchers": [dict(v) for v in vouchers]}

    extra = transaction(engine, work, read_only=True)
    now = clock()
    for voucher in extra["vouchers"]:
        voucher["status"] = ("used" if voucher["used_at"] else "expired"
                             if voucher["expires_at"] and voucher["expires_at"] <= now
                             else "valid")
    activity = member_activity(engine, program_id, member_id, limit=50)
    return {"member": view, **extra, "activity": activity["data"]}


def rewards_with_stock(engine: sa.Engine, program_id: str) -> list[dict[str, Any]]:
    def work(uow: UnitOfWork) -> list[dict[str, Any]]:
        programme = require_programme(uow, program_id)
        stock = t.reward_stock
        rows = uow.execute(sa.select(stock.c.reward_id, stock.c.redeemed)
                           .where(stock.c.program_id == program_id)).all()
        taken: dict[str, int] = {row.reward_id: row.redeemed for row in rows}
        out = []
        for reward in programme.model.rewards:
            used = int(taken.get(reward.id, 0))
            out.append({"id": reward.id, "name": reward.name, "cost": reward.cost,
                        "stock": reward.stock, "redeemed": used,
                        "left": None if reward.stock is None else reward.stock - used,
                        "tiers": list(reward.tiers or []), "from": reward.from_,
                        "until": reward.until, "per_member_limit": reward.per_member_limit})
        return out

    return transaction(engine, work, read_only=True)


def versions(engine: sa.Engine, program_id: str) -> list[dict[str, Any]]:
    v = t.program_versions
    with engine.connect() as conn:
        rows = conn.execute(sa.select(v.c.version, v.c.created_at, v.c.definition_hash)
                            .where(v.c.program_id == program_id)
                            .order_by(v.c.version.desc())).all()
    return [dict(row._mapping) for row in rows]


def version_yaml(engine: sa.Engine, program_id: str, version: int) -> str | None:
    v = t.program_versions
    with engine.connect() as conn:
        text = conn.execute(sa.select(v.c.definition).where(
            v.c.program_id == program_id, v.c.version == version)).scalar()
    if text is None:
        return None
    return as_yaml(json.loads(text))


def as_yaml(document: Any) -> str:
    """A stored definition as YAML in the programme file's own order, defaults left out."""
    model = validate_document(document)
    plain = model.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, width=100)


def diff(old: str, new: str, old_name: str, new_name: str) -> list[tuple[str, str]]:
    """A unified diff as (kind, line) pairs, kind one of add, del, hunk, same."""
    lines = []
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), old_name, new_name,
                                     lineterm="", n=3):
        if line.startswith(("+++", "---")):
            continue
        kind = ("hunk" if line.startswith("@@") else "add" if line.startswith("+")
                else "del" if line.startswith("-") else "same")
        lines.append((kind, line))
    return lines


def preview_draft(engine: sa.Engine, program_id: str, draft: str, sample: dict[str, Any],
                  clock: Clock = utc_now) -> dict[str, Any]:
    """Validate a draft programme and run one sample event through the current version
    and through the draft, side by side; the transaction is rolled back, nothing is
    written. Raises InvalidProgramme for a draft that does not validate."""
    model = validate_document(parse_text(draft))
    if model.id != program_id:
        from setia.domain.errors import InvalidField

        raise InvalidField(f"the draft's id {model.id!r} is not {program_id!r}", field="id")

    # Each side in its own rolled-back transaction, so the draft sees the member as it is.
    current = transaction(engine, lambda uow: _simulate(uow, program_id, None, sample, clock))
    proposed = transaction(engine, lambda uow: _simulate(uow, program_id, model, sample, clock))
    return {"current": current, "draft": proposed}


def _simulate(uow: UnitOfWork, program_id: str, model: Any, sample: dict[str, Any],
              clock: Clock) -> dict[str, Any]:
    programme = require_programme(uow, program_id)
    if model is not None:
        programme = compile_programme(model, programme.version + 1)
    event = parse_event(sample, programme.currency)
    return apply_event(uow, programme, event, sample, clock(), store=False)  # no commit


def member_export(engine: sa.Engine, program_id: str, member_id: str,
                  clock: Clock = utc_now) -> dict[str, Any]:
    """Everything the programme holds about one member, for "download my data"."""
    page = member_page(engine, program_id, member_id, clock)
    activity: list[dict[str, Any]] = []
    cursor = None
    while True:
        chunk = member_activity(engine, program_id, member_id, limit=200, cursor=cursor)
        activity += chunk["data"]
        cursor = chunk["next_cursor"]
        if cursor is None:
            break
    def plain(value: Any) -> Any:
        return value.isoformat() if isinstance(value, datetime | date) else value
    with engine.connect() as conn:
        orders = conn.execute(sa.select(t.orders.c.order_id, t.orders.c.occurred_at,
                                        t.orders.c.amount_e4, t.orders.c.refunded_e4,
                                        t.orders.c.lines)
                              .select_from(t.orders.join(t.members,
                                                         t.members.c.pk == t.orders.c.member_pk))
                              .where(t.members.c.program_id == program_id,
                                     t.members.c.id == member_id)
                              .order_by(t.orders.c.occurred_at)).all()
    return {
        "programme": program_id,
        "exported_at": clock().isoformat(),
        "member": page["member"],
        "lots": [{k: plain(v) for k, v in lot.items() if k not in ("member_pk",)}
                 for lot in page["lots"]],
        "vouchers": [{k: plain(v) for k, v in voucher.items() if k != "member_pk"}
                     for voucher in page["vouchers"]],
        "orders": [{"order_id": o.order_id, "occurred_at": o.occurred_at.isoformat(),
                    "amount_e4": o.amount_e4, "refunded_e4": o.refunded_e4, "lines": o.lines}
                   for o in orders],
        "activity": activity,
        "member_accounts": list(MEMBER_ACCOUNTS),
    }


def recorded_time(engine: sa.Engine, program_id: str, event_id: str) -> str | None:
    """The occurred_at an event was first sent with: a form sent twice sends it again, so
    that the second is a replay rather than a conflict."""
    with engine.connect() as conn:
        payload = conn.execute(sa.select(t.events.c.payload).where(
            t.events.c.program_id == program_id, t.events.c.id == event_id)).scalar()
    return payload.get("occurred_at") if isinstance(payload, dict) else None


def programme_ids(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(sa.select(t.programs.c.id)
                                               .order_by(t.programs.c.id)).all()]
