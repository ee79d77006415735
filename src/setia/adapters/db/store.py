"""The unit of work: one database transaction, an identity map of what it loaded,
and one flush that writes every change with batched statements.

A service opens a ``UnitOfWork``, reads and locks what it needs (members are
locked ``FOR UPDATE`` on PostgreSQL; SQLite runs one writer at a time with
BEGIN IMMEDIATE), lets the domain change the loaded objects, and calls
``commit()``. Leaving the block without commit rolls everything back. The bulk
importer uses the same unit of work for hundreds of events, so a member loaded
once is written once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from setia.adapters.db import tables as t
from setia.domain.events import Event
from setia.domain.ledger import ASSET_POINTS, Allocation, Lot, MemberLedger, Posting
from setia.domain.member import Member
from setia.domain.money import minor_digits
from setia.domain.programme import Programme, compile_programme, validate_document
from setia.domain.refunds import Order, OrderLine
from setia.domain.tiers import Bucket

_programme_cache: dict[tuple[str, int, str], Programme] = {}
_programme_cache_lock = threading.Lock()
CHUNK = 500  # rows per IN (...) list: well under SQLite's bound-parameter limit


@dataclass(slots=True)
class PostingContext:
    ref: str
    program_version: int
    occurred_at: datetime


class UnitOfWork:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._members: dict[tuple[str, str], Member] = {}
        self._orders: dict[tuple[str, str], Order] = {}
        self._absent_orders: set[tuple[str, str]] = set()
        self._postings: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._committed = False

    # -- transaction ----------------------------------------------------------------

    def __enter__(self) -> UnitOfWork:
        self.conn = self.engine.connect()
        self.tx = self.conn.begin()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if not self._committed and self.tx.is_active:
                self.tx.rollback()
        finally:
            self.conn.close()

    def commit(self) -> None:
        self.flush()
        self.tx.commit()
        self._committed = True

    def execute(self, statement: Any, params: Any = None) -> sa.CursorResult[Any]:
        return self.conn.execute(statement, params)

    def _upsert(self, table: sa.Table, rows: list[dict[str, Any]], keys: list[str],
                update: list[str]) -> None:
        if not rows:
            return
        insert = postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)
        statement = insert.on_conflict_do_update(
            index_elements=keys, set_={name: insert.excluded[name] for name in update}
        )
        self.conn.execute(statement, rows)

    def insert_ignore(self, table: sa.Table, row: dict[str, Any], keys: list[str]) -> bool:
        """Insert unless the key exists; True if this call inserted the row."""
        insert = postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)
        result = self.conn.execute(insert.values(**row).on_conflict_do_nothing(index_elements=keys))
        return bool(result.rowcount)

    # -- programmes -----------------------------------------------------------------

    def current_version(self, program_id: str) -> int | None:
        return self.conn.execute(
            sa.select(t.programs.c.current_version).where(t.programs.c.id == program_id)
        ).scalar_one_or_none()

    def programme(self, program_id: str, version: int | None = None) -> Programme | None:
        # The cache is keyed by the definition's hash too: the same id and version may
        # hold another definition in another database (or after the tables were emptied).
        pv = t.program_versions
        if version is None:
            found = self.conn.execute(
                sa.select(pv.c.version, pv.c.definition_hash)
                .join(t.programs, sa.and_(t.programs.c.id == pv.c.program_id,
                                          t.programs.c.current_version == pv.c.version))
                .where(t.programs.c.id == program_id)
            ).one_or_none()
        else:
            found = self.conn.execute(
                sa.select(pv.c.version, pv.c.definition_hash)
                .where(pv.c.program_id == program_id, pv.c.version == version)
            ).one_or_none()
        if found is None:
            return None
        key = (program_id, found.version, found.definition_hash)
        cached = _programme_cache.get(key)
        if cached is not None:
            return cached
        definition = self.conn.execute(
            sa.select(pv.c.definition).where(pv.c.program_id == program_id,
                                             pv.c.version == found.version)
        ).scalar_one()
        programme = compile_programme(validate_document(json.loads(definition)), found.version)
        with _programme_cache_lock:
            _programme_cache[key] = programme
        return programme

    # -- members --------------------------------------------------------------------

    def member(self, program_id: str, member_id: str, *, lock: bool = True) -> Member | None:
        key = (program_id, member_id)
        found = self._members.get(key)
        if found is not None:
            return found
        query = sa.select(t.members).where(
            t.members.c.program_id == program_id, t.members.c.id == member_id
        )
        if lock:
            query = query.with_for_update()
        rows = self.conn.execute(query).mappings().all()
        loaded = self._load_members(program_id, rows)
        return loaded[0] if loaded else None

    def members_for_update(self, program_id: str, member_pks: Iterable[int], *,
                           skip_locked: bool = False) -> list[Member]:
        """Load and lock several members, in primary key order (a stable lock order).

        ``skip_locked`` (background work on PostgreSQL) leaves out members another
        transaction holds: another worker is on them, or the next run takes them."""
        pks = sorted(set(member_pks))
        loaded = {m.pk: m for m in self._members.values() if m.pk in pks}
        missing = [pk for pk in pks if pk not in loaded]
        for start in range(0, len(missing), CHUNK):
            rows = self.conn.execute(
                sa.select(t.members).where(t.members.c.pk.in_(missing[start:start + CHUNK]))
                .order_by(t.members.c.pk).with_for_update(skip_locked=skip_locked)
            ).mappings().all()
            for member in self._load_members(program_id, rows, eager_lots=True):
                loaded[member.pk] = member
        return [loaded[pk] for pk in pks if pk in loaded]

    def preload_members(self, program_id: str, member_ids: Iterable[str]) -> None:
        """Load and lock many members with a handful of queries (the bulk path)."""
        missing = sorted({m for m in member_ids if (program_id, m) not in self._members})
        for start in range(0, len(missing), CHUNK):
            rows = self.conn.execute(
                sa.select(t.members).where(t.members.c.program_id == program_id,
                                           t.members.c.id.in_(missing[start:start + CHUNK]))
                .order_by(t.members.c.pk).with_for_update()
            ).mappings().all()
            self._load_members(program_id, rows)

    def _load_members(self, program_id: str, rows: Any, *, eager_lots: bool = False
                      ) -> list[Member]:
        """Members from their rows, with their tier buckets and rule usage, each read for
        all of them at once. Open lots are read with them (``eager_lots``) or, per member,
        only when the ledger first needs them."""
        members: dict[int, Member] = {}
        for row in rows:
            ledger = MemberLedger(member_pk=row["pk"], available=row["available"],
                                  pending=row["pending"], reserved=row["reserved"],
                                  lot_seq=row["lot_seq"])
            members[row["pk"]] = Member(
                pk=row["pk"], program_id=row["program_id"], id=row["id"],
                enrolled_at=row["enrolled_at"], tier_id=row["tier_id"],
                tier_reviewed=row["tier_reviewed"], ledger=ledger, name=row["name"],
                email=row["email"], phone=row["phone"], birthday=row["birthday"],
                attributes=dict(row["attributes"] or {}), purchases=row["purchases"],
                last_activity_at=row["last_activity_at"], birthday_year=row["birthday_year"],
            )
        if not members:
            return []
        pks = list(members)
        if eager_lots:
            for member_pk, lots in self._open_lots(pks).items():
                members[member_pk].ledger.lots.update((lot.seq, lot) for lot in lots)
        else:
            for pk, member in members.items():
                member.ledger.lots_loader = lambda pk=pk: self._open_lots([pk]).get(pk, [])
        for bucket_row in self.conn.execute(
            sa.select(t.metric_buckets).where(t.metric_buckets.c.member_pk.in_(pks))
        ).mappings():
            members[bucket_row["member_pk"]].buckets[bucket_row["month"]] = Bucket(
                spend=Decimal(bucket_row["spend_e4"]).scaleb(-4),
                points=bucket_row["points"],
                visits=bucket_row["visits"],
            )
        for usage_row in self.conn.execute(
            sa.select(t.rule_usage).where(t.rule_usage.c.member_pk.in_(pks))
        ).mappings():
            key = (usage_row["rule_id"], usage_row["period"])
            members[usage_row["member_pk"]].usage[key] = usage_row["count"]
        for member in members.values():
            self._members[(program_id, member.id)] = member
        return list(members.values())

    def _open_lots(self, member_pks: list[int]) -> dict[int, list[Lot]]:
        found: dict[int, list[Lot]] = {pk: [] for pk in member_pks}
        for row in self.conn.execute(
            sa.select(t.lots).where(
                t.lots.c.member_pk.in_(member_pks),
                sa.or_(t.lots.c.remaining > 0, t.lots.c.pending.is_(True)),
            )
        ).mappings():
            found[row["member_pk"]].append(_lot(row))
        return found

    def load_lots(self, member: Member, seqs: Iterable[int]) -> None:
        """Bring lots a hold took points from back into memory so a release can refill them."""
        wanted = [seq for seq in set(seqs) if seq not in member.ledger.lots]
        if not wanted:
            return
        for lot_row in self.conn.execute(
            sa.select(t.lots).where(t.lots.c.member_pk == member.pk, t.lots.c.seq.in_(wanted))
        ).mappings():
            member.ledger.lots[lot_row["seq"]] = _lot(lot_row)

    def add_member(self, program_id: str, member_id: str, *, enrolled_at: datetime,
                   tier_id: str, tier_reviewed: str, profile: dict[str, Any]) -> Member | None:
        """Insert a new member; None if it already exists (a concurrent enrolment won)."""
        row = {
            "program_id": program_id, "id": member_id, "enrolled_at": enrolled_at,
            "tier_id": tier_id, "tier_reviewed": tier_reviewed, "available": 0, "pending": 0,
            "reserved": 0, "lot_seq": 0, "purchases": 0, "last_activity_at": None,
            "birthday_year": None, "name": profile.get("name"), "email": profile.get("email"),
            "phone": profile.get("phone"), "birthday": profile.get("birthday"),
            "attributes": profile.get("attributes") or {},
        }
        if not self.insert_ignore(t.members, row, ["program_id", "id"]):
            return None
        return self.member(program_id, member_id)

    def update_profile(self, member: Member) -> None:
        self.conn.execute(
            t.members.update().where(t.members.c.pk == member.pk).values(
                name=member.name, email=member.email, phone=member.phone,
                birthday=member.birthday, attributes=member.attributes,
            )
        )

    # -- journal --------------------------------------------------------------------

    def record(self, program_id: str, member: Member, context: PostingContext) -> list[Posting]:
        """Take the postings the domain made for ``member`` into this transaction."""
        made = member.ledger.postings
        member.ledger.postings = []
        for posting in made:
            self._postings.append({
                "program_id": program_id, "asset": ASSET_POINTS, "member_pk": member.pk,
                "debit": posting.debit, "credit": posting.credit, "points": posting.points,
                "code": posting.code, "ref": context.ref, "rule_id": posting.rule_id,
                "program_version": context.program_version,
                "explanation": posting.explanation[:400], "occurred_at": context.occurred_at,
                "debit_balance_after": posting.debit_balance_after,
                "credit_balance_after": posting.credit_balance_after,
            })
        return made

    # -- events and commands -----------------------------------------------------------

    def stored_event(self, program_id: str, event_id: str) -> Any:
        return self.conn.execute(
            sa.select(t.events.c.request_hash, t.events.c.result).where(
                t.events.c.program_id == program_id, t.events.c.id == event_id
            )
        ).one_or_none()

    def stored_events(self, program_id: str, event_ids: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for start in range(0, len(event_ids), 500):
            chunk = event_ids[start:start + 500]
            for row in self.conn.execute(
                sa.select(t.events.c.id, t.events.c.request_hash, t.events.c.result).where(
                    t.events.c.program_id == program_id, t.events.c.id.in_(chunk)
                )
            ):
                found[row.id] = row
        return found

    def add_event(self, program_id: str, event: Event, request_hash: str,
                  payload: dict[str, Any], result: dict[str, Any], recorded_at: datetime) -> None:
        self._events.append({
            "program_id": program_id, "id": event.id, "type": event.type,
            "member_id": event.member, "occurred_at": event.occurred_at,
            "request_hash": request_hash, "payload": payload, "result": result,
            "recorded_at": recorded_at,
        })

    def stored_command(self, program_id: str, key: str) -> Any:
        return self.conn.execute(
            sa.select(t.commands.c.operation, t.commands.c.request_hash, t.commands.c.result)
            .where(t.commands.c.program_id == program_id, t.commands.c.key == key)
        ).one_or_none()

    def add_command(self, program_id: str, key: str, operation: str, request_hash: str,
                    result: dict[str, Any], recorded_at: datetime) -> None:
        self.conn.execute(t.commands.insert().values(
            program_id=program_id, key=key, operation=operation, request_hash=request_hash,
            result=result, recorded_at=recorded_at,
        ))

    # -- orders ---------------------------------------------------------------------------

    def order(self, program_id: str, order_id: str, currency: str) -> Order | None:
        key = (program_id, order_id)
        if key in self._absent_orders:
            return None
        found = self._orders.get(key)
        if found is None:
            self.preload_orders(program_id, [order_id], currency)
            found = self._orders.get(key)
        return found

    def preload_orders(self, program_id: str, order_ids: Iterable[str], currency: str) -> None:
        """Read many orders at once; remember the ones that do not exist."""
        missing = sorted({o for o in order_ids if (program_id, o) not in self._orders
                          and (program_id, o) not in self._absent_orders})
        for start in range(0, len(missing), CHUNK):
            chunk = missing[start:start + CHUNK]
            found: set[str] = set()
            for row in self.conn.execute(
                sa.select(t.orders).where(t.orders.c.program_id == program_id,
                                          t.orders.c.order_id.in_(chunk))
            ).mappings():
                found.add(row["order_id"])
                self._orders[(program_id, row["order_id"])] = _order(row, currency)
            self._absent_orders.update((program_id, o) for o in chunk if o not in found)

    def add_order(self, program_id: str, order: Order) -> None:
        order.new = True
        self._orders[(program_id, order.order_id)] = order
        self._absent_orders.discard((program_id, order.order_id))

    # -- flush ------------------------------------------------------------------------------

    def flush(self) -> None:
        conn = self.conn
        if self._postings:
            conn.execute(t.postings.insert(), self._postings)
            self._postings = []
        new_lots: list[dict[str, Any]] = []
        changed_lots: list[dict[str, Any]] = []
        member_rows: list[dict[str, Any]] = []
        bucket_rows: list[dict[str, Any]] = []
        usage_rows: list[dict[str, Any]] = []
        for member in self._members.values():
            ledger = member.ledger
            for lot in ledger.lots.values():
                if lot.new:
                    new_lots.append(_lot_row(member, lot))
                    lot.new = False
                    lot.dirty = False
                elif lot.dirty:
                    changed_lots.append({"b_member_pk": member.pk, "b_seq": lot.seq,
                                         "remaining": lot.remaining, "pending": lot.pending})
                    lot.dirty = False
            ledger.new_lots.clear()
            member_rows.append({
                "b_pk": member.pk, "tier_id": member.tier_id,
                "tier_reviewed": member.tier_reviewed, "available": ledger.available,
                "pending": ledger.pending, "reserved": ledger.reserved,
                "lot_seq": ledger.lot_seq, "purchases": member.purchases,
                "last_activity_at": member.last_activity_at,
                "birthday_year": member.birthday_year,
            })
            for month in member.dirty_buckets:
                bucket = member.buckets[month]
                bucket_rows.append({
                    "member_pk": member.pk, "month": month,
                    "spend_e4": _minor(bucket.spend), "points": bucket.points,
                    "visits": bucket.visits,
                })
            member.dirty_buckets.clear()
            for rule_id, period in member.dirty_usage:
                usage_rows.append({"member_pk": member.pk, "rule_id": rule_id,
                                   "period": period, "count": member.usage[(rule_id, period)]})
            member.dirty_usage.clear()
            ledger.check()
        if new_lots:
            conn.execute(t.lots.insert(), new_lots)
        if changed_lots:
            conn.execute(
                t.lots.update()
                .where(t.lots.c.member_pk == sa.bindparam("b_member_pk"),
                       t.lots.c.seq == sa.bindparam("b_seq"))
                .values(remaining=sa.bindparam("remaining"), pending=sa.bindparam("pending")),
                changed_lots,
            )
        if member_rows:
            conn.execute(
                t.members.update().where(t.members.c.pk == sa.bindparam("b_pk")).values(
                    {name: sa.bindparam(name) for name in member_rows[0] if name != "b_pk"}
                ),
                member_rows,
            )
        self._upsert(t.metric_buckets, bucket_rows, ["member_pk", "month"],
                     ["spend_e4", "points", "visits"])
        self._upsert(t.rule_usage, usage_rows, ["member_pk", "rule_id", "period"], ["count"])
        self._flush_orders()
        if self._events:
            conn.execute(t.events.insert(), self._events)
            self._events = []

    def _flush_orders(self) -> None:
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for (program_id, order_id), order in self._orders.items():
            lines = [{"sku": line.sku, "category": line.category, "quantity": line.quantity,
                      "amount": str(line.amount), "refunded": str(line.refunded)}
                     for line in order.lines]
            if order.new:
                inserts.append({
                    "program_id": program_id, "order_id": order_id, "member_pk": order.member_pk,
                    "event_id": order.event_id, "program_version": order.program_version,
                    "tier_id": order.tier_id, "occurred_at": order.occurred_at,
                    "amount_e4": _minor(order.amount), "refunded_e4": _minor(order.refunded),
                    "lines": lines, "awards": order.awards, "event": order.payload,
                })
                order.new = False
                order.dirty = False
            elif order.dirty:
                updates.append({"b_program_id": program_id, "b_order_id": order_id,
                                "refunded_e4": _minor(order.refunded), "lines": lines,
                                "awards": order.awards})
                order.dirty = False
        if inserts:
            self.conn.execute(t.orders.insert(), inserts)
        if updates:
            self.conn.execute(
                t.orders.update().where(
                    t.orders.c.program_id == sa.bindparam("b_program_id"),
                    t.orders.c.order_id == sa.bindparam("b_order_id"),
                ).values(refunded_e4=sa.bindparam("refunded_e4"),
                         lines=sa.bindparam("lines"), awards=sa.bindparam("awards")),
                updates,
            )


def _minor(amount: Decimal) -> int:
    """Orders and buckets keep amounts in ten-thousandths of the unit (``_e4`` columns),
    enough for every ISO 4217 currency, so one column type serves every programme."""
    return int(amount.scaleb(4))


def _from_e4(value: int, currency: str) -> Decimal:
    return Decimal(value).scaleb(-4).quantize(Decimal(1).scaleb(-minor_digits(currency)))


def _order(row: Any, currency: str) -> Order:
    return Order(
        order_id=row["order_id"], member_pk=row["member_pk"], event_id=row["event_id"],
        program_version=row["program_version"], tier_id=row["tier_id"],
        occurred_at=row["occurred_at"], amount=_from_e4(row["amount_e4"], currency),
        refunded=_from_e4(row["refunded_e4"], currency),
        lines=[OrderLine(sku=line["sku"], category=line.get("category"),
                         quantity=line["quantity"], amount=Decimal(line["amount"]),
                         refunded=Decimal(line["refunded"])) for line in row["lines"]],
        awards=dict(row["awards"]), payload=dict(row["event"]),
    )


def _lot(row: Any) -> Lot:
    return Lot(seq=row["seq"], source=row["source"], points=row["points"],
               remaining=row["remaining"], available_at=row["available_at"],
               expires_at=row["expires_at"], pending=bool(row["pending"]),
               order_id=row["order_id"])


def _lot_row(member: Member, lot: Lot) -> dict[str, Any]:
    return {"member_pk": member.pk, "seq": lot.seq, "program_id": member.program_id,
            "source": lot.source[:200], "order_id": lot.order_id, "points": lot.points,
            "remaining": lot.remaining, "available_at": lot.available_at,
            "expires_at": lot.expires_at, "pending": lot.pending}


def allocations_json(allocations: list[Allocation]) -> list[list[int]]:
    return [[a.lot_seq, a.points] for a in allocations]


def allocations_from_json(raw: list[list[int]]) -> list[Allocation]:
    return [Allocation(lot_seq=seq, points=points) for seq, points in raw]
