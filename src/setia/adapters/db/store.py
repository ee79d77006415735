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

import functools
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa
from psycopg.types.json import Json
from sqlalchemy.dialects import postgresql, sqlite

from setia.adapters.db import tables as t
from setia.adapters.db import tables_trust as tt
from setia.adapters.db.engine import json_text
from setia.adapters.db.tables import naive_utc
from setia.domain.events import Event
from setia.domain.ledger import ASSET_POINTS, Allocation, Lot, MemberLedger, Posting
from setia.domain.member import Member
from setia.domain.money import minor_digits
from setia.domain.programme import Programme, compile_programme, validate_document
from setia.domain.refunds import Order, OrderLine
from setia.domain.tiers import Bucket

_programme_cache: dict[tuple[str, int, str], Programme] = {}
_programme_cache_lock = threading.Lock()
# The programme each id was last found current with, per process: (version, definition
# hash, programme). Only a hint: a caller that uses it confirms it against the version and
# hash the member statement reads (``UnitOfWork.is_current``) before anything is applied.
_current: dict[str, tuple[int, str, Programme]] = {}
COPY_MIN = 64  # PostgreSQL: inserts of at least this many rows of one table go by COPY
BULK_MIN = 16  # PostgreSQL: other writes of at least this many rows go as one array statement


def _among(dialect: str, column: Any, values: list[Any]) -> Any:
    """``column IN (values)``. On PostgreSQL ``column = ANY(:array)``: one parameter, so the
    statement's text is the same for any number of values and SQLAlchemy and psycopg reuse
    their compiled forms (an IN list of 1,000 values was rendered and split anew for every
    batch, about a tenth of the batch's time)."""
    if dialect == "postgresql":
        return column == sa.any_(sa.bindparam(None, values, type_=postgresql.ARRAY(column.type)))
    return column.in_(values)


def _among_bound(dialect: str, column: Any, name: str) -> Any:
    """``_among`` with its values bound later by ``name``: ``column = ANY(:name)`` on
    PostgreSQL, an expanding ``IN (:name)`` elsewhere."""
    if dialect == "postgresql":
        return column == sa.any_(sa.bindparam(name, type_=postgresql.ARRAY(column.type)))
    return column.in_(sa.bindparam(name, expanding=True))


_queries: dict[tuple[str, str], Any] = {}


def _query(dialect: str, name: str, build: Callable[[Callable[[Any, str], Any]], Any]) -> Any:
    """A statement built once per dialect, its values bound by name at execution; ``build``
    gets ``among(column, name)`` (``_among_bound``). Building a select and its cache key
    anew for every call cost more than running it when a batch holds a few events
    (docs/benchmarks-api.md, "Latest round")."""
    found = _queries.get((dialect, name))
    if found is None:
        found = _queries[(dialect, name)] = build(functools.partial(_among_bound, dialect))
    return found


def _chunks(dialect: str, values: list[Any], size: int = 500) -> Iterable[list[Any]]:
    """``values`` in lists of ``size`` (SQLite's bound-parameter limit), or whole on
    PostgreSQL, where ``_among`` passes them as one array."""
    step = max(len(values), 1) if dialect == "postgresql" else size
    for start in range(0, len(values), step):
        yield values[start:start + step]


@dataclass(slots=True)
class PostingContext:
    ref: str
    program_version: int
    occurred_at: datetime


class PrunedEvent(NamedTuple):
    request_hash: str
    result: dict[str, Any]


# An event id whose event was pruned (event retention) but stays registered (PostgreSQL):
# looked up as a stored event, its hash matches no request, so any new use of the id is a
# conflict instead of an insert that collides with the registered id.
PRUNED = PrunedEvent("", {})


class _Formats:
    """Column values as the driver takes them, made by the columns' own SQLAlchemy bind
    processors (so SQLite and PostgreSQL store exactly what a Core statement would store),
    and the driver-level SQL the flush runs with ``executemany``.

    The flush bypasses SQLAlchemy's per-row parameter processing: with hundreds of
    events per unit of work that processing cost more than the inserts themselves."""

    def __init__(self, dialect: sa.Dialect) -> None:
        def processor(column: sa.Column[Any]) -> Any:
            return column.type.dialect_impl(dialect).bind_processor(dialect)

        self._ts = processor(t.postings.c.occurred_at)
        self.json = processor(t.events.c.payload) or _identity
        if dialect.name == "sqlite":
            # What UTCDateTime and SQLite's DATETIME store, without two function layers.
            self._ts = _utc_text
            if getattr(dialect, "_json_serializer", None) is json_text:
                self.json = json_text  # what the JSON type stores, without its function layer
        elif (dialect.name == "postgresql" and dialect.driver == "psycopg"
              and getattr(dialect, "_json_serializer", None) is orjson.dumps):
            # The text psycopg's Json dumper would send (it calls the engine's orjson.dumps),
            # made in C: a str goes to the server untyped and is cast to the JSON column, in
            # COPY, statements and _json_rows alike. The dumper's Python layers were 4 % of a
            # batch event's time.
            self.json = json_text
            if sa.DateTime().dialect_impl(dialect).bind_processor(dialect) is None:
                # UTCDateTime's naive UTC, as text: it goes untyped and is cast to the
                # column, as the JSON text does. psycopg formats a datetime for COPY five
                # times slower than it copies a str, and a time is converted once per unit
                # of work but written in several rows (postings, event, lot, order).
                self._ts = _utc_text
        self.bool = processor(t.lots.c.pending) or _identity
        mark = self.mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self.sql: dict[str, str] = {}
        self.sql["postings"] = _insert_sql(mark, "postings", POSTING_COLUMNS)
        self.sql["events"] = _insert_sql(mark, "events", EVENT_COLUMNS)
        self.sql["lots"] = _insert_sql(mark, "lots", LOT_COLUMNS)
        self.sql["orders"] = _insert_sql(mark, "orders", ORDER_COLUMNS)
        # PostgreSQL: a large insert goes by COPY (see UnitOfWork._send_writes)
        self.copy = {name: f'COPY "{name}" ({_names(columns)}) FROM STDIN'
                     for name, columns in (("postings", POSTING_COLUMNS),
                                           ("events", EVENT_COLUMNS), ("lots", LOT_COLUMNS),
                                           ("orders", ORDER_COLUMNS))}
        self.sql["lots_update"] = _update_sql(mark, "lots", LOT_UPDATE_COLUMNS,
                                              ("member_pk", "seq"))
        self.sql["members_update"] = _update_sql(mark, "members", MEMBER_UPDATE_COLUMNS, ("pk",))
        self.sql["orders_update"] = _update_sql(mark, "orders",
                                                ("refunded_e4", "lines", "awards"),
                                                ("program_id", "order_id"))
        self.sql["buckets"] = _upsert_sql(mark, "metric_buckets",
                                          ("member_pk", "month", "spend_e4", "points", "visits"),
                                          2)
        self.sql["usage"] = _upsert_sql(mark, "rule_usage",
                                        ("member_pk", "rule_id", "period", "count"), 3)
        # PostgreSQL: a large update or upsert goes as one statement over arrays (see
        # UnitOfWork._send_writes); with the positions of the row's key, to keep one row a key
        self.bulk: dict[str, tuple[str, tuple[int, ...]]] = {}
        if dialect.name == "postgresql":
            self.bulk = {
                "lots_update": _bulk_update("lots", LOT_UPDATE_COLUMNS, ("member_pk", "seq")),
                "members_update": _bulk_update("members", MEMBER_UPDATE_COLUMNS, ("pk",)),
                "orders_update": _bulk_update("orders", ("refunded_e4", "lines", "awards"),
                                              ("program_id", "order_id")),
                "buckets": _bulk_upsert("metric_buckets",
                                        ("member_pk", "month", "spend_e4", "points", "visits"), 2),
                "usage": _bulk_upsert("rule_usage", ("member_pk", "rule_id", "period", "count"),
                                      3),
            }

    def ts(self, value: datetime | None) -> Any:
        """A time as stored (naive UTC)."""
        if value is None:
            return None
        return self._ts(value) if self._ts is not None else value


class _Times:
    """Times converted once per unit of work: the postings, event row, order and member of
    one event share the event's time, every event of a batch its ``recorded_at``, and lots
    earned the same day the same ``available_at`` and ``expires_at``, each computed anew.
    Keyed by value: equal aware datetimes are the same instant, stored alike; except that
    two in one zone compare by wall clock, ``fold`` ignored, so a time in the second pass
    of a repeated hour (``fold=1``) is converted on its own."""

    def __init__(self, formats: _Formats) -> None:
        self._convert = formats.ts
        self._done: dict[datetime, Any] = {}

    def __call__(self, value: datetime | None) -> Any:
        if value is None:
            return None
        if value.fold:
            return self._convert(value)
        stored = self._done.get(value)
        if stored is None:
            stored = self._done[value] = self._convert(value)
        return stored

    def clear(self) -> None:
        self._done.clear()


POSTING_COLUMNS = ("program_id", "asset", "member_pk", "debit", "credit", "points", "code", "ref",
                   "rule_id", "program_version", "explanation", "occurred_at",
                   "debit_balance_after", "credit_balance_after")
EVENT_COLUMNS = ("program_id", "id", "type", "member_id", "occurred_at", "request_hash",
                 "payload", "result", "recorded_at", "partner")
LOT_COLUMNS = ("member_pk", "seq", "program_id", "source", "order_id", "points", "remaining",
               "available_at", "expires_at", "pending")
# What a lot already stored can change: what is left, whether it is pending, and when it is
# due (a review holds it until a decision, and an approval sets the time it was due again).
LOT_UPDATE_COLUMNS = ("remaining", "pending", "available_at")
ORDER_COLUMNS = ("program_id", "order_id", "member_pk", "event_id", "program_version", "tier_id",
                 "occurred_at", "amount_e4", "refunded_e4", "lines", "awards", "event", "partner")
MEMBER_UPDATE_COLUMNS = ("tier_id", "tier_reviewed", "available", "pending", "reserved",
                         "lot_seq", "purchases", "last_activity_at", "birthday_year")


def _identity(value: Any) -> Any:
    return value


def _utc_text(value: datetime) -> str:
    """Naive UTC as "YYYY-MM-DD HH:MM:SS.ffffff": SQLAlchemy's SQLite DATETIME format, and
    what PostgreSQL reads into UTCDateTime's ``timestamp without time zone``."""
    assert value.tzinfo is not None, "times are stored from aware datetimes only"
    return naive_utc(value).isoformat(" ", "microseconds")


def _names(columns: Iterable[str]) -> str:
    return ", ".join(f'"{name}"' for name in columns)


def _insert_sql(mark: str, table: str, columns: tuple[str, ...]) -> str:
    return (f'INSERT INTO "{table}" ({_names(columns)}) '
            f"VALUES ({', '.join(mark for _ in columns)})")


def _update_sql(mark: str, table: str, columns: tuple[str, ...], keys: tuple[str, ...]) -> str:
    assignments = ", ".join(f'"{name}" = {mark}' for name in columns)
    where = " AND ".join(f'"{name}" = {mark}' for name in keys)
    return f'UPDATE "{table}" SET {assignments} WHERE {where}'


def _upsert_sql(mark: str, table: str, columns: tuple[str, ...], keys: int) -> str:
    update = ", ".join(f'"{name}" = excluded."{name}"' for name in columns[keys:])
    return (f"{_insert_sql(mark, table, columns)} "
            f"ON CONFLICT ({_names(columns[:keys])}) DO UPDATE SET {update}")


def _json_table(table: str, columns: tuple[str, ...]) -> str:
    """The rows of one JSON parameter (an array of rows, each an array of values: see
    ``_json_rows``), every value cast to its column's type and named as the column.

    One ``jsonb`` text instead of one array parameter per column: psycopg builds array
    parameters in Python, value by value (about 13 ms per 1,000 member rows), where orjson
    writes the whole text in C (0.2 ms); PostgreSQL parses it in about the same time as
    the arrays."""
    dialect = postgresql.dialect()
    found = t.metadata.tables[table].c
    values = ", ".join(f'(r->>{i})::{found[name].type.compile(dialect=dialect)} AS "{name}"'
                       for i, name in enumerate(columns))
    return f"(SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS r) AS v"


def _bulk_insert(table: str, columns: tuple[str, ...], conflict: str = "") -> str:
    return (f'INSERT INTO "{table}" ({_names(columns)}) '
            f"SELECT {_names(columns)} FROM {_json_table(table, columns)}{conflict}")


def _bulk_update(table: str, columns: tuple[str, ...],
                 keys: tuple[str, ...]) -> tuple[str, tuple[int, ...]]:
    assignments = ", ".join(f'"{name}" = v."{name}"' for name in columns)
    where = " AND ".join(f't."{name}" = v."{name}"' for name in keys)
    sql = (f'UPDATE "{table}" AS t SET {assignments} FROM {_json_table(table, columns + keys)} '
           f"WHERE {where}")
    return sql, tuple(range(len(columns), len(columns) + len(keys)))


def _bulk_upsert(table: str, columns: tuple[str, ...],
                 keys: int) -> tuple[str, tuple[int, ...]]:
    update = ", ".join(f'"{name}" = excluded."{name}"' for name in columns[keys:])
    conflict = f" ON CONFLICT ({_names(columns[:keys])}) DO UPDATE SET {update}"
    return _bulk_insert(table, columns, conflict), tuple(range(keys))


def _json_value(value: Any) -> Any:
    """What orjson does not write itself, as PostgreSQL casts it from text: a JSON column's
    value as the very text psycopg would send (so ``(r->>i)::json`` stores it unchanged),
    naive times (the flush's own times are text already, naive UTC) and Decimals as text."""
    if isinstance(value, Json):
        text = value.dumps(value.obj) if value.dumps is not None else json.dumps(value.obj)
        return text.decode() if isinstance(text, bytes) else text
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            raise TypeError("an aware time reached a bulk write; the flush stores naive UTC")
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"no JSON form for {type(value).__name__} in a bulk write")


def _json_rows(rows: list[tuple[Any, ...]], key: tuple[int, ...]) -> str:
    """The rows as one JSON text for ``_json_table``. With ``key``, only the last row of each
    key is kept (in its place): one statement may not update a row twice, and the last row
    is what a statement per row would have left."""
    if key:
        last = {tuple(row[i] for i in key): index for index, row in enumerate(rows)}
        if len(last) < len(rows):
            rows = [rows[index] for index in sorted(last.values())]
    return orjson.dumps(rows, default=_json_value,
                        option=orjson.OPT_PASSTHROUGH_DATETIME).decode()


_formats: dict[int, tuple[sa.Dialect, _Formats]] = {}
# insert_later's statements by (mark, table, columns, skip_on): a few dozen at most.
_later_sql: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], str] = {}
# ... and on PostgreSQL the same insert over arrays, by the statement's text
_later_bulk: dict[str, tuple[str, tuple[int, ...]]] = {}


def _formats_for(dialect: sa.Dialect) -> _Formats:
    found = _formats.get(id(dialect))
    if found is None or found[0] is not dialect:
        found = (dialect, _Formats(dialect))
        with _programme_cache_lock:
            _formats[id(dialect)] = found
    return found[1]


class UnitOfWork:
    def __init__(self, engine: sa.Engine, *, read_only: bool = False,
                 after_collision: bool = False) -> None:
        self.engine = engine
        self.read_only = read_only
        # A retry after a write collided with a key: event lookups find registered ids too,
        # as ``PRUNED``: a pruned id sent again (a client's, or a signup id Setia makes
        # again) collides with its registered id on the first attempt, and is found so on
        # the retry. The first attempt of an event looks up events only.
        self.after_collision = after_collision
        self.dialect = engine.dialect.name
        self._members: dict[tuple[str, str], Member] = {}
        self._orders: dict[tuple[str, str], Order] = {}
        self._absent_orders: set[tuple[str, str]] = set()
        # When each member's orders added here (not yet written) were made: (program id,
        # member pk) -> times, for reads that must see them before the flush writes them.
        self._new_order_times: dict[tuple[str, int], list[datetime]] = {}
        self._postings: list[tuple[Any, ...]] = []
        self._events: list[tuple[Any, ...]] = []
        self._formats = _formats_for(engine.dialect)
        self._times = _Times(self._formats)
        self._looked_up: dict[tuple[str, str], Any] = {}  # stored events, read in bulk
        # Members the bulk importer inserted ahead of their enrolment (prepare_members):
        # absent to ``member`` until ``add_member`` enrols them, at the same point as before.
        self._prepared: dict[tuple[str, str], tuple[Member, datetime, str, str]] = {}
        self._committed = False
        # (name of a table or statement in _Formats.sql, or the SQL itself; rows)
        self._writes: list[tuple[str, list[tuple[Any, ...]]]] = []
        # (current version, definition hash) of each programme as this transaction read it
        self._seen_programmes: dict[str, tuple[int, str]] = {}
        # What the single-event path will look up after locking its member: the event id
        # (idempotency) and a purchase's order id, read in the member's second statement.
        self._expected: tuple[str, str, str | None] | None = None
        self._details_asked: tuple[str | None, str | None] = (None, None)

    # -- transaction ----------------------------------------------------------------

    def __enter__(self) -> UnitOfWork:
        self.conn = self.engine.connect()
        if self.read_only and self.dialect == "postgresql":
            # BEGIN READ ONLY (psycopg sends it with the first statement); the pool sets the
            # connection back to read-write when it is returned.
            self.conn.execution_options(postgresql_readonly=True)
        self.tx = self.conn.begin()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if not self._committed and self.tx.is_active:
                if self.read_only and exc_type is None:
                    # A read ends with COMMIT, not ROLLBACK: psycopg drops every statement
                    # it prepared on the connection at a ROLLBACK (and sends DEALLOCATE ALL),
                    # so the next transaction on it would parse and plan them all again.
                    # The transaction is READ ONLY on PostgreSQL: there is nothing to keep.
                    self.tx.commit()
                else:
                    self.tx.rollback()
        finally:
            self.conn.close()
            # Loaded members point back here (their lazy lot loaders): let go of them so that
            # a bulk import's thousands of objects are freed now, not by a full GC pass.
            self._members.clear()
            self._orders.clear()
            self._new_order_times.clear()
            self._prepared.clear()

    def commit(self) -> None:
        self.flush(commit=True)
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
        """Insert unless the key exists; True if this call inserted the row. Told by the row
        the insert returns, not by its row count: for a table with a generated key,
        SQLAlchemy adds RETURNING, and psycopg's row count is then -1 whether or not a
        row was inserted."""
        insert = postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)
        statement: Any = (insert.values(**row).on_conflict_do_nothing(index_elements=keys)
                     .returning(sa.literal_column("1")))
        return self.conn.execute(statement).first() is not None

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
            found = self.conn.execute(_query(self.dialect, "current_programme", lambda _: (
                sa.select(pv.c.version, pv.c.definition_hash)
                .join(t.programs, sa.and_(t.programs.c.id == pv.c.program_id,
                                          t.programs.c.current_version == pv.c.version))
                .where(t.programs.c.id == sa.bindparam("program_id"))
            )), {"program_id": program_id}).one_or_none()
        else:
            found = self.conn.execute(
                sa.select(pv.c.version, pv.c.definition_hash)
                .where(pv.c.program_id == program_id, pv.c.version == version)
            ).one_or_none()
        if found is None:
            return None
        key = (program_id, found.version, found.definition_hash)
        cached = _programme_cache.get(key)
        if cached is None:
            cached = self._compile(program_id, key)
        if version is None:
            _current[program_id] = (found.version, found.definition_hash, cached)
            self._seen_programmes[program_id] = (found.version, found.definition_hash)
        return cached

    def _compile(self, program_id: str, key: tuple[str, int, str]) -> Programme:
        pv = t.program_versions
        version = key[1]
        definition = self.conn.execute(
            sa.select(pv.c.definition).where(pv.c.program_id == program_id,
                                             pv.c.version == version)
        ).scalar_one()
        programme = compile_programme(validate_document(orjson.loads(definition)), version)
        with _programme_cache_lock:
            _programme_cache[key] = programme
        return programme

    def cached_programme(self, program_id: str) -> Programme | None:
        """The programme last found current for this id in this process; no query. A hint
        to confirm with ``is_current`` once the member statement has run."""
        found = _current.get(program_id)
        return found[2] if found is not None else None

    def is_current(self, programme: Programme) -> bool:
        """Whether ``programme`` is the current version according to what this transaction
        read (with the member row, or by ``programme``); False if it read nothing yet."""
        found = _current.get(programme.id)
        seen = self._seen_programmes.get(programme.id)
        return (seen is not None and found is not None and found[2] is programme
                and seen == found[:2])

    # -- members --------------------------------------------------------------------

    def member(self, program_id: str, member_id: str, *, lock: bool = True,
               usage: bool = True, lots: bool = False) -> Member | None:
        """The member, locked (``lock``), with its tier buckets, its rule usage unless
        ``usage`` is False (a read-only view) and its open lots if ``lots`` (else read when
        the ledger first needs them): two statements. The first also reads the programme's
        current version for ``is_current``."""
        key = (program_id, member_id)
        found = self._members.get(key)
        if found is not None:
            return found
        if key in self._prepared:
            return None  # inserted ahead of its enrolment, which has not happened yet
        driver = self._psycopg()
        if driver is not None:
            return self._member_pipelined(driver, program_id, member_id, lock=lock,
                                          usage=usage, lots=lots)
        rows = self.conn.execute(
            _member_query(self.dialect, lock), {"program_id": program_id, "member_id": member_id}
        ).mappings().all()
        if not rows:
            return None
        row = rows[0]
        if row["current_version"] is not None:
            self._seen_programmes[program_id] = (row["current_version"], row["definition_hash"])
        loaded = self._load_members(program_id, rows, details=False)
        sql, params = self._details_statement(program_id, loaded[0].pk, None, usage=usage,
                                              lots=lots)
        self._apply_details(program_id, loaded[0], self.conn.exec_driver_sql(sql, params).one(),
                            usage=usage, lots=lots)
        return loaded[0]

    def _psycopg(self) -> Any:
        """The psycopg connection under this unit of work, or None (SQLite, other drivers)."""
        if self.dialect != "postgresql":
            return None
        import psycopg

        driver = self.conn.connection.driver_connection
        return driver if isinstance(driver, psycopg.Connection) else None

    def _cursors(self, driver: Any) -> tuple[Any, Any]:
        """Two psycopg cursors of this connection, made once per pooled connection and
        kept in its ``info`` (which goes with the connection when the pool discards it):
        a cursor holds no server state, and making three per event cost about 4 % of the
        single-event path's Python."""
        info = self.conn.connection.info  # cleared when the connection is closed or lost
        found = info.get("setia_cursors")
        if found is None or found[0].connection is not driver or found[0].closed \
                or found[1].closed:
            found = info["setia_cursors"] = (driver.cursor(), driver.cursor())
        return found

    def _member_pipelined(self, driver: Any, program_id: str, member_id: str, *, lock: bool,
                          usage: bool, lots: bool) -> Member | None:
        """PostgreSQL: the member statement and the details statement in one psycopg
        pipeline (with the transaction's BEGIN): one round trip instead of three. The
        server still runs them one after the other, so the details statement's snapshot is
        taken after the member's lock was granted, exactly as when sent one by one; it finds
        the member by programme and id instead of by the key the first one returns."""
        import psycopg

        member_sql, names, processors = _member_sql(self.engine.dialect, lock)
        details_sql, details_params = self._details_statement(
            program_id, None, member_id, usage=usage, lots=lots)
        sql = member_sql
        first, second = self._cursors(driver)
        try:
            with driver.pipeline():
                first.execute(member_sql, {"program_id": program_id, "member_id": member_id},
                              prepare=True)
                sql = details_sql
                second.execute(details_sql, details_params, prepare=True)
            found = first.fetchall()
            details = second.fetchone()
        except psycopg.Error as exc:
            raise self._driver_error(driver, sql, exc) from exc
        if not found:
            return None
        row = {name: (value if process is None else process(value))
               for name, value, process in zip(names, found[0], processors, strict=True)}
        if row["current_version"] is not None:
            self._seen_programmes[program_id] = (row["current_version"], row["definition_hash"])
        loaded = self._load_members(program_id, [row], details=False)
        self._apply_details(program_id, loaded[0], details, usage=usage, lots=lots)
        return loaded[0]

    def _driver_error(self, driver: Any, sql: str, exc: Exception) -> Exception:
        """A psycopg error as SQLAlchemy would raise it (IntegrityError, OperationalError,
        ...), so that ``transaction`` retries what it retries; a lost connection is
        invalidated."""
        import psycopg

        lost = driver.broken or driver.closed
        if lost:
            self.conn.invalidate(exc)
        return sa.exc.DBAPIError.instance(sql, None, exc, psycopg.Error,
                                          connection_invalidated=bool(lost),
                                          dialect=self.engine.dialect)

    def expect(self, program_id: str, event_id: str, order_id: str | None) -> None:
        """Read this event id's stored result (and whether this new order id exists) with
        the next member loaded, instead of with statements of their own."""
        self._expected = (program_id, event_id, order_id)

    def _details_statement(self, program_id: str, member_pk: int | None, member_id: str | None,
                           *, usage: bool, lots: bool) -> tuple[str, tuple[Any, ...]]:
        """One member's tier buckets and rule usage (and open lots if ``lots``), and what
        ``expect`` asked for, in one statement; the member by key, or by programme and id.
        It runs after the statement that locked the member, so (under READ COMMITTED) it
        sees everything committed before the lock was granted."""
        expected, self._expected = self._expected, None
        event_id = order_id = None
        if expected is not None and expected[0] == program_id:
            event_id, order_id = expected[1], expected[2]
        self._details_asked = (event_id, order_id)
        by_id = member_pk is None
        sql = _details_sql(self.dialect, usage, lots, event_id is not None, order_id is not None,
                           by_id)
        who: list[Any] = [program_id, member_id] if by_id else [member_pk]
        params: list[Any] = list(who)
        if usage:
            params += who
        if lots:
            params += who
        if event_id is not None:
            params += [program_id, event_id]
        if order_id is not None:
            params += [program_id, order_id]
        return sql, tuple(params)

    def _apply_details(self, program_id: str, member: Member, row: Any, *, usage: bool,
                       lots: bool) -> None:
        event_id, order_id = self._details_asked
        buckets, *rest = row
        for month, spend_e4, points, visits in _json_list(buckets):
            member.buckets[month] = Bucket(spend=Decimal(spend_e4).scaleb(-4), points=points,
                                           visits=visits)
        if usage:
            for rule_id, period, count in _json_list(rest.pop(0)):
                member.usage[(rule_id, period)] = count
        if lots:  # the open lots, as ``_open_lots`` reads them
            ledger = member.ledger
            ledger.lots_loader = None
            for seq, source, points, remaining, available_at, expires_at, pending, order \
                    in _json_list(rest.pop(0)):
                ledger.lots[seq] = Lot(seq=seq, source=source, points=points,
                                       remaining=remaining,
                                       available_at=_json_time(available_at),
                                       expires_at=_json_time(expires_at),
                                       pending=bool(pending), order_id=order)
        if event_id is not None:
            stored = rest.pop(0)
            if isinstance(stored, str):
                stored = orjson.loads(stored)
            self._looked_up[(program_id, event_id)] = (
                None if stored is None else _StoredEvent(stored[0], stored[1]))
        if order_id is not None and not rest.pop(0):
            self._absent_orders.add((program_id, order_id))

    def members_for_update(self, program_id: str, member_pks: Iterable[int], *,
                           skip_locked: bool = False) -> list[Member]:
        """Load and lock several members, in primary key order (a stable lock order).

        ``skip_locked`` (background work on PostgreSQL) leaves out members another
        transaction holds: another worker is on them, or the next run takes them."""
        pks = sorted(set(member_pks))
        loaded = {m.pk: m for m in self._members.values() if m.pk in pks}
        missing = [pk for pk in pks if pk not in loaded]
        for chunk in _chunks(self.dialect, missing):
            rows = self.conn.execute(
                sa.select(t.members).where(_among(self.dialect, t.members.c.pk, chunk))
                .order_by(t.members.c.pk).with_for_update(skip_locked=skip_locked)
            ).mappings().all()
            for member in self._load_members(program_id, rows, eager_lots=True):
                loaded[member.pk] = member
        return [loaded[pk] for pk in pks if pk in loaded]

    def preload_members(self, program_id: str, member_ids: Iterable[str]) -> None:
        """Load and lock many members with a handful of queries (the bulk path)."""
        missing = sorted({m for m in member_ids if (program_id, m) not in self._members})
        query = _query(self.dialect, "members_by_id", lambda among: (
            sa.select(t.members)
            .where(t.members.c.program_id == sa.bindparam("program_id"),
                   among(t.members.c.id, "ids"))
            .order_by(t.members.c.pk).with_for_update()))
        for chunk in _chunks(self.dialect, missing):
            rows = self.conn.execute(query, {"program_id": program_id, "ids": chunk}
                                     ).mappings().all()
            self._load_members(program_id, rows)

    def _load_members(self, program_id: str, rows: Any, *, eager_lots: bool = False,
                      register: bool = True, details: bool = True) -> list[Member]:
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
        if register:
            for member in members.values():
                self._members[(program_id, member.id)] = member
        if not details:
            return list(members.values())
        for bucket_row in self.conn.execute(_query(self.dialect, "buckets", lambda among: (
            sa.select(t.metric_buckets).where(among(t.metric_buckets.c.member_pk, "pks"))
        )), {"pks": pks}).mappings():
            members[bucket_row["member_pk"]].buckets[bucket_row["month"]] = Bucket(
                spend=Decimal(bucket_row["spend_e4"]).scaleb(-4),
                points=bucket_row["points"],
                visits=bucket_row["visits"],
            )
        for usage_row in self.conn.execute(_query(self.dialect, "usage", lambda among: (
            sa.select(t.rule_usage).where(among(t.rule_usage.c.member_pk, "pks"))
        )), {"pks": pks}).mappings():
            key = (usage_row["rule_id"], usage_row["period"])
            members[usage_row["member_pk"]].usage[key] = usage_row["count"]
        return list(members.values())

    def _open_lots(self, member_pks: list[int]) -> dict[int, list[Lot]]:
        found: dict[int, list[Lot]] = {pk: [] for pk in member_pks}
        # one member (the usual case): "=", which SQLAlchemy need not re-render each time
        by_member = (t.lots.c.member_pk == member_pks[0] if len(member_pks) == 1
                     else _among(self.dialect, t.lots.c.member_pk, member_pks))
        for row in self.conn.execute(
            sa.select(t.lots).where(
                by_member,
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
        prepared = self._prepared.pop((program_id, member_id), None)
        if prepared is not None:
            member, *expected = prepared
            assert not any(profile.values()), "a batch prepares enrolments without a profile"
            if expected != [enrolled_at, tier_id, tier_reviewed]:
                # Prepared for the member's first event of the batch, which was refused:
                # a later one enrols the member, at its own time.
                self.conn.execute(t.members.update().where(t.members.c.pk == member.pk).values(
                    enrolled_at=enrolled_at, tier_id=tier_id, tier_reviewed=tier_reviewed))
                member.enrolled_at, member.tier_id = enrolled_at, tier_id
                member.tier_reviewed = tier_reviewed
            self._members[(program_id, member_id)] = member
            return member
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

    def loaded_member(self, program_id: str, member_id: str) -> Member | None:
        """The member if this unit of work has it in memory; no query."""
        return self._members.get((program_id, member_id))

    def prepare_members(self, program_id: str,
                        enrolments: list[tuple[str, datetime, str, str]]) -> None:
        """Insert the rows of members about to be enrolled (member id, enrolled_at, tier,
        tier_reviewed; an empty profile) with a few multi-row statements, as ``add_member``
        would one by one. Each stays invisible until ``add_member`` claims it, so its signup
        is posted in the same order as before; a row that already exists (a concurrent
        enrolment) is left to the ordinary path."""
        ts, as_json = self._formats.ts, self._formats.json
        mark = self._formats.mark
        columns = ("program_id", "id", "enrolled_at", "tier_id", "tier_reviewed", "available",
                   "pending", "reserved", "lot_seq", "purchases", "last_activity_at",
                   "birthday_year", "name", "email", "phone", "birthday", "attributes")
        values = "(" + ", ".join(mark for _ in columns) + ")"
        wanted = {member_id: (enrolled_at, tier_id, tier_reviewed)
                  for member_id, enrolled_at, tier_id, tier_reviewed in enrolments}
        rows = [(program_id, member_id, ts(enrolled_at), tier_id, tier_reviewed, 0, 0, 0, 0, 0,
                 None, None, None, None, None, None, as_json({}))
                for member_id, (enrolled_at, tier_id, tier_reviewed) in wanted.items()]
        inserted: list[int] = []
        for start in range(0, len(rows), 200):
            chunk = rows[start:start + 200]
            sql = (f'INSERT INTO "members" ({_names(columns)}) VALUES '
                   + ", ".join(values for _ in chunk)
                   + ' ON CONFLICT ("program_id", "id") DO NOTHING RETURNING "pk"')
            params = tuple(value for row in chunk for value in row)
            inserted.extend(pk for (pk,) in self.conn.exec_driver_sql(sql, params))
        for chunk in _chunks(self.dialect, inserted):
            found = self.conn.execute(
                sa.select(t.members).where(_among(self.dialect, t.members.c.pk, chunk))
                .order_by(t.members.c.pk)
            ).mappings().all()
            for member in self._load_members(program_id, found, register=False):
                self._prepared[(program_id, member.id)] = (member, *wanted[member.id])

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
        if not made:
            return made
        member.ledger.postings = []
        pk, ref, version = member.pk, context.ref, context.program_version
        occurred_at = self._times(context.occurred_at)
        self._postings.extend(
            (program_id, ASSET_POINTS, pk, p.debit, p.credit, p.points, p.code, ref, p.rule_id,
             version, p.explanation[:400], occurred_at, p.debit_balance_after,
             p.credit_balance_after)
            for p in made
        )
        return made

    # -- events and commands -----------------------------------------------------------

    def stored_event(self, program_id: str, event_id: str, *, fresh: bool = False) -> Any:
        """The stored request hash and result of an event id, or None. ``fresh``: read
        again, not as an earlier read of this unit of work found it (another transaction
        may have committed it since)."""
        key = (program_id, event_id)
        if key in self._looked_up and not fresh:  # events are written at commit
            found = self._looked_up[key]
        else:
            found = self.conn.execute(
                sa.select(t.events.c.request_hash, t.events.c.result).where(
                    t.events.c.program_id == program_id, t.events.c.id == event_id
                )
            ).one_or_none()
        if found is None and self.after_collision:
            return self._pruned(program_id, [event_id]).get(event_id)
        return found

    def stored_payload(self, program_id: str, event_id: str) -> Any:
        """The stored request of an event id (as erasure left it), or None."""
        return self.conn.execute(
            sa.select(t.events.c.payload).where(
                t.events.c.program_id == program_id, t.events.c.id == event_id)
        ).scalar_one_or_none()

    def _registered_event_ids(self, program_id: str, event_ids: list[str]) -> set[str]:
        """The ids among ``event_ids`` kept in ``event_ids``: on PostgreSQL every stored
        event's id, kept after the event is pruned. SQLite registers none: no query."""
        found: set[str] = set()
        if self.dialect != "postgresql" or not event_ids:
            return found
        query = _query(self.dialect, "registered_ids", lambda among: (
            sa.select(tt.event_ids.c.id)
            .where(tt.event_ids.c.program_id == sa.bindparam("program_id"),
                   among(tt.event_ids.c.id, "ids"))))
        for chunk in _chunks(self.dialect, event_ids):
            found.update(self.conn.execute(query, {"program_id": program_id, "ids": chunk})
                         .scalars())
        return found

    def _pruned(self, program_id: str, missing: list[str]) -> dict[str, Any]:
        """The ids among ``missing`` (not found stored) that are registered, as ``PRUNED``;
        an event that committed between that read and this one (stored and registered
        together) as stored instead: not taken for pruned."""
        registered = sorted(self._registered_event_ids(program_id, missing))
        if not registered:
            return {}
        stored = self._events_by_id(program_id, registered)
        return {event_id: stored.get(event_id, PRUNED) for event_id in registered}

    def _events_by_id(self, program_id: str, event_ids: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        query = _query(self.dialect, "events_by_id", lambda among: (
            sa.select(t.events.c.id, t.events.c.request_hash, t.events.c.result)
            .where(t.events.c.program_id == sa.bindparam("program_id"),
                   among(t.events.c.id, "ids"))))
        for chunk in _chunks(self.dialect, event_ids):
            for row in self.conn.execute(query, {"program_id": program_id, "ids": chunk}):
                found[row.id] = row
        return found

    def stored_events(self, program_id: str, event_ids: list[str]) -> dict[str, Any]:
        """The stored request hash and result of each event id found, by id. After a
        collision, an id whose event was pruned but is still registered (PostgreSQL) is
        found too, as ``PRUNED``: a stored event that every request conflicts with."""
        found = self._events_by_id(program_id, event_ids)
        if self.after_collision:
            found.update(self._pruned(program_id, [event_id for event_id in event_ids
                                                   if event_id not in found]))
        for event_id in event_ids:
            self._looked_up[(program_id, event_id)] = found.get(event_id)
        return found

    def add_event(self, program_id: str, event: Event, request_hash: str,
                  payload: dict[str, Any], result: dict[str, Any], recorded_at: datetime) -> None:
        ts = self._times
        self._events.append((program_id, event.id, event.type, event.member,
                             ts(event.occurred_at), request_hash, payload, result,
                             ts(recorded_at), event.partner))

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

    def preload_orders(self, program_id: str, order_ids: Iterable[str], currency: str, *,
                       absent_only: bool = False) -> None:
        """Read many orders at once; remember the ones that do not exist. With
        ``absent_only`` only that is remembered (the members are not locked yet: an order
        found is read again later, under its member's lock)."""
        missing = sorted({o for o in order_ids if (program_id, o) not in self._orders
                          and (program_id, o) not in self._absent_orders})
        orders = t.orders.c
        query = _query(self.dialect, "order_ids" if absent_only else "orders", lambda among: (
            (sa.select(orders.order_id) if absent_only else sa.select(t.orders))
            .where(orders.program_id == sa.bindparam("program_id"),
                   among(orders.order_id, "ids"))))
        for chunk in _chunks(self.dialect, missing):
            found: set[str] = set()
            for row in self.conn.execute(query, {"program_id": program_id, "ids": chunk}
                                         ).mappings():
                found.add(row["order_id"])
                if not absent_only:
                    self._orders[(program_id, row["order_id"])] = _order(row, currency)
            self._absent_orders.update((program_id, o) for o in chunk if o not in found)

    def add_order(self, program_id: str, order: Order) -> None:
        order.new = True
        self._orders[(program_id, order.order_id)] = order
        self._absent_orders.discard((program_id, order.order_id))
        self._new_order_times.setdefault((program_id, order.member_pk), []).append(
            order.occurred_at)

    def new_order_times(self, program_id: str, member_pk: int) -> list[datetime]:
        """When the member's orders added in this unit of work and not written yet were
        made (a query of ``orders`` does not see them before the flush)."""
        return self._new_order_times.get((program_id, member_pk), [])

    # -- rows written with the flush (the outbox) -----------------------------------------

    def insert_later(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]],
                     *, skip_on: tuple[str, ...] = ()) -> None:
        """Insert ``rows`` with the next flush, in its one round trip; rows of the same
        statement are sent as one batch. Times go through ``driver_time`` first. With
        ``skip_on``, a row whose key already exists is skipped."""
        key = (self._formats.mark, table, columns, skip_on)
        sql = _later_sql.get(key)
        if sql is None:
            conflict = f" ON CONFLICT ({_names(skip_on)}) DO NOTHING" if skip_on else ""
            sql = _insert_sql(self._formats.mark, table, columns) + conflict
            if self.dialect == "postgresql":
                _later_bulk[sql] = (_bulk_insert(table, columns, conflict), ())
            _later_sql[key] = sql
        if self._writes and self._writes[-1][0] == sql:
            self._writes[-1][1].extend(rows)
        else:
            self._writes.append((sql, list(rows)))

    def driver_time(self, value: datetime) -> Any:
        """A time as the driver stores it (for ``insert_later``)."""
        return self._times(value)

    # -- flush ------------------------------------------------------------------------------

    def _write(self, name: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self._writes.append((name, rows))

    def _send_writes(self, commit: bool = False) -> None:
        """Run the flush's statements. On PostgreSQL, inserts of at least ``COPY_MIN`` rows
        go by COPY (a tenth of the server's and the driver's cost per row of an INSERT);
        other writes of at least ``BULK_MIN`` rows (updates, upserts, inserts that skip
        existing keys) go as one statement over one JSON parameter (``_json_table``) instead
        of a statement per row; then the statements go in one psycopg pipeline, with the
        COMMIT when ``commit``: one round trip for all of them instead of one each (the
        transaction's own commit then finds nothing left to do). New rows are only
        inserted, never updated in the same flush, so sending the COPYs first keeps every
        statement's effect."""
        writes, self._writes = self._writes, []
        if not writes:
            return
        sql_for = self._formats.sql
        driver = self._psycopg()
        if driver is None:  # SQLite, or another PostgreSQL driver
            for name, rows in writes:
                self.conn.exec_driver_sql(sql_for.get(name, name), rows)
            return
        import psycopg

        copies, bulk = self._formats.copy, self._formats.bulk
        sql = ""
        # A few rows (one event): the connection's kept cursor. A bulk flush gets a cursor
        # of its own, closed after it, so that no pooled connection keeps its parameters
        # (thousands of rows) alive while idle.
        small = all(len(rows) < BULK_MIN for _, rows in writes)
        cursor = self._cursors(driver)[0] if small else driver.cursor()
        try:
            piped: list[tuple[str, list[Any], bool]] = []
            for name, rows in writes:
                if len(rows) < BULK_MIN:
                    piped.append((sql_for.get(name, name), rows, True))
                elif name in copies and len(rows) >= COPY_MIN:
                    sql = copies[name]
                    with cursor.copy(sql) as copy:
                        for row in rows:
                            copy.write_row(row)
                elif (found := bulk.get(name) or _later_bulk.get(name)) is not None:
                    piped.append((found[0], [_json_rows(rows, found[1])], False))
                else:
                    piped.append((sql_for.get(name, name), rows, True))
            with driver.pipeline():
                for sql, rows, many in piped:
                    if many:
                        cursor.executemany(sql, rows)
                    else:
                        cursor.execute(sql, rows)
                if commit:
                    sql = "COMMIT"
                    driver.commit()
        except psycopg.Error as exc:
            raise self._driver_error(driver, sql, exc) from exc
        finally:
            if not small:
                cursor.close()

    def flush(self, *, commit: bool = False) -> None:
        if self._prepared:  # never enrolled after all: as if never inserted
            pks = [prepared[0].pk for prepared in self._prepared.values()]
            self._prepared.clear()
            self.conn.execute(t.members.delete().where(_among(self.dialect, t.members.c.pk, pks)))
        formats = self._formats
        ts, as_bool, as_json = self._times, formats.bool, formats.json
        if self._postings:
            self._write("postings", self._postings)
            self._postings = []
        new_lots: list[tuple[Any, ...]] = []
        changed_lots: list[tuple[Any, ...]] = []
        member_rows: list[tuple[Any, ...]] = []
        bucket_rows: list[tuple[Any, ...]] = []
        usage_rows: list[tuple[Any, ...]] = []
        for member in self._members.values():
            ledger = member.ledger
            pk = member.pk
            for lot in ledger.lots.values():
                if lot.new:
                    new_lots.append((pk, lot.seq, member.program_id, lot.source[:200],
                                     lot.order_id, lot.points, lot.remaining,
                                     ts(lot.available_at), ts(lot.expires_at),
                                     as_bool(lot.pending)))
                    lot.new = False
                    lot.dirty = False
                elif lot.dirty:
                    changed_lots.append((lot.remaining, as_bool(lot.pending),
                                         ts(lot.available_at), pk, lot.seq))
                    lot.dirty = False
            ledger.new_lots.clear()
            member_rows.append((member.tier_id, member.tier_reviewed, ledger.available,
                                ledger.pending, ledger.reserved, ledger.lot_seq,
                                member.purchases, ts(member.last_activity_at),
                                member.birthday_year, pk))
            if member.dirty_buckets:
                for month in member.dirty_buckets:
                    bucket = member.buckets[month]
                    bucket_rows.append((pk, month, _minor(bucket.spend), bucket.points,
                                        bucket.visits))
                member.dirty_buckets.clear()
            if member.dirty_usage:
                for rule_id, period in member.dirty_usage:
                    usage_rows.append((pk, rule_id, period, member.usage[(rule_id, period)]))
                member.dirty_usage.clear()
            ledger.check()
        self._write("lots", new_lots)
        self._write("lots_update", changed_lots)
        self._write("members_update", member_rows)
        self._write("buckets", bucket_rows)
        self._write("usage", usage_rows)
        self._flush_orders()
        if self._events:
            self._write("events", [
                (program_id, event_id, kind, member_id, occurred_at, digest, as_json(payload),
                 as_json(result), recorded_at, partner)
                for (program_id, event_id, kind, member_id, occurred_at, digest, payload, result,
                     recorded_at, partner) in self._events
            ])
            self._events = []
        self._send_writes(commit)
        self._times.clear()

    def _flush_orders(self) -> None:
        ts, as_json = self._times, self._formats.json
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        for (program_id, order_id), order in self._orders.items():
            if order.new:
                inserts.append((program_id, order_id, order.member_pk, order.event_id,
                                order.program_version, order.tier_id, ts(order.occurred_at),
                                _minor(order.amount), _minor(order.refunded),
                                as_json(_lines_json(order)), as_json(order.awards),
                                as_json(order.payload), order.payload.get("partner")))
                order.new = False
                order.dirty = False
            elif order.dirty:
                updates.append((_minor(order.refunded), as_json(_lines_json(order)),
                                as_json(order.awards), program_id, order_id))
                order.dirty = False
        self._write("orders", inserts)
        self._write("orders_update", updates)
        self._new_order_times.clear()


class _StoredEvent(NamedTuple):
    request_hash: str
    result: dict[str, Any]


def _json_list(value: Any) -> list[Any]:
    """A JSON array as the driver hands it: parsed (psycopg), text (SQLite) or NULL."""
    if value is None:
        return []
    return orjson.loads(value) if isinstance(value, str) else list(value)


def _member_query(dialect: str, lock: bool) -> Any:
    """The member row with its programme's current version and definition hash."""
    m, p, pv = t.members, t.programs, t.program_versions

    def build(_: Any) -> Any:
        query = (
            sa.select(m, p.c.current_version, pv.c.definition_hash)
            .join(p, p.c.id == m.c.program_id)
            .join(pv, sa.and_(pv.c.program_id == p.c.id, pv.c.version == p.c.current_version))
            .where(m.c.program_id == sa.bindparam("program_id"),
                   m.c.id == sa.bindparam("member_id"))
        )
        return query.with_for_update(of=m) if lock else query

    return _query(dialect, "member_locked" if lock else "member", build)


_member_sqls: dict[tuple[str, bool], tuple[str, list[str], list[Any]]] = {}


def _member_sql(dialect: sa.Dialect, lock: bool) -> tuple[str, list[str], list[Any]]:
    """``_member_query`` as driver SQL with named parameters (program_id, member_id),
    the names of its columns as SQLAlchemy's rows key them (known here: reading them from
    the cursor's ``description`` built a psycopg ``Column`` per column for every event, a
    tenth of the single-event path's Python), and each column's result processor (None
    where the driver's value is the value), so that rows read through the driver equal
    rows read through SQLAlchemy."""
    found = _member_sqls.get((dialect.name, lock))
    if found is None:
        query = _member_query(dialect.name, lock)
        compiled = query.compile(dialect=dialect)
        sql = compiled.string  # named parameters: %(program_id)s, %(member_id)s
        names = [column.name for column in query.selected_columns]
        processors = [column.type.dialect_impl(dialect).result_processor(dialect, None)
                      for column in query.selected_columns]
        found = _member_sqls[(dialect.name, lock)] = (sql, names, processors)
    return found


def _json_time(value: str | None) -> Any:
    """A stored (naive UTC) time as JSON renders it, aware again as UTCDateTime reads it."""
    if value is None:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


_details: dict[tuple[str, bool, bool, bool, bool, bool], str] = {}


def _details_sql(dialect: str, usage: bool, lots: bool, event: bool, order: bool,
                 by_id: bool = False) -> str:
    key = (dialect, usage, lots, event, order, by_id)
    found = _details.get(key)
    if found is not None:
        return found
    if dialect == "postgresql":
        mark, agg, array, as_json = "%s", "json_agg", "json_build_array", "{}"
    else:
        mark, agg, array, as_json = "?", "json_group_array", "json_array", "json({})"
    who = (f"(SELECT pk FROM members WHERE program_id = {mark} AND id = {mark})" if by_id
           else mark)
    parts = [f"(SELECT {agg}({array}(month, spend_e4, points, visits)) "
             f"FROM metric_buckets WHERE member_pk = {who})"]
    if usage:
        parts.append(f'(SELECT {agg}({array}(rule_id, period, "count")) '
                     f"FROM rule_usage WHERE member_pk = {who})")
    if lots:
        parts.append(f"(SELECT {agg}({array}(seq, source, points, remaining, available_at, "
                     f"expires_at, pending, order_id)) FROM lots "
                     f"WHERE member_pk = {who} AND (remaining > 0 OR pending))")
    if event:
        parts.append(f"(SELECT {array}(request_hash, {as_json.format('result')}) FROM events "
                     f"WHERE program_id = {mark} AND id = {mark})")
    if order:
        parts.append(f"EXISTS (SELECT 1 FROM orders WHERE program_id = {mark} "
                     f"AND order_id = {mark})")
    found = _details[key] = "SELECT " + ", ".join(parts)
    return found


def _lines_json(order: Order) -> list[dict[str, Any]]:
    return [{"sku": line.sku, "category": line.category, "quantity": line.quantity,
             "amount": str(line.amount), "refunded": str(line.refunded)}
            for line in order.lines]


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


def allocations_json(allocations: list[Allocation]) -> list[list[int]]:
    return [[a.lot_seq, a.points] for a in allocations]


def allocations_from_json(raw: list[list[int]]) -> list[Allocation]:
    return [Allocation(lot_seq=seq, points=points) for seq, points in raw]
