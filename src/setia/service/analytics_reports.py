"""Periodic member statements, the audit that reconciles the journal with the metrics,
and exports (CSV, Parquet) of members, the journal and metrics."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.adapters.db.analytics_read import REFUNDED_IN_FULL, at_snapshot, reader
from setia.domain import tiers
from setia.domain.errors import InvalidField
from setia.service import analytics as an
from setia.service.clv import member_clv

FORMATS = ("csv", "json", "parquet")
MAX_AUDIT_PERIODS = 400  # each period is checked with its own SQL sums
DATASETS = ("members", "journal", "metrics")


def _in_period(frame: pl.DataFrame, options: an.Options) -> pl.DataFrame:
    return frame.filter(pl.col("day").is_between(options.date_from, options.date_to))


def member_statements(data: an.Dataset, options: an.Options,
                      postings: pl.DataFrame | None = None,
                      buckets: pl.DataFrame | None = None,
                      held: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per member and asset for the period: earned (net of clawbacks), spent (redeemed),
    expired, adjusted, balance at the start and end, purchases and net spend; and, with
    ``buckets`` (as they stood at the end of the period: ``buckets_as_of``), the tier
    progress then: the tier (``held``: ``tiers_held``), the metric over the tier window,
    the next level and what remained to it."""
    postings = data.postings if postings is None else postings
    before = postings.filter(pl.col("day") < options.date_from).group_by("member_pk", "asset").agg(
        pl.col("member_delta").sum().alias("balance_start"))
    during = _in_period(postings, options).group_by("member_pk", "asset").agg(
        pl.col("issued").sum().alias("earned"), pl.col("redeemed").sum().alias("spent"),
        pl.col("expired").sum(), pl.col("adjusted").sum(),
        pl.col("member_delta").sum().alias("change"),
    )
    assets = pl.concat([before.select("member_pk", "asset"), during.select("member_pk", "asset")]
                       ).unique()
    flows = (
        assets.join(before, on=["member_pk", "asset"], how="left")
        .join(during, on=["member_pk", "asset"], how="left")
        .fill_null(0)
        .with_columns((pl.col("balance_start") + pl.col("change")).alias("balance_end"))
        .drop("change")
    )
    purchases = _in_period(data.orders, options).group_by("member_pk").agg(
        pl.len().alias("purchases"), pl.col("net_e4").sum().alias("spend_e4"))
    members = data.members.filter(pl.col("enrolled_day") <= options.date_to).select(
        "member_pk", "member", "tier")
    out = (
        members.join(flows, on="member_pk", how="left")
        .join(purchases, on="member_pk", how="left")
        .with_columns(pl.col("asset").fill_null("points"),
                      pl.col("purchases").fill_null(0), pl.col("spend_e4").fill_null(0))
        .with_columns(pl.col(c).fill_null(0) for c in
                      ("balance_start", "earned", "spent", "expired", "adjusted", "balance_end"))
    )
    if buckets is not None:
        progress = tier_progress(data, buckets, options.date_to, held)
        out = (out.join(progress.rename({"tier": "_tier_then"}), on="member_pk", how="left")
               .with_columns(pl.col("_tier_then").alias("tier")).drop("_tier_then"))
    return out.drop("member_pk").sort("member", "asset")


BUCKET_COLUMNS = ("spend_e4", "points", "visits")


def rule_points(earned: pl.DataFrame, orders: pl.DataFrame) -> pl.DataFrame:
    """Of the ``earn`` postings ``earned``, the points the programme's earn rules gave
    events other than the purchases ``orders`` (signups, reviews, birthdays ...): what they
    added to the tier buckets (member, time, ``issued``). Earn rules have ids without ":";
    campaigns, stamp cards, surveys, referrals ... (``<feature>:<id>``) add nothing."""
    return (
        earned.filter(pl.col("rule_id").is_not_null()
                      & ~pl.col("rule_id").str.contains(":", literal=True))
        .join(orders.select(pl.col("event_id").alias("ref")), on="ref", how="anti")
        .select("member_pk", "ref", "occurred_at", "issued")
    )


def net_of_taken_back(points: pl.DataFrame, postings: pl.DataFrame,
                      reviews: pl.DataFrame) -> pl.DataFrame:
    """``points`` (``rule_points``) per event, less what a reversal of the event
    (``reverse:<event>``) or a rejected review of it (``Reader.rejected_reviews``) took
    back since: the engine lowered the event's bucket by what they took, at most what it
    had counted (``reversals``, ``fraud``), so the bucket holds the rest."""
    taken = pl.concat([
        postings.filter((pl.col("asset") == "points") & (pl.col("code") == "reverse")
                        & pl.col("ref").str.starts_with("reverse:"))
        .select("member_pk", pl.col("ref").str.strip_prefix("reverse:"), "issued"),
        postings.filter((pl.col("asset") == "points") & (pl.col("code") == "review_reject"))
        .join(reviews, on="ref").select("member_pk", pl.col("event_id").alias("ref"), "issued"),
    ]).group_by("member_pk", "ref").agg((-pl.col("issued").sum()).alias("_taken"))
    return (
        points.group_by("member_pk", "ref").agg(pl.col("occurred_at").min(),
                                                 pl.col("issued").sum())
        .join(taken, on=["member_pk", "ref"], how="left")
        .select("member_pk", "occurred_at",
                pl.max_horizontal(pl.col("issued") - pl.col("_taken").fill_null(0),
                                  pl.lit(0)).alias("issued"))
    )


def buckets_as_of(buckets: pl.DataFrame, later_orders: pl.DataFrame,
                  later_points: pl.DataFrame, tz: str,
                  reviews: pl.DataFrame | None = None) -> pl.DataFrame:
    """The tier buckets (``Reader.metric_buckets``) as they stood before the purchases
    ``later_orders`` (``Reader.orders_since``) and the other events' points
    ``later_points`` (``rule_points``): less what each of those purchases holds in them now
    (its spend net of refunds, a visit unless refunded in full, the points its rules kept)
    and those points, each in the month of its event, as the engine keys them. A purchase
    whose review was rejected (``reviews``: ``Reader.rejected_reviews``) holds nothing in
    them any more (``fraud``)."""
    def month(column: str) -> pl.Expr:
        return pl.col(column).dt.convert_time_zone(tz).dt.strftime("%Y-%m").alias("month")

    # {"base": 40, "pastry-bonus": 10}: rule ids hold no quote, so the numbers are the points
    kept = (pl.col("awards").str.replace_all(r'"[^"]*"\s*:', "").str.extract_all(r"-?[0-9]+")
            .list.eval(pl.element().cast(pl.Int64)).list.sum())
    if reviews is not None and reviews.height:
        later_orders = later_orders.join(reviews.select("event_id"), on="event_id", how="anti")
    purchases = later_orders.select(
        "member_pk", month("occurred_at"),
        (pl.col("amount_e4") - pl.col("refunded_e4")).alias("spend_e4"),
        kept.fill_null(0).alias("points"),
        (~REFUNDED_IN_FULL).cast(pl.Int64).alias("visits"),
    )
    others = later_points.select(
        "member_pk", month("occurred_at"), pl.lit(0, pl.Int64).alias("spend_e4"),
        pl.col("issued").alias("points"), pl.lit(0, pl.Int64).alias("visits"))
    later = pl.concat([purchases, others]).with_columns(-pl.col(c) for c in BUCKET_COLUMNS)
    return (
        pl.concat([buckets.select("member_pk", "month", *(pl.col(c).cast(pl.Int64)
                                                            for c in BUCKET_COLUMNS)), later])
        .group_by("member_pk", "month").agg(pl.col(c).sum() for c in BUCKET_COLUMNS)
    )


def tiers_held(members: pl.DataFrame, later_orders: pl.DataFrame,
               later_points: pl.DataFrame) -> pl.DataFrame:
    """Each member's tier before the purchases ``later_orders`` and the other events'
    points ``later_points``: without either, today's tier; where a purchase comes first,
    the tier it was bought at (an order keeps it); where another event's points come first
    (they may have moved the tier), none known (null: ``tier_progress`` then shows the
    level the metric reached)."""
    first = (
        pl.concat([
            later_orders.select("member_pk", "occurred_at", "tier"),
            later_points.select("member_pk", "occurred_at", pl.lit(None, pl.String).alias("tier")),
        ])
        .sort("occurred_at", "tier", nulls_last=False)
        .group_by("member_pk", maintain_order=True).first()
        .select("member_pk", pl.col("tier").alias("_held"), pl.lit(True).alias("_later"))
    )
    return members.select("member_pk", "tier").join(first, on="member_pk", how="left").select(
        "member_pk",
        pl.when(pl.col("_later")).then(pl.col("_held")).otherwise(pl.col("tier")).alias("tier"))


def tier_progress(data: an.Dataset, buckets: pl.DataFrame, at: date,
                  held: pl.DataFrame | None = None) -> pl.DataFrame:
    """The tier at ``at``, the metric over the window that contains ``at``, the next level
    and what remains to it. The tier is ``held`` (``tiers_held``; else the member's current
    one) raised to the level the metric reaches (members move up as soon as it does) and,
    with calendar year windows, to the level the year before reached (that status lasts
    through the next year): a review after ``at`` that lowered it does not show."""
    programme = data.programme
    config = programme.model.tiers
    local = datetime.combine(at, time(12), tzinfo=programme.tz)
    column = {"spend": "spend_e4", "points": "points", "visits": "visits"}[config.metric]
    scale = an.E4 if config.metric == "spend" else 1
    # thresholds in the metric's own units (spend: ten-thousandths); the metric is whole
    thresholds = [math.ceil(level.threshold * scale) for level in config.levels]

    def metric(when: datetime) -> pl.Expr:
        months = tiers.window_months(programme, when)
        return pl.col(column).filter(pl.col("month").is_in(months)).sum()

    def reached(value: pl.Expr) -> pl.Expr:
        """The highest level whose threshold ``value`` reaches (``tiers.level_for``)."""
        rank: pl.Expr = pl.lit(0)
        for i, threshold in enumerate(thresholds):
            rank = pl.when(value >= threshold).then(pl.lit(i)).otherwise(rank)
        return rank

    windows = [metric(local).alias("value")]
    if config.window == "calendar_year":
        year_before = datetime(at.year - 1, 1, 1, 12, tzinfo=programme.tz)
        windows.append(metric(year_before).alias("value_before"))
    values = buckets.group_by("member_pk").agg(*windows)
    floors = [reached(pl.col(name).fill_null(0)) for name in values.columns[1:]]
    levels = pl.DataFrame({"tier": [level.id for level in config.levels],
                           "rank": list(range(len(config.levels)))},
                          schema={"tier": pl.String, "rank": pl.Int64})
    nexts = pl.DataFrame({
        "rank": list(range(len(config.levels))),
        "_level": [level.id for level in config.levels],
        "next_tier": [config.levels[i + 1].id if i + 1 < len(config.levels) else None
                      for i in range(len(config.levels))],
        "_next": [thresholds[i + 1] if i + 1 < len(config.levels) else None
                  for i in range(len(config.levels))],
    }, schema={"rank": pl.Int64, "_level": pl.String, "next_tier": pl.String,
               "_next": pl.Int64})
    tiers_then = data.members.select("member_pk", "tier") if held is None else held
    return (
        tiers_then.join(levels, on="tier", how="left")
        .join(values, on="member_pk", how="left")
        .with_columns(pl.col("value").fill_null(0))
        # no tier known (null): the level reached; a tier id the ladder no longer has
        # stays as it is, with no next level
        .with_columns(pl.when(pl.col("tier").is_null()).then(pl.max_horizontal(*floors))
                      .when(pl.col("rank").is_not_null())
                      .then(pl.max_horizontal(pl.col("rank"), *floors)).alias("rank"))
        .join(nexts, on="rank", how="left")
        .with_columns(
            pl.coalesce("_level", "tier").alias("tier"),
            (pl.col("value") / scale).round(4).alias("tier_metric"),
            pl.when(pl.col("_next").is_not_null())
            .then(pl.max_horizontal(pl.col("_next") - pl.col("value"), pl.lit(0)) / scale)
            .round(4).alias("remaining_to_next"),
        )
        .select("member_pk", "tier", "tier_metric", "next_tier", "remaining_to_next")
    )


def statements(engine: sa.Engine, program_id: str, date_from: date, date_to: date,
               member: str | None = None) -> tuple[an.Dataset, pl.DataFrame]:
    programme = an.programme_of(engine, program_id)
    options = an.options_for(programme, date_from, date_to)
    # the tier metric and tier as they stood at the end of ``to``: what came later is
    # taken out of the buckets, which hold it now
    until = _utc(date_to + timedelta(days=1), programme.tz)
    with reader(engine) as read:  # every read at one moment (PostgreSQL)
        data = an.load(engine, program_id, optional=False, snapshot=read.export_snapshot())
        postings = read.postings(program_id, asset=None, detail=True).with_columns(
            an._local_date("occurred_at", programme.model.timezone))
        buckets = read.metric_buckets(program_id)
        later_orders = read.orders_since(program_id, until)
        reviews = read.rejected_reviews(program_id)
    later_points = net_of_taken_back(rule_points(postings.filter(
        (pl.col("asset") == "points") & (pl.col("code") == "earn")
        & (pl.col("occurred_at") >= until)), later_orders), postings, reviews)
    buckets = buckets_as_of(buckets, later_orders, later_points, programme.model.timezone,
                            reviews)
    frame = member_statements(data, options, postings, buckets,
                              tiers_held(data.members, later_orders, later_points))
    if member is not None:
        frame = frame.filter(pl.col("member") == member)
        if frame.height == 0:
            from setia.domain.errors import UnknownMember

            raise UnknownMember(f"no member {member!r} in programme {program_id}",
                                field="member")
    return data, frame


# ----------------------------------------------------------------------------- audit


@dataclass
class Check:
    name: str
    journal: int
    metrics: int

    @property
    def ok(self) -> bool:
        return self.journal == self.metrics

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "journal": self.journal, "metrics": self.metrics,
                "ok": self.ok}


def _utc(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)


def _journal_totals(conn: sa.Connection, program_id: str, start: datetime | None,
                    end: datetime) -> dict[str, int]:
    """Net flows by account, summed by the database (an independent path from Polars)."""
    p = t.postings
    where = [p.c.program_id == program_id, p.c.asset == "points", p.c.occurred_at < end]
    if start is not None:
        where.append(p.c.occurred_at >= start)
    totals: dict[str, int] = {}
    for side, sign in ((p.c.credit, 1), (p.c.debit, -1)):
        rows = conn.execute(
            sa.select(side, sa.func.coalesce(sa.func.sum(p.c.points), 0)).where(*where)
            .group_by(side)
        )
        for account, points in rows:
            totals[account] = totals.get(account, 0) + sign * int(points)
    return totals


def audit(engine: sa.Engine, program_id: str, date_from: date, date_to: date,
          grain: str = "month") -> dict[str, Any]:
    """For each period: the journal's own totals (SQL sums by account) against the metrics
    (Polars), and the zero sum; for the whole journal, cached balances against it."""
    programme = an.programme_of(engine, program_id)
    options = an.options_for(programme, date_from, date_to, grain=grain)
    if an.periods(options).height > MAX_AUDIT_PERIODS:
        raise InvalidField(f"an audit covers at most {MAX_AUDIT_PERIODS} periods; "
                           "choose a coarser grain or a shorter range", field="grain")
    with reader(engine) as pin:  # the metrics and the SQL sums at one moment (PostgreSQL)
        snapshot = pin.export_snapshot()
        data = an.load(engine, program_id, optional=False, snapshot=snapshot)
        return _audit(engine, program_id, date_from, date_to, grain, programme, options,
                      data, snapshot)


def _audit(engine: sa.Engine, program_id: str, date_from: date, date_to: date, grain: str,
           programme: Any, options: an.Options, data: an.Dataset,
           snapshot: str | None) -> dict[str, Any]:
    points = an.points(data, options)
    sales = an.sales(data, options)
    tz = programme.tz
    o = t.orders
    out = []
    with at_snapshot(engine, snapshot) as conn:
        for period, end in an.periods(options).iter_rows():
            start_utc = _utc(max(period, date_from), tz)
            end_utc = _utc(end + timedelta(days=1), tz)
            flows = _journal_totals(conn, program_id, start_utc, end_utc)
            cumulative = _journal_totals(conn, program_id, None, end_utc)
            row = points.filter(pl.col("period") == period).row(0, named=True)
            srow = sales.filter(pl.col("period") == period)
            net = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(o.c.amount_e4 - o.c.refunded_e4), 0))
                .where(o.c.program_id == program_id, o.c.occurred_at >= start_utc,
                       o.c.occurred_at < end_utc)
            ).scalar_one()
            member_accounts = sum(cumulative.get(a, 0) for a in
                                  ("available", "pending", "reserved"))
            checks = [
                Check("points issued", -flows.get("issued", 0), row["issued"]),
                Check("points redeemed", flows.get("redeemed", 0), row["redeemed"]),
                Check("points expired", flows.get("expired", 0), row["expired"]),
                Check("points adjusted", -flows.get("adjustments", 0), row["adjusted"]),
                Check("outstanding points", member_accounts, row["outstanding"]),
                Check("journal sums to zero", sum(cumulative.values()), 0),
                Check("member sales (net, minor units x 100)", int(net),
                      int(srow["member_sales_e4"][0]) if srow.height else 0),
            ]
            out.append({"period": period.isoformat(), "period_end": end.isoformat(),
                        "checks": [c.as_dict() for c in checks],
                        "ok": all(c.ok for c in checks)})
        m = t.members
        cached = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(m.c.available + m.c.pending + m.c.reserved), 0))
            .where(m.c.program_id == program_id)
        ).scalar_one()
        everything = _journal_totals(conn, program_id, None, datetime.max.replace(tzinfo=UTC))
    whole = Check("cached balances = journal (all time)", int(cached),
                  sum(everything.get(a, 0) for a in ("available", "pending", "reserved")))
    return {"program": program_id, "from": date_from.isoformat(), "to": date_to.isoformat(),
            "grain": grain, "periods": out, "all_time": [whole.as_dict()],
            "ok": all(p["ok"] for p in out) and whole.ok}


# ----------------------------------------------------------------------------- exports


def members_export(engine: sa.Engine, program_id: str, as_of: date,
                   horizon_weeks: int = 52) -> tuple[an.Dataset, pl.DataFrame]:
    """Every member with balances, CLV (historic and predicted) and RFM scores."""
    data = an.load(engine, program_id, optional=False)
    clv, _ = member_clv(data, as_of, horizon_weeks)
    first = data.orders["day"].min() if data.orders.height else as_of
    assert first is None or isinstance(first, date)
    options = an.Options(date_from=min(first or as_of, as_of), date_to=as_of)
    rfm = an.rfm(data, options).rename({"monetary_e4": "rfm_monetary_e4"})
    balances = data.members.select("member", "available", "pending", "reserved")
    frame = clv.join(balances, on="member", how="left").join(rfm, on="member", how="left")
    return data, frame.sort("member")


def journal_export(engine: sa.Engine, program_id: str) -> pl.DataFrame:
    an.programme_of(engine, program_id)
    with reader(engine) as read:
        return read.journal(program_id)


def write(frame: pl.DataFrame, fmt: str, digits: int, target: Path | io.BytesIO) -> None:
    """CSV and JSON carry money as decimal text, rounded once; Parquet keeps the ``*_e4``
    ten-thousandths of the currency unit as they are (integers for sums; averages,
    liabilities and costs with their fractions) and other floats as they are."""
    if fmt not in FORMATS:
        raise InvalidField(f"format must be one of {', '.join(FORMATS)}", field="format")
    if fmt == "parquet":
        frame.write_parquet(target)
        return
    shown = an.for_display(frame.with_columns(
        pl.col(c).dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        for c, dtype in frame.schema.items() if isinstance(dtype, pl.Datetime)
    ), digits)
    if fmt == "csv":
        shown.write_csv(target)
    else:
        shown.write_json(target)


def export(engine: sa.Engine, program_id: str, dataset: str, date_from: date, date_to: date,
           metric: str = "sales", **given: Any) -> tuple[pl.DataFrame, int]:
    """The frame of an export and the currency's digits."""
    if dataset not in DATASETS:
        raise InvalidField(f"dataset must be one of {', '.join(DATASETS)}", field="dataset")
    programme = an.programme_of(engine, program_id)
    digits = an._digits(programme)
    if dataset == "members":
        return members_export(engine, program_id, date_to)[1], digits
    if dataset == "journal":
        return journal_export(engine, program_id), digits
    if metric not in an.METRICS:
        raise InvalidField(f"no metric {metric!r}; one of {', '.join(an.METRICS)}",
                           field="metric")
    options = an.options_for(programme, date_from, date_to, **given)
    frame = an.METRICS[metric](an.load(engine, program_id, by=options.by, summary=True),
                                options)
    return (frame if frame is not None else pl.DataFrame()), digits
