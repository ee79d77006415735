"""Coupons: validate a code for a basket, redeem it exactly once, give a use back, and
generate batches of unique codes.

Lock order, the same for every command: the member row (FOR UPDATE; it serialises
the member's per-member count and her first-purchase coupons), then the order (a
transaction-scoped advisory lock on PostgreSQL: uses of one order by different members
are serialised, so a coupon goes on an order once), then the code's row (one conditional
UPDATE ``uses = 1 WHERE uses = 0``), then the coupon's total counter (one conditional
UPDATE ``uses = uses + 1 WHERE uses < max_uses``). Releasing lowers both again.
"""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from setia.adapters.db import tables_coupons as tc
from setia.adapters.db.bulk_codes import insert_codes
from setia.adapters.db.store import UnitOfWork
from setia.domain import coupons as c
from setia.domain.errors import CurrencyMismatch, InvalidField, UnknownMember
from setia.domain.member import Member
from setia.domain.money import minor_digits, parse_amount
from setia.domain.programme import Programme
from setia.service.common import (
    Clock,
    advisory_xact_lock,
    idempotent,
    require_programme,
    transaction,
    utc_now,
)

RandomBytes = Callable[[int], bytes]
CHUNK_CODES = 10_000
MAX_LINES = 500


# -- input ------------------------------------------------------------------------------


def _text(body: dict[str, Any], key: str, limit: int = 128) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise InvalidField(f"{key} is required (text of 1 to {limit} characters)", field=key)
    return value


def parse_basket(body: Any, currency: str, *, order: bool) -> tuple[str, str, c.Basket, str | None]:
    """(code, member id, basket, order id) from a validate or redeem body."""
    if not isinstance(body, dict):
        raise InvalidField("the body must be a JSON object", field="(body)")
    allowed = {"code", "member", "amount", "currency", "lines", "order_id"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
    code = _text(body, "code", 64)
    member_id = _text(body, "member")
    if "currency" in body and body["currency"] != currency:
        raise CurrencyMismatch(f"the programme's currency is {currency}", field="currency")
    if "amount" not in body:
        raise InvalidField("amount is required (the basket total)", field="amount")
    amount = parse_amount(body["amount"], currency, "amount")
    raw_lines = body.get("lines", [])
    if not isinstance(raw_lines, list) or len(raw_lines) > MAX_LINES:
        raise InvalidField(f"lines must be a list of at most {MAX_LINES} lines", field="lines")
    lines = []
    for i, raw in enumerate(raw_lines):
        at = f"lines[{i}]"
        if not isinstance(raw, dict) or set(raw) - {"sku", "category", "amount", "quantity"}:
            raise InvalidField(f"{at} must be {{sku, category, amount}}", field=at)
        sku = raw.get("sku")
        category = raw.get("category")
        if not isinstance(sku, str) or not sku or len(sku) > 128:
            raise InvalidField(f"{at}.sku is required", field=f"{at}.sku")
        if category is not None and (not isinstance(category, str) or len(category) > 64):
            raise InvalidField(f"{at}.category must be text", field=f"{at}.category")
        lines.append(c.BasketLine(sku, category, parse_amount(raw.get("amount"), currency,
                                                              f"{at}.amount")))
    if lines and sum((line.amount for line in lines), Decimal(0)) > amount:
        raise InvalidField("the lines add up to more than amount", field="lines")
    order_id = None
    if order or "order_id" in body:
        order_id = _text(body, "order_id")
    return code, member_id, c.Basket(amount, tuple(lines)), order_id


# -- lookups ----------------------------------------------------------------------------


def _coupon_for_code(uow: UnitOfWork, programme: Programme, raw: str) -> tuple[c.Coupon, str, bool]:
    """(coupon, stored code, is a generated one-use code)."""
    coupons = programme.model.coupons or []
    code = c.normalise_code(raw)
    public = c.by_public_code(coupons, code)
    if public is not None:
        assert public.code is not None
        return public, public.code, False
    for candidate in c.code_candidates(code):
        coupon_id = uow.execute(
            sa.select(tc.coupon_codes.c.coupon_id).where(
                tc.coupon_codes.c.program_id == programme.id,
                tc.coupon_codes.c.code == candidate)
        ).scalar_one_or_none()
        if coupon_id is not None:
            for coupon in coupons:
                if coupon.id == coupon_id:
                    return coupon, candidate, True
    raise c.UnknownCoupon(f"no coupon with code {raw!r}", field="code")


def _member(uow: UnitOfWork, programme: Programme, member_id: str, *, lock: bool) -> Member:
    member = uow.member(programme.id, member_id, lock=lock)
    if member is None:
        raise UnknownMember(f"no member {member_id!r} in programme {programme.id}",
                            field="member")
    return member


def _active_uses(uow: UnitOfWork, programme: Programme, coupon_id: str, member_pk: int) -> int:
    u = tc.coupon_uses
    return int(uow.execute(
        sa.select(sa.func.count()).select_from(u).where(
            u.c.member_pk == member_pk, u.c.coupon_id == coupon_id,
            u.c.program_id == programme.id, u.c.released_at.is_(None))
    ).scalar_one())


def _assess(uow: UnitOfWork, programme: Programme, body: Any, now: datetime, *, order: bool,
            lock: bool) -> tuple[c.Coupon, str, bool, Member, Decimal, str | None]:
    code_raw, member_id, basket, order_id = parse_basket(body, programme.currency, order=order)
    coupon, code, generated = _coupon_for_code(uow, programme, code_raw)
    member = _member(uow, programme, member_id, lock=lock)
    c.check_window(coupon, now.astimezone(programme.tz).date())
    facts = c.MemberFacts(purchases=member.purchases, enrolled_at=member.enrolled_at,
                          uses_of_coupon=_active_uses(uow, programme, coupon.id, member.pk))
    c.check_member(coupon, facts, now)
    if coupon.first_purchase:
        _check_first_purchase_order(uow, programme, coupon, member, order_id)
    discount = c.discount_for(coupon, basket, minor_digits(programme.currency))
    return coupon, code, generated, member, discount, order_id


def _check_first_purchase_order(uow: UnitOfWork, programme: Programme, coupon: c.Coupon,
                                member: Member, order_id: str | None) -> None:
    """A member's first purchase is one order: a first-purchase coupon is refused while
    she has any first-purchase coupon standing on another order (on any order, when no
    order is named). Her row is locked by ``redeem``, so two tills cannot both pass."""
    first = sorted(cp.id for cp in programme.model.coupons or [] if cp.first_purchase)
    u = tc.coupon_uses
    query = sa.select(u.c.coupon_id, u.c.order_id).where(
        u.c.member_pk == member.pk, u.c.coupon_id.in_(first), u.c.program_id == programme.id,
        u.c.released_at.is_(None))
    if order_id is not None:
        query = query.where(u.c.order_id != order_id)
    found = uow.execute(query.order_by(u.c.used_at, u.c.id).limit(1)).first()
    if found is not None:
        raise c.CouponFirstPurchaseOnly(
            f"coupon {coupon.id} is for a first purchase, and the member has first-purchase "
            f"coupon {found.coupon_id} on order {found.order_id} already", field="member")


def _check_counts(uow: UnitOfWork, programme: Programme, coupon: c.Coupon, code: str,
                  generated: bool) -> None:
    """The read-only form of the two conditional updates ``_take`` makes."""
    if generated:
        uses = uow.execute(sa.select(tc.coupon_codes.c.uses).where(
            tc.coupon_codes.c.program_id == programme.id, tc.coupon_codes.c.code == code)
        ).scalar_one()
        if uses:
            raise c.CouponCodeUsed(f"code {code} has been used", field="code")
    if coupon.max_uses is not None:
        used = uow.execute(sa.select(sa.func.coalesce(
            sa.select(tc.coupon_counters.c.uses).where(
                tc.coupon_counters.c.program_id == programme.id,
                tc.coupon_counters.c.coupon_id == coupon.id).scalar_subquery(),
            _standing_uses(programme, coupon)))).scalar_one()
        if used >= coupon.max_uses:
            raise c.CouponExhausted(f"all {coupon.max_uses} uses of coupon {coupon.id} are gone",
                                    field="code")


def _take(uow: UnitOfWork, programme: Programme, coupon: c.Coupon, code: str,
          generated: bool) -> None:
    if generated:
        taken = uow.execute(
            tc.coupon_codes.update().where(
                tc.coupon_codes.c.program_id == programme.id, tc.coupon_codes.c.code == code,
                tc.coupon_codes.c.uses == 0).values(uses=1)).rowcount
        if not taken:
            raise c.CouponCodeUsed(f"code {code} has been used", field="code")
    counter = tc.coupon_counters
    mine = sa.and_(counter.c.program_id == programme.id, counter.c.coupon_id == coupon.id)
    if coupon.max_uses is not None:
        take = counter.update().where(mine, counter.c.uses < coupon.max_uses).values(
            uses=counter.c.uses + 1)
        taken = uow.execute(take).rowcount
        if not taken and uow.execute(sa.select(counter.c.uses).where(mine)).first() is None:
            # the first use under the cap: the counter is made (once, not with every use)
            # from the uses standing
            uow.insert_ignore(counter, {"program_id": programme.id, "coupon_id": coupon.id,
                                        "uses": _standing_uses(programme, coupon)},
                              ["program_id", "coupon_id"])
            taken = uow.execute(take).rowcount
        if not taken:
            raise c.CouponExhausted(f"all {coupon.max_uses} uses of coupon {coupon.id} are gone",
                                    field="code")


def _standing_uses(programme: Programme, coupon: c.Coupon) -> Any:
    """The coupon's uses not given back, as a scalar subquery. The counter of uses
    (``coupon_counters``) starts from it, made at the first use under a version with
    ``max_uses``: uses made while the programme had no cap count as well. A version
    without the cap drops the counter (``programmes._drop_unlimited_counters``), so one
    made again later counts the uses made meanwhile."""
    u = tc.coupon_uses
    return (sa.select(sa.func.count()).select_from(u)
            .where(u.c.program_id == programme.id, u.c.coupon_id == coupon.id,
                   u.c.released_at.is_(None)).scalar_subquery())


def _give_back(uow: UnitOfWork, programme: Programme, use: Any) -> None:
    cc = tc.coupon_codes
    uow.execute(cc.update().where(cc.c.program_id == programme.id, cc.c.code == use["code"])
                .values(uses=0))
    counter = tc.coupon_counters
    uow.execute(counter.update().where(
        counter.c.program_id == programme.id, counter.c.coupon_id == use["coupon_id"],
        counter.c.uses > 0).values(uses=counter.c.uses - 1))


def _money(value: Decimal, currency: str) -> str:
    return str(value.quantize(Decimal(1).scaleb(-minor_digits(currency))))


def _use_view(row: Any, currency: str) -> dict[str, Any]:
    return {
        "id": row["id"], "coupon": row["coupon_id"], "code": row["code"],
        "member": row["member_id"], "order_id": row["order_id"],
        "discount": _money(Decimal(row["discount"]), currency), "currency": row["currency"],
        "used_at": row["used_at"].astimezone(UTC).isoformat(),
        "released_at": row["released_at"].astimezone(UTC).isoformat()
        if row["released_at"] else None,
    }


# -- commands ---------------------------------------------------------------------------


def validate(engine: sa.Engine, program_id: str, body: Any, clock: Clock = utc_now
             ) -> dict[str, Any]:
    """The discount the code gives this basket now; nothing is used or written."""

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        now = clock()
        coupon, code, generated, member, discount, _ = _assess(
            uow, programme, body, now, order=False, lock=False)
        _check_counts(uow, programme, coupon, code, generated)
        return {"valid": True, "coupon": coupon.id, "code": code, "member": member.id,
                "discount": _money(discount, programme.currency),
                "currency": programme.currency}

    return transaction(engine, work, read_only=True)


def _as_read(body: Any) -> Any:
    """The request as the till means it, for its idempotency hash: a retry with the code
    typed another way (case, dashes, spaces) is the same request."""
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        return {**body, "code": c.normalise_code(body["code"])}
    return body


def redeem(engine: sa.Engine, program_id: str, body: Any, key: str, clock: Clock = utc_now
           ) -> dict[str, Any]:
    """Use the code for an order, exactly once: every rule, then the conditional updates."""

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        result = redeem_in(uow, programme, body, key, clock())
        uow.commit()
        return result

    return transaction(engine, work)


def redeem_in(uow: UnitOfWork, programme: Programme, body: Any, key: str, now: datetime,
              *, before_locks: Callable[[Decimal], None] | None = None) -> dict[str, Any]:
    """``redeem`` inside the caller's unit of work (which commits): for the till's
    purchase with a coupon (service/till.py), so both are written or neither.
    ``before_locks`` gets the discount once the member's row is locked, before the
    coupon's locks (the till takes its purchase's receipt lock there)."""

    def run() -> dict[str, Any]:
        coupon, code, generated, member, discount, order_id = _assess(
            uow, programme, body, now, order=True, lock=True)
        assert order_id is not None
        if before_locks is not None:
            before_locks(discount)
        # Another member's till may be using a code on the same order: without the lock
        # both would miss each other's use and apply the coupon twice.
        advisory_xact_lock(uow, "coupon-order", programme.id, order_id)
        u = tc.coupon_uses
        applied = uow.execute(sa.select(u.c.id).where(
            u.c.program_id == programme.id, u.c.order_id == order_id,
            u.c.coupon_id == coupon.id, u.c.released_at.is_(None))).first()
        if applied is not None:
            raise c.CouponAlreadyApplied(
                f"coupon {coupon.id} is already applied to order {order_id}",
                field="order_id")
        _take(uow, programme, coupon, code, generated)
        row = {"id": "cpu_" + secrets.token_hex(10), "program_id": programme.id,
               "coupon_id": coupon.id, "code": code, "member_pk": member.pk,
               "member_id": member.id, "order_id": order_id, "discount": discount,
               "currency": programme.currency, "used_at": now, "released_at": None}
        uow.execute(u.insert().values(**row))
        return _use_view(row, programme.currency)

    return idempotent(uow, programme.id, key, "coupon-redeem", _as_read(body), run, now)


def release_uses(uow: UnitOfWork, programme: Programme, order_id: str, now: datetime, *,
                 code: str | None = None, only_on_refund: bool = False) -> list[dict[str, Any]]:
    """Give back the active uses of an order (of one code, if given). Each use is released
    by one conditional UPDATE, so two concurrent releases give it back once."""
    u = tc.coupon_uses
    query = sa.select(u).where(u.c.program_id == programme.id, u.c.order_id == order_id,
                               u.c.released_at.is_(None)).order_by(u.c.id)
    if code is not None:  # as typed, or with O read as 0 and I, L as 1 (as redeem reads it)
        query = query.where(u.c.code.in_(c.code_candidates(c.normalise_code(code))))
    released = []
    refundable = {cp.id for cp in programme.model.coupons or [] if cp.release_on_refund}
    for row in uow.execute(query).mappings().all():
        if only_on_refund and row["coupon_id"] not in refundable:
            continue
        done = uow.execute(u.update().where(u.c.id == row["id"], u.c.released_at.is_(None))
                           .values(released_at=now)).rowcount
        if done:
            _give_back(uow, programme, row)
            released.append(_use_view({**row, "released_at": now}, programme.currency))
    return released


def release(engine: sa.Engine, program_id: str, body: Any, key: str, clock: Clock = utc_now
            ) -> dict[str, Any]:
    """Give back the uses of a cancelled or refunded order: ``{order_id, code?}``."""
    if not isinstance(body, dict):
        raise InvalidField("the body must be a JSON object", field="(body)")
    unknown = sorted(set(body) - {"order_id", "code"})
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
    order_id = _text(body, "order_id")
    code = _text(body, "code", 64) if "code" in body else None

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        now = clock()

        def run() -> dict[str, Any]:
            released = release_uses(uow, programme, order_id, now, code=code)
            if not released:
                raise c.UnknownCouponUse(f"no active coupon use for order {order_id!r}",
                                         field="order_id")
            return {"order_id": order_id, "released": released}

        result = idempotent(uow, program_id, key, "coupon-release", _as_read(body), run, now)
        uow.commit()
        return result

    return transaction(engine, work)


def after_refund(uow: UnitOfWork, programme: Programme, order_id: str, left: Decimal,
                 now: datetime) -> None:
    """The refund hook: a fully refunded order gives back its coupon uses (coupons with
    ``release_on_refund``, the default)."""
    if programme.model.coupons and left == 0:
        release_uses(uow, programme, order_id, now, only_on_refund=True)


def uses_of_order(engine: sa.Engine, program_id: str, order_id: str) -> list[dict[str, Any]]:
    def work(uow: UnitOfWork) -> list[dict[str, Any]]:
        programme = require_programme(uow, program_id)
        u = tc.coupon_uses
        rows = uow.execute(sa.select(u).where(u.c.program_id == programme.id,
                                              u.c.order_id == order_id).order_by(u.c.used_at,
                                                                                 u.c.id))
        return [_use_view(row, programme.currency) for row in rows.mappings()]

    return transaction(engine, work, read_only=True)


# -- batches ----------------------------------------------------------------------------


def _batch_request(body: Any) -> tuple[int, str]:
    if not isinstance(body, dict):
        raise InvalidField("the body must be a JSON object", field="(body)")
    unknown = sorted(set(body) - {"count", "prefix"})
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
    count = body.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= c.MAX_BATCH:
        raise InvalidField(f"count must be a whole number from 1 to {c.MAX_BATCH:,}",
                           field="count")
    prefix = body.get("prefix", "")
    if not isinstance(prefix, str) or len(prefix) > 12 or not all(
            ch in c.CODE_ALPHABET for ch in prefix.upper()):
        raise InvalidField("prefix holds at most 12 of 0-9 and A-Z without I, L, O, U",
                           field="prefix")
    return count, prefix.upper()


def generate_batch(engine: sa.Engine, program_id: str, coupon_id: str, body: Any, key: str,
                   clock: Clock = utc_now, random_bytes: RandomBytes = secrets.token_bytes,
                   progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """``count`` new unique one-use codes of a batch coupon, in one transaction."""
    count, prefix = _batch_request(body)

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        now = clock()

        def run() -> dict[str, Any]:
            coupon = c.find(programme.model.coupons or [], coupon_id)
            if coupon.code is not None:
                raise InvalidField(f"coupon {coupon.id} has the public code {coupon.code}; "
                                   "batches are for coupons without one", field="coupon")
            batch_id = "cpb_" + secrets.token_hex(10)
            uow.execute(tc.coupon_batches.insert().values(
                id=batch_id, program_id=programme.id, coupon_id=coupon.id, prefix=prefix,
                count=count, created_at=now))
            made = 0
            while made < count:
                wanted = min(CHUNK_CODES, count - made)
                codes = c.batch_codes(prefix, wanted, random_bytes(7 * wanted))
                # A code that collides with an existing one fails the insert; the
                # transaction is retried with new random codes (50 bits: not expected).
                insert_codes(uow.conn, [(programme.id, code, coupon.id, batch_id, 0)
                                        for code in codes])
                made += len(codes)
                if progress is not None:
                    progress(made)
            return {"id": batch_id, "coupon": coupon.id, "prefix": prefix, "count": count,
                    "created_at": now.isoformat()}

        result = idempotent(uow, program_id, key, "coupon-batch",
                            {"coupon": coupon_id, "body": body}, run, now)
        uow.commit()
        return result

    return transaction(engine, work)


def export_batch(engine: sa.Engine, program_id: str, batch_id: str) -> Iterator[str]:
    """The batch as CSV text (code,coupon,batch,status), a chunk of rows at a time."""
    with engine.connect() as conn:
        found = conn.execute(sa.select(tc.coupon_batches).where(
            tc.coupon_batches.c.id == batch_id,
            tc.coupon_batches.c.program_id == program_id)).mappings().one_or_none()
        if found is None:
            raise c.UnknownCouponBatch(f"no coupon batch {batch_id!r}", field="batch")
        rows = list(conn.execute(sa.select(tc.coupon_codes.c.code, tc.coupon_codes.c.coupon_id,
                                      tc.coupon_codes.c.uses).where(
            tc.coupon_codes.c.batch_id == batch_id).order_by(tc.coupon_codes.c.code)))
    return _csv_chunks(rows, batch_id)


def _csv_chunks(rows: list[Any], batch_id: str) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["code", "coupon", "batch", "status"])
    for start in range(0, len(rows), CHUNK_CODES):
        for code, coupon_id, uses in rows[start:start + CHUNK_CODES]:
            writer.writerow([code, coupon_id, batch_id, "used" if uses else "unused"])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()


# -- reads for the owner's page ---------------------------------------------------------

MAX_RECENT_USES = 200


def overview(engine: sa.Engine, program_id: str, recent: int = 20) -> dict[str, Any]:
    """Every coupon of the programme with its uses (standing and given back) and the
    discount its standing uses gave, every batch with how many of its codes are used,
    and the latest ``recent`` uses, newest first."""
    if not 1 <= recent <= MAX_RECENT_USES:
        raise InvalidField(f"recent must be from 1 to {MAX_RECENT_USES}", field="recent")

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        currency = programme.currency
        u, b, cc = tc.coupon_uses, tc.coupon_batches, tc.coupon_codes
        standing = sa.case((u.c.released_at.is_(None), 1), else_=0)
        uses = {row.coupon_id: row for row in uow.execute(
            sa.select(u.c.coupon_id, sa.func.sum(standing).label("used"),
                      sa.func.count().label("all"),
                      sa.func.sum(sa.case((u.c.released_at.is_(None), u.c.discount),
                                          else_=0)).label("discount"))
            .where(u.c.program_id == programme.id).group_by(u.c.coupon_id))}
        codes = {row.batch_id: row for row in uow.execute(
            sa.select(cc.c.batch_id, sa.func.count().label("codes"),
                      sa.func.sum(cc.c.uses).label("used"))
            .where(cc.c.program_id == programme.id).group_by(cc.c.batch_id))}
        batches = [
            {"id": row.id, "coupon": row.coupon_id, "prefix": row.prefix, "count": row.count,
             "created_at": row.created_at.astimezone(UTC).isoformat(),
             "used": int(codes[row.id].used or 0) if row.id in codes else 0}
            for row in uow.execute(sa.select(b).where(b.c.program_id == programme.id)
                                   .order_by(b.c.created_at.desc(), b.c.id))]
        listed = []
        for coupon in programme.model.coupons or []:
            found = uses.get(coupon.id)
            used = int(found.used or 0) if found else 0
            listed.append({
                "id": coupon.id, "name": coupon.name, "code": coupon.code,
                "discount": coupon.discount.model_dump(mode="json", exclude_none=True),
                "from": coupon.from_.isoformat() if coupon.from_ else None,
                "until": coupon.until.isoformat() if coupon.until else None,
                "max_uses": coupon.max_uses, "per_member": coupon.per_member,
                "min_spend": str(coupon.min_spend) if coupon.min_spend is not None else None,
                "categories": coupon.categories, "first_purchase": coupon.first_purchase,
                "new_members_days": coupon.new_members_days,
                "uses": used, "released": (int(found.all) - used) if found else 0,
                "discount_given": _money(Decimal(str(found.discount or 0)) if found
                                         else Decimal(0), currency),
                "codes": sum(batch["count"] for batch in batches
                             if batch["coupon"] == coupon.id),
            })
        latest = uow.execute(sa.select(u).where(u.c.program_id == programme.id)
                             .order_by(u.c.used_at.desc(), u.c.id.desc()).limit(recent))
        return {"currency": currency, "coupons": listed, "batches": batches,
                "uses": [_use_view(row, currency) for row in latest.mappings()]}

    return transaction(engine, work, read_only=True)
