"""Reading the journal, orders and members into Polars frames for analytics.

Rows go from the database straight into Arrow through ADBC (the SQLite and
libpq drivers ship inside their wheels, so nothing is downloaded at run time),
then into Polars; no Python loop touches a row (docs/decisions/analytics-engine.md).
The SQL only projects and filters: every aggregate is computed in Polars.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import polars as pl
import sqlalchemy as sa

from setia.adapters.db.engine import SQLITE_BUSY_TIMEOUT_MS, is_sqlite

_PROGRAM_ID = re.compile(r"^[a-z0-9-]{1,64}$")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")  # a posting code, an event type
_DETAIL = ("asset", "code", "ref", "rule_id")  # Reader.postings(detail=True)
_MONTH = re.compile(r"^[0-9]{4}-[0-9]{2}$")
_NO_BUCKETS = pl.DataFrame(schema={"member_pk": pl.Int64, "month": pl.String,
                                   "spend_e4": pl.Int64, "points": pl.Int64,
                                   "visits": pl.Int64})
OPTIONAL_TABLES = ("campaign_holdouts", "coupon_uses", "survey_responses", "membership_purchases")


# The points of a posting as signed flows, one definition for every read of them: a
# flow counts what goes into its account (credit) less what leaves it (debit), negated
# for the accounts that give points out (``issued`` counts what leaves it: points earned).
MEMBER_HOLDINGS = ("available", "pending", "reserved")  # the member's balance
POINT_FLOWS: dict[str, tuple[str, int]] = {  # column: (account, sign)
    "issued": ("issued", -1),
    "redeemed": ("redeemed", 1),
    "expired": ("expired", 1),
    "adjusted": ("adjustments", -1),
}
FLOW_COLUMNS = (*POINT_FLOWS, "member_delta")  # member_delta: the change of the balance

# An order refunded in full is no purchase, visit or activity (service/events.py takes its
# visit back); one refunded in part stays a purchase of what is left. The same test in SQL
# and in Polars, over the orders' amount_e4 and refunded_e4.
REFUNDED_IN_FULL_SQL = "(refunded_e4 > 0 AND refunded_e4 >= amount_e4)"
REFUNDED_IN_FULL = (pl.col("refunded_e4") > 0) & (pl.col("refunded_e4") >= pl.col("amount_e4"))


def flow_sql(column: str) -> str:
    """The SQL of a flow column (FLOW_COLUMNS) over a posting's debit, credit and points."""
    if column == "member_delta":
        held = "(" + ", ".join(f"'{a}'" for a in MEMBER_HOLDINGS) + ")"
        into, out = f"credit IN {held}", f"debit IN {held}"
        sign = 1
    else:
        account, sign = POINT_FLOWS[column]
        into, out = f"credit = '{account}'", f"debit = '{account}'"
    flow = (f"(CASE WHEN {into} THEN points ELSE 0 END"
            f" - CASE WHEN {out} THEN points ELSE 0 END)")
    return flow if sign == 1 else f"-{flow}"


def _flow_expr(column: str) -> pl.Expr:
    """``_flow_sql`` in Polars, over a frame of debit, credit and points."""
    if column == "member_delta":
        into, out = pl.col("credit").is_in(MEMBER_HOLDINGS), pl.col("debit").is_in(MEMBER_HOLDINGS)
        sign = 1
    else:
        account, sign = POINT_FLOWS[column]
        into, out = pl.col("credit") == account, pl.col("debit") == account
    flow = (pl.when(into).then(pl.col("points")).otherwise(0)
            - pl.when(out).then(pl.col("points")).otherwise(0))
    return flow if sign == 1 else -flow


def _timestamp(moment: datetime) -> str:
    """A time as a literal the stored (naive UTC) times compare with, on both databases."""
    return f"'{moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=' ')}'"


def _between(since: datetime, until: datetime) -> str:
    """Rows whose ``occurred_at`` is in [since, until)."""
    return f"occurred_at >= {_timestamp(since)} AND occurred_at < {_timestamp(until)}"


def _as_text(*names: str) -> list[pl.Expr]:
    """Text columns as text: on SQLite the columns of an empty answer have no type (a
    period without other events, say), which JSON paths refuse."""
    return [pl.col(name).cast(pl.String) for name in names]


def _literal(program_id: str) -> str:
    # Programme ids are [a-z0-9-]: safe as a literal, which keeps one SQL text per dialect.
    assert _PROGRAM_ID.match(program_id), f"not a programme id: {program_id!r}"
    return f"'{program_id}'"


@contextmanager
def _adbc(engine: sa.Engine) -> Iterator[Any]:
    url = engine.url
    conn: Any
    if is_sqlite(engine):
        # The same SQLite library as the engine's (Python's sqlite3), not ADBC's driver,
        # which links a copy of its own: two copies of SQLite in one process do not see
        # each other's file locks, and a second copy closing the file dropped the first's
        # (the demo's server then failed to open the database with "disk I/O error").
        import sqlite3

        conn = sqlite3.connect(url.database or ":memory:", check_same_thread=False,
                               timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    else:
        import adbc_driver_postgresql.dbapi as postgres_driver

        uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = postgres_driver.connect(uri)
    try:
        yield conn
    finally:
        conn.close()


def _json_text(engine: sa.Engine, column: str, key: str) -> str:
    if is_sqlite(engine):
        return f"json_extract({column}, '$.{key}')"
    return f"({column}::jsonb ->> '{key}')"


class Reader:
    """One connection for a set of reads (ADBC on PostgreSQL, sqlite3 on SQLite); frames
    come back with UTC datetimes. The reads of one reader see the database at one moment
    (one read-only transaction, REPEATABLE READ on PostgreSQL): figures worked out from
    several tables (a statement takes later purchases out of the buckets that hold them)
    never mix rows committed between two of its reads."""

    def __init__(self, engine: sa.Engine, conn: Any, snapshot: str | None = None) -> None:
        self.engine = engine
        self.conn = conn
        self.sqlite = is_sqlite(engine)
        self._text = "TEXT" if self.sqlite else "text"
        if self.sqlite:
            # sqlite3 opens no transaction for reads by itself: each would see its moment.
            self.conn.execute("BEGIN")
        else:
            # The ADBC connection is in a transaction already (autocommit off), no query run
            # in it yet. Reads scan whole tables once: compiling them (JIT) costs more than
            # it saves, and a summing query keeps its groups in memory rather than spilling
            # to disk. One text sent as one simple query: one round trip (``execute``
            # prepares, describes and runs each statement, three round trips apiece). With
            # ``snapshot`` (``export_snapshot`` of a reader still open), this one sees the
            # database at that reader's moment.
            shared = f" SET TRANSACTION SNAPSHOT '{_snapshot_id(snapshot)}';" if snapshot else ""
            cursor = self.conn.cursor()
            try:
                cursor.executescript("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;"
                                     f"{shared} SET jit = off; SET work_mem = '256MB'")
            finally:
                cursor.close()

    def export_snapshot(self) -> str | None:
        """This reader's moment, for other connections to read at (PostgreSQL: while this
        reader is open); None on SQLite. Must be its first read."""
        if self.sqlite:
            return None
        return str(self.frame("SELECT pg_export_snapshot() AS snapshot")["snapshot"][0])

    def frame(self, sql: str, times: tuple[str, ...] = ()) -> pl.DataFrame:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql)
            if self.sqlite:  # sqlite3 rows; every row read to type the columns
                names = [column[0] for column in cursor.description]
                df = pl.DataFrame(cursor.fetchall(), schema=names, orient="row",
                                  infer_schema_length=None)
            else:
                found = pl.from_arrow(cursor.fetch_arrow_table())
                assert isinstance(found, pl.DataFrame)
                df = found
        finally:
            cursor.close()
        fixes = []
        for name in times:
            dtype = df.schema[name]
            if dtype == pl.String or dtype == pl.Null:
                fixes.append(
                    pl.col(name).cast(pl.String).str.to_datetime(
                        "%Y-%m-%d %H:%M:%S%.f", time_unit="us", strict=False
                    ).dt.replace_time_zone("UTC")
                )
            else:
                fixes.append(pl.col(name).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))
        return df.with_columns(fixes) if fixes else df

    def members(self, program_id: str, attributes: bool = False) -> pl.DataFrame:
        """The members with their tier and balances; with ``attributes`` also their
        attributes (JSON as text)."""
        extra = f", CAST(attributes AS {self._text}) AS attributes" if attributes else ""
        return self.frame(
            "SELECT pk AS member_pk, id AS member, enrolled_at, tier_id AS tier, "
            f"available, pending, reserved{extra} FROM members "
            f"WHERE program_id = {_literal(program_id)}",
            ("enrolled_at",),
        ).with_columns(pl.col("member_pk").cast(pl.Int64),
                       # typed when there are no rows too (SQLite gives them no type)
                       *_as_text("member", "tier", *(("attributes",) if attributes else ())))

    def stored_purchases(self, program_id: str, since: datetime, until: datetime
                         ) -> pl.DataFrame:
        """The orders of [since, until) with what rebuilds their purchase events: event and
        order ids, time, amount, lines and the stored event (JSON as text), the tier held
        at the purchase and the member."""
        text = self._text
        return self.frame(
            "SELECT event_id AS id, occurred_at, order_id, amount_e4, "
            f"CAST(lines AS {text}) AS lines, CAST(event AS {text}) AS payload, "
            "tier_id AS tier, member_pk FROM orders "
            f"WHERE program_id = {_literal(program_id)} AND {_between(since, until)}",
            ("occurred_at",),
        ).with_columns(_as_text("id", "order_id", "lines", "payload", "tier"))

    def purchase_counts(self, program_id: str, until: datetime) -> pl.DataFrame:
        """Each member's number of orders before ``until`` (members without one are left
        out)."""
        # counted in Polars: cheaper than the database's GROUP BY (measured)
        return self.frame(
            f"SELECT member_pk FROM orders WHERE program_id = {_literal(program_id)} "
            f"AND occurred_at < {_timestamp(until)}"
        ).group_by(pl.col("member_pk").cast(pl.Int64)).agg(
            pl.len().cast(pl.Int64).alias("purchases"))

    def stored_events(self, program_id: str, since: datetime, until: datetime,
                      excluding: tuple[str, ...] = ()) -> pl.DataFrame:
        """The events of [since, until) as they were stored (JSON as text), but those of
        the types ``excluding``: id, time and payload."""
        assert all(_NAME.match(t) for t in excluding), excluding
        types = ", ".join(f"'{t}'" for t in excluding)
        return self.frame(
            f"SELECT id, occurred_at, CAST(payload AS {self._text}) AS payload FROM events "
            f"WHERE program_id = {_literal(program_id)}"
            + (f" AND type NOT IN ({types})" if types else "")
            + f" AND {_between(since, until)}",
            ("occurred_at",),
        ).with_columns(_as_text("id", "payload"))

    def orders(self, program_id: str, dims: tuple[str, ...] = (), *,
               refunded_in_full: bool = True) -> pl.DataFrame:
        """Orders: member, time, amount and refunded; with ``dims`` also the order and event
        ids, the tier held at the purchase and the asked of store, channel and partner
        (read from the stored event, which costs a JSON parse per row: only when asked).
        Without ``refunded_in_full``, only the purchases (``REFUNDED_IN_FULL`` left out)."""
        text = self._text
        columns = ["member_pk", "occurred_at", "amount_e4", "refunded_e4"]
        if dims:
            columns += ["order_id", "event_id", "tier_id AS tier"]
            columns += [f"CAST({_json_text(self.engine, 'event', d)} AS {text}) AS {d}"
                        for d in ("store", "channel", "partner") if d in dims]
        where = f"program_id = {_literal(program_id)}"
        if not refunded_in_full:
            where += f" AND NOT {REFUNDED_IN_FULL_SQL}"
        df = self.frame(f"SELECT {', '.join(columns)} FROM orders WHERE {where}",
                        ("occurred_at",))
        return df.with_columns(
            pl.col("member_pk").cast(pl.Int64),
            pl.col("amount_e4").cast(pl.Int64),
            pl.col("refunded_e4").cast(pl.Int64),
            *(pl.col(c).cast(pl.String) for c in ("store", "channel", "partner", "tier",
                                                  "order_id", "event_id") if c in df.columns),
        )

    def refunded_orders(self, program_id: str) -> pl.DataFrame:
        """Which order each refund with a clawback refunds: ``ref`` (the refund's event id,
        the ``ref`` of its postings) and ``order_id``, from the stored refund event (a
        refund pruned from ``events`` is not found)."""
        order_id = _json_text(self.engine, "e.payload", "order_id")
        df = self.frame(
            f"SELECT DISTINCT p.ref AS ref, CAST({order_id} AS {self._text}) AS order_id "
            "FROM postings p JOIN events e ON e.program_id = p.program_id AND e.id = p.ref "
            f"WHERE p.program_id = {_literal(program_id)} AND p.code = 'clawback' "
            "AND e.type = 'refund'"
        )
        return df.with_columns(_as_text("ref", "order_id"))

    def orders_since(self, program_id: str, since: datetime) -> pl.DataFrame:
        """The orders from ``since`` on (those refunded in full too): member, time, amount
        and refunded, the tier held at the purchase, the purchase's event id, and the points
        its rules gave as left after refunds (``awards``: JSON as text)."""
        df = self.frame(
            "SELECT member_pk, order_id, event_id, occurred_at, amount_e4, refunded_e4, "
            f"tier_id AS tier, CAST(awards AS {self._text}) AS awards FROM orders "
            f"WHERE program_id = {_literal(program_id)} AND occurred_at >= {_timestamp(since)}",
            ("occurred_at",),
        )
        return df.with_columns(
            pl.col("member_pk", "amount_e4", "refunded_e4").cast(pl.Int64),
            *_as_text("order_id", "event_id", "tier", "awards"),
        )

    def rejected_reviews(self, program_id: str) -> pl.DataFrame:
        """The rejected fraud reviews: the reference their take-back postings carry
        (``review:<id>``) and the event reviewed."""
        return self.frame(
            f"SELECT id, event_id FROM fraud_reviews WHERE program_id = {_literal(program_id)} "
            "AND status = 'rejected'"
        ).select(pl.format("review:{}", pl.col("id")).alias("ref"),
                 pl.col("event_id").cast(pl.String))

    def campaign_postings(self, program_id: str) -> pl.DataFrame:
        """Points of campaigns: postings whose rule id is ``campaign:<id>``, with their code
        (``earn`` for an award, ``clawback`` for what a refund took back)."""
        df = self.frame(
            f"SELECT member_pk, rule_id, code, occurred_at, {flow_sql('issued')} AS issued "
            f"FROM postings WHERE program_id = {_literal(program_id)} AND asset = 'points' "
            "AND rule_id LIKE 'campaign:%'",
            ("occurred_at",),
        )
        return df.with_columns(pl.col("member_pk").cast(pl.Int64),
                               pl.col("rule_id").cast(pl.String),
                               pl.col("code").cast(pl.String),
                               pl.col("issued").cast(pl.Int64))

    def postings(self, program_id: str, asset: str | None = "points",
                 detail: bool = False, *, columns: tuple[str, ...] | None = None,
                 code: str | None = None, since: datetime | None = None,
                 until: datetime | None = None) -> pl.DataFrame:
        """Each posting as signed flows (FLOW_COLUMNS): points into ``issued`` (earned),
        ``redeemed``, ``expired`` and ``adjustments`` accounts, and the change of the
        member's balance; with the member and time, and with ``detail`` the asset, code, ref
        and rule. ``columns``: only these of them instead. ``code``, ``since`` (included)
        and ``until`` (left out): only the postings of that code and time."""
        if columns is None:
            keys = ("member_pk", "occurred_at", *(_DETAIL if detail else ()))
            columns = (*keys, *FLOW_COLUMNS)
        assert set(columns) <= {"member_pk", "occurred_at", *_DETAIL, *FLOW_COLUMNS}, columns
        where = [f"program_id = {_literal(program_id)}"]
        if asset is not None:
            where.append(f"asset = '{asset}'")
        if code is not None:
            assert _NAME.match(code), f"not a posting code: {code!r}"
            where.append(f"code = '{code}'")
        if since is not None:
            where.append(f"occurred_at >= {_timestamp(since)}")
        if until is not None:
            where.append(f"occurred_at < {_timestamp(until)}")
        select = ", ".join(f"{flow_sql(c)} AS {c}" if c in FLOW_COLUMNS else c for c in columns)
        df = self.frame(f"SELECT {select} FROM postings WHERE {' AND '.join(where)}",
                        ("occurred_at",) if "occurred_at" in columns else ())
        return df.with_columns(
            *(pl.col(c).cast(pl.Int64) for c in ("member_pk", *FLOW_COLUMNS) if c in columns),
            *(pl.col(c).cast(pl.String) for c in _DETAIL if c in columns),
        )

    def posting_flows(self, program_id: str, asset: str = "points") -> pl.DataFrame | None:
        """The flows of ``postings`` summed per 15 minutes (UTC) in the database, without
        the member: what the metrics need overall, in a few ten thousand rows instead of a
        row per posting. Every time-zone offset since 1972 is a multiple of 15 minutes, so
        a local midnight never falls inside one of these slices and every posting of a slice
        has the slice's local date; ``slices_keep_dates`` checks it for the programme's zone
        and the caller reads per posting where it does not hold. None on SQLite (no
        ``date_bin``: it reads per posting)."""
        if self.sqlite:
            return None
        df = self.frame(
            "SELECT date_bin('15 minutes', occurred_at, TIMESTAMP '2000-01-01') AS occurred_at,"
            " debit, credit, CAST(sum(points) AS bigint) AS points "
            f"FROM postings WHERE program_id = {_literal(program_id)} AND asset = '{asset}' "
            "GROUP BY 1, 2, 3",
            ("occurred_at",),
        )
        return df.with_columns(pl.col("points").cast(pl.Int64),
                               pl.col("debit", "credit").cast(pl.String)).select(
            "occurred_at", *(_flow_expr(c).alias(c) for c in FLOW_COLUMNS),
        ).group_by("occurred_at").agg(pl.col(FLOW_COLUMNS).sum()).with_columns(
            pl.col(FLOW_COLUMNS).cast(pl.Int64))

    def journal(self, program_id: str) -> pl.DataFrame:
        """The journal as it is stored, with the member's id, for exports."""
        return self.frame(
            "SELECT p.id, p.asset, m.id AS member, p.debit, p.credit, p.points, p.code, p.ref, "
            "p.rule_id, p.program_version, p.explanation, p.occurred_at, "
            "p.debit_balance_after, p.credit_balance_after "
            "FROM postings p JOIN members m ON m.pk = p.member_pk "
            f"WHERE p.program_id = {_literal(program_id)} ORDER BY p.id",
            ("occurred_at",),
        )

    def metric_buckets(self, program_id: str, months: tuple[str, ...] | None = None
                       ) -> pl.DataFrame:
        """The tier buckets of the programme's members (metric_buckets has no programme:
        its members say it); with ``months``, of those months only (``YYYY-MM``: another
        form matches no bucket)."""
        where = f"m.program_id = {_literal(program_id)}"
        if months is not None:
            wanted = ", ".join(f"'{m}'" for m in months if _MONTH.match(m))
            if not wanted:
                return _NO_BUCKETS
            where += f" AND b.month IN ({wanted})"
        df = self.frame(
            "SELECT b.member_pk, b.month, b.spend_e4, b.points, b.visits "
            f"FROM metric_buckets b JOIN members m ON m.pk = b.member_pk WHERE {where}"
        )
        return df.with_columns(
            pl.col("member_pk").cast(pl.Int64), pl.col("month").cast(pl.String),
            pl.col("spend_e4").cast(pl.Int64), pl.col("points").cast(pl.Int64),
            pl.col("visits").cast(pl.Int64),
        )

    def lots(self, program_id: str) -> pl.DataFrame:
        df = self.frame(
            "SELECT member_pk, remaining, expires_at FROM lots "
            f"WHERE program_id = {_literal(program_id)} AND remaining > 0",
            ("expires_at",),
        )
        return df.with_columns(pl.col("member_pk").cast(pl.Int64),
                               pl.col("remaining").cast(pl.Int64))

    def guest_sales(self, program_id: str) -> pl.DataFrame:
        """Sales without a member with what was refunded of them (``refunded_e4``, the sum
        of their refunds in ``guest_refunds``), as orders have it."""
        where = f"WHERE program_id = {_literal(program_id)}"
        df = self.frame(
            f"SELECT id, occurred_at, amount_e4, store, channel, partner FROM guest_sales {where}",
            ("occurred_at",),
        ).with_columns(
            pl.col("amount_e4").cast(pl.Int64),
            *_as_text("id", "store", "channel", "partner"),
        )
        refunds = self.frame(f"SELECT sale_id, amount_e4 FROM guest_refunds {where}")
        refunded = refunds.select(pl.col("sale_id").cast(pl.String).alias("id"),
                                  pl.col("amount_e4").cast(pl.Int64)).group_by("id").agg(
            pl.col("amount_e4").sum().alias("refunded_e4"))
        return df.join(refunded, on="id", how="left").with_columns(
            pl.col("refunded_e4").fill_null(0).cast(pl.Int64)).drop("id")

    def optional(self, name: str, program_id: str) -> pl.DataFrame | None:
        """A table other features add (campaign hold-outs, coupon uses, surveys, paid
        memberships), all of its columns for the programme; None where it does not exist."""
        assert name in OPTIONAL_TABLES
        inspector = sa.inspect(self.engine)
        if not inspector.has_table(name):
            return None
        columns = {c["name"]: c["type"] for c in inspector.get_columns(name)}
        key = next((c for c in ("program_id", "program") if c in columns), None)
        where = f" WHERE {key} = {_literal(program_id)}" if key else ""
        times = tuple(
            n for n, t in columns.items() if isinstance(t, sa.DateTime) or n.endswith("_at")
        )
        text = self._text
        # Decimals and JSON come as text (PostgreSQL's NUMERIC has no Arrow type to land in).
        select = ", ".join(
            f"CAST({n} AS {text}) AS {n}"
            if isinstance(t, sa.Numeric | sa.JSON) and not isinstance(t, sa.Float) else n
            for n, t in columns.items()
        )
        return self.frame(f"SELECT {select} FROM {name}{where}", times)


def slices_keep_dates(frame: pl.DataFrame, tz: str) -> bool:
    """Whether every 15-minute slice of ``posting_flows`` lies within one local date."""
    start = pl.col("occurred_at").dt.convert_time_zone(tz).dt.date()
    last = (pl.col("occurred_at") + pl.duration(minutes=15) - pl.duration(microseconds=1)
            ).dt.convert_time_zone(tz).dt.date()
    return bool(frame.select((start == last).all()).item()) if frame.height else True


@contextmanager
def reader(engine: sa.Engine, snapshot: str | None = None) -> Iterator[Reader]:
    """A reader; with ``snapshot``, one that reads at another reader's moment."""
    with _adbc(engine) as conn:
        yield Reader(engine, conn, snapshot)


_SNAPSHOT_ID = re.compile(r"[0-9A-F]+(-[0-9A-F]+)+")  # what pg_export_snapshot answers


def _snapshot_id(snapshot: str) -> str:
    assert _SNAPSHOT_ID.fullmatch(snapshot), f"not a snapshot id: {snapshot!r}"
    return snapshot


@contextmanager
def at_snapshot(engine: sa.Engine, snapshot: str | None) -> Iterator[sa.Connection]:
    """A SQLAlchemy connection reading at a reader's exported moment (PostgreSQL), or a
    plain one (SQLite, or no snapshot)."""
    with engine.connect() as conn:
        if snapshot is None or is_sqlite(engine):
            yield conn
            return
        pinned = conn.execution_options(isolation_level="REPEATABLE READ")
        pinned.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{_snapshot_id(snapshot)}'")
        yield pinned
