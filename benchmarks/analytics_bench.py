"""Speed of the analytics (docs/benchmarks-analytics.md): every metric over a year of
1,000,000 members and 10,000,000 purchases, and the what-if replay of a month.

    python benchmarks/analytics_bench.py                     # generate, time, drop
    python benchmarks/analytics_bench.py --members 100000 --purchases 1000000
    python benchmarks/analytics_bench.py --generate-only --database setia_analytics_1m
    python benchmarks/analytics_bench.py --reuse --database setia_analytics_1m  # kept

The data is written by a BULK PATH, not by ingesting events: rows are generated
with Polars and NumPy (fixed seed) and sent with PostgreSQL COPY (CSV, in chunks
of 500,000 rows, orders on one connection and the other tables on a second)
straight into members, orders, postings, lots, metric_buckets and events
(signups only), as the engine would have left them for the programme below (1
point per MYR 1 at the tier's multiplier, 50 at signup, Gold from MYR 500 a
year). A share of the points is redeemed and expired by postings of their own.
Balances and lots are consistent with the postings; per-purchase rows of the
``events`` table are not written (no metric reads them; the what-if reads
orders). The monthly partitions are made first; the indexes, primary keys and
unique constraints are dropped before the load and built again afterwards from
their own definitions (pg_get_indexdef / pg_get_constraintdef), then ANALYZE.

Timed, on the scratch database (--database, default ``setia_bench_analytics``):
1. the dashboard set: reading the frames (postings summed per 15 minutes in the
   database), then every metric of service/analytics.py for 2027 by month,
   overall (each metric timed); baseline: the same read with a row per posting;
2. breakdowns: sales, points, churn and enrolments by tier and by store (with
   their own reads);
3. CLV per member (BG/NBD + Gamma-Gamma fitted on a sample, every member scored);
4. the what-if of September 2027 (about a million events: the issue's "month")
   with a draft that doubles the base rate, in one process and split over two;
   and of December 2027, the busiest month (1.8 million events).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from typing import Any

import polars as pl
import psycopg
import sqlalchemy as sa
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from setia.adapters.db.engine import make_engine
from setia.adapters.db.migrate import upgrade
from setia.adapters.db.partitions import ensure_months
from setia.service import analytics as an
from setia.service import whatif
from setia.service.clv import member_clv
from setia.service.programmes import store_programme

PROGRAM = "bench"
DATABASE = "setia_bench_analytics"
PROGRAMME: dict[str, Any] = {
    "id": PROGRAM, "name": "Bench", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "points": {"name": "Points", "expiry": {"policy": "rolling", "months": 12}},
    "earn": [{"id": "base", "on": "purchase", "rate": 1},
             {"id": "welcome", "on": "signup", "points": 50}],
    "tiers": {"metric": "spend", "window": "calendar_year",
              "levels": [{"id": "member", "name": "Member", "threshold": 0},
                         {"id": "gold", "name": "Gold", "threshold": 500, "multiplier": 1.25}]},
    "rewards": [{"id": "coffee", "name": "Coffee", "cost": 150},
                {"id": "voucher", "name": "RM 10 off", "cost": 400}],
    "analytics": {"cost_per_point": "0.01", "churn_days": 60},
}
YEAR_START = datetime(2026, 12, 31, 16, 0)  # 2027-01-01 00:00 +08:00, in UTC
YEAR_US = 365 * 86_400 * 1_000_000
ENROL_FROM = datetime(2026, 6, 30, 16, 0)  # 2026-07-01 00:00 +08:00
CHUNK = 500_000


def say(text: str) -> None:
    print(text, flush=True)


def timed(label: str, work: Callable[[], Any], figures: list[tuple[str, float]]) -> Any:
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    figures.append((label, seconds))
    say(f"  {label:<44} {seconds:8.2f} s")
    return result


TABLES = ("members", "orders", "postings", "lots", "metric_buckets", "events")


def index_statements(conn: sa.Connection, table: str) -> list[tuple[str, str]]:
    """(drop, create) statements of a table's indexes, primary key and unique constraints,
    as the migrations made them (pg_get_indexdef / pg_get_constraintdef)."""
    rows = conn.execute(sa.text(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), con.conname, "
        "pg_get_constraintdef(con.oid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid "
        "LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid "
        "AND con.conrelid = i.indrelid "
        "WHERE i.indrelid = CAST(:t AS regclass) ORDER BY c.relname"), {"t": table}).all()
    out = []
    for index, index_def, constraint, constraint_def in rows:
        if constraint is not None:
            out.append((f'ALTER TABLE "{table}" DROP CONSTRAINT "{constraint}"',
                        f'ALTER TABLE "{table}" ADD CONSTRAINT "{constraint}" {constraint_def}'))
        else:
            # a partitioned table's index reads "ON ONLY t": made again on the partitions too
            out.append((f'DROP INDEX "{index}"', index_def.replace(" ON ONLY ", " ON ")))
    return out


class Loader:
    """COPY of CSV chunks over one connection of its own, with a progress bar task."""

    def __init__(self, url: str, progress: Progress) -> None:
        self.url = url
        self.progress = progress

    def copy(self, table: str, chunks: Iterator[pl.DataFrame], total: int) -> int:
        task = self.progress.add_task(table, total=total)
        rows = 0
        with psycopg.connect(self.url) as conn:
            with conn.cursor() as cursor:
                for frame in chunks:
                    buffer = io.BytesIO()
                    frame.write_csv(buffer, include_header=False,
                                    datetime_format="%Y-%m-%d %H:%M:%S%.6f", null_value="")
                    columns = ", ".join(frame.columns)
                    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT csv)") as out:
                        out.write(buffer.getbuffer())
                    rows += frame.height
                    self.progress.update(task, completed=rows)
            conn.commit()
        return rows


def chunked(frame: pl.DataFrame, build: Callable[[pl.DataFrame], pl.DataFrame],
            size: int = CHUNK) -> Iterator[pl.DataFrame]:
    for start in range(0, frame.height, size):
        yield build(frame.slice(start, size))


def build_orders(purchases: int, members: int, enrolled_us: Any, rng: Any) -> pl.DataFrame:
    """Numeric columns of the orders, in time order, with the tier held and points earned."""
    import numpy as np

    weights = rng.pareto(1.5, members) + 1
    weights /= weights.sum()
    buyer = rng.choice(members, size=purchases, p=weights) + 1
    enrolled_of = enrolled_us[buyer - 1]
    start_us = np.maximum(enrolled_of - int((YEAR_START - ENROL_FROM).total_seconds() * 1e6),
                          0)
    offset = start_us + (rng.random(purchases) * (YEAR_US - start_us)).astype(np.int64)
    amount_cents = (rng.gamma(2.0, 1200.0, purchases) + 300).astype(np.int64)
    orders = pl.DataFrame({
        "member_pk": buyer.astype(np.int64),
        "occurred_at": pl.Series(offset).cast(pl.Duration("us")) + YEAR_START,
        "amount_e4": amount_cents * 100,
        "store": rng.integers(1, 51, purchases),
        "channel": rng.integers(0, 3, purchases),
        "partner": rng.integers(0, 10, purchases),
        "refund": rng.random(purchases) < 0.01,
    }).sort("occurred_at").with_row_index("n", offset=1)
    # the tier held at each purchase: Gold once the year's spend before it reaches 500
    return orders.with_columns(
        (pl.col("amount_e4").cum_sum().over("member_pk") - pl.col("amount_e4"))
        .alias("spend_before_e4")
    ).with_columns(
        pl.when(pl.col("spend_before_e4") >= 500 * 10_000).then(pl.lit("gold"))
        .otherwise(pl.lit("member")).alias("tier_id"),
        pl.when(pl.col("refund")).then(pl.col("amount_e4") // 200 * 100).otherwise(0)
        .alias("refunded_e4"),
    ).with_columns(
        pl.when(pl.col("tier_id") == "gold").then(pl.col("amount_e4") * 5 // 40_000)
        .otherwise(pl.col("amount_e4") // 10_000).alias("points"),
    ).drop("spend_before_e4", "refund")


def order_rows(chunk: pl.DataFrame) -> pl.DataFrame:
    """The orders table's rows of a chunk: ids, the stored event as JSON text."""
    n = pl.col("n").cast(pl.String)
    event_id, order_id = "p" + n, "o" + n
    store = "s" + pl.col("store").cast(pl.String)
    channel = pl.col("channel").replace_strict({0: "pos", 1: "app", 2: "web"},
                                               return_dtype=pl.String)
    partner = pl.when(pl.col("partner") == 0).then(pl.lit("grab")).otherwise(None)
    stamp = pl.col("occurred_at").dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    money = (pl.col("amount_e4") // 10_000).cast(pl.String) + "." + (
        (pl.col("amount_e4") // 100 % 100).cast(pl.String).str.zfill(2))
    return chunk.select(
        pl.lit(PROGRAM).alias("program_id"), order_id.alias("order_id"), "member_pk",
        event_id.alias("event_id"), pl.lit(1).alias("program_version"), "tier_id",
        "occurred_at", "amount_e4", "refunded_e4", pl.lit("[]").alias("lines"),
        pl.format('{{"base": {}}}', "points").alias("awards"),
        pl.concat_str([
            pl.lit('{"id": "'), event_id, pl.lit('", "type": "purchase", "member": "m'),
            pl.col("member_pk").cast(pl.String), pl.lit('", "occurred_at": "'), stamp,
            pl.lit('", "order_id": "'), order_id, pl.lit('", "amount": "'), money,
            pl.lit('", "store": "'), store, pl.lit('", "channel": "'), channel, pl.lit('"'),
            pl.when(pl.col("partner") == 0).then(pl.lit(', "partner": "grab"'))
            .otherwise(pl.lit("")),
            pl.lit(', "lines": []}'),
        ]).alias("event"),
        partner.alias("partner"),
    )


POSTING_COLUMNS = ("id", "program_id", "asset", "member_pk", "debit", "credit", "points",
                   "code", "ref", "rule_id", "program_version", "explanation", "occurred_at",
                   "debit_balance_after", "credit_balance_after")


def build_postings(member_frame: pl.DataFrame, orders: pl.DataFrame) -> pl.DataFrame:
    """Signup 50, one earn per purchase, a redemption after every 8th purchase of a member
    (150 points), and expiry of 20 points for a tenth of the members at year end; numeric
    columns with a kind (0 signup, 1 earn, 2 redeem, 3 expire) and the source's number."""
    signups = member_frame.select(
        pl.col("pk").alias("member_pk"), pl.lit(0, pl.Int8).alias("kind"),
        pl.col("pk").alias("source"), pl.lit(50, pl.Int64).alias("points"),
        pl.col("enrolled_at").alias("occurred_at"))
    earns = orders.filter(pl.col("points") > 0).select(
        "member_pk", pl.lit(1, pl.Int8).alias("kind"), pl.col("n").cast(pl.Int64)
        .alias("source"), pl.col("points").cast(pl.Int64), "occurred_at")
    redeems = orders.select(
        "member_pk", "n", "occurred_at",
        pl.int_range(pl.len()).over("member_pk").alias("k")).filter(
        pl.col("k") % 8 == 7).select(
        "member_pk", pl.lit(2, pl.Int8).alias("kind"), pl.col("n").cast(pl.Int64)
        .alias("source"), pl.lit(150, pl.Int64).alias("points"),
        (pl.col("occurred_at") + pl.duration(minutes=5)).alias("occurred_at"))
    expires = member_frame.filter(pl.col("pk") % 10 == 0).select(
        pl.col("pk").alias("member_pk"), pl.lit(3, pl.Int8).alias("kind"),
        pl.col("pk").alias("source"), pl.lit(20, pl.Int64).alias("points"),
        pl.lit(datetime(2027, 12, 31, 15, 0)).cast(pl.Datetime("us")).alias("occurred_at"))
    return pl.concat([signups, earns, redeems, expires]).sort(
        "occurred_at", "kind", "source").with_row_index("id", offset=1)


def posting_rows(chunk: pl.DataFrame) -> pl.DataFrame:
    kind = pl.col("kind")
    source = pl.col("source").cast(pl.String)
    return chunk.select(
        pl.col("id").cast(pl.Int64), pl.lit(PROGRAM).alias("program_id"),
        pl.lit("points").alias("asset"), "member_pk",
        pl.when(kind <= 1).then(pl.lit("issued")).otherwise(pl.lit("available"))
        .alias("debit"),
        pl.when(kind <= 1).then(pl.lit("available")).when(kind == 2)
        .then(pl.lit("redeemed")).otherwise(pl.lit("expired")).alias("credit"),
        "points",
        pl.when(kind <= 1).then(pl.lit("earn")).when(kind == 2).then(pl.lit("redeem"))
        .otherwise(pl.lit("expire")).alias("code"),
        pl.when(kind == 0).then("signup:m" + source).when(kind == 1).then("p" + source)
        .when(kind == 2).then("rp" + source).otherwise("x" + source).alias("ref"),
        pl.when(kind == 0).then(pl.lit("welcome")).when(kind == 1).then(pl.lit("base"))
        .otherwise(None).alias("rule_id"),
        pl.lit(1).alias("program_version"), pl.lit("").alias("explanation"), "occurred_at",
        pl.lit(None, pl.Int64).alias("debit_balance_after"),
        pl.lit(None, pl.Int64).alias("credit_balance_after"),
    )


def generate(engine: sa.Engine, members: int, purchases: int, seed: int) -> None:
    import numpy as np

    store_programme(engine, dict(PROGRAMME))
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with engine.begin() as conn:
        # monthly partitions for every month of the data, as run-due would have made them
        ensure_months(conn, date(2026, 6, 1), date(2028, 1, 1))
        indexes = [s for table in TABLES for s in index_statements(conn, table)]
        for drop, _ in indexes:  # built again after the load: much faster than row by row
            conn.execute(sa.text(drop))
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    # members enrol from 2026-07-01 to 2027-11-30 (+08:00), uniformly
    enrol_span_us = int((datetime(2027, 11, 30, 16) - ENROL_FROM).total_seconds() * 1e6)
    enrolled_us = rng.integers(0, enrol_span_us, members)
    member_frame = pl.DataFrame({
        "pk": np.arange(1, members + 1, dtype=np.int64),
        "enrolled_at": pl.Series(enrolled_us).cast(pl.Duration("us")) + ENROL_FROM,
    })
    orders = build_orders(purchases, members, enrolled_us, rng)
    postings = build_postings(member_frame, orders)
    delta = postings.group_by("member_pk").agg(
        pl.when(pl.col("kind") <= 1).then(pl.col("points")).otherwise(-pl.col("points"))
        .sum().alias("available"))
    per_member = orders.group_by("member_pk").agg(
        pl.len().alias("purchases"), pl.col("occurred_at").max().alias("last"),
        (pl.col("tier_id") == "gold").any().alias("gold"))
    rows = member_frame.join(delta, left_on="pk", right_on="member_pk", how="left").join(
        per_member, left_on="pk", right_on="member_pk", how="left").with_columns(
        pl.col("available").fill_null(0), pl.col("purchases").fill_null(0))
    local = orders.select(
        "member_pk", (pl.col("amount_e4") - pl.col("refunded_e4")).alias("net_e4"), "points",
        pl.col("occurred_at").dt.replace_time_zone("UTC").dt.convert_time_zone(
            "Asia/Kuala_Lumpur").dt.strftime("%Y-%m").alias("month"))
    buckets = local.group_by("member_pk", "month").agg(
        pl.col("net_e4").sum().alias("spend_e4"), pl.col("points").sum(),
        pl.len().cast(pl.Int32).alias("visits"))
    del local
    say(f"  frames built in {time.perf_counter() - started:.0f} s: {members:,} members, "
        f"{orders.height:,} orders, {postings.height:,} postings, "
        f"{buckets.height:,} metric buckets")

    def member_rows(chunk: pl.DataFrame) -> pl.DataFrame:
        return chunk.select(
            "pk", pl.lit(PROGRAM).alias("program_id"),
            ("m" + pl.col("pk").cast(pl.String)).alias("id"),
            pl.lit(None, pl.String).alias("name"), pl.lit(None, pl.String).alias("email"),
            pl.lit(None, pl.String).alias("phone"), pl.lit(None, pl.Date).alias("birthday"),
            pl.lit("{}").alias("attributes"), "enrolled_at",
            pl.when(pl.col("gold").fill_null(False)).then(pl.lit("gold"))
            .otherwise(pl.lit("member")).alias("tier_id"),
            pl.lit("2027").alias("tier_reviewed"), "available", pl.lit(0).alias("pending"),
            pl.lit(0).alias("reserved"), pl.lit(1).alias("lot_seq"), "purchases",
            pl.col("last").alias("last_activity_at"),
            pl.lit(None, pl.Int64).alias("birthday_year"))

    def lot_rows(chunk: pl.DataFrame) -> pl.DataFrame:
        return chunk.filter(pl.col("available") > 0).select(
            pl.col("pk").alias("member_pk"), pl.lit(1).alias("seq"),
            pl.lit(PROGRAM).alias("program_id"), pl.lit("bench").alias("source"),
            pl.lit(None, pl.String).alias("order_id"), pl.col("available").alias("points"),
            pl.col("available").alias("remaining"),
            pl.col("enrolled_at").alias("available_at"),
            (pl.datetime(2028, 1, 1) + pl.duration(days=pl.col("pk") % 365))
            .alias("expires_at"), pl.lit(False).alias("pending"))

    def signup_rows(chunk: pl.DataFrame) -> pl.DataFrame:
        pk = pl.col("pk").cast(pl.String)
        return chunk.select(
            pl.lit(PROGRAM).alias("program_id"), ("signup:m" + pk).alias("id"),
            pl.lit("signup").alias("type"), ("m" + pk).alias("member_id"),
            pl.col("enrolled_at").alias("occurred_at"), pl.lit("").alias("request_hash"),
            pl.concat_str([pl.lit('{"id": "signup:m'), pk,
                           pl.lit('", "type": "signup", "member": "m'), pk,
                           pl.lit('", "occurred_at": "'),
                           pl.col("enrolled_at").dt.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                           pl.lit('"}')]).alias("payload"),
            pl.lit("{}").alias("result"), pl.col("enrolled_at").alias("recorded_at"))

    copy_started = time.perf_counter()
    with Progress(TextColumn("  {task.description:<15}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn()) as progress:
        loader = Loader(url, progress)
        # two connections: the orders on one, everything else on the other
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(loader.copy, "orders", chunked(orders, order_rows),
                                orders.height)

            def rest() -> None:
                loader.copy("members", chunked(rows, member_rows), rows.height)
                loader.copy("postings", chunked(postings, posting_rows), postings.height)
                loader.copy("lots", chunked(rows, lot_rows),
                            rows.filter(pl.col("available") > 0).height)
                loader.copy("metric_buckets", chunked(buckets, lambda c: c), buckets.height)
                loader.copy("events", chunked(member_frame, signup_rows), members)

            second = pool.submit(rest)
            first.result()
            second.result()
    say(f"  copied in {time.perf_counter() - copy_started:.0f} s")
    index_started = time.perf_counter()
    by_table: dict[str, list[str]] = {}
    for create in (c for _, c in indexes):
        table = create.split('"')[1] if create.startswith("ALTER") else create.split(
            " ON ")[1].split()[0].split(".")[-1]
        by_table.setdefault(table, []).append(create)

    def build(statements: list[str]) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET maintenance_work_mem = '1GB'")
            for statement in statements:
                conn.execute(statement)

    big = [s for t in ("orders",) for s in by_table.get(t, [])]
    small = [s for t, ss in by_table.items() if t != "orders" for s in ss]
    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(build, big), pool.submit(build, small)]:
            future.result()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT setval(pg_get_serial_sequence('members', 'pk'), %s)", (members,))
        conn.execute("SELECT setval(pg_get_serial_sequence('postings', 'id'), %s)",
                     (postings.height,))
        conn.execute("ANALYZE")
    say(f"  indexes, keys and ANALYZE in {time.perf_counter() - index_started:.0f} s")


def measure(engine: sa.Engine) -> list[tuple[str, float]]:
    figures: list[tuple[str, float]] = []
    year = (date(2027, 1, 1), date(2027, 12, 31))
    say(f"dashboard set, 2027 by month, overall (load {os.getloadavg()[0]:.1f}):")
    total_started = time.perf_counter()
    data = timed("read frames (ADBC -> Arrow -> Polars)",
                 lambda: an.load(engine, PROGRAM, summary=True), figures)
    options = an.options_for(data.programme, *year, grain="month")
    for name, metric in an.METRICS.items():
        timed(f"metric {name}", lambda m=metric, d=data, o=options: m(d, o), figures)
    figures.append(("DASHBOARD TOTAL", time.perf_counter() - total_started))
    say(f"  {'DASHBOARD TOTAL':<44} {figures[-1][1]:8.2f} s")
    say(f"  (orders {data.orders.height:,}, postings summed per 15 minutes "
        f"{data.postings.height:,}, members {data.members.height:,})")
    read_summed = figures[0][1]
    plain = timed("baseline: read frames, a row per posting", lambda: an.load(engine, PROGRAM),
                  figures)
    say(f"  read with postings summed in the database / a row per posting: "
        f"{read_summed / figures[-1][1]:.2f} ({plain.postings.height:,} postings)")
    del plain
    for by in ("tier", "store"):
        say(f"breakdown by {by}:")
        started = time.perf_counter()
        data = timed(f"read frames with {by}", lambda b=by: an.load(engine, PROGRAM, by=b),
                     figures)
        options = an.options_for(data.programme, *year, grain="month", by=by)
        for name in ("sales", "points", "churn", "enrolments"):
            timed(f"metric {name} by {by}",
                  lambda n=name, d=data, o=options: an.METRICS[n](d, o), figures)
        figures.append((f"BY {by.upper()} TOTAL", time.perf_counter() - started))
        say(f"  {'BY ' + by.upper() + ' TOTAL':<44} {figures[-1][1]:8.2f} s")
    say(f"customer lifetime value (load {os.getloadavg()[0]:.1f}):")
    data = an.load(engine, PROGRAM)
    timed("CLV per member (BG/NBD + Gamma-Gamma)",
          lambda: member_clv(data, date(2027, 12, 31)), figures)
    draft = dict(PROGRAMME)
    draft["earn"] = [{"id": "base", "on": "purchase", "rate": 2}, PROGRAMME["earn"][1]]
    # September has about a million events at the issue's size (the issue's "month of about
    # 1 million events"); December, the busiest month of the generated year, 1.8 million
    for label, first, last in (("September", date(2027, 9, 1), date(2027, 9, 30)),
                               ("December", date(2027, 12, 1), date(2027, 12, 31))):
        say(f"what-if, {label} 2027, base rate doubled (load {os.getloadavg()[0]:.1f}):")
        result = timed(f"what-if replay of {label}",
                       lambda a=first, b=last: whatif.run(engine, PROGRAM, draft, a, b), figures)
        if label == "September":
            alone = figures[-1][1]
            split = timed(f"what-if of {label} split over two processes",
                          lambda a=first, b=last: whatif.run(engine, PROGRAM, draft, a, b,
                                                             workers=2), figures)
            assert split == result, "one process and two give the same answer"
            say(f"  two processes / one: {figures[-1][1] / alone:.2f}")
        say(f"  events replayed {result['events']:,}, members {result['members']:,}, "
            f"live {result['live']['points_issued']:,} (posted {result['posted_points']:,}), "
            f"draft {result['draft']['points_issued']:,}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--purchases", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=20270101)
    parser.add_argument("--postgres-url", default=os.environ.get(
        "SETIA_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--database", default=DATABASE,
                        help=f"the scratch database (default {DATABASE})")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--reuse", action="store_true", help="time an existing database")
    parser.add_argument("--generate-only", action="store_true",
                        help="generate and keep the database, time nothing")
    args = parser.parse_args()
    admin = sa.create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    url = sa.make_url(args.postgres_url).set(database=args.database).render_as_string(
        hide_password=False)
    database = args.database
    say(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}; Python {sys.version.split()[0]}, "
        f"Polars {pl.__version__}")
    if not args.reuse:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    engine = make_engine(url)
    try:
        if not args.reuse:
            upgrade(engine)
            say(f"generating {args.members:,} members and {args.purchases:,} purchases "
                "(bulk COPY):")
            started = time.perf_counter()
            generate(engine, args.members, args.purchases, args.seed)
            say(f"  generated in {time.perf_counter() - started:.0f} s")
        if args.generate_only:
            return 0
        measure(engine)
        say(f"load average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        engine.dispose()
        if not (args.keep or args.generate_only or args.reuse):  # a reused one stays
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
