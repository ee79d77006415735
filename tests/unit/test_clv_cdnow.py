"""The CLV models against the published CDNOW results (Fader, Hardie and Lee 2005).

tests/data/cdnow_sample.txt is the CDNOW sample the ``lifetimes`` package ships
(2,357 customers, 6,919 transactions; customer, id, yyyymmdd, quantity, dollars).
Calibration: transactions up to 1997-09-30, time in weeks, one purchase per day.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest

from setia.service.clv import fit

CDNOW = Path(__file__).resolve().parents[1] / "data" / "cdnow_sample.txt"
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "gamma": 15.44}


def cdnow() -> pl.DataFrame:
    raw = pl.read_csv(CDNOW, has_header=False, new_columns=["line"], separator="\t")
    return raw.select(
        pl.col("line").str.strip_chars().str.extract_all(r"\S+").alias("f")
    ).select(
        pl.col("f").list.get(0).alias("customer"),
        pl.col("f").list.get(2).str.to_date("%Y%m%d").alias("day"),
        pl.col("f").list.get(4).cast(pl.Float64).alias("amount"),
    )


def test_the_sample_is_the_published_one() -> None:
    rows = cdnow()
    assert rows.height == 6919
    assert rows["customer"].n_unique() == 2357


def test_bgnbd_and_gamma_gamma_match_the_published_cdnow_parameters_within_2_percent() -> None:
    result = fit(cdnow(), date(1997, 9, 30), horizon_weeks=39)
    assert result.bgnbd is not None and result.gamma_gamma is not None
    for name, published in PUBLISHED_BGNBD.items():
        assert result.bgnbd[name] == pytest.approx(published, rel=0.02), name
    for name, published in PUBLISHED_GAMMA_GAMMA.items():
        assert result.gamma_gamma[name] == pytest.approx(published, rel=0.02), name
    assert result.customers == 2357
    assert result.scores is not None
    # Customer 4 (Fader et al.'s worked example has x=2, t_x=30.43, T=38.86): alive and
    # expected to buy again; a customer with no repeat purchase is scored too.
    four = result.scores.filter(pl.col("member") == "00004").row(0, named=True)
    assert 0.5 < four["probability_alive"] <= 1.0
    assert four["expected_purchases"] > 0


def test_a_finite_but_absurd_fit_is_no_usable_fit() -> None:
    import numpy as np

    from setia.service.clv import implausible_fit

    good = [0.243, 4.414, 0.793, 2.426, 6.25, 3.74, 15.44]
    purchases, spend = np.array([0.0, 1.5, 12.0]), np.array([0.0, 35.2, 80.0])
    clv = purchases * spend
    assert implausible_fit(good, purchases, spend, clv, 52) is None
    # 29 look-alike members of a small café: finite, and nonsense
    degenerate = [2.175, 5.134, 1.2573376298753202e-20, 4.471470666202636e16, 1.55, 1194.2,
                  13384.9]
    assert implausible_fit(degenerate, purchases, spend, clv, 52) == (
        "implausible estimates (a parameter outside 1e-08 to 1e+08)")
    assert implausible_fit(good, np.array([1.0, -3.1]), spend[:2], clv[:2], 52) == (
        "implausible estimates (expected purchases below zero or above one an hour)")
    assert implausible_fit(good, np.array([168.0 * 52 + 1]), spend[:1], clv[:1], 52) == (
        "implausible estimates (expected purchases below zero or above one an hour)")
    assert implausible_fit(good, purchases, np.array([0.0, 2e11, 1.0]), clv, 52) == (
        "implausible estimates (a spend or lifetime value below zero or beyond any order)")
    assert implausible_fit(good, purchases, spend, np.array([0.0, -1.0, 5.0]), 52) == (
        "implausible estimates (a spend or lifetime value below zero or beyond any order)")
