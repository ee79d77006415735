"""Customer lifetime value: historic (net spend to date) and predictive (BG/NBD for the
number of future purchases, Gamma-Gamma for their value), fitted with clvkit
(docs/decisions/clv.md). Time is in weeks; purchases on one local day count as one,
as in Fader, Hardie and Lee (2005)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import date
from typing import Any

import polars as pl
import sqlalchemy as sa

from setia.domain.errors import InvalidField
from setia.service.analytics import E4, Dataset, load

DEFAULT_HORIZON_WEEKS = 52
MAX_FIT_CUSTOMERS = 50_000  # the models are fitted on a sample of this many; all are scored
FIT_SEED = 20050101
MIN_REPEAT_CUSTOMERS = 2  # Gamma-Gamma needs customers with repeat purchases


@dataclass
class Fit:
    """The fitted models, or why there are none."""

    bgnbd: dict[str, float] | None
    gamma_gamma: dict[str, float] | None
    reason: str | None
    customers: int
    scores: pl.DataFrame | None  # member, expected_purchases, probability_alive, ...


def fit(transactions: pl.DataFrame, observation_end: date, horizon_weeks: int,
        discount_rate: float = 0.0, max_fit_customers: int = MAX_FIT_CUSTOMERS) -> Fit:
    """Fit BG/NBD and Gamma-Gamma on ``transactions`` (columns customer, day, amount)
    up to ``observation_end``; score every customer for ``horizon_weeks``. With more than
    ``max_fit_customers`` customers the models are fitted on a random sample of that many
    (fixed seed) and every customer is scored with them."""
    import numpy as np
    import pandas as pd
    from clvkit import CLV, CustomerBase

    frame = transactions.filter(pl.col("day") <= observation_end).select(
        pl.col("customer").cast(pl.String).alias("customer_id"),
        pl.col("day").cast(pl.Datetime("us")).alias("date"),
        pl.col("amount").cast(pl.Float64),
    )
    customers = frame["customer_id"].n_unique()
    if frame.height == 0:
        return Fit(None, None, "no purchases before the end of the observation", 0, None)
    log = pd.DataFrame({c: frame[c].to_numpy() for c in frame.columns})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = CustomerBase.from_transactions(
            log, time_unit="W", collapse="D",
            observation_period_end=pd.Timestamp(observation_end),
        )
        fit_base = base
        if customers > max_fit_customers:
            chosen = frame["customer_id"].unique().sort().sample(
                max_fit_customers, seed=FIT_SEED)
            sample = frame.filter(pl.col("customer_id").is_in(chosen.implode()))
            fit_base = CustomerBase.from_transactions(
                pd.DataFrame({c: sample[c].to_numpy() for c in sample.columns}),
                time_unit="W", collapse="D",
                observation_period_end=pd.Timestamp(observation_end),
            )
        summary = fit_base.to_pandas()
        repeaters = int((summary["frequency"] > 0).sum())
        if repeaters < MIN_REPEAT_CUSTOMERS:
            return Fit(None, None, f"{repeaters} customers with repeat purchases; "
                       f"the models need at least {MIN_REPEAT_CUSTOMERS}", customers, None)
        try:
            model = CLV(check_independence=False).fit(fit_base)
            result = model.predict(horizon=horizon_weeks, discount_rate=discount_rate, cb=base)
            alive = model.transaction_model.probability_alive(  # type: ignore[attr-defined]
                base).to_pandas()
        except (ValueError, RuntimeError, FloatingPointError) as exc:
            return Fit(None, None, f"the models did not converge: {exc}", customers, None)
    scores = result.to_pandas().join(alive)
    bg = model.transaction_model.params_  # type: ignore[attr-defined]
    gg = model.monetary_model.params_  # type: ignore[attr-defined]
    # A fit may return without an error and still be degenerate (parameters of 1e9 and
    # predictions of NaN, from a handful of look-alike customers): no usable fit either.
    columns = ("expected_purchases", "probability_alive", "expected_spend", "clv")
    estimates = [float(v) for _, v in (*bg.items(), *gg.items())]
    if not (np.isfinite(estimates).all()
            and np.isfinite(scores[list(columns)].to_numpy(dtype=float)).all()):
        return Fit(None, None, "the models did not converge: non-finite estimates",
                   customers, None)
    implausible = implausible_fit(estimates, scores["expected_purchases"].to_numpy(dtype=float),
                                  scores["expected_spend"].to_numpy(dtype=float),
                                  scores["clv"].to_numpy(dtype=float), horizon_weeks)
    if implausible is not None:
        return Fit(None, None, f"the models did not converge: {implausible}", customers, None)
    out = pl.DataFrame({
        "member": [str(i) for i in scores.index],
        "expected_purchases": scores["expected_purchases"].to_numpy(),
        "probability_alive": scores["probability_alive"].to_numpy(),
        "expected_spend": scores["expected_spend"].to_numpy(),
        "clv": scores["clv"].to_numpy(),
    })
    return Fit({k: float(v) for k, v in bg.items()}, {k: float(v) for k, v in gg.items()},
               None, customers, out)


# A fit is used only within these bounds. A degenerate one can be finite and still absurd:
# on 29 look-alike members BG/NBD gave a = 1e-20 and b = 4e16, and predictions of 4e16
# purchases (and below zero) per member.
PARAMETER_RANGE = (1e-8, 1e8)
MOST_PURCHASES_PER_WEEK = 7 * 24  # one an hour, day and night
MOST_SPEND = 1e11  # the largest amount an order may have (events.MAX_AMOUNT)


def implausible_fit(estimates: list[float], purchases: Any, spend: Any, clv: Any,
                    horizon_weeks: int) -> str | None:
    """Why a finite fit is no usable fit (arrays of each member's predictions), or None."""
    import numpy as np

    low, high = PARAMETER_RANGE
    if any(not low <= abs(value) <= high for value in estimates):
        return f"implausible estimates (a parameter outside {low:g} to {high:g})"
    if len(purchases) and (np.min(purchases) < 0
                           or np.max(purchases) > MOST_PURCHASES_PER_WEEK * horizon_weeks):
        return "implausible estimates (expected purchases below zero or above one an hour)"
    if len(spend) and (np.min(spend) < 0 or np.max(spend) > MOST_SPEND
                       or np.min(clv) < 0 or np.max(clv) > MOST_SPEND * MOST_PURCHASES_PER_WEEK
                       * horizon_weeks):
        return "implausible estimates (a spend or lifetime value below zero or beyond any order)"
    return None


def transactions_of(data: Dataset, as_of: date) -> pl.DataFrame:
    """One row per purchase with money left after refunds: customer, local day, amount."""
    return (
        data.orders.filter((pl.col("day") <= as_of) & (pl.col("net_e4") > 0))
        .join(data.members.select("member_pk", "member"), on="member_pk")
        .select(pl.col("member").alias("customer"), "day",
                (pl.col("net_e4") / E4).alias("amount"))
    )


def member_clv(data: Dataset, as_of: date, horizon_weeks: int = DEFAULT_HORIZON_WEEKS
               ) -> tuple[pl.DataFrame, Fit]:
    """Per member: purchases and net spend to date (historic CLV) and the predictions."""
    from setia.service.analytics import check_dates

    check_dates(as_of=as_of)
    if not 1 <= horizon_weeks <= 520:
        raise InvalidField("horizon_weeks must be between 1 and 520", field="horizon_weeks")
    history = (  # the purchases: an order refunded in full is none (analytics.Dataset)
        data.orders.filter(pl.col("day") <= as_of)
        .group_by("member_pk")
        .agg(pl.len().alias("purchases"), pl.col("net_e4").sum().alias("historic_clv_e4"),
             pl.col("day").min().alias("first_purchase"),
             pl.col("day").max().alias("last_purchase"))
    )
    members = (
        data.members.filter(pl.col("enrolled_day") <= as_of)
        .select("member_pk", "member", "tier", "enrolled_day")
        .join(history, on="member_pk", how="left")
        .with_columns(pl.col("purchases").fill_null(0), pl.col("historic_clv_e4").fill_null(0))
    )
    result = fit(transactions_of(data, as_of), as_of, horizon_weeks)
    if result.scores is not None:
        members = members.join(result.scores, on="member", how="left")
    else:
        members = members.with_columns(
            pl.lit(None, pl.Float64).alias(c)
            for c in ("expected_purchases", "probability_alive", "expected_spend", "clv")
        )
    members = members.with_columns(
        # not rounded: their text is rounded once, to the currency's digits (money())
        (pl.col("expected_spend") * E4).alias("expected_spend_e4"),
        (pl.col("clv") * E4).alias("predicted_clv_e4"),
        pl.col("expected_purchases").round(4),
        pl.col("probability_alive").round(4),
    ).drop("expected_spend", "clv", "member_pk")
    return members.sort("member"), result


def clv_report(engine: sa.Engine, program_id: str, as_of: date,
               horizon_weeks: int = DEFAULT_HORIZON_WEEKS, member: str | None = None,
               after: str | None = None, limit: int = 100) -> dict[str, Any]:
    """The API's answer: the fitted parameters and a page of members (by id)."""
    from setia.service.analytics import _digits, records

    if not 1 <= limit <= 1000:
        raise InvalidField("limit must be between 1 and 1000", field="limit")
    data = load(engine, program_id, optional=False)
    frame, result = member_clv(data, as_of, horizon_weeks)
    if member is not None:
        frame = frame.filter(pl.col("member") == member)
        if frame.height == 0:
            from setia.domain.errors import UnknownMember

            raise UnknownMember(f"no member {member!r} in programme {program_id}",
                                field="member")
    if after is not None:
        frame = frame.filter(pl.col("member") > after)
    page = frame.head(limit)
    rows = records(page, _digits(data.programme)) or []
    return {
        "as_of": as_of.isoformat(),
        "horizon_weeks": horizon_weeks,
        "model": {"bgnbd": result.bgnbd, "gamma_gamma": result.gamma_gamma,
                  "customers": result.customers, "unavailable": result.reason},
        "members": rows,
        "next": rows[-1]["member"] if frame.height > limit else None,
    }
