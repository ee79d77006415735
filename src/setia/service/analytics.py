"""Programme metrics, computed with Polars over frames read from the database.

Definitions (docs/analytics.md has them with examples):
- Times are bucketed by the local date in the programme's time zone; a range
  [date_from, date_to] includes both days. Grains: day, week (ISO, from Monday),
  month, total (the whole range as one period, keyed by date_from).
- A purchase is an order; its amount is net of what was refunded of it,
  counted at the time of the purchase. An order refunded in full is no purchase
  (no visit, no activity): the engine takes its visit back too. Guest sales (no
  member) are the non-member side of the average order value, counted the same
  way (net of their refunds; none if refunded in full).
- Dimensions: ``tier`` is the tier a purchase earned at; ``store``, ``channel``
  and ``partner`` come from the purchase. Member metrics (enrolments, churn,
  retention, RFM) use the member's current tier and the store, channel and
  partner of the member's first order (even one refunded in full later).
  Postings that come from an order take its dimensions, a refund's clawback
  those of the order it refunds, a rejected fraud review's take-back those of the
  order reviewed, the others the member's.
- Points issued = earned net of clawbacks; redeemed and expired likewise net
  of reversals; outstanding = the points in member accounts at the end of a
  period; liability = outstanding × cost per point.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import polars as pl
import sqlalchemy as sa

from setia.adapters.db.analytics_read import (
    REFUNDED_IN_FULL,
    Reader,
    reader,
    slices_keep_dates,
)
from setia.adapters.db.store import UnitOfWork
from setia.domain.errors import InvalidField
from setia.domain.programme import Programme
from setia.service.common import require_programme, transaction

GRAINS = ("day", "week", "month", "total")
DIMENSIONS = ("tier", "store", "channel", "partner")
NONE = "(none)"
E4 = 10_000
DEFAULT_CHURN_DAYS = 90
MAX_RANGE_DAYS = 3 * 366 + 1


EARLIEST, LATEST = date(1970, 1, 2), date(2999, 12, 30)


def check_dates(**named: date | None) -> None:
    """Dates of reports lie in 1970..2999 (times outside cannot be stored anyway)."""
    for name, value in named.items():
        if value is not None and not EARLIEST <= value <= LATEST:
            raise InvalidField("dates must lie between 1970-01-02 and 2999-12-30",
                               field=name.rstrip("_"))


@dataclass
class Options:
    date_from: date
    date_to: date
    grain: str = "month"
    by: str | None = None
    churn_days: int = DEFAULT_CHURN_DAYS
    cost_per_point: Decimal = Decimal(0)

    def check(self) -> None:
        check_dates(from_=self.date_from, to=self.date_to)
        if self.date_to < self.date_from:
            raise InvalidField("'to' is before 'from'", field="to")
        if (self.date_to - self.date_from).days >= MAX_RANGE_DAYS:
            raise InvalidField("a range may span at most three years", field="to")
        if self.grain not in GRAINS:
            raise InvalidField(f"grain must be one of {', '.join(GRAINS)}", field="grain")
        if self.by is not None and self.by not in DIMENSIONS:
            raise InvalidField(f"by must be one of {', '.join(DIMENSIONS)}", field="by")
        if not 1 <= self.churn_days <= 3650:
            raise InvalidField("churn_days must be between 1 and 3650", field="churn_days")
        if self.cost_per_point < 0:
            raise InvalidField("cost_per_point may not be negative", field="cost_per_point")

    @property
    def cost_per_point_e4(self) -> Decimal:
        return self.cost_per_point * E4


@dataclass
class Dataset:
    """Everything the metrics read, with local dates (programme time zone) worked out once.

    ``orders`` are the purchases: the orders not refunded in full (their net amount is 0,
    so no money sum misses them). ``refunded_orders`` are the others, read with ``by`` only:
    the postings of such an order (its points, their clawback) keep its dimensions.
    ``refunds`` (with ``by`` only): the order each refund with a clawback refunds (``ref``,
    ``order_id``), so that a clawback counts where the order's points were earned.
    ``reviews`` (with ``by`` only): the event each rejected fraud review reviewed (``ref``
    ``review:<id>``, ``event_id``: ``Reader.rejected_reviews``), so that its take-back
    counts where the reviewed purchase earned the points it takes back."""

    programme: Programme
    members: pl.DataFrame
    orders: pl.DataFrame
    postings: pl.DataFrame
    lots: pl.DataFrame
    guest_sales: pl.DataFrame
    campaign_postings: pl.DataFrame
    optional: dict[str, pl.DataFrame | None] = field(default_factory=dict)
    refunded_orders: pl.DataFrame | None = None
    refunds: pl.DataFrame | None = None
    reviews: pl.DataFrame | None = None

    @property
    def tz(self) -> str:
        return self.programme.model.timezone


def programme_of(engine: sa.Engine, program_id: str) -> Programme:
    def work(uow: UnitOfWork) -> Programme:
        return require_programme(uow, program_id)

    return transaction(engine, work, read_only=True)


def _local_date(column: str, tz: str, name: str = "day") -> pl.Expr:
    return pl.col(column).dt.convert_time_zone(tz).dt.date().alias(name)


def load(engine: sa.Engine, program_id: str, *, by: str | None = None,
         optional: bool = True, summary: bool = False, snapshot: str | None = None) -> Dataset:
    """The frames the metrics read. Per-order dimensions are read only for ``by`` (store,
    channel and partner live in the stored event: a JSON parse per order).

    With ``summary`` (and no ``by``), postings come summed per 15 minutes without their
    member (``Reader.posting_flows``): all the metrics need overall, not what member
    statements need. On PostgreSQL the orders are read on a second connection at the
    same time as the rest, at the first one's moment (an exported snapshot): a purchase
    committed between their reads is in both or in neither. ``snapshot``: read at that
    moment instead (a caller's reader, still open, that reads more alongside)."""
    programme = programme_of(engine, program_id)
    tz = programme.model.timezone
    dims: tuple[str, ...] = () if by is None else (by,)

    def orders_of(read: Reader) -> tuple[pl.DataFrame, pl.DataFrame | None]:
        """The purchases and, with ``by``, the orders refunded in full (without it the
        database leaves those out: nothing reads them)."""
        orders = read.orders(program_id, dims, refunded_in_full=bool(dims))
        orders = orders.with_columns(
            _local_date("occurred_at", tz),
            (pl.col("amount_e4") - pl.col("refunded_e4")).alias("net_e4"),
            *(pl.lit(None, pl.String).alias(c) for c in ("store", "channel", "partner", "tier")
              if c not in orders.columns),
        )
        refunded = None
        if dims:
            refunded = orders.filter(REFUNDED_IN_FULL)
            orders = orders.filter(~REFUNDED_IN_FULL)
        # Sorted by member and day once, here on the orders' own thread: churn's and
        # retention's distinct days and months per member then find their input sorted
        # (a tenth of the time of sorting 10 million rows each).
        return orders.sort("member_pk", "day"), refunded

    def read_orders_lots_campaigns(moment: str) -> tuple[
            tuple[pl.DataFrame, pl.DataFrame | None], pl.DataFrame, pl.DataFrame]:
        # the orders' local dates are worked out here too, while the other connection reads
        with reader(engine, moment) as read:
            return orders_of(read), read.lots(program_id), read.campaign_postings(program_id)

    with ThreadPoolExecutor(1) as pool, reader(engine, snapshot) as read:
        # PostgreSQL: orders, lots and campaign postings on a second connection, at the
        # same time as the rest and at the same moment (this reader stays open until the
        # second has read)
        moment = snapshot or read.export_snapshot()
        pending = None if moment is None else pool.submit(read_orders_lots_campaigns, moment)
        members = read.members(program_id)
        postings = None
        if summary and by is None:
            postings = read.posting_flows(program_id)
            if postings is not None and not slices_keep_dates(postings, tz):
                postings = None
        if postings is None:
            postings = read.postings(program_id, detail=by is not None)
        guests = read.guest_sales(program_id)
        refunds = read.refunded_orders(program_id) if dims else None
        reviews = read.rejected_reviews(program_id) if dims else None
        extra = {}
        if optional:
            for name in ("campaign_holdouts", "coupon_uses", "survey_responses",
                         "membership_purchases"):
                extra[name] = read.optional(name, program_id)
        if pending is None:
            (orders, refunded), lots, campaign_postings = (
                orders_of(read), read.lots(program_id), read.campaign_postings(program_id))
        else:
            (orders, refunded), lots, campaign_postings = pending.result()
    members = members.with_columns(_local_date("enrolled_at", tz, "enrolled_day"))
    if by in ("store", "channel", "partner"):
        # The member's "home" dimensions: those of the first order, even one refunded in
        # full later (where the member first came). Postings of an order (and a refund's
        # clawback, through ``refunds``, or a rejected review's take-back, through
        # ``reviews``) take the order's own (``_posting_dims``).
        first = (
            pl.concat([orders, *([refunded] if refunded is not None else [])])
            .sort("occurred_at", "order_id")
            .group_by("member_pk", maintain_order=True)
            .first()
            .select("member_pk", by)
        )
        members = members.join(first, on="member_pk", how="left")
    postings = postings.with_columns(_local_date("occurred_at", tz))
    guests = guests.with_columns(_local_date("occurred_at", tz),
                                 pl.lit(None, pl.String).alias("tier"))
    campaign_postings = campaign_postings.with_columns(_local_date("occurred_at", tz))
    return Dataset(programme, members, orders, postings, lots, guests, campaign_postings, extra,
                   refunded, refunds, reviews)


# ----------------------------------------------------------------------------- periods


def _period(day: pl.Expr, options: Options) -> pl.Expr:
    if options.grain == "day":
        return day.alias("period")
    if options.grain == "week":
        return day.dt.truncate("1w").alias("period")
    if options.grain == "month":
        return day.dt.truncate("1mo").alias("period")
    return pl.lit(options.date_from, dtype=pl.Date).alias("period")


def periods(options: Options) -> pl.DataFrame:
    """Every period of the range with its last day (capped at date_to)."""
    days = pl.DataFrame(
        {"day": pl.date_range(options.date_from, options.date_to, "1d", eager=True)}
    )
    return (
        days.with_columns(_period(pl.col("day"), options))
        .group_by("period")
        .agg(pl.col("day").max().alias("period_end"))
        .sort("period")
    )


def _in_range(df: pl.DataFrame, options: Options, column: str = "day") -> pl.DataFrame:
    return df.filter(pl.col(column).is_between(options.date_from, options.date_to))


def _dim(df: pl.DataFrame, options: Options) -> tuple[pl.DataFrame, list[str]]:
    if options.by is None:
        return df, ["period"]
    return df.with_columns(pl.col(options.by).fill_null(NONE)), ["period", options.by]


def _narrow(orders: pl.DataFrame, options: Options, *columns: str) -> pl.DataFrame:
    """The columns of the orders a metric reads (filtering copies every column kept)."""
    return orders.select("member_pk", "day", *columns, *([options.by] if options.by else []))


def _distinct_sorted(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """The distinct (member, ``column``) rows sorted by member and ``column``: sorted, then
    each row kept where it differs from the one before (cheaper than ``unique`` + sort on
    millions of rows). Other columns must be the member's own (one value per member)."""
    keys = ("member_pk", column)
    changed = pl.any_horizontal(pl.col(k) != pl.col(k).shift(1) for k in keys)
    return frame.sort(*keys).filter(changed.fill_null(True))


def _ratio(num: str, den: str, name: str, places: int | None = 4) -> pl.Expr:
    """num / den (None where den is 0), rounded to ``places``; money (``places`` None) is
    left as it is: its text is rounded once, to the currency's digits (``money``)."""
    ratio = pl.col(num) / pl.col(den)
    return (
        pl.when(pl.col(den) > 0)
        .then(ratio if places is None else ratio.round(places))
        .otherwise(None)
        .alias(name)
    )


def _times_cost(points: pl.Expr, options: Options) -> pl.Expr:
    """Points x the cost per point, in ten-thousandths and not rounded: their text is
    rounded once, to the currency's digits (``money``). The cost, a decimal, multiplies
    as a whole number of 10^-k, then the product is divided by 10^k: a product that is
    exactly a half (of a cent, say) stays exactly that half."""
    cost = options.cost_per_point_e4.normalize()
    shift = max(-int(cost.as_tuple().exponent), 0)
    whole = int(cost.scaleb(shift))
    if whole > 2**53:  # more digits than a float holds (a cost given with many decimals)
        return points.cast(pl.Float64) * float(cost)
    return points.cast(pl.Float64) * whole / 10**shift


# ----------------------------------------------------------------------------- metrics


def sales(data: Dataset, options: Options) -> pl.DataFrame:
    """Purchases, active members, repeat purchase rate, frequency, and the average order
    value of members against guests (non-members)."""
    orders, keys = _dim(_in_range(_narrow(data.orders, options, "net_e4"), options).with_columns(
        _period(pl.col("day"), options)), options)
    per_member = orders.group_by([*keys, "member_pk"]).agg(
        pl.len().alias("purchases"), pl.col("net_e4").sum().alias("net_e4")
    )
    members = per_member.group_by(keys).agg(
        pl.col("purchases").sum().alias("purchases"),
        pl.len().alias("active_members"),
        (pl.col("purchases") >= 2).sum().alias("repeat_members"),
        pl.col("net_e4").sum().alias("member_sales_e4"),
    )
    # a guest sale counts as a member's order: net of its refunds, none if refunded in full
    guests, _ = _dim(_in_range(data.guest_sales, options).filter(~REFUNDED_IN_FULL)
                     .with_columns(_period(pl.col("day"), options)), options)
    guests = guests.group_by(keys).agg(
        pl.len().alias("guest_orders"),
        (pl.col("amount_e4") - pl.col("refunded_e4")).sum().alias("guest_sales_e4"),
    )
    out = members.join(guests, on=keys, how="full", coalesce=True).with_columns(
        pl.col("purchases", "active_members", "repeat_members", "member_sales_e4",
               "guest_orders", "guest_sales_e4").fill_null(0)
    )
    return out.with_columns(
        _ratio("repeat_members", "active_members", "repeat_purchase_rate"),
        _ratio("purchases", "active_members", "purchase_frequency"),
        _ratio("member_sales_e4", "purchases", "aov_member_e4", None),
        _ratio("guest_sales_e4", "guest_orders", "aov_non_member_e4", None),
    ).sort(keys)


def enrolments(data: Dataset, options: Options) -> pl.DataFrame:
    members, keys = _dim(
        _in_range(data.members, options, "enrolled_day").with_columns(
            _period(pl.col("enrolled_day"), options)
        ),
        options,
    )
    return members.group_by(keys).agg(pl.len().alias("enrolments")).sort(keys)


def retention(data: Dataset, options: Options) -> pl.DataFrame:
    """For each monthly enrolment cohort in the range: its size and, for every month since
    enrolment up to date_to, how many of its members purchased in that month."""
    members = _in_range(data.members, options, "enrolled_day").with_columns(
        pl.col("enrolled_day").dt.truncate("1mo").alias("cohort")
    )
    members, dims = _dim(members, options)
    keys = ["cohort", *dims[1:]]
    size = members.group_by(keys).agg(pl.len().alias("cohort_size"))
    orders = _distinct_sorted(data.orders.select("member_pk", "day").filter(
        pl.col("day") <= options.date_to).select(
        "member_pk", pl.col("day").dt.truncate("1mo").alias("month")
    ), "month")
    active = (
        members.select("member_pk", *keys)
        .join(orders, on="member_pk")
        .with_columns(
            ((pl.col("month").dt.year() - pl.col("cohort").dt.year()) * 12
             + pl.col("month").dt.month().cast(pl.Int32)
             - pl.col("cohort").dt.month().cast(pl.Int32)).alias("months_since")
        )
        .filter(pl.col("months_since") >= 0)
        .group_by([*keys, "months_since"])
        .agg(pl.len().alias("retained"))
    )
    last = options.date_to.year * 12 + options.date_to.month
    grid = size.with_columns(
        pl.int_ranges(
            0,
            last - (pl.col("cohort").dt.year() * 12 + pl.col("cohort").dt.month().cast(pl.Int32))
            + 1,
        ).alias("months_since")
    ).explode("months_since").with_columns(pl.col("months_since").cast(pl.Int32))
    out = grid.join(
        active.with_columns(pl.col("months_since").cast(pl.Int32)),
        on=[*keys, "months_since"], how="left",
    ).with_columns(pl.col("retained").fill_null(0).cast(pl.UInt32))
    return out.with_columns(_ratio("retained", "cohort_size", "retention_rate")).sort(
        [*keys, "months_since"]
    )


def churn(data: Dataset, options: Options) -> pl.DataFrame:
    """At the last day E of each period: customers (members with a purchase on or before E)
    and churned ones (no purchase in the ``churn_days`` days ending at E)."""
    n = options.churn_days
    ends = periods(options).select("period", "period_end")
    orders, _ = _dim(_narrow(data.orders, options).filter(pl.col("day") <= options.date_to),
                     options)
    by = [options.by] if options.by else []
    if options.by in ("store", "channel", "partner"):
        orders = orders.drop(options.by).join(
            data.members.select("member_pk", options.by), on="member_pk", how="left"
        ).with_columns(pl.col(options.by).fill_null(NONE))
    elif options.by == "tier":
        orders = orders.drop("tier").join(
            data.members.select("member_pk", "tier"), on="member_pk", how="left"
        )
    # the distinct days of each member, sorted (``by`` is the member's own: one per member)
    days = _distinct_sorted(orders.select("member_pk", *by, "day"), "day")
    # Each purchase day d keeps its member "active" on days [d, d + n); overlapping spans
    # of one member merge, so that summing the merged spans counts members, not purchases.
    # The days are sorted by member: a span starts at a member's first day or after a gap
    # of more than n days, and numbering the starts over the whole frame gives every span
    # its own number (the same spans as numbering within each member, without windows).
    previous = pl.col("day").shift(1)
    starts = (pl.col("member_pk") != pl.col("member_pk").shift(1)) | (
        pl.col("day") > previous + timedelta(days=n))
    spans = (
        days.with_columns(starts.fill_null(True).cum_sum().alias("span"))
        .group_by("member_pk", *by, "span")
        .agg(pl.col("day").min().alias("start"), pl.col("day").max().alias("last"))
        .with_columns((pl.col("last") + timedelta(days=n)).alias("end"))
    )
    deltas = pl.concat([
        spans.select(*by, pl.col("start").alias("day"), pl.lit(1).alias("active")),
        spans.select(*by, pl.col("end").alias("day"), pl.lit(-1).alias("active")),
    ])
    firsts = spans.group_by("member_pk", *by).agg(pl.col("start").min().alias("day")).select(
        *by, "day", pl.lit(1).alias("customers")
    )

    def running(frame: pl.DataFrame, column: str) -> pl.DataFrame:
        daily = frame.group_by(*by, "day").agg(pl.col(column).sum()).sort(*by, "day")
        daily = daily.with_columns(pl.col(column).cum_sum().over(by) if by else
                                   pl.col(column).cum_sum())
        grid = ends if not by else ends.join(daily.select(by).unique(), how="cross")
        return grid.sort("period_end").join_asof(
            daily.sort("day"), left_on="period_end", right_on="day", by=by or None,
            strategy="backward", check_sortedness=False,
        ).select("period", "period_end", *by, pl.col(column).fill_null(0))

    out = running(firsts, "customers").join(
        running(deltas, "active"), on=["period", "period_end", *by], how="left"
    )
    out = out.with_columns(
        (pl.col("customers") - pl.col("active").fill_null(0)).alias("churned")
    ).drop("active")
    return out.with_columns(_ratio("churned", "customers", "churn_rate")).sort(
        ["period", *by]
    )


def _posting_dims(data: Dataset, options: Options) -> pl.DataFrame:
    """The postings with the ``by`` dimension: a purchase's postings take its order's, a
    refund's (its clawback) the order it refunds and a rejected fraud review's take-back
    (``review:<id>``) the order of the purchase reviewed (where the points they take back
    were earned), the others (signup, redemption, expiry ...) the member's."""
    postings = data.postings
    if options.by is None:
        return postings
    dim = options.by
    orders = pl.concat([o.select("order_id", "event_id", "member_pk", dim) for o in
                        (data.orders, data.refunded_orders) if o is not None])
    from_order = orders.select(pl.col("event_id").alias("ref"), pl.col(dim).alias("_o"))
    refunds = data.refunds if data.refunds is not None else pl.DataFrame(
        schema={"ref": pl.String, "order_id": pl.String})
    # the refunding member's own postings only (the order is that member's)
    from_refund = refunds.join(orders, on="order_id").select(
        "ref", "member_pk", pl.col(dim).alias("_r"))
    reviews = data.reviews if data.reviews is not None else pl.DataFrame(
        schema={"ref": pl.String, "event_id": pl.String})
    # a review of another event than a purchase (a signup, a referral) finds no order
    from_review = reviews.join(orders, on="event_id").select(
        "ref", "member_pk", pl.col(dim).alias("_v"))
    from_member = data.members.select("member_pk", pl.col(dim).alias("_m"))
    return (
        postings.join(from_order, on="ref", how="left")
        .join(from_refund, on=["ref", "member_pk"], how="left")
        .join(from_review, on=["ref", "member_pk"], how="left")
        .join(from_member, on="member_pk", how="left")
        .with_columns(pl.coalesce("_o", "_r", "_v", "_m").fill_null(NONE).alias(dim))
        .drop("_o", "_r", "_v", "_m")
    )


def points(data: Dataset, options: Options) -> pl.DataFrame:
    """Points issued, redeemed, expired and adjusted per period; redemption rate and
    breakage (expired / issued); outstanding points and their liability at period end."""
    postings = _posting_dims(data, options)
    by = [options.by] if options.by else []
    flows = (
        _in_range(postings, options)
        .with_columns(_period(pl.col("day"), options))
        .group_by("period", *by)
        .agg(pl.col("issued", "redeemed", "expired", "adjusted").sum())
    )
    daily = (
        postings.filter(pl.col("day") <= options.date_to)
        .group_by(*by, "day")
        .agg(pl.col("member_delta").sum())
        .sort(*by, "day")
    )
    daily = daily.with_columns(
        (pl.col("member_delta").cum_sum().over(by) if by else pl.col("member_delta").cum_sum())
        .alias("outstanding")
    )
    ends = periods(options)
    grid = ends if not by else ends.join(daily.select(by).unique(), how="cross")
    outstanding = grid.sort("period_end").join_asof(
        daily.sort("day"), left_on="period_end", right_on="day", by=by or None,
        strategy="backward", check_sortedness=False,
    ).select("period", *by, pl.col("outstanding").fill_null(0))
    out = outstanding.join(flows, on=["period", *by], how="left").with_columns(
        pl.col("issued", "redeemed", "expired", "adjusted").fill_null(0)
    )
    return out.with_columns(
        _ratio("redeemed", "issued", "redemption_rate"),
        _ratio("expired", "issued", "breakage_rate"),
        _times_cost(pl.col("outstanding"), options).alias("liability_e4"),
    ).sort(["period", *by])


def liability_ageing(data: Dataset, options: Options) -> pl.DataFrame:
    """The points left in lots now, by the month they expire (programme time zone)."""
    lots = data.lots.with_columns(
        pl.col("expires_at").dt.convert_time_zone(data.tz).dt.strftime("%Y-%m")
        .fill_null("never").alias("expires")
    )
    by = []
    if options.by is not None:
        lots = lots.join(data.members.select("member_pk", options.by), on="member_pk",
                         how="left").with_columns(pl.col(options.by).fill_null(NONE))
        by = [options.by]
    return (
        lots.group_by("expires", *by)
        .agg(pl.col("remaining").sum().alias("points"))
        .with_columns(_times_cost(pl.col("points"), options).alias("liability_e4"))
        .sort("expires", *by)
    )


def _member_column(frame: pl.DataFrame, data: Dataset) -> pl.DataFrame:
    """Tables of other features name the member by ``member_pk`` or by ``member`` /
    ``member_id`` (the member's id): give them all a ``member_pk``."""
    if "member_pk" in frame.columns:
        return frame.with_columns(pl.col("member_pk").cast(pl.Int64))
    for name in ("member_id", "member"):
        if name in frame.columns:
            return frame.join(
                data.members.select(pl.col("member").alias(name), "member_pk"), on=name,
                how="inner",
            )
    raise InvalidField("the table names no member column", field="member")


def campaigns(data: Dataset, options: Options) -> pl.DataFrame:
    """Per campaign (postings with rule id ``campaign:<id>``) in the range: points (net of
    clawbacks) and their cost, members reached (awarded points in the range), and their
    spend per member against the hold-out group's (members held out in the range)."""
    posted = _in_range(data.campaign_postings, options).with_columns(
        pl.col("rule_id").str.strip_prefix("campaign:").alias("campaign"))
    # reached: given points in the range (a clawback of an earlier award reaches no one)
    reached = posted.group_by("campaign").agg(
        pl.col("issued").sum().alias("points"),
        pl.col("member_pk").filter(pl.col("code") == "earn").n_unique().alias("members"),
    )
    reached = reached.with_columns(_times_cost(pl.col("points"), options).alias("cost_e4"))
    holdouts = data.optional.get("campaign_holdouts")
    held_members = None
    if holdouts is not None and holdouts.height > 0:
        column = next(c for c in ("campaign_id", "campaign") if c in holdouts.columns)
        if "recorded_at" in holdouts.columns:  # held out in the range, as reached in it
            holdouts = _in_range(holdouts.with_columns(_local_date("recorded_at", data.tz)),
                                 options)
        held_members = (
            _member_column(holdouts, data)
            .select(pl.col(column).cast(pl.String).alias("campaign"), "member_pk").unique()
        )
    # The groups compared enter once each, in the range: a hold-out row is written the
    # first time the campaign would have given its member something, so the members
    # compared with them are those it first gave something in the range (all history
    # read); a member reached again in a later range is counted in `members` only.
    entered = _in_range(
        data.campaign_postings.filter(pl.col("code") == "earn")
        .with_columns(pl.col("rule_id").str.strip_prefix("campaign:").alias("campaign"))
        .group_by("campaign", "member_pk").agg(pl.col("day").min()), options)
    # spend of the members entered or held out only (the others' is never looked at)
    wanted = pl.concat([entered.select("member_pk")] + (
        [held_members.select("member_pk")] if held_members is not None else []))
    spend = (
        _in_range(data.orders.select("member_pk", "day", "net_e4"), options)
        .join(wanted, on="member_pk", how="semi")
        .group_by("member_pk").agg(pl.col("net_e4").sum().alias("spend_e4"))
    )
    treated = (
        entered.select("campaign", "member_pk")
        .join(spend, on="member_pk", how="left")
        .group_by("campaign")
        .agg(pl.col("spend_e4").fill_null(0).mean().alias("spend_per_member_e4"),
             pl.len().alias("entered"),
             pl.col("spend_e4").fill_null(0).sum().alias("_entered_spend_e4"))
    )
    out = reached.join(treated, on="campaign", how="left")
    if held_members is not None:
        held = (
            held_members
            .join(spend, on="member_pk", how="left")
            .group_by("campaign")
            .agg(
                pl.len().alias("holdout_members"),
                pl.col("spend_e4").fill_null(0).mean().alias("holdout_spend_per_member_e4"),
                pl.col("spend_e4").fill_null(0).sum().alias("_holdout_spend_e4"),
            )
        )
        out = out.join(held, on="campaign", how="left")
    else:
        out = out.with_columns(
            pl.lit(None, pl.UInt32).alias("holdout_members"),
            pl.lit(None, pl.Float64).alias("holdout_spend_per_member_e4"),
            pl.lit(None, pl.Int64).alias("_holdout_spend_e4"),
        )
    # The lift measured on the members who entered in the range, for those members:
    # (spent / n - held spent / m) x n = (spent x m - held spent x n) / m, from the whole
    # sums with one division (Python's integers: exact at any size, the quotient the float
    # nearest the exact value), so that ``money`` rounds the value itself once. The two
    # float means subtracted and multiplied rounded it twice: 24.98499.. for 24.985.
    lift = [
        None if None in (spent, n, held_spent, m) else (spent * m - held_spent * n) / m
        for spent, n, held_spent, m in out.select(
            "_entered_spend_e4", "entered", "_holdout_spend_e4", "holdout_members").iter_rows()
    ]
    return out.with_columns(
        pl.Series("incremental_spend_e4", lift, dtype=pl.Float64)
    ).drop("entered", "_entered_spend_e4", "_holdout_spend_e4").sort("campaign")


def _amount_e4(frame: pl.DataFrame, names: tuple[str, ...]) -> pl.Expr | None:
    """A money column of another feature's table as ten-thousandths: ``<name>_e4`` or
    ``<name>_minor`` as they are, a decimal ``<name>`` scaled."""
    for name in names:
        if f"{name}_e4" in frame.columns:
            return pl.col(f"{name}_e4").cast(pl.Float64)
        if name in frame.columns:
            return (pl.col(name).cast(pl.String).cast(pl.Float64) * E4).round(0)
    return None


def coupons(data: Dataset, options: Options) -> pl.DataFrame | None:
    uses = data.optional.get("coupon_uses")
    if uses is None:
        return None
    amount = _amount_e4(uses, ("discount",))
    assert amount is not None, "coupon_uses has a discount"
    if "released_at" in uses.columns:  # a use given back (by a refund) costs nothing
        uses = uses.filter(pl.col("released_at").is_null())
    frame = _in_range(uses.with_columns(_local_date("used_at", data.tz)), options)
    return (
        frame.with_columns(_period(pl.col("day"), options), amount.alias("discount_e4"))
        .group_by("period")
        .agg(pl.len().alias("uses"), pl.col("discount_e4").sum().cast(pl.Int64))
        .sort("period")
    )


def surveys(data: Dataset, options: Options) -> pl.DataFrame | None:
    """NPS = % promoters (9-10) − % detractors (0-6); satisfaction = the mean rating."""
    responses = data.optional.get("survey_responses")
    if responses is None:
        return None
    frame = _in_range(responses.with_columns(_local_date("submitted_at", data.tz)), options)
    out = (
        frame.with_columns(_period(pl.col("day"), options))
        .group_by("period")
        .agg(
            pl.col("nps").is_not_null().sum().alias("nps_responses"),
            (pl.col("nps") >= 9).sum().alias("promoters"),
            (pl.col("nps") <= 6).sum().alias("detractors"),
            pl.col("rating").cast(pl.Float64).mean().round(4).alias("satisfaction"),
        )
    )
    # the counts are unsigned (UInt32): promoters - detractors wraps below 0 unless signed
    net = pl.col("promoters").cast(pl.Int64) - pl.col("detractors").cast(pl.Int64)
    return out.with_columns(
        pl.when(pl.col("nps_responses") > 0)
        .then((net * 100 / pl.col("nps_responses")).round(2))
        .otherwise(None).alias("nps")
    ).sort("period")


def memberships(data: Dataset, options: Options) -> pl.DataFrame | None:
    """Paid-membership fees per period, from ``membership_purchases``."""
    bought = data.optional.get("membership_purchases")
    if bought is None:
        return None
    amount = _amount_e4(bought, ("fee", "amount", "price"))
    when = next((c for c in ("purchased_at", "occurred_at", "created_at") if c in bought.columns),
                None)
    if amount is None or when is None:
        return None
    frame = _in_range(bought.with_columns(_local_date(when, data.tz)), options)
    return (
        frame.with_columns(_period(pl.col("day"), options), amount.alias("fees_e4"))
        .group_by("period")
        .agg(pl.len().alias("memberships_sold"), pl.col("fees_e4").sum().cast(pl.Int64))
        .sort("period")
    )


RFM_SEGMENTS = ("champions", "loyal", "new", "at_risk", "hibernating", "others")


def rfm(data: Dataset, options: Options) -> pl.DataFrame:
    """Per member with a purchase in the range: recency (days from the last purchase to
    date_to), frequency (purchases), monetary (net spend), each scored 1-5 by rank among
    those members (5 = best; ties share the lower score), and a segment."""
    per = _in_range(data.orders.select("member_pk", "day", "net_e4"), options).group_by(
        "member_pk").agg(
        (pl.lit(options.date_to) - pl.col("day").max()).dt.total_days().alias("recency_days"),
        pl.len().alias("frequency"),
        pl.col("net_e4").sum().alias("monetary_e4"),
    )
    n = max(per.height, 1)

    def score(column: str, descending: bool) -> pl.Expr:
        rank = pl.col(column).rank("min", descending=descending)
        return (1 + ((rank - 1) * 5 // n)).cast(pl.Int8)

    scored = per.with_columns(
        score("recency_days", True).alias("r"),
        score("frequency", False).alias("f"),
        score("monetary_e4", False).alias("m"),
    )
    r, f = pl.col("r"), pl.col("f")
    segment = (
        pl.when((r >= 4) & (f >= 4)).then(pl.lit("champions"))
        .when(f >= 4).then(pl.lit("loyal"))
        .when((r >= 4) & (f <= 2)).then(pl.lit("new"))
        .when((r <= 2) & (f >= 3)).then(pl.lit("at_risk"))
        .when(r <= 2).then(pl.lit("hibernating"))
        .otherwise(pl.lit("others"))
    )
    return (
        scored.with_columns(segment.alias("segment"))
        .join(data.members.select("member_pk", "member"), on="member_pk", how="left")
        .select("member", "recency_days", "frequency", "monetary_e4", "r", "f", "m", "segment")
        .sort("member")
    )


def rfm_segments(data: Dataset, options: Options) -> pl.DataFrame:
    return rfm(data, options).group_by("segment").agg(pl.len().alias("members")).sort("segment")


METRICS: dict[str, Callable[[Dataset, Options], pl.DataFrame | None]] = {
    "sales": sales,
    "enrolments": enrolments,
    "retention": retention,
    "churn": churn,
    "points": points,
    "liability-ageing": liability_ageing,
    "campaigns": campaigns,
    "coupons": coupons,
    "surveys": surveys,
    "memberships": memberships,
    "rfm": rfm_segments,
}


def options_for(programme: Programme, date_from: date, date_to: date, **given: Any) -> Options:
    """Options with the programme file's ``analytics`` section filling what is not given."""
    config = programme.model.analytics
    values = {k: v for k, v in given.items() if v is not None}
    values.setdefault("churn_days", config.churn_days if config else DEFAULT_CHURN_DAYS)
    values.setdefault("cost_per_point", config.cost_per_point if config else Decimal(0))
    options = Options(date_from=date_from, date_to=date_to, **values)
    options.check()
    return options


def compute(data: Dataset, options: Options, names: tuple[str, ...] | None = None
            ) -> dict[str, pl.DataFrame | None]:
    return {name: METRICS[name](data, options) for name in names or tuple(METRICS)}


# ----------------------------------------------------------------------------- output

CENT = Decimal("0.01")


def money(value_e4: Any, digits: int = 2) -> str | None:
    """Ten-thousandths as a decimal string with the currency's digits: the exact value
    rounded half up once (no "-0.00": a value that rounds to nothing has no sign)."""
    if value_e4 is None:
        return None
    quantum = Decimal(1).scaleb(-digits)
    rounded = (Decimal(str(value_e4)) / E4).quantize(quantum, rounding=ROUND_HALF_UP)
    return str(abs(rounded) if rounded == 0 else rounded)


def records(frame: pl.DataFrame | None, digits: int = 2) -> list[dict[str, Any]] | None:
    """Rows for JSON: dates as ISO text, ``*_e4`` money columns as decimal strings without
    the suffix."""
    if frame is None:
        return None
    rows = frame.to_dicts()
    out = []
    for row in rows:
        item: dict[str, Any] = {}
        for key, value in row.items():
            if key.endswith("_e4"):
                item[key[:-3]] = money(value, digits)
            elif isinstance(value, date):
                item[key] = value.isoformat()
            else:
                item[key] = value
        out.append(item)
    return out


def money_text(column: str, digits: int = 2, integer: bool = False) -> pl.Expr:
    """A ``*_e4`` column as decimal text with the currency's digits, vectorised: the same
    text as ``money`` (the value rounded half up once, from the value itself). ``integer``:
    the column holds whole ten-thousandths (exact integer arithmetic)."""
    scale = 10 ** (4 - digits)  # ten-thousandths in a minor unit
    if integer:
        value = pl.col(column).cast(pl.Int64).abs()
        units = (value + scale // 2) // scale  # half up, in minor units
    else:
        # The minor units are the largest whole k with k * scale - scale / 2 <= |value|.
        # A float guess is off by one at most near a half; each bound k * scale - scale / 2
        # is a float exactly, so the two comparisons settle it for the value as stored:
        # ``money``'s Decimal(str(value)) lies on the same side of every bound, as no other
        # float is nearer to it than the value.
        value = pl.col(column).cast(pl.Float64).abs()
        half = scale / 2
        guess = ((value + half) / scale).floor()
        units = (
            pl.when(guess * scale - half > value).then(guess - 1)
            .when((guess + 1) * scale - half <= value).then(guess + 1)
            .otherwise(guess)
        ).cast(pl.Int64)
    sign = pl.when((pl.col(column) < 0) & (units > 0)).then(pl.lit("-")).otherwise(pl.lit(""))
    whole = (units // 10**digits).cast(pl.String)
    if digits == 0:
        text = pl.concat_str([sign, whole])
    else:
        part = (units % 10**digits).cast(pl.String).str.zfill(digits)
        text = pl.concat_str([sign, whole, pl.lit("."), part])
    return pl.when(pl.col(column).is_null()).then(None).otherwise(text).alias(column[:-3])


def for_display(frame: pl.DataFrame, digits: int = 2) -> pl.DataFrame:
    """The frame with money columns as decimal text, for CSV and terminal tables."""
    money_columns = [c for c in frame.columns if c.endswith("_e4")]
    if not money_columns:
        return frame
    return frame.with_columns(
        money_text(c, digits, integer=frame.schema[c].is_integer()) for c in money_columns
    ).drop(money_columns)


def metrics(engine: sa.Engine, program_id: str, date_from: date, date_to: date,
            names: tuple[str, ...] | None = None, **given: Any) -> dict[str, Any]:
    """The API's answer: every asked metric as a list of rows."""
    programme = programme_of(engine, program_id)
    options = options_for(programme, date_from, date_to, **given)
    for name in names or ():
        if name not in METRICS:
            raise InvalidField(f"no metric {name!r}; one of {', '.join(METRICS)}",
                               field="metric")
    data = load(engine, program_id, by=options.by, summary=True)
    digits = _digits(programme)
    return {
        "program": program_id,
        "from": date_from.isoformat(),
        "to": date_to.isoformat(),
        "grain": options.grain,
        "by": options.by,
        "churn_days": options.churn_days,
        "cost_per_point": str(options.cost_per_point),
        "metrics": {
            name: records(frame, digits) for name, frame in compute(data, options, names).items()
        },
    }


def _digits(programme: Programme) -> int:
    from setia.domain.money import minor_digits

    return minor_digits(programme.currency)
