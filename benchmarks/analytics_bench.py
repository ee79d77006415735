"""Speed of the analytics (docs/benchmarks-analytics.md): every metric over a year of
1,000,000 members and 10,000,000 purchases, and the what-if replay of one month.

    python benchmarks/analytics_bench.py                     # generate, time, drop
    python benchmarks/analytics_bench.py --members 100000 --purchases 1000000
    python benchmarks/analytics_bench.py --keep              # keep setia_bench_analytics
    python benchmarks/analytics_bench.py --reuse             # time an existing kept one

The data is written by a BULK PATH, not by ingesting events: rows are generated
with Polars (fixed seed) and sent with PostgreSQL COPY straight into members,
orders, postings, lots, metric_buckets and events (signups only), as the engine
would have left them for the programme below (1 point per MYR 1 at the tier's
multiplier, 50 at signup, Gold from MYR 500 a year). A share of the points is
redeemed and expired by postings of their own. Balances and lots are consistent
with the postings; per-purchase rows of the ``events`` table are not written (no
metric reads them; the what-if reads orders).

Timed, on the scratch database ``setia_bench_analytics`` of --postgres-url:
1. the dashboard set: reading the frames, then every metric of
   service/analytics.py for 2027 by month, overall (each metric timed);
2. breakdowns: sales and points by tier and by store (with their own reads);
3. CLV per member (BG/NBD + Gamma-Gamma fitted on every member);
4. the what-if of December 2027 (about 1/12 of the purchases) with a draft that
   doubles the base rate.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

import polars as pl
import sqlalchemy as sa

from setia.adapters.db.engine import make_engine
from setia.adapters.db.migrate import upgrade
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


def say(text: str) -> None:
    print(text, flush=True)


def timed(label: str, work: Callable[[], Any], figures: list[tuple[str, float]]) -> Any:
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    figures.append((label, seconds))
    say(f"  {label:<44} {seconds:8.2f} s")
    return result


def copy(engine: sa.Engine, table: str, frame: pl.DataFrame, chunk: int = 1_000_000) -> None:
    """COPY a frame into a table, in chunks of CSV."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        columns = ", ".join(frame.columns)
        for start in range(0, frame.height, chunk):
            buffer = io.BytesIO()
            frame.slice(start, chunk).write_csv(buffer, include_header=False,
                                                datetime_format="%Y-%m-%d %H:%M:%S%.6f",
                                                null_value="")
            with cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT csv)") as out:
                out.write(buffer.getvalue())
        raw.commit()
    finally:
        raw.close()


def generate(engine: sa.Engine, members: int, purchases: int, seed: int) -> None:
    store_programme(engine, dict(PROGRAMME))
    pl.set_random_seed(seed)
    import numpy as np

    rng = np.random.default_rng(seed)
    # members enrol from 2026-07-01 to 2027-11-30 (+08:00), uniformly
    enrol_from = datetime(2026, 6, 30, 16, 0)
    enrol_span_us = int((datetime(2027, 11, 30, 16) - enrol_from).total_seconds() * 1e6)
    enrolled_us = rng.integers(0, enrol_span_us, members)
    member_frame = pl.DataFrame({
        "pk": np.arange(1, members + 1, dtype=np.int64),
        "enrolled_at": pl.Series(enrolled_us).cast(pl.Duration("us")) + enrol_from,
    })
    say(f"  members: {members:,}")
    # purchases: members drawn with a skew (some buy much more), times uniform over 2027
    # after the member's enrolment
    weights = rng.pareto(1.5, members) + 1
    weights /= weights.sum()
    buyer = rng.choice(members, size=purchases, p=weights) + 1
    enrolled_of = enrolled_us[buyer - 1]
    start_us = np.maximum(enrolled_of - int((YEAR_START - enrol_from).total_seconds() * 1e6),
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
    orders = orders.with_columns(
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
        ("p" + pl.col("n").cast(pl.String)).alias("event_id"),
        ("o" + pl.col("n").cast(pl.String)).alias("order_id"),
        ("s" + pl.col("store").cast(pl.String)).alias("store_id"),
        pl.col("channel").replace_strict({0: "pos", 1: "app", 2: "web"}).alias("channel_id"),
        pl.when(pl.col("partner") == 0).then(pl.lit("grab")).otherwise(None)
        .alias("partner_id"),
    )
    stamp = pl.col("occurred_at").dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    money = (pl.col("amount_e4") // 10_000).cast(pl.String) + "." + (
        (pl.col("amount_e4") // 100 % 100).cast(pl.String).str.zfill(2))
    order_rows = orders.select(
        pl.lit(PROGRAM).alias("program_id"), "order_id", "member_pk", "event_id",
        pl.lit(1).alias("program_version"), "tier_id", "occurred_at", "amount_e4",
        "refunded_e4", pl.lit("[]").alias("lines"),
        pl.format('{{"base": {}}}', "points").alias("awards"),
        pl.concat_str([
            pl.lit('{"id": "'), "event_id", pl.lit('", "type": "purchase", "member": "m'),
            pl.col("member_pk").cast(pl.String), pl.lit('", "occurred_at": "'), stamp,
            pl.lit('", "order_id": "'), "order_id", pl.lit('", "amount": "'), money,
            pl.lit('", "store": "'), "store_id", pl.lit('", "channel": "'), "channel_id",
            pl.lit('"'),
            pl.when(pl.col("partner_id").is_not_null())
            .then(pl.lit(', "partner": "') + pl.col("partner_id") + pl.lit('"'))
            .otherwise(pl.lit("")),
            pl.lit(', "lines": []}'),
        ]).alias("event"),
    )
    copy(engine, "orders", order_rows)
    say(f"  orders: {purchases:,}")
    del order_rows
    # postings: signup 50, one earn per purchase, a redemption after every 8th purchase
    # of a member (150 points), and expiry of 20 points for a tenth of the members at
    # year end
    base = {"program_id": PROGRAM, "asset": "points", "program_version": 1,
            "explanation": "", "debit_balance_after": None, "credit_balance_after": None}
    signups = member_frame.select(
        pl.col("pk").alias("member_pk"), pl.lit("issued").alias("debit"),
        pl.lit("available").alias("credit"), pl.lit(50).alias("points"),
        pl.lit("earn").alias("code"), ("signup:m" + pl.col("pk").cast(pl.String)).alias("ref"),
        pl.lit("welcome").alias("rule_id"), pl.col("enrolled_at").alias("occurred_at"))
    earns = orders.select(
        "member_pk", pl.lit("issued").alias("debit"), pl.lit("available").alias("credit"),
        "points", pl.lit("earn").alias("code"), pl.col("event_id").alias("ref"),
        pl.lit("base").alias("rule_id"), "occurred_at").filter(pl.col("points") > 0)
    redeems = orders.with_columns(
        pl.int_range(pl.len()).over("member_pk").alias("k")).filter(
        pl.col("k") % 8 == 7).select(
        "member_pk", pl.lit("available").alias("debit"), pl.lit("redeemed").alias("credit"),
        pl.lit(150).alias("points"), pl.lit("redeem").alias("code"),
        ("r" + pl.col("event_id")).alias("ref"), pl.lit(None, pl.String).alias("rule_id"),
        (pl.col("occurred_at") + pl.duration(minutes=5)).alias("occurred_at"))
    expires = member_frame.filter(pl.col("pk") % 10 == 0).select(
        pl.col("pk").alias("member_pk"), pl.lit("available").alias("debit"),
        pl.lit("expired").alias("credit"), pl.lit(20).alias("points"),
        pl.lit("expire").alias("code"), ("x" + pl.col("pk").cast(pl.String)).alias("ref"),
        pl.lit(None, pl.String).alias("rule_id"),
        pl.lit(datetime(2027, 12, 31, 15, 0)).alias("occurred_at"))
    postings = pl.concat([signups, earns, redeems, expires], how="vertical_relaxed").sort(
        "occurred_at").with_columns(
        *(pl.lit(v).alias(k) for k, v in base.items()))
    copy(engine, "postings", postings.select(
        "program_id", "asset", "member_pk", "debit", "credit", "points", "code", "ref",
        "rule_id", "program_version", "explanation", "occurred_at", "debit_balance_after",
        "credit_balance_after"))
    say(f"  postings: {postings.height:,}")
    delta = postings.with_columns(
        (pl.when(pl.col("credit") == "available").then(pl.col("points")).otherwise(0)
         - pl.when(pl.col("debit") == "available").then(pl.col("points")).otherwise(0))
        .alias("d")).group_by("member_pk").agg(pl.col("d").sum().alias("available"))
    del postings
    visits = orders.group_by("member_pk").agg(pl.len().alias("purchases"),
                                              pl.col("occurred_at").max().alias("last"))
    rows = member_frame.join(delta, left_on="pk", right_on="member_pk", how="left").join(
        visits, left_on="pk", right_on="member_pk", how="left").with_columns(
        pl.col("available").fill_null(0), pl.col("purchases").fill_null(0))
    gold = orders.group_by("member_pk").agg(
        (pl.col("tier_id") == "gold").any().alias("gold"))
    rows = rows.join(gold, left_on="pk", right_on="member_pk", how="left")
    copy(engine, "members", rows.select(
        "pk", pl.lit(PROGRAM).alias("program_id"), ("m" + pl.col("pk").cast(pl.String))
        .alias("id"), pl.lit(None, pl.String).alias("name"),
        pl.lit(None, pl.String).alias("email"), pl.lit(None, pl.String).alias("phone"),
        pl.lit(None, pl.Date).alias("birthday"), pl.lit("{}").alias("attributes"),
        "enrolled_at",
        pl.when(pl.col("gold").fill_null(False)).then(pl.lit("gold")).otherwise(
            pl.lit("member")).alias("tier_id"),
        pl.lit("2027").alias("tier_reviewed"), "available", pl.lit(0).alias("pending"),
        pl.lit(0).alias("reserved"), pl.lit(1).alias("lot_seq"), "purchases",
        pl.col("last").alias("last_activity_at"), pl.lit(None, pl.Int64).alias("birthday_year"),
    ))
    say("  members written")
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('members', 'pk'), "
                             "(SELECT max(pk) FROM members))"))
    copy(engine, "lots", rows.filter(pl.col("available") > 0).select(
        pl.col("pk").alias("member_pk"), pl.lit(1).alias("seq"),
        pl.lit(PROGRAM).alias("program_id"), pl.lit("bench").alias("source"),
        pl.lit(None, pl.String).alias("order_id"), pl.col("available").alias("points"),
        pl.col("available").alias("remaining"), pl.col("enrolled_at").alias("available_at"),
        (pl.datetime(2028, 1, 1) + pl.duration(days=pl.col("pk") % 365)).alias("expires_at"),
        pl.lit(False).alias("pending")))
    local = orders.with_columns(
        pl.col("occurred_at").dt.replace_time_zone("UTC").dt.convert_time_zone(
            "Asia/Kuala_Lumpur").dt.strftime("%Y-%m").alias("month"))
    copy(engine, "metric_buckets", local.group_by("member_pk", "month").agg(
        (pl.col("amount_e4") - pl.col("refunded_e4")).sum().alias("spend_e4"),
        pl.col("points").sum(), pl.len().cast(pl.Int32).alias("visits")))
    copy(engine, "events", member_frame.select(
        pl.lit(PROGRAM).alias("program_id"), ("signup:m" + pl.col("pk").cast(pl.String))
        .alias("id"), pl.lit("signup").alias("type"),
        ("m" + pl.col("pk").cast(pl.String)).alias("member_id"),
        pl.col("enrolled_at").alias("occurred_at"), pl.lit("").alias("request_hash"),
        pl.concat_str([pl.lit('{"id": "signup:m'), pl.col("pk").cast(pl.String),
                       pl.lit('", "type": "signup", "member": "m'),
                       pl.col("pk").cast(pl.String), pl.lit('", "occurred_at": "'),
                       pl.col("enrolled_at").dt.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                       pl.lit('"}')]).alias("payload"),
        pl.lit("{}").alias("result"), pl.col("enrolled_at").alias("recorded_at")))
    say("  lots, metric buckets and signup events written")
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE"))


def measure(engine: sa.Engine) -> list[tuple[str, float]]:
    figures: list[tuple[str, float]] = []
    year = (date(2027, 1, 1), date(2027, 12, 31))
    say("dashboard set, 2027 by month, overall:")
    total_started = time.perf_counter()
    data = timed("read frames (ADBC -> Arrow -> Polars)", lambda: an.load(engine, PROGRAM),
                 figures)
    options = an.options_for(data.programme, *year, grain="month")
    for name, metric in an.METRICS.items():
        timed(f"metric {name}", lambda m=metric, d=data, o=options: m(d, o), figures)
    figures.append(("DASHBOARD TOTAL", time.perf_counter() - total_started))
    say(f"  {'DASHBOARD TOTAL':<44} {figures[-1][1]:8.2f} s")
    say(f"  (orders {data.orders.height:,}, postings {data.postings.height:,}, "
        f"members {data.members.height:,})")
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
    say("customer lifetime value:")
    data = an.load(engine, PROGRAM)
    timed("CLV per member (BG/NBD + Gamma-Gamma)",
          lambda: member_clv(data, date(2027, 12, 31)), figures)
    say("what-if, December 2027, base rate doubled:")
    draft = dict(PROGRAMME)
    draft["earn"] = [{"id": "base", "on": "purchase", "rate": 2}, PROGRAMME["earn"][1]]
    result = timed("what-if replay of a month", lambda: whatif.run(
        engine, PROGRAM, draft, date(2027, 12, 1), date(2027, 12, 31)), figures)
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
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--reuse", action="store_true", help="time an existing database")
    parser.add_argument("--generate-only", action="store_true",
                        help="generate and keep the database, time nothing")
    args = parser.parse_args()
    admin = sa.create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    url = sa.make_url(args.postgres_url).set(database=DATABASE).render_as_string(
        hide_password=False)
    say(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}; Python {sys.version.split()[0]}, "
        f"Polars {pl.__version__}")
    if not args.reuse:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{DATABASE}"'))
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
        if not (args.keep or args.generate_only):
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
