"""Store credit (cashback and rebates): services over the journal's second asset.

- ``on_purchase`` / ``on_refund``: instant cashback, inside the event's transaction;
  ``on_rejection``: all of it back when the purchase's fraud review is rejected.
- ``hold`` / ``finish``: spending at the till in two phases, like points holds;
  holds left open are released by run-due after ``cashback.hold_minutes``.
- ``run_due``: tiered rebates of periods that have ended; timed-out holds.
- ``balance`` and ``statement``: what a member has, and a period's statement.

Each member's credit balances are cached in ``credit_accounts`` and locked
(SELECT ... FOR UPDATE) by every write; the points path never touches them.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.adapters.db.store import UnitOfWork
from setia.adapters.db.tables_store_credit import credit_accounts, credit_holds, rebate_runs
from setia.adapters.db.tables_trust import fraud_reviews
from setia.domain import notifications as n
from setia.domain.errors import InvalidAmount, InvalidField, UnknownMember
from setia.domain.events import Event, Line
from setia.domain.member import Member
from setia.domain.money import currency_symbol, minor_digits, parse_amount
from setia.domain.programme import Programme
from setia.domain.refunds import Order, remaining_lines
from setia.domain.store_credit import (
    CreditAccount,
    CreditHoldNotOpen,
    Period,
    UnknownCreditHold,
    credit_asset,
    credited_through,
    instant_cashback,
    member_delta,
    money_text,
    parse_period,
    period_of,
    tiered_rebate,
    uncredited_spans,
)
from setia.service import audit, outbox
from setia.service.common import (
    Clock,
    idempotent,
    iso,
    require_programme,
    require_reason,
    require_ref_fits,
    transaction,
    utc_now,
)

HOLD_KEYS = frozenset({"member", "amount", "reference"})
MAX_AMOUNT_MINOR = 10**12
MAX_PERIODS_PER_RUN = 1200  # a century of months: a bound on one run's catch-up


# -- accounts -----------------------------------------------------------------------------


def _lock_account(uow: UnitOfWork, program_id: str, member_pk: int) -> CreditAccount:
    """The member's credit account, locked; created empty on first use."""
    ca = credit_accounts
    query = (sa.select(ca.c.available, ca.c.reserved)
             .where(ca.c.member_pk == member_pk).with_for_update())
    row = uow.execute(query).one_or_none()
    if row is None:
        uow.insert_ignore(ca, {"member_pk": member_pk, "program_id": program_id,
                               "available": 0, "reserved": 0}, ["member_pk"])
        row = uow.execute(query).one()
    return CreditAccount(member_pk, int(row.available), int(row.reserved))


def _save(uow: UnitOfWork, programme: Programme, account: CreditAccount, ref: str,
          occurred_at: datetime, *, member_id: str, now: datetime) -> list[dict[str, Any]]:
    """Write the account's new postings and balances, and the outbox's messages of what
    they changed (told at ``now``); the postings as written."""
    made, account.postings = account.postings, []
    if not made:
        return []
    account.check()
    uow.execute(credit_accounts.update().where(credit_accounts.c.member_pk == account.member_pk)
                .values(available=account.available, reserved=account.reserved))
    rows = [
        {"program_id": programme.id, "asset": credit_asset(programme.currency),
         "member_pk": account.member_pk, "debit": p.debit, "credit": p.credit,
         "points": p.points, "code": p.code, "ref": ref, "rule_id": p.rule_id,
         "program_version": programme.version, "explanation": p.explanation[:400],
         "occurred_at": occurred_at, "debit_balance_after": p.debit_balance_after,
         "credit_balance_after": p.credit_balance_after}
        for p in made
    ]
    uow.execute(t.postings.insert(), rows)
    digits = minor_digits(programme.currency)
    outbox.write(uow, programme.id, n.from_credit_postings(
        made, member_id=member_id, ref=ref, currency=programme.currency,
        as_text=lambda amount: money_text(amount, digits),
        balances=_balances(account, digits)), now)
    return rows


def _balances(account: CreditAccount, digits: int) -> dict[str, str]:
    return {"available": money_text(account.available, digits),
            "reserved": money_text(account.reserved, digits)}


def _member_pk(uow: UnitOfWork, program_id: str, member_id: Any, *,
               share: bool = False) -> int:
    """The member's primary key; with ``share`` the member's row is held shared until the
    end of the transaction (a write that names the member waits for an erasure under way,
    then finds no member of that id)."""
    if not isinstance(member_id, str) or not member_id:
        raise InvalidField("member must be a member id", field="member")
    query = sa.select(t.members.c.pk).where(t.members.c.program_id == program_id,
                                            t.members.c.id == member_id)
    pk = uow.execute(query.with_for_update(read=True) if share else query).scalar()
    if pk is None:
        raise UnknownMember(f"no member {member_id!r} in programme {program_id}", field="member")
    return int(pk)


# -- instant cashback (hooks of the event path) ---------------------------------------------


def on_purchase(uow: UnitOfWork, programme: Programme, member: Member, event: Event,
                now: datetime) -> None:
    """Credit the purchase's instant cashback, in the event's transaction."""
    config = programme.model.cashback
    if config is None or not config.instant:
        return
    assert event.amount is not None
    digits = minor_digits(programme.currency)
    awards = instant_cashback(config, event.lines, event.amount, digits,
                              currency_symbol(programme.currency))
    if not awards:
        return
    account = _lock_account(uow, programme.id, member.pk)
    for award in awards:
        account.earn(award.amount_minor, code="cashback", rule_id=award.rule_id,
                     explanation=award.explanation)
    _save(uow, programme, account, event.id, event.occurred_at, member_id=member.id, now=now)


def on_refund(uow: UnitOfWork, programme: Programme, original: Programme, member: Member,
              event: Event, order: Order, left_lines: tuple[Line, ...],
              left_amount: Decimal, now: datetime, *, rejected: bool) -> None:
    """Claw back the cashback the refunded part earned: cashback is recomputed, under the
    purchase's programme version, on what was left of the order before and after. Nothing
    for a purchase whose fraud review was ``rejected`` (``fraud.purchase_rejected``): the
    rejection took all of it (``on_rejection``)."""
    if rejected:
        return
    _claw_back(uow, programme, original, member, order, left_lines, left_amount,
               ref=event.id, occurred_at=event.occurred_at,
               cause=f"refund on order {order.order_id}", now=now)


def on_rejection(uow: UnitOfWork, programme: Programme, member: Member, order: Order,
                 review_id: int, now: datetime) -> None:
    """A fraud review of the order's purchase rejected (``fraud.decide``): claw back all the
    cashback the order still keeps, as a refund of all that is left of it would, posted
    under ``review:<id>`` at ``now``. A later refund of the order then takes nothing."""
    original = require_programme(uow, programme.id, order.program_version)
    nothing_left = remaining_lines(order.lines, {line.sku: line.left for line in order.lines})
    _claw_back(uow, programme, original, member, order, nothing_left, Decimal(0),
               ref=f"review:{review_id}", occurred_at=now,
               cause=f"review {review_id} rejected on order {order.order_id}", now=now)


def _claw_back(uow: UnitOfWork, programme: Programme, original: Programme, member: Member,
               order: Order, left_lines: tuple[Line, ...], left_amount: Decimal, *, ref: str,
               occurred_at: datetime, cause: str, now: datetime) -> None:
    """The clawback of a refund (``on_refund``) or a rejection (``on_rejection``): the
    cashback of what was left of the order less that of ``left_lines``/``left_amount``,
    posted under ``ref``."""
    config = original.model.cashback
    if config is None or not config.instant:
        return
    digits = minor_digits(programme.currency)
    symbol = currency_symbol(programme.currency)
    before = {a.rule_id: a.amount_minor for a in instant_cashback(
        config, remaining_lines(order.lines, {}), order.left, digits, symbol)}
    after = {a.rule_id: a.amount_minor for a in instant_cashback(
        config, left_lines, left_amount, digits, symbol)}
    back = {rule: amount - after.get(rule, 0) for rule, amount in sorted(before.items())
            if amount > after.get(rule, 0)}
    if not back:
        return
    account = _lock_account(uow, programme.id, member.pk)
    for rule_id, amount in back.items():
        account.clawback(amount, rule_id=rule_id, explanation=(
            f"{cause}: {rule_id} now gives "
            f"{money_text(after.get(rule_id, 0), digits)} instead of "
            f"{money_text(before[rule_id], digits)}"))
    _save(uow, programme, account, ref, occurred_at, member_id=member.id, now=now)


# -- holds at the till ------------------------------------------------------------------------


def _amount_minor(value: Any, currency: str, field_name: str, *, signed: bool = False) -> int:
    """The amount in minor units, above zero; ``signed``: its size, the sign given apart
    (an adjustment), so that only zero is refused."""
    if value is None:
        raise InvalidField(f"{field_name} is required", field=field_name)
    amount = parse_amount(value, currency, field_name)
    minor = int(amount.scaleb(minor_digits(currency)))
    if minor <= 0:
        raise InvalidAmount(f"{field_name} must not be zero" if signed else
                            f"{field_name} must be greater than zero", field=field_name)
    if minor > MAX_AMOUNT_MINOR:
        raise InvalidAmount(f"{field_name} is too large", field=field_name)
    return minor


def _hold_view(row: dict[str, Any], member_id: str, account: CreditAccount,
               digits: int) -> dict[str, Any]:
    return {
        "id": row["id"],
        "status": row["status"],
        "member": member_id,
        "amount": money_text(row["amount"], digits),
        "captured": money_text(row["captured"], digits),
        "reference": row["reference"],
        "hold_expires_at": iso(row["hold_expires_at"]),
        "balances": _balances(account, digits),
    }


def hold(engine: sa.Engine, program_id: str, body: Any, key: str, clock: Clock = utc_now,
         new_id: Callable[[], str] = lambda: "crh_" + secrets.token_hex(10)) -> dict[str, Any]:
    """Reserve store credit for a sale at the till: ``{member, amount, reference?}``."""
    if not isinstance(body, dict):
        raise InvalidField("the hold must be a JSON object", field="(body)")
    unknown = sorted(set(body) - HOLD_KEYS)
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
    reference = body.get("reference")
    if reference is not None and (not isinstance(reference, str) or not reference
                                  or len(reference) > 200):
        raise InvalidField("reference must be a string of 1 to 200 characters",
                           field="reference")

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        now = clock()

        def run() -> dict[str, Any]:
            amount = _amount_minor(body.get("amount"), programme.currency, "amount")
            pk = _member_pk(uow, program_id, body.get("member"), share=True)
            digits = minor_digits(programme.currency)
            account = _lock_account(uow, program_id, pk)
            hold_id = new_id()
            account.hold(amount, f"hold {hold_id} of {money_text(amount, digits)} at the till")
            minutes = programme.model.cashback.hold_minutes if programme.model.cashback else 15
            row = {"id": hold_id, "program_id": program_id, "member_pk": pk, "amount": amount,
                   "captured": 0, "status": "held", "reference": reference, "created_at": now,
                   "hold_expires_at": now + timedelta(minutes=minutes), "updated_at": now}
            uow.execute(credit_holds.insert().values(**row))
            _save(uow, programme, account, hold_id, now, member_id=body["member"], now=now)
            return _hold_view(row, body["member"], account, digits)

        result = idempotent(uow, program_id, key, "credit-hold", body, run, now)
        uow.commit()
        return result

    return transaction(engine, work)


ADJUST_KEYS = frozenset({"member", "amount", "reason"})


def adjust(engine: sa.Engine, program_id: str, body: Any, key: str,
           clock: Clock = utc_now) -> dict[str, Any]:
    """An admin's correction of a member's store credit, with a reason: ``{member, amount,
    reason}``, the amount a decimal string, negative to take credit back (never below
    zero). Posted against the programme's ``adjustments`` account, code ``adjust``, under
    ``credit-adjust:<key>``; audited with the balances before and after."""
    if not isinstance(body, dict):
        raise InvalidField("the adjustment must be a JSON object", field="(body)")
    unknown = sorted(set(body) - ADJUST_KEYS)
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
    reason = require_reason(body)
    require_ref_fits("credit-adjust:", key, "Idempotency-Key")

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        now = clock()

        def run() -> dict[str, Any]:
            raw = body.get("amount")
            negative = isinstance(raw, str) and raw.startswith("-")
            minor = _amount_minor(raw[1:] if isinstance(raw, str) and negative else raw,
                                  programme.currency, "amount", signed=True)
            amount = -minor if negative else minor
            pk = _member_pk(uow, program_id, body.get("member"), share=True)
            digits = minor_digits(programme.currency)
            account = _lock_account(uow, program_id, pk)
            before = _balances(account, digits)
            account.adjust(amount, reason)
            ref = f"credit-adjust:{key}"
            _save(uow, programme, account, ref, now, member_id=body["member"], now=now)
            after = _balances(account, digits)
            audit.record(uow, "credit.adjust", program_id=program_id, target=f"member #{pk}",
                         before={"balances": before},
                         after={"balances": after, "amount": money_text(amount, digits),
                                "reason": reason}, now=now)
            return {"member": body["member"], "amount": money_text(amount, digits),
                    "reason": reason, "ref": ref, "balances": after}

        result = idempotent(uow, program_id, key, "credit-adjust", body, run, now)
        uow.commit()
        return result

    return transaction(engine, work)


def finish_hold(uow: UnitOfWork, programme: Programme, hold_id: str, action: str,
                amount_text: Any, now: datetime) -> dict[str, Any]:
    """Capture (all, or ``amount`` of it, the rest released) or release an open hold."""
    assert action in ("capture", "release")
    h = credit_holds
    found = uow.execute(sa.select(h).where(h.c.id == hold_id, h.c.program_id == programme.id)
                        ).mappings().one_or_none()
    if found is None:
        raise UnknownCreditHold(f"no store-credit hold {hold_id!r}", field="hold")
    # The member's row shared first (as the event path locks the member before the
    # account): an erasure under way is waited for, and its pseudonym names the messages.
    member_id = uow.execute(sa.select(t.members.c.id).where(
        t.members.c.pk == found["member_pk"]).with_for_update(read=True)).scalar_one()
    account = _lock_account(uow, programme.id, found["member_pk"])
    # Read again under the account's lock: a concurrent capture or release may have won.
    row: dict[str, Any] = dict(uow.execute(sa.select(h).where(h.c.id == hold_id)).mappings().one())
    if row["status"] != "held":
        raise CreditHoldNotOpen(f"hold {hold_id} is {row['status']}, not held", field="hold")
    digits = minor_digits(programme.currency)
    held = row["amount"]
    captured = 0
    if action == "capture":
        captured = held if amount_text is None else _amount_minor(
            amount_text, programme.currency, "amount")
        if captured > held:
            raise InvalidAmount(f"amount {money_text(captured, digits)} is more than the hold "
                                f"({money_text(held, digits)})", field="amount")
        account.capture(captured, f"spent {money_text(captured, digits)} at the till "
                                  f"(hold {hold_id})")
    if held - captured:
        account.release(held - captured, f"released {money_text(held - captured, digits)} "
                                         f"of hold {hold_id}")
    row.update(status="captured" if action == "capture" else "released", captured=captured,
               updated_at=now)
    uow.execute(h.update().where(h.c.id == hold_id).values(
        status=row["status"], captured=captured, updated_at=now))
    _save(uow, programme, account, hold_id, now, member_id=member_id, now=now)
    return _hold_view(row, member_id, account, digits)


def capture_or_release(engine: sa.Engine, program_id: str, hold_id: str, action: str,
                       body: Any, key: str, clock: Clock = utc_now) -> dict[str, Any]:
    body = {} if body is None else body
    if not isinstance(body, dict):
        raise InvalidField("the body must be a JSON object", field="(body)")
    allowed = {"amount"} if action == "capture" else set()
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        now = clock()
        result = idempotent(
            uow, program_id, key, f"credit-{action}", {"hold": hold_id, **body},
            lambda: finish_hold(uow, programme, hold_id, action, body.get("amount"), now), now)
        uow.commit()
        return result

    return transaction(engine, work)


# -- reads ------------------------------------------------------------------------------------


def balance(engine: sa.Engine, program_id: str, member_id: str) -> dict[str, Any]:
    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        pk = _member_pk(uow, program_id, member_id)
        row = uow.execute(sa.select(credit_accounts.c.available, credit_accounts.c.reserved)
                          .where(credit_accounts.c.member_pk == pk)).one_or_none()
        account = CreditAccount(pk, *(row if row is not None else (0, 0)))
        return {"member": member_id, "asset": credit_asset(programme.currency),
                "currency": programme.currency,
                **_balances(account, minor_digits(programme.currency))}

    return transaction(engine, work, read_only=True)


STATEMENT_CODES = {"cashback": "earned", "rebate": "earned", "clawback": "clawed_back",
                   "capture": "spent", "adjust": "adjusted"}


def statement(engine: sa.Engine, program_id: str, member_id: str,
              period_text: Any) -> dict[str, Any]:
    """A member's store credit in a period: opening balance, earned, clawed back, spent,
    closing balance, and every line that changed the balance (holds and releases move
    credit between the member's own accounts, so they are not lines)."""
    period = parse_period(period_text)

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        pk = _member_pk(uow, program_id, member_id)
        start, end = period.bounds(programme.tz)
        digits = minor_digits(programme.currency)
        p = t.postings
        mine = sa.and_(p.c.member_pk == pk, p.c.asset == credit_asset(programme.currency))
        opening = 0
        for row in uow.execute(sa.select(p.c.debit, p.c.credit,
                                         sa.func.sum(p.c.points).label("amount"))
                               .where(mine, p.c.occurred_at < start)
                               .group_by(p.c.debit, p.c.credit)):
            opening += member_delta(row.debit, row.credit, int(row.amount))
        totals = {"earned": 0, "clawed_back": 0, "spent": 0, "adjusted": 0}
        lines = []
        running = opening
        for row in uow.execute(sa.select(p).where(mine, p.c.occurred_at >= start,
                                                  p.c.occurred_at < end)
                               .order_by(p.c.occurred_at, p.c.id)):
            delta = member_delta(row.debit, row.credit, row.points)
            if delta == 0:
                continue
            running += delta
            kind = STATEMENT_CODES.get(row.code)
            if kind is not None:
                # adjustments are signed (given or taken back), the rest are sizes
                totals[kind] += delta if kind == "adjusted" else row.points
            lines.append({"occurred_at": row.occurred_at.astimezone(programme.tz).isoformat(),
                          "code": row.code, "rule": row.rule_id, "ref": row.ref,
                          "explanation": row.explanation,
                          "amount": money_text(delta, digits),
                          "balance": money_text(running, digits)})
        return {
            "member": member_id, "asset": credit_asset(programme.currency),
            "currency": programme.currency, "period": period.key,
            "from": start.isoformat(), "until": end.isoformat(),
            "opening_balance": money_text(opening, digits),
            **{name: money_text(value, digits) for name, value in totals.items()},
            "closing_balance": money_text(running, digits),
            "lines": lines,
        }

    return transaction(engine, work, read_only=True)


STATEMENT_CSV_COLUMNS = ("occurred_at", "code", "rule", "ref", "explanation", "amount",
                         "balance")


def statement_csv(view: dict[str, Any]) -> str:
    """The statement as CSV: an opening row, one row per line, a closing row, then the
    period's totals (earned, clawed back, spent, adjusted)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(STATEMENT_CSV_COLUMNS)
    writer.writerow([view["from"], "opening", "", "", f"opening balance {view['period']}", "",
                     view["opening_balance"]])
    for line in view["lines"]:
        writer.writerow([line[column] if line[column] is not None else ""
                         for column in STATEMENT_CSV_COLUMNS])
    writer.writerow([view["until"], "closing", "", "", f"closing balance {view['period']}", "",
                     view["closing_balance"]])
    for name in ("earned", "clawed_back", "spent", "adjusted"):
        writer.writerow(["", f"total-{name.replace('_', '-')}", "", "", "", view[name], ""])
    return out.getvalue()


# -- run-due ----------------------------------------------------------------------------------


def run_due(engine: sa.Engine, program_id: str, as_of: datetime) -> tuple[int, int]:
    """Release timed-out holds and credit the tiered rebates of ended periods:
    (holds released, rebates credited). Idempotent and safe with several workers."""
    return _release_timed_out(engine, program_id, as_of), _rebates(engine, program_id, as_of)


def _release_timed_out(engine: sa.Engine, program_id: str, as_of: datetime) -> int:
    with engine.connect() as conn:
        ids = list(conn.execute(sa.select(credit_holds.c.id).where(
            credit_holds.c.program_id == program_id, credit_holds.c.status == "held",
            credit_holds.c.hold_expires_at <= as_of).order_by(credit_holds.c.id)).scalars())
    released = 0
    for hold_id in ids:
        def work(uow: UnitOfWork, hold_id: str = hold_id) -> bool:
            programme = require_programme(uow, program_id)
            try:
                finish_hold(uow, programme, hold_id, "release", None, as_of)
            except CreditHoldNotOpen:
                return False  # captured or released meanwhile
            uow.commit()
            return True

        released += transaction(engine, work)
    return released


def _ended_periods(engine: sa.Engine, programme: Programme, rebate_id: str, per: str,
                   as_of: datetime) -> list[Period]:
    """The periods that have ended by ``as_of`` and were not credited yet: from the one
    holding the end of the last period credited (whatever its ``per``: a programme version
    may have changed it), or (the first time) from the period of the programme's first
    order. Every ended period gets its run row, even when nobody spent, so none is skipped.
    The first may overlap what was credited; ``_credit_period`` credits only the rest."""
    with engine.connect() as conn:
        done = list(conn.execute(sa.select(rebate_runs.c.period).where(
            rebate_runs.c.program_id == programme.id,
            rebate_runs.c.rebate_id == rebate_id)).scalars())
        through = credited_through(parse_period(key) for key in done)
        if through is not None:
            start = through
        else:
            first = conn.execute(sa.select(sa.func.min(t.orders.c.occurred_at)).where(
                t.orders.c.program_id == programme.id)).scalar()
            if first is None:
                return []
            start = first.astimezone(programme.tz).date()
        today: date = as_of.astimezone(programme.tz).date()
        if period_of(per, start).next_first_day > today:
            return []  # nothing has ended (run-due every minute): the versions go unread
        since = rebate_since(conn, programme, rebate_id)
    if since is not None:
        start = max(start, since)
    period = period_of(per, start)
    periods: list[Period] = []
    while period.next_first_day <= today and len(periods) < MAX_PERIODS_PER_RUN:
        periods.append(period)
        period = period.following()
    return periods


def _rebates(engine: sa.Engine, program_id: str, as_of: datetime) -> int:
    with engine.connect() as conn:
        if conn.execute(sa.select(t.programs.c.id).where(t.programs.c.id == program_id)
                        ).scalar() is None:
            return 0
    credited = 0

    def current(uow: UnitOfWork) -> Programme:
        return require_programme(uow, program_id)

    programme = transaction(engine, current, read_only=True)
    config = programme.model.cashback
    if config is None:
        return 0
    for rebate in config.tiered:
        for period in _ended_periods(engine, programme, rebate.id, rebate.per, as_of):
            def work(uow: UnitOfWork, rebate_id: str = rebate.id, period: Period = period) -> int:
                _lock_programme_row(uow, program_id)
                programme = require_programme(uow, program_id)
                config = programme.model.cashback
                found = [r for r in (config.tiered if config else []) if r.id == rebate_id]
                if not found or found[0].per != period.per:
                    return 0  # gone, or a new version changed its per: the next run plans again
                return _credit_period(uow, programme, found[0].id, found[0].bands, period, as_of)

            credited += transaction(engine, work)
    return credited


def rebate_since(conn: Any, programme: Programme, rebate_id: str) -> date | None:
    """The day (programme time zone) the programme's versions began to have the rebate
    without a break, up to the current one; None if every version has had it. A rebate
    added to a running programme, or removed and added again, rebates spend from that day
    on, not from the programme's first order nor over the versions without it."""
    pv = t.program_versions
    began = None
    for row in conn.execute(sa.select(pv.c.definition, pv.c.created_at).where(
            pv.c.program_id == programme.id).order_by(pv.c.version.desc())):
        cashback = json.loads(row.definition).get("cashback") or {}
        if not any(r.get("id") == rebate_id for r in cashback.get("tiered") or []):
            return began
        began = row.created_at.astimezone(programme.tz).date()
    return None


def _lock_programme_row(uow: UnitOfWork, program_id: str) -> None:
    """Serialise the rebate runs of a programme, and programme uploads (which lock the row
    FOR UPDATE), so that a run reads the current ``per`` and every run committed before it.
    FOR NO KEY UPDATE: inserts that only reference the row (its versions) are not held up."""
    uow.execute(sa.select(t.programs.c.id).where(t.programs.c.id == program_id)
                .with_for_update(key_share=True))


def _credit_period(uow: UnitOfWork, programme: Programme, rebate_id: str, bands: Any,
                   period: Period, as_of: datetime) -> int:
    """Credit one period's rebate to every member who spent in it, once: the run's row
    is inserted first, so a second worker finds it and does nothing. Only the days no
    earlier run of the rebate credited count: after its ``per`` changed (monthly through
    April, then quarterly) the first new period is credited from where the last one ended.
    The caller holds the programme row, so every earlier run is committed and seen here."""
    if not uow.insert_ignore(rebate_runs, {"program_id": programme.id, "rebate_id": rebate_id,
                                           "period": period.key, "members": 0, "amount": 0,
                                           "ran_at": as_of},
                             ["program_id", "rebate_id", "period"]):
        return 0
    credited = [parse_period(key) for key in uow.execute(sa.select(rebate_runs.c.period).where(
        rebate_runs.c.program_id == programme.id, rebate_runs.c.rebate_id == rebate_id,
        rebate_runs.c.period != period.key)).scalars()]
    spans = uncredited_spans(period, credited)
    since = rebate_since(uow, programme, rebate_id)
    if since is not None:
        spans = [(max(first, since), after) for first, after in spans if after > since]
    spend = _net_spend(uow, programme, spans) if spans else []
    spent_in = _spent_in(period, spans, since)
    end = period.bounds(programme.tz)[1]
    digits = minor_digits(programme.currency)
    symbol = currency_symbol(programme.currency)
    members = total = 0
    nets = [(row, Decimal(int(row.net_e4)).scaleb(-4)) for row in spend]
    due = [(row, net, amount) for row, net in nets
           if (amount := tiered_rebate(bands, net, digits)) > 0]
    # The members' rows shared first, in primary key order (as the event path locks the
    # member before the account): an erasure under way is waited for, and the message
    # names the id each member has now.
    named: dict[int, str] = {found.pk: found.id for found in uow.execute(
        sa.select(t.members.c.pk, t.members.c.id).where(
            t.members.c.pk.in_([row.member_pk for row, _, _ in due]))
        .order_by(t.members.c.pk).with_for_update(read=True))} if due else {}
    for row, net, amount in due:
        account = _lock_account(uow, programme.id, row.member_pk)
        account.earn(amount, code="rebate", rule_id=rebate_id, explanation=(
            f"{rebate_id} rebate on {symbol} {net.quantize(Decimal(1).scaleb(-digits))} "
            f"spent in {spent_in}"))
        _save(uow, programme, account, f"rebate:{rebate_id}:{period.key}", end,
              member_id=named[row.member_pk], now=as_of)
        members += 1
        total += amount
    uow.execute(rebate_runs.update().where(
        rebate_runs.c.program_id == programme.id, rebate_runs.c.rebate_id == rebate_id,
        rebate_runs.c.period == period.key).values(members=members, amount=total))
    uow.commit()
    return members


def _net_spend(uow: UnitOfWork, programme: Programme,
               spans: list[tuple[date, date]]) -> list[Any]:
    """Each member's net spend on orders placed in the spans of days (programme time zone),
    by member pk. A purchase whose fraud review was rejected is no spend (``fraud``: a
    rejected purchase keeps nothing)."""
    o, r = t.orders, fraud_reviews

    def midnight(day: date) -> datetime:
        return datetime.combine(day, time(), programme.tz)

    placed = sa.or_(*(sa.and_(o.c.occurred_at >= midnight(first), o.c.occurred_at < midnight(after))
                      for first, after in spans))
    return list(uow.execute(
        sa.select(o.c.member_pk, t.members.c.id.label("member_id"),
                  sa.func.sum(o.c.amount_e4 - o.c.refunded_e4).label("net_e4"))
        .join(t.members, t.members.c.pk == o.c.member_pk)
        .where(o.c.program_id == programme.id, placed,
               ~sa.exists().where(r.c.program_id == o.c.program_id,
                                  r.c.event_id == o.c.event_id, r.c.status == "rejected"))
        .group_by(o.c.member_pk, t.members.c.id).order_by(o.c.member_pk)).all())


def _spent_in(period: Period, spans: list[tuple[date, date]], since: date | None = None
              ) -> str:
    """``2027-Q2``, or for a period credited in part before: ``2027-Q2 from 2027-05-01 to
    2027-06-30, the rest of it credited before``, or begun by the rebate: ``2027-03 from
    2027-03-15 to 2027-03-31, since the rebate began``."""
    if spans == [(period.first_day, period.next_first_day)]:
        return period.key
    days = " and from ".join(f"{first.isoformat()} to {(after - timedelta(days=1)).isoformat()}"
                             for first, after in spans)
    if since is not None and spans and spans[0][0] == since > period.first_day:
        return f"{period.key} from {days}, since the rebate began"
    return f"{period.key} from {days}, the rest of it credited before"


# -- setia check --------------------------------------------------------------------------------


def check_journal(conn: sa.Connection) -> list[str]:
    """Each member's cached store credit equals the journal; open holds hold the reserved
    credit; nothing reserved is negative. (The zero sum per asset is checked with points.)"""
    p = t.postings
    derived: dict[tuple[int, str], int] = {}
    for column, sign in ((p.c.credit, 1), (p.c.debit, -1)):
        for row in conn.execute(
            sa.select(p.c.member_pk, column.label("account"),
                      sa.func.sum(p.c.points).label("amount"))
            .where(p.c.asset.like("credit:%"), column.in_(("available", "reserved")))
            .group_by(p.c.member_pk, column)
        ):
            key = (int(row.member_pk), row.account)
            derived[key] = derived.get(key, 0) + sign * int(row.amount)
    held = {
        int(row.member_pk): int(row.amount)
        for row in conn.execute(
            sa.select(credit_holds.c.member_pk, sa.func.sum(credit_holds.c.amount).label("amount"))
            .where(credit_holds.c.status == "held").group_by(credit_holds.c.member_pk))
    }
    problems: list[str] = []
    cached = {
        int(row.member_pk): row
        for row in conn.execute(sa.select(credit_accounts, t.members.c.id).join(
            t.members, t.members.c.pk == credit_accounts.c.member_pk))
    }
    for pk in sorted(set(cached) | {pk for pk, _ in derived} | set(held)):
        found = cached.get(pk)
        who = f"{found.program_id}/{found.id}" if found is not None else f"member pk {pk}"
        available = int(found.available) if found is not None else 0
        reserved = int(found.reserved) if found is not None else 0
        for account, value in (("available", available), ("reserved", reserved)):
            journal = derived.get((pk, account), 0)
            if journal != value:
                problems.append(f"{who}: cached store credit {account} {value} "
                                f"but the journal says {journal}")
        if held.get(pk, 0) != reserved:
            problems.append(f"{who}: open store-credit holds reserve {held.get(pk, 0)}, "
                            f"reserved store credit is {reserved}")
        if reserved < 0:
            problems.append(f"{who}: reserved store credit is negative")
    return problems
